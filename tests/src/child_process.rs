//! Child processes that cannot outlive the test process.
//!
//! Test binaries end in many ways: normally, by panic, by `abort`, by SIGKILL from a timeout.
//! A walflow under test or a broker left running would hold ports and files, so the kernel
//! stops them for us. (PostgreSQL servers are tied the same way by `walflow-local-postgres`.) `PR_SET_PDEATHSIG` does that, but it fires when the *thread* that
//! forked the child exits, and tests run on short-lived threads. So every tied child is forked
//! by one dedicated thread that lives as long as the process: when the process goes, that thread
//! goes, and the kernel sends the child its signal.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

type SpawnRequest = (Command, libc::c_int, mpsc::Sender<io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("walflow-tests-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with the process.
                for (mut command, signal, reply) in rx {
                    let _ = reply.send(spawn_with_death_signal(&mut command, signal));
                }
            })
            .expect("cannot start the child-process spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_with_death_signal(command: &mut Command, signal: libc::c_int) -> io::Result<Child> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
    // functions (prctl, getppid, _exit). std runs it after any uid/gid change, which would
    // otherwise clear the death signal.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    command.spawn()
}

/// Spawns `command` so that the kernel sends it `signal` when the test process ends, however
/// it ends.
pub fn spawn_tied(command: Command, signal: libc::c_int) -> io::Result<Child> {
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, signal, reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

/// Sends `signal` to a child by pid (no-op if it already exited).
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: plain syscall on a pid we own.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}
