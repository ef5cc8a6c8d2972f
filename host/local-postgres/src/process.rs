//! Running the server's programs: as the `postgres` OS user when we are root (initdb and
//! postgres refuse root), and, for the postmaster, tied to this process so it cannot outlive it.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

/// The uid and gid the server runs as: `postgres` when we are root, `None` (ourselves)
/// otherwise.
pub(crate) type Owner = Option<(u32, u32)>;

pub(crate) fn server_owner() -> anyhow::Result<Owner> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    // SAFETY: getpwnam returns null or a pointer into static storage, read right away.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        bail!(
            "this runs as root, and PostgreSQL refuses to; create a `postgres` OS user for the \
             server (useradd --system postgres; the Debian packages do) or run as an ordinary user"
        );
    }
    // SAFETY: non-null pointer from getpwnam.
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

/// Gives `path` and everything under it to `owner`.
pub(crate) fn chown_tree(path: &Path, owner: Owner) -> anyhow::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .with_context(|| format!("cannot chown {}", path.display()))?;
    if path.symlink_metadata()?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// `program` run in `cwd` as `owner`, its output appended to `log`, with a plain C locale and
/// none of the libpq environment that would point it elsewhere.
pub(crate) fn server_command(
    program: &Path,
    cwd: &Path,
    owner: Owner,
    log: &Path,
) -> anyhow::Result<Command> {
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut command = Command::new(program);
    command
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .env("LC_ALL", "C")
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST");
    if let Some((uid, gid)) = owner {
        command
            .uid(uid)
            .gid(gid)
            .env("HOME", cwd)
            .env("USER", "postgres");
    }
    Ok(command)
}

/// Sends `signal` to a child (no-op if it already exited).
pub fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: a plain syscall on a pid we own.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
}

/// Spawns `command` so that the kernel sends it `signal` when this process ends, however it
/// ends (Linux's `PR_SET_PDEATHSIG`; elsewhere a plain spawn).
///
/// The death signal fires when the *thread* that forked the child exits, and callers run on
/// short-lived threads (tests, tokio's blocking pool). So every tied child is forked by one
/// thread that lives as long as the process.
#[cfg(target_os = "linux")]
pub fn spawn_tied(command: Command, signal: libc::c_int) -> io::Result<Child> {
    use std::sync::mpsc;
    use std::sync::{Mutex, OnceLock};

    type Request = (Command, libc::c_int, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("local-postgres-spawner".into())
            .spawn(move || {
                // The sender lives in a static, so this loop ends only with the process.
                for (mut command, signal, reply) in rx {
                    let _ = reply.send(spawn_with_death_signal(&mut command, signal));
                }
            })
            .expect("cannot start the local-postgres spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, signal, reply_tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread dropped the request"))?
}

#[cfg(target_os = "linux")]
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

#[cfg(not(target_os = "linux"))]
pub fn spawn_tied(mut command: Command, _signal: libc::c_int) -> io::Result<Child> {
    command.spawn()
}
