//! A throwaway PostgreSQL for `walflow demo`: initdb into a temporary directory, start with
//! logical replication on a free port, and remove everything when dropped.
//!
//! initdb refuses to run as root, so when walflow runs as root the server runs as the `postgres`
//! OS user (the Debian packages create it) with a data directory it owns.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A running throwaway server.
pub struct LocalPostgres {
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    /// The TCP port it listens on (127.0.0.1).
    pub port: u16,
}

impl LocalPostgres {
    /// Finds the server binaries, initialises a cluster and starts it.
    pub fn start() -> anyhow::Result<LocalPostgres> {
        let bin = find_server_binaries().context(
            "walflow demo needs the PostgreSQL server binaries (initdb, postgres); install them \
             (Debian: apt-get install postgresql) or put their directory on PATH",
        )?;
        let user = run_as_user()?;
        let dir = std::env::temp_dir().join(format!("walflow-demo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        let port = free_port()?;
        let pg = LocalPostgres {
            dir,
            bin,
            user,
            port,
        };
        pg.initdb()?;
        pg.start_server()?;
        Ok(pg)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(&self.dir);
        cmd
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command("initdb")
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .output()
            .context("cannot run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn start_server(&self) -> anyhow::Result<()> {
        let log = self.dir.join("server.log");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c wal_level=logical \
             -c max_replication_slots=8 -c max_wal_senders=8 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let status = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data_dir())
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(options)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("cannot run pg_ctl")?;
        if !status.success() {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("the demo PostgreSQL did not start: {}", tail.trim());
        }
        Ok(())
    }

    /// A connection URL for the superuser.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Waits until the server accepts connections.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    bail!("the demo PostgreSQL does not accept connections: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["stop", "-m", "immediate", "-w", "-D"])
            .arg(self.data_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The newest PostgreSQL server binary directory: `$PATH` first, then Debian's layout.
fn find_server_binaries() -> anyhow::Result<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if has_server(&d) && d.join("postgres").is_file() {
                return Ok(d);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p).ok_or_else(|| {
        anyhow::anyhow!("no initdb found on PATH or under /usr/lib/postgresql/*/bin")
    })
}

/// The uid/gid to run the server as: the `postgres` user when we are root, else ourselves.
fn run_as_user() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.first().map(OsStr::new) == Some(OsStr::new("postgres")) && f.len() > 3 {
            let uid = f[2].parse()?;
            let gid = f[3].parse()?;
            return Ok(Some((uid, gid)));
        }
    }
    bail!(
        "walflow demo runs as root, and PostgreSQL refuses to; create a `postgres` user \
         (useradd -r postgres) or run the demo as an ordinary user"
    )
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
