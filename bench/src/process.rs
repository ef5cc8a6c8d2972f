//! Measuring a benchmark's child process: wall time, CPU time and peak resident memory, from
//! the kernel's own accounting (wait4), so peers and walflow are measured the same way.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

/// What one measured run cost.
pub struct Run {
    /// Wall-clock time.
    pub elapsed: Duration,
    /// User + system CPU time of the child.
    pub cpu: Duration,
    /// The child's peak resident set, KiB.
    pub max_rss_kib: i64,
}

impl Run {
    /// One aligned line: events/s, seconds, CPU seconds and peak RSS.
    pub fn describe(&self, events_per_s: f64) -> String {
        format!(
            "{:>10.0} events/s  {:>6.2}s (cpu {:>5.2}s)  peak RSS {:>7.1} MiB",
            events_per_s,
            self.elapsed.as_secs_f64(),
            self.cpu.as_secs_f64(),
            self.max_rss_kib as f64 / 1024.0
        )
    }
}

/// Runs `command` with stdout to /dev/null and measures it; fails unless it exits 0.
pub fn measure(mut command: Command) -> anyhow::Result<Run> {
    command.stdout(Stdio::null()).stderr(Stdio::inherit());
    let started = Instant::now();
    let child = command.spawn()?;
    wait_measured(child.id(), started)
}

/// Waits for the child `pid` (spawned at `started`) and measures it; fails unless it exits 0.
pub fn wait_measured(pid: u32, started: Instant) -> anyhow::Result<Run> {
    let pid = pid as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    if rc != pid {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("exited with status {status}");
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok(Run {
        elapsed,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss,
    })
}
