//! Throwaway local PostgreSQL servers: the one implementation behind `walflow demo` and the
//! integration tests' clusters.
//!
//! ```no_run
//! use walflow_local_postgres::{Install, LocalPostgres, Options};
//! # fn main() -> anyhow::Result<()> {
//! let options = Options::new(Install::find()?).setting("wal_level", "logical");
//! let pg = LocalPostgres::init(options)?; // initdb in a fresh temporary directory
//! pg.start()?; // on a free port of 127.0.0.1, ready when this returns
//! println!("{}", pg.url("postgres", "postgres"));
//! # Ok(())
//! # }
//! // Dropping `pg` stops the server and removes its directory.
//! ```
//!
//! Why it works the way it does:
//!
//! - initdb and postgres refuse to run as root, so when this process is root every server
//!   program runs as the `postgres` OS user, and the server's directory is given to that user
//!   before each start (files the caller put there included).
//! - The postmaster is this process's child rather than a daemon started by `pg_ctl`: it is
//!   tied to this process, so the kernel stops it (SIGQUIT, an immediate shutdown) when this
//!   process ends, however it ends; a killed demo or test run leaves no server behind. It runs
//!   in its own process group, so Ctrl-C reaches only this process, which decides when the
//!   server stops. Stopping sends the signals `pg_ctl stop` would. [`spawn_tied`] ties any
//!   other child the same way (the tests' walflow and broker processes).
//! - Directories left behind by processes that are gone are removed by the next
//!   [`LocalPostgres::init`].
//!
//! It depends on no walflow crate and knows nothing of walflow: roles, TLS, databases and the
//! like belong to its callers.

mod install;
mod process;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub use install::Install;
use process::{Owner, chown_tree, server_command, server_owner};
pub use process::{signal, spawn_tied};

/// The bootstrap superuser every server is initialized with.
pub const SUPERUSER: &str = "postgres";

/// How long a start may take before it counts as failed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a shutdown may take before the postmaster is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Server directories are `<temp dir>/walflow-pg-<pid>-…`, so stale ones can be recognised.
const DIR_PREFIX: &str = "walflow-pg-";

/// How to make a server.
#[derive(Debug, Clone)]
pub struct Options {
    install: Install,
    auth: String,
    settings: Vec<(String, String)>,
    replica_of: Option<u16>,
}

impl Options {
    /// A server of `install`, initialized with `trust` authentication and PostgreSQL's default
    /// settings (listening on 127.0.0.1 only).
    pub fn new(install: Install) -> Options {
        Options {
            install,
            auth: "trust".into(),
            settings: Vec::new(),
            replica_of: None,
        }
    }

    /// The authentication method initdb writes into `pg_hba.conf` for every local and host
    /// line (`trust`, `md5`, `scram-sha-256`, …). Replace `pg_hba.conf` in
    /// [`LocalPostgres::data_dir`] before starting for anything finer.
    pub fn auth(mut self, method: &str) -> Options {
        self.auth = method.into();
        self
    }

    /// A `postgresql.conf` setting, written after the defaults so it overrides them. The value
    /// is written verbatim: quote strings yourself (`("shared_buffers", "'32MB'")`). Relative
    /// paths (e.g. `ssl_cert_file`) are relative to the data directory.
    pub fn setting(mut self, name: &str, value: &str) -> Options {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// Instead of initdb, copies the server listening on 127.0.0.1:`primary_port` with
    /// `pg_basebackup -R` as [`SUPERUSER`] (it must allow that user replication connections
    /// from 127.0.0.1, as initdb's defaults do): the new server is a hot standby streaming from
    /// it, with its configuration and the settings given here.
    pub fn replica_of(mut self, primary_port: u16) -> Options {
        self.replica_of = Some(primary_port);
        self
    }
}

/// How to stop a server; the modes of `pg_ctl stop -m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    /// Disconnect clients, checkpoint, exit (SIGINT).
    Fast,
    /// Exit at once without a checkpoint, like a crash; the next start runs crash recovery
    /// (SIGQUIT).
    Immediate,
}

/// A local PostgreSQL server in its own temporary directory. Stopped and removed when dropped.
#[derive(Debug)]
pub struct LocalPostgres {
    install: Install,
    dir: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    log_path: PathBuf,
    owner: Owner,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// 0 until the first start picks one.
    port: u16,
    postmaster: Option<Child>,
}

impl LocalPostgres {
    /// Creates a server directory and initializes a cluster in it (initdb, or pg_basebackup
    /// for [`Options::replica_of`]), UTF8 with the C locale, without waiting for its files to
    /// reach the disk (it is thrown away); not started yet, so files such as
    /// `pg_hba.conf` or certificates can be put into [`data_dir`](Self::data_dir) first.
    /// Errors carry the end of the log.
    pub fn init(options: Options) -> anyhow::Result<LocalPostgres> {
        remove_stale_dirs();
        let owner = server_owner()?;
        let dir = new_dir()?;
        let pg = LocalPostgres {
            install: options.install.clone(),
            data_dir: dir.join("data"),
            socket_dir: dir.join("socket"),
            log_path: dir.join("postgres.log"),
            dir,
            owner,
            state: Mutex::new(State {
                port: 0,
                postmaster: None,
            }),
        };
        std::fs::create_dir_all(&pg.socket_dir)?;
        chown_tree(&pg.dir, owner)?;
        match options.replica_of {
            None => pg.run(
                "initdb",
                &[
                    "-U",
                    SUPERUSER,
                    "-A",
                    &options.auth,
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "-N",
                ],
            )?,
            Some(port) => pg.run(
                "pg_basebackup",
                &[
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                    "-U",
                    SUPERUSER,
                    "-R",
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-N",
                ],
            )?,
        }
        let mut conf = String::from("\n# walflow-local-postgres\nlisten_addresses = '127.0.0.1'\n");
        for (name, value) in &options.settings {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        append(&pg.data_dir.join("postgresql.conf"), &conf)?;
        Ok(pg)
    }

    /// Runs `program -D <data dir> args…` as the server's user, its output into the log.
    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let path = self.install.bin_dir().join(program);
        let status = server_command(&path, &self.dir, self.owner, &self.log_path)?
            .arg("-D")
            .arg(&self.data_dir)
            .args(args)
            .status()
            .with_context(|| format!("cannot run {}", path.display()))?;
        if !status.success() {
            bail!(
                "{program} failed ({status}); its log, {}:\n{}",
                self.log_path.display(),
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections. The first start picks a free
    /// port (another one if it is taken meanwhile); later starts, after [`stop`](Self::stop),
    /// reuse it and the data directory.
    pub fn start(&self) -> anyhow::Result<()> {
        let mut state = self.state();
        if state.postmaster.is_some() {
            bail!("the server is running; stop it first");
        }
        chown_tree(&self.dir, self.owner)?;
        if state.port != 0 {
            state.postmaster = Some(self.launch(state.port)?);
            return Ok(());
        }
        let mut last_error = None;
        for _attempt in 0..5 {
            let port = free_port()?;
            let log_before = log_len(&self.log_path);
            match self.launch(port) {
                Ok(child) => {
                    state.port = port;
                    state.postmaster = Some(child);
                    return Ok(());
                }
                Err(e) if log_since(&self.log_path, log_before).contains("already in use") => {
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
    }

    fn launch(&self, port: u16) -> anyhow::Result<Child> {
        let postgres = self.install.bin_dir().join("postgres");
        let mut command = server_command(&postgres, &self.dir, self.owner, &self.log_path)?;
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(&self.socket_dir)
            // Its own process group: Ctrl-C in a terminal goes to our group, and the server
            // should stop when we decide to (or when we are gone), not halfway through.
            .process_group(0);
        let mut child = process::spawn_tied(command, libc::SIGQUIT)
            .with_context(|| format!("cannot start {}", postgres.display()))?;
        if let Err(e) = self.wait_ready(&mut child) {
            stop_postmaster(&mut child, Shutdown::Immediate);
            return Err(e);
        }
        Ok(child)
    }

    /// Waits until `postmaster.pid` says this postmaster is ready (line 8, the check pg_ctl
    /// makes), or fails with the log when it exits or takes too long.
    fn wait_ready(&self, child: &mut Child) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let pid_file = self.data_dir.join("postmaster.pid");
        let pid = child.id().to_string();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                bail!(
                    "postgres exited ({status}) before it was ready; its log, {}:\n{}",
                    self.log_path.display(),
                    self.log_tail(30)
                );
            }
            if let Ok(text) = std::fs::read_to_string(&pid_file) {
                let mut lines = text.lines();
                if lines.next() == Some(pid.as_str())
                    && lines
                        .nth(6)
                        .is_some_and(|l| matches!(l.trim(), "ready" | "standby"))
                {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "postgres was not ready after {} s; its log, {}:\n{}",
                    START_TIMEOUT.as_secs(),
                    self.log_path.display(),
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server if it runs, waiting for it to exit (killing it after 30 s).
    pub fn stop(&self, mode: Shutdown) {
        if let Some(mut child) = self.state().postmaster.take() {
            stop_postmaster(&mut child, mode);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The TCP port on 127.0.0.1 (0 before the first start).
    pub fn port(&self) -> u16 {
        self.state().port
    }

    /// `postgres://user@127.0.0.1:PORT/db`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port())
    }

    /// The server's installation.
    pub fn install(&self) -> &Install {
        &self.install
    }

    /// The server's own directory: the data directory, the Unix socket directory and the log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The data directory (`postgresql.conf`, `pg_hba.conf`, `postmaster.pid`, …).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The log of the server and of initdb/pg_basebackup.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop(Shutdown::Fast);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn stop_postmaster(child: &mut Child, mode: Shutdown) {
    if matches!(child.try_wait(), Ok(None)) {
        let signal = match mode {
            Shutdown::Fast => libc::SIGINT,
            Shutdown::Immediate => libc::SIGQUIT,
        };
        process::signal(child, signal);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if !matches!(child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn log_len(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn log_since(path: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(path)
        && file.seek(SeekFrom::Start(offset)).is_ok()
    {
        let _ = file.read_to_string(&mut text);
    }
    text
}

/// A random number, without a dependency for it.
fn random() -> u64 {
    RandomState::new().hash_one(Instant::now())
}

/// A new directory under the temp dir, traversable by the server's user.
fn new_dir() -> anyhow::Result<PathBuf> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{}-{:04x}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        random() & 0xffff
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Removes server directories whose process is gone (its servers died with it), once per
/// process.
fn remove_stale_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

/// A port between 55001 and 64999 that is free on 127.0.0.1 now (high, away from the usual
/// servers, and random so parallel runs rarely collide).
fn free_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = 55001 + (random() % 9999) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free TCP port between 55001 and 64999 on 127.0.0.1; stop some servers and retry")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_in_range_and_vary() {
        let ports: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        assert!(ports.iter().all(|p| (55001..=64999).contains(p)));
        assert!(ports.iter().any(|p| *p != ports[0]));
    }
}
