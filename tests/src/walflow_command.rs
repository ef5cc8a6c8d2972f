//! Running the walflow program as a child process, the way a user does.
//!
//! The program under test is `CARGO_BIN_EXE_walflow-under-test`, which only integration tests
//! (tests/tests/*.rs) can see, so the path comes in as a parameter; the [`walflow!`] macro
//! supplies it. Output goes to files, not pipes, so a running child never blocks on a full pipe
//! and a test can poll what it has printed so far. Children die with the test process.
//!
//! [`walflow!`]: crate::walflow

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::child_process;
use crate::cluster::{PASSWORD_ENV, TEST_PASSWORD};

/// `walflow!()` → a [`WalflowCommand`] for the program under test; `walflow!("check", "-c", p)`
/// adds arguments. Usable only in integration tests (tests/tests/*.rs).
#[macro_export]
macro_rules! walflow {
    () => {
        $crate::walflow_command::WalflowCommand::new(env!("CARGO_BIN_EXE_walflow-under-test"))
    };
    ($($arg:expr),+ $(,)?) => {
        $crate::walflow_command::WalflowCommand::new(env!("CARGO_BIN_EXE_walflow-under-test"))
            $(.arg($arg))+
    };
}

/// A walflow invocation being put together.
#[derive(Debug, Clone)]
pub struct WalflowCommand {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    stdin: Option<PathBuf>,
    netns: Option<String>,
}

/// What a finished run printed and how it exited.
#[derive(Debug, Clone)]
pub struct WalflowOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error (logs and the error line).
    pub stderr: String,
}

impl WalflowOutput {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Both streams, for assertion messages.
    pub fn describe(&self) -> String {
        format!(
            "exit: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl WalflowCommand {
    /// A command for the program at `program`, with the test password in [`PASSWORD_ENV`].
    pub fn new(program: impl Into<PathBuf>) -> Self {
        WalflowCommand {
            program: program.into(),
            args: Vec::new(),
            envs: vec![(PASSWORD_ENV.into(), TEST_PASSWORD.into())],
            cwd: None,
            stdin: None,
            netns: None,
        }
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// Feeds `file` as standard input (default: none).
    pub fn stdin_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.stdin = Some(file.into());
        self
    }

    /// Runs in network namespace `name` (`ip netns exec`, which execs the program in place, so
    /// the child's pid is walflow's).
    pub fn in_netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Starts the program; it is killed when the handle drops or the test process ends.
    pub fn spawn(&self) -> anyhow::Result<WalflowChild> {
        let out_dir = tempfile::Builder::new().prefix("walflow-out-").tempdir()?;
        let stdout_path = out_dir.path().join("stdout");
        let stderr_path = out_dir.path().join("stderr");
        let mut command = match &self.netns {
            Some(name) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", name]).arg(&self.program);
                c
            }
            None => Command::new(&self.program),
        };
        command
            .args(&self.args)
            .stdout(std::fs::File::create(&stdout_path)?)
            .stderr(std::fs::File::create(&stderr_path)?)
            .stdin(match &self.stdin {
                Some(path) => Stdio::from(
                    std::fs::File::open(path)
                        .with_context(|| format!("open {}", path.display()))?,
                ),
                None => Stdio::null(),
            });
        for (k, v) in &self.envs {
            command.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            command.current_dir(dir);
        }
        let child = child_process::spawn_tied(command, libc::SIGKILL)
            .with_context(|| format!("cannot run {}", self.program.display()))?;
        Ok(WalflowChild {
            child,
            _out_dir: out_dir,
            stdout_path,
            stderr_path,
        })
    }

    /// Runs to completion, killing the program if it takes longer than `timeout`.
    pub fn output(&self, timeout: Duration) -> anyhow::Result<WalflowOutput> {
        self.spawn()?.wait(timeout)
    }

    /// Async [`output`](Self::output): waits without blocking the test's runtime.
    pub async fn output_async(&self, timeout: Duration) -> anyhow::Result<WalflowOutput> {
        self.spawn()?.wait_async(timeout).await
    }
}

/// A running walflow.
#[derive(Debug)]
pub struct WalflowChild {
    child: Child,
    _out_dir: tempfile::TempDir,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl WalflowChild {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it has printed to standard output so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// What it has printed to standard error so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Its peak resident memory so far in MiB (`VmHWM`), while it runs: the memory bound a
    /// fault test checks after the fault.
    pub fn peak_rss_mib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024)
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL, and reap it.
    pub fn kill9(&mut self) {
        if self.is_running() {
            child_process::signal(&self.child, libc::SIGKILL);
        }
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a clean stop); follow with [`wait`](Self::wait).
    pub fn terminate(&mut self) {
        if self.is_running() {
            child_process::signal(&self.child, libc::SIGTERM);
        }
    }

    /// Sends SIGINT (Ctrl-C); follow with [`wait`](Self::wait).
    pub fn interrupt(&mut self) {
        if self.is_running() {
            child_process::signal(&self.child, libc::SIGINT);
        }
    }

    fn finished(&mut self, status: ExitStatus) -> WalflowOutput {
        WalflowOutput {
            status,
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }

    fn timed_out(&mut self, timeout: Duration) -> anyhow::Error {
        self.kill9();
        anyhow::anyhow!(
            "walflow did not exit within {timeout:?}; killed it.\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout(),
            self.stderr()
        )
    }

    /// Waits up to `timeout` for it to exit (then kills it and fails).
    pub fn wait(mut self, timeout: Duration) -> anyhow::Result<WalflowOutput> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(self.finished(status));
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(timeout));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Async [`wait`](Self::wait).
    pub async fn wait_async(mut self, timeout: Duration) -> anyhow::Result<WalflowOutput> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(self.finished(status));
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(timeout));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until standard output satisfies `condition` (fails early if the program exits).
    pub async fn wait_for_stdout(
        &mut self,
        what: &str,
        timeout: Duration,
        condition: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(&self.stdout()) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                if condition(&self.stdout()) {
                    return Ok(());
                }
                anyhow::bail!(
                    "walflow exited ({status}) before {what}.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {what}.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    self.stdout(),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for WalflowChild {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
