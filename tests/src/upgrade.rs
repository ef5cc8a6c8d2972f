//! Upgrading a test cluster to PostgreSQL 18 with `pg_upgrade`, the way an operator does: stop
//! the old server, initdb a new cluster with PostgreSQL 18's initdb (same encoding and locale as
//! the harness's, no data checksums like the old one), run `pg_upgrade` as the `postgres` OS
//! user in a scratch directory, and start the new server on the old one's port with logical
//! replication on, so a walflow configuration keeps working unchanged.
//!
//! The toolset is [`crate::installs::pg18_full_bin`]'s (the npm builds have no pg_upgrade); the
//! old cluster's binaries are its own [`ClusterInfo::bin_dir`] (Debian's PostgreSQL 15 has the
//! full toolset).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::cluster::{Cluster, ClusterInfo, TestUser, connect};
use crate::ports::free_port;

/// The upgraded server, stopped (fast shutdown) and removed when dropped.
#[derive(Debug)]
pub struct UpgradedServer {
    dir: tempfile::TempDir,
    port: u16,
    postmaster: Option<Child>,
}

/// Stops `old`, upgrades its data directory to PostgreSQL 18 with `pg_upgrade`, and starts the
/// new server on the same port. `old` must not be started again (its data directory is the
/// upgrade's source).
pub fn upgrade_to_18(old: &Cluster) -> anyhow::Result<UpgradedServer> {
    let new_bin = crate::installs::pg18_full_bin();
    old.stop();
    let dir = tempfile::Builder::new()
        .prefix("walflow-upgrade-")
        .tempdir()?;
    let (uid, gid) = postgres_user()?;
    std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
    let data = dir.path().join("data");
    run_as_postgres(
        Command::new(new_bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .args(["-N", "--no-data-checksums"]),
        dir.path(),
        (uid, gid),
    )?;
    run_as_postgres(
        Command::new(new_bin.join("pg_upgrade"))
            .arg("-b")
            .arg(old.bin_dir())
            .arg("-B")
            .arg(&new_bin)
            .arg("-d")
            .arg(old.data_dir())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-p"])
            .arg(free_port().to_string())
            .arg("-P")
            .arg(free_port().to_string()),
        dir.path(),
        (uid, gid),
    )?;
    configure(&data, old)?;
    let mut server = UpgradedServer {
        port: old.port(),
        postmaster: None,
        dir,
    };
    server.start(&new_bin, (uid, gid))?;
    Ok(server)
}

impl UpgradedServer {
    /// The port (the old server's).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// A superuser client on `db`.
    pub async fn superuser(&self, db: &str) -> tokio_postgres::Client {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={} dbname={db}",
            self.port,
            TestUser::Superuser.name()
        );
        connect(&conninfo).await.unwrap_or_else(|e| {
            panic!(
                "connect to the upgraded server: {e} (log: {})",
                self.log_path().display()
            )
        })
    }

    fn start(&mut self, bin: &Path, owner: (u32, u32)) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.log_path())?;
        std::os::unix::fs::chown(self.log_path(), Some(owner.0), Some(owner.1))?;
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .env("LC_ALL", "C")
            .uid(owner.0)
            .gid(owner.1)
            .process_group(0);
        let child = walflow_local_postgres::spawn_tied(command, libc::SIGQUIT)?;
        self.postmaster = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.ready_in_pid_file()
            {
                return Ok(());
            }
            if let Some(child) = &mut self.postmaster
                && let Ok(Some(status)) = child.try_wait()
            {
                bail!("the upgraded server exited ({status}); {}", self.log_tail());
            }
            if Instant::now() >= deadline {
                bail!("the upgraded server did not start; {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ready_in_pid_file(&self) -> bool {
        std::fs::read_to_string(self.dir.path().join("data/postmaster.pid"))
            .is_ok_and(|t| t.lines().nth(7).is_some_and(|l| l.trim() == "ready"))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for UpgradedServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            walflow_local_postgres::signal(&child, libc::SIGINT);
            let _ = child.wait();
        }
    }
}

/// The old server's access rules and the settings walflow needs, for the new cluster.
fn configure(data: &Path, old: &ClusterInfo) -> anyhow::Result<()> {
    std::fs::copy(old.data_dir().join("pg_hba.conf"), data.join("pg_hba.conf"))?;
    let settings = "\n# walflow test harness, after pg_upgrade\n\
        listen_addresses = '127.0.0.1'\n\
        wal_level = logical\n\
        max_replication_slots = 16\n\
        max_wal_senders = 16\n\
        fsync = off\n\
        log_min_messages = warning\n";
    let conf = data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)?;
    text.push_str(settings);
    std::fs::write(&conf, text)?;
    Ok(())
}

/// Runs `command` as the `postgres` OS user in `cwd`, failing with its output.
fn run_as_postgres(command: &mut Command, cwd: &Path, owner: (u32, u32)) -> anyhow::Result<()> {
    let program = format!("{:?}", command.get_program());
    let output = command
        .current_dir(cwd)
        .env("LC_ALL", "C")
        .env_remove("PGDATA")
        .env_remove("PGPORT")
        .env_remove("PGHOST")
        .uid(owner.0)
        .gid(owner.1)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The `postgres` OS user's uid and gid (the test servers run as it).
fn postgres_user() -> anyhow::Result<(u32, u32)> {
    // SAFETY: getpwnam returns null or a pointer into static storage, read right away.
    let pw = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
    if pw.is_null() {
        bail!("pg_upgrade runs as the `postgres` OS user, which does not exist");
    }
    // SAFETY: non-null pointer from getpwnam.
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}
