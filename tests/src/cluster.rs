//! Throwaway PostgreSQL clusters for integration tests.
//!
//! Each cluster is a fresh `initdb` in a temporary directory, run as the `postgres` OS user
//! (initdb refuses root), on a free port above 55000, with logical replication, TLS from a
//! throwaway CA, and one login role per authentication method. Tests never share state through a
//! database: each asks for its own with [`ClusterInfo::new_database`].
//!
//! [`Cluster::shared`] is the one server of a test binary. It is never dropped (it lives in a
//! static), so it is started through [`crate::child_process::spawn_tied`]: the kernel stops it
//! when the test process ends, even on abort or SIGKILL. Clusters from [`Cluster::start`] are
//! stopped and removed when dropped.

use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Deref;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::certificates::{self, Certificates};
use crate::child_process;
use crate::config_file::ConfigBuilder;
use crate::installs::{self, DEBIAN_PG15_BIN};

/// The password of every password-authenticated test role.
pub const TEST_PASSWORD: &str = "walflow-test-secret";

/// The environment variable the written configs name in `password_env`; the walflow command
/// helpers set it to [`TEST_PASSWORD`].
pub const PASSWORD_ENV: &str = "WALFLOW_TEST_PASSWORD";

/// An address the server listens on that its certificate does not name (for verify-full
/// failures).
pub const WRONG_HOST: &str = "127.0.0.2";

/// The login roles every cluster has, one per authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestUser {
    /// `postgres`, the bootstrap superuser, trusted from loopback.
    Superuser,
    /// `walflow_trust`: REPLICATION, `trust`.
    Trust,
    /// `walflow_md5`: REPLICATION, `md5` with an md5-hashed password.
    Md5,
    /// `walflow_scram`: REPLICATION, `scram-sha-256`.
    Scram,
    /// `walflow_password`: REPLICATION, cleartext `password`.
    Password,
    /// `walflow_tls_only`: REPLICATION, `scram-sha-256`, and only over TLS (`hostssl`).
    TlsOnly,
}

impl TestUser {
    /// Every role, for loops.
    pub const ALL: [TestUser; 6] = [
        TestUser::Superuser,
        TestUser::Trust,
        TestUser::Md5,
        TestUser::Scram,
        TestUser::Password,
        TestUser::TlsOnly,
    ];

    /// The role name.
    pub fn name(self) -> &'static str {
        match self {
            TestUser::Superuser => "postgres",
            TestUser::Trust => "walflow_trust",
            TestUser::Md5 => "walflow_md5",
            TestUser::Scram => "walflow_scram",
            TestUser::Password => "walflow_password",
            TestUser::TlsOnly => "walflow_tls_only",
        }
    }

    /// The pg_hba method.
    pub fn method(self) -> &'static str {
        match self {
            TestUser::Superuser | TestUser::Trust => "trust",
            TestUser::Md5 => "md5",
            TestUser::Scram | TestUser::TlsOnly => "scram-sha-256",
            TestUser::Password => "password",
        }
    }

    /// The password, for roles that need one.
    pub fn password(self) -> Option<&'static str> {
        match self {
            TestUser::Superuser | TestUser::Trust => None,
            _ => Some(TEST_PASSWORD),
        }
    }
}

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Directory with `initdb` and `postgres` (default: Debian's PostgreSQL 15).
    pub bin_dir: PathBuf,
    /// `postgresql.conf` settings applied after the defaults, so they override them
    /// (e.g. `("wal_level", "replica")`). Values are written verbatim: quote strings yourself.
    pub settings: Vec<(String, String)>,
    /// Turn TLS on with a throwaway CA (default true).
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            bin_dir: PathBuf::from(DEBIAN_PG15_BIN),
            settings: Vec::new(),
            tls: true,
        }
    }
}

impl ClusterOptions {
    /// Uses the server in `bin_dir`.
    pub fn bin_dir(mut self, bin_dir: impl Into<PathBuf>) -> Self {
        self.bin_dir = bin_dir.into();
        self
    }

    /// Adds a `postgresql.conf` setting (value verbatim, e.g. `"'replica'"` or `"10"`).
    pub fn setting(mut self, name: &str, value: &str) -> Self {
        self.settings.push((name.to_string(), value.to_string()));
        self
    }

    /// Without TLS.
    pub fn without_tls(mut self) -> Self {
        self.tls = false;
        self
    }
}

/// What a test needs to know about a running cluster; shared by [`Cluster`] and [`TestDb`].
#[derive(Debug)]
pub struct ClusterInfo {
    port: u16,
    base_dir: PathBuf,
    data_dir: PathBuf,
    log_path: PathBuf,
    certificates: Option<Certificates>,
    bin_dir: PathBuf,
    major: u32,
    version: String,
}

/// A running PostgreSQL server.
#[derive(Debug)]
pub struct Cluster {
    info: Arc<ClusterInfo>,
    postmaster: Mutex<Option<Child>>,
    remove_on_drop: bool,
}

impl Deref for Cluster {
    type Target = ClusterInfo;
    fn deref(&self) -> &ClusterInfo {
        &self.info
    }
}

impl Cluster {
    /// The test binary's one shared PostgreSQL 15, started on first use; it stops when the test
    /// process exits, however it exits. Panics (with the log) if it cannot start.
    pub fn shared() -> &'static Cluster {
        static SHARED: OnceLock<Cluster> = OnceLock::new();
        static STARTING: Mutex<()> = Mutex::new(());
        if let Some(cluster) = SHARED.get() {
            return cluster;
        }
        let _guard = STARTING.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cluster) = SHARED.get() {
            return cluster;
        }
        let mut cluster = match Cluster::start(ClusterOptions::default()) {
            Ok(cluster) => cluster,
            Err(e) => panic!("cannot start the shared test cluster: {e:#}"),
        };
        cluster.remove_on_drop = false;
        SHARED.get_or_init(|| cluster)
    }

    /// Starts a new cluster; it is stopped and its directory removed when dropped.
    pub fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        remove_stale_dirs();
        let install = installs::probe(&options.bin_dir, "given").with_context(|| {
            format!(
                "no PostgreSQL server in {} ({})",
                options.bin_dir.display(),
                installs::INSTALL_HINT
            )
        })?;
        // On failure the directory (and its log) stays for inspection; a later run removes it.
        let base_dir = new_base_dir()?;
        start_in(&base_dir, &options, &install)
    }

    /// Starts a hot standby (read replica) of `primary`, streaming from it (`pg_basebackup -R`),
    /// with the same server binaries and no TLS. Stopped and removed when dropped.
    pub fn start_standby(primary: &ClusterInfo) -> anyhow::Result<Cluster> {
        let options = ClusterOptions::default()
            .bin_dir(primary.bin_dir())
            .without_tls();
        let install = installs::probe(&options.bin_dir, "given")
            .context("the primary's server binaries are gone")?;
        let owner = server_owner()?;
        let base_dir = new_base_dir()?;
        std::fs::create_dir_all(base_dir.join("socket"))?;
        chown_tree(&base_dir, owner)?;
        let log_path = base_dir.join("postgres.log");
        let status = server_command(
            &options.bin_dir.join("pg_basebackup"),
            &base_dir,
            owner,
            &log_path,
        )?
        .arg("-D")
        .arg(base_dir.join("data"))
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ])
        .arg("-p")
        .arg(primary.port().to_string())
        .status()
        .context("cannot run pg_basebackup")?;
        if !status.success() {
            bail!(
                "pg_basebackup failed ({status}); log {}:\n{}",
                log_path.display(),
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        launch(&base_dir, &options, &install, None, owner)
    }

    /// Crashes the server (`pg_ctl stop -m immediate`: SIGQUIT to the postmaster, no
    /// checkpoint, crash recovery at the next start), keeps it down for `down_for`, then starts
    /// it again on the same port and data directory.
    pub fn crash_and_restart(&self, down_for: Duration) -> anyhow::Result<()> {
        {
            let mut guard = self.postmaster.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(mut child) = guard.take() {
                child_process::signal(&child, libc::SIGQUIT);
                let _ = child.wait();
            }
        }
        std::thread::sleep(down_for);
        self.start_again()
    }

    /// Starts a server [`stop`](Self::stop)ped before again, on the same port and data
    /// directory (to test what walflow does while its database is away).
    pub fn start_again(&self) -> anyhow::Result<()> {
        let mut guard = self.postmaster.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            bail!("the cluster is running; stop it first");
        }
        let mut command = server_command(
            &self.info.bin_dir.join("postgres"),
            &self.info.base_dir,
            server_owner()?,
            &self.info.log_path,
        )?;
        command.arg("-D").arg(&self.info.data_dir);
        let mut child =
            child_process::spawn_tied(command, libc::SIGQUIT).context("cannot start postgres")?;
        if let Err(e) = wait_ready(&mut child, &self.info.data_dir, &self.info.log_path) {
            stop_postmaster(&mut child);
            return Err(e);
        }
        *guard = Some(child);
        Ok(())
    }

    /// Stops the server now (fast shutdown), waiting up to 30 s.
    pub fn stop(&self) {
        let mut guard = self.postmaster.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut child) = guard.take() {
            stop_postmaster(&mut child);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if self.remove_on_drop {
            let _ = std::fs::remove_dir_all(&self.info.base_dir);
        }
    }
}

fn stop_postmaster(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        child_process::signal(child, libc::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(30);
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

impl ClusterInfo {
    /// The TCP port (on 127.0.0.1, 127.0.0.2 and ::1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1`.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The server's major version.
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The server's version, e.g. `15.14`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The server's log; print it when a test fails.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The directory of `postgres`, `initdb`, `pg_ctl`.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The CA certificate that signed the server's (for verify-ca/verify-full); `None` without
    /// TLS.
    pub fn ca_cert(&self) -> Option<&Path> {
        self.certificates.as_ref().map(|c| c.ca_cert.as_path())
    }

    /// `postgres://user@127.0.0.1:PORT/db`.
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{db}", self.port)
    }

    /// A libpq key/value connection string (no TLS) for `user` on `db`, with its password.
    pub fn conninfo(&self, user: TestUser, db: &str) -> String {
        let mut s = format!(
            "host=127.0.0.1 port={} user={} dbname={db}",
            self.port,
            user.name()
        );
        if let Some(pw) = user.password() {
            s.push_str(&format!(" password={pw}"));
        }
        s
    }

    /// Connects as `user` to `db` without TLS, driving the connection on the current runtime.
    pub async fn connect_as(
        &self,
        user: TestUser,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(&self.conninfo(user, db)).await
    }

    /// A superuser client on `db`.
    pub async fn superuser(&self, db: &str) -> tokio_postgres::Client {
        self.connect_as(TestUser::Superuser, db)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "superuser connect to {db}: {e} (log: {})",
                    self.log_path.display()
                )
            })
    }

    /// Runs `sql` with Debian's `psql` (which speaks TLS) and returns its unaligned, tuples-only
    /// output. `conninfo` is a libpq connection string, e.g. with `sslmode=verify-full`.
    pub fn psql(&self, conninfo: &str, sql: &str) -> anyhow::Result<String> {
        let output = Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                conninfo,
                "-c",
                sql,
            ])
            .env_remove("PGPASSWORD")
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .output()
            .context("cannot run psql (apt-get install postgresql-client)")?;
        if !output.status.success() {
            bail!(
                "psql failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    }

    /// Creates a database with a unique name.
    pub async fn new_database(self: &Arc<Self>) -> TestDb {
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "t{}_{:06x}",
            SEQUENCE.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>() & 0xff_ffff
        );
        let client = self.superuser("postgres").await;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        TestDb {
            info: Arc::clone(self),
            name,
        }
    }
}

impl Cluster {
    /// Shared handle to the cluster's details (what [`TestDb`] keeps).
    pub fn info(&self) -> &Arc<ClusterInfo> {
        &self.info
    }

    /// Creates a database with a unique name.
    pub async fn new_database(&self) -> TestDb {
        self.info.new_database().await
    }
}

/// Connects with `conninfo` (no TLS) and spawns the connection on the current runtime.
pub async fn connect(conninfo: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The full text of a tokio-postgres error (its `Display` is only "db error").
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    }
}

/// One test's database in a cluster.
#[derive(Debug, Clone)]
pub struct TestDb {
    info: Arc<ClusterInfo>,
    name: String,
}

impl TestDb {
    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cluster it lives in.
    pub fn cluster(&self) -> &ClusterInfo {
        &self.info
    }

    /// A superuser client on this database.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.info.superuser(&self.name).await
    }

    /// A client as `user` (no TLS).
    pub async fn connect_as(
        &self,
        user: TestUser,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        self.info.connect_as(user, &self.name).await
    }

    /// `postgres://user@127.0.0.1:PORT/db`.
    pub fn url(&self, user: &str) -> String {
        self.info.url(user, &self.name)
    }

    /// A libpq connection string for `user` on this database (no TLS options).
    pub fn conninfo(&self, user: TestUser) -> String {
        self.info.conninfo(user, &self.name)
    }

    /// A `walflow.toml` for this database, to adjust and write into a temp dir.
    pub fn config(&self) -> ConfigBuilder {
        ConfigBuilder::new(self)
    }
}

// ---- starting ------------------------------------------------------------------------------

const DIR_PREFIX: &str = "walflow-pg-";

fn new_base_dir() -> anyhow::Result<PathBuf> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "{DIR_PREFIX}{}-{}-{:04x}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed),
        rand::random::<u16>()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// Removes directories of clusters whose test process is gone (their servers died with it).
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

/// The OS user the server runs as: `postgres` when we are root, else ourselves.
fn server_owner() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = c"postgres";
    // SAFETY: getpwnam returns a pointer into static storage or null; read immediately.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!(
            "running as root, but there is no `postgres` OS user to run the server as \
             (install postgresql, or `useradd --system postgres`)"
        );
    }
    // SAFETY: non-null pointer from getpwnam.
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Ok(Some((uid, gid)))
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    let Some((uid, gid)) = owner else {
        return Ok(());
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))?;
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

fn server_command(
    program: &Path,
    cwd: &Path,
    owner: Option<(u32, u32)>,
    log: &Path,
) -> anyhow::Result<Command> {
    let log_file = OpenOptions::new().create(true).append(true).open(log)?;
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

fn start_in(
    base_dir: &Path,
    options: &ClusterOptions,
    install: &installs::PgInstall,
) -> anyhow::Result<Cluster> {
    let owner = server_owner()?;
    let data_dir = base_dir.join("data");
    let socket_dir = base_dir.join("socket");
    let log_path = base_dir.join("postgres.log");
    std::fs::create_dir_all(&socket_dir)?;
    let certificates = if options.tls {
        Some(certificates::generate(&base_dir.join("tls"))?)
    } else {
        None
    };
    chown_tree(base_dir, owner)?;

    let status = server_command(&options.bin_dir.join("initdb"), base_dir, owner, &log_path)?
        .arg("-D")
        .arg(&data_dir)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "-N",
        ])
        .status()
        .context("cannot run initdb")?;
    if !status.success() {
        bail!(
            "initdb failed ({status}); log: {}\n{}",
            log_path.display(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    }
    std::fs::write(data_dir.join("pg_hba.conf"), pg_hba())?;
    let cluster = launch(base_dir, options, install, certificates, owner)?;
    create_roles(&cluster)?;
    Ok(cluster)
}

/// Starts the server of an initialized data directory in `base_dir` on a free port (retrying
/// with another port if it is taken meanwhile).
fn launch(
    base_dir: &Path,
    options: &ClusterOptions,
    install: &installs::PgInstall,
    certificates: Option<Certificates>,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<Cluster> {
    let data_dir = base_dir.join("data");
    let socket_dir = base_dir.join("socket");
    let log_path = base_dir.join("postgres.log");
    let mut last_error = None;
    for _attempt in 0..5 {
        let port = free_port()?;
        write_settings(
            &data_dir,
            port,
            &socket_dir,
            certificates.as_ref(),
            install.major,
            options,
        )?;
        chown_tree(&data_dir.join("pg_hba.conf"), owner)?;
        chown_tree(&data_dir.join("postgresql.conf"), owner)?;
        chown_tree(&data_dir.join("postgresql.conf.initdb"), owner)?;
        let mut command = server_command(
            &options.bin_dir.join("postgres"),
            base_dir,
            owner,
            &log_path,
        )?;
        command.arg("-D").arg(&data_dir);
        let mut child =
            child_process::spawn_tied(command, libc::SIGQUIT).context("cannot start postgres")?;
        match wait_ready(&mut child, &data_dir, &log_path) {
            Ok(()) => {
                let info = Arc::new(ClusterInfo {
                    port,
                    base_dir: base_dir.to_owned(),
                    data_dir,
                    log_path,
                    certificates,
                    bin_dir: options.bin_dir.clone(),
                    major: install.major,
                    version: install.version.clone(),
                });
                return Ok(Cluster {
                    info,
                    postmaster: Mutex::new(Some(child)),
                    remove_on_drop: true,
                });
            }
            Err(e) => {
                stop_postmaster(&mut child);
                last_error = Some(e);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("postgres did not start")))
}

fn free_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = rand::random_range(55001..=64999u16);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free TCP port between 55001 and 64999")
}

fn write_settings(
    data_dir: &Path,
    port: u16,
    socket_dir: &Path,
    certificates: Option<&Certificates>,
    major: u32,
    options: &ClusterOptions,
) -> anyhow::Result<()> {
    let conf = data_dir.join("postgresql.conf");
    let original_path = data_dir.join("postgresql.conf.initdb");
    if !original_path.exists() {
        std::fs::copy(&conf, &original_path)?;
    }
    let mut text = std::fs::read_to_string(&original_path)?;
    text.push_str("\n# walflow test harness\n");
    let mut set = |name: &str, value: String| text.push_str(&format!("{name} = {value}\n"));
    set("listen_addresses", format!("'127.0.0.1,{WRONG_HOST},::1'"));
    set("port", port.to_string());
    set(
        "unix_socket_directories",
        format!("'{}'", socket_dir.display()),
    );
    set("wal_level", "logical".into());
    set("max_replication_slots", "64".into());
    set("max_wal_senders", "64".into());
    set("max_connections", "200".into());
    set("max_prepared_transactions", "16".into());
    if major >= 13 {
        set("logical_decoding_work_mem", "'64kB'".into());
    }
    set("fsync", "off".into());
    set("full_page_writes", "off".into());
    set("shared_buffers", "'32MB'".into());
    set("log_min_messages", "warning".into());
    set("log_line_prefix", "'%m [%p] %q%u@%d '".into());
    if let Some(certs) = certificates {
        set("ssl", "on".into());
        set(
            "ssl_cert_file",
            format!("'{}'", certs.server_cert.display()),
        );
        set("ssl_key_file", format!("'{}'", certs.server_key.display()));
    }
    for (name, value) in &options.settings {
        set(name, value.clone());
    }
    std::fs::write(&conf, text)?;
    Ok(())
}

fn pg_hba() -> String {
    let mut lines = vec![
        "# walflow test harness".to_string(),
        "local all postgres trust".into(),
    ];
    let addresses = ["127.0.0.0/8", "::1/128"];
    for address in addresses {
        for db in ["all", "replication"] {
            lines.push(format!(
                "hostssl {db} walflow_tls_only {address} scram-sha-256"
            ));
            lines.push(format!("hostnossl {db} walflow_tls_only {address} reject"));
        }
    }
    for user in TestUser::ALL
        .into_iter()
        .filter(|u| *u != TestUser::TlsOnly)
    {
        for kind in ["hostssl", "host"] {
            for db in ["all", "replication"] {
                for address in addresses {
                    lines.push(format!(
                        "{kind} {db} {} {address} {}",
                        user.name(),
                        user.method()
                    ));
                }
            }
        }
    }
    // Roles created by tests (e.g. from `walflow setup-sql`): md5 accepts md5- and
    // SCRAM-stored passwords alike.
    for db in ["all", "replication"] {
        for address in addresses {
            lines.push(format!("host {db} all {address} md5"));
        }
    }
    lines.join("\n") + "\n"
}

fn wait_ready(child: &mut Child, data_dir: &Path, log_path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let pid_file = data_dir.join("postmaster.pid");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            bail!(
                "postgres exited ({status}) before it was ready; log {}:\n{log}",
                log_path.display()
            );
        }
        // Line 8 of postmaster.pid is the postmaster's status; "ready" once it accepts
        // connections (the same check pg_ctl makes).
        if let Ok(text) = std::fs::read_to_string(&pid_file)
            && text
                .lines()
                .nth(7)
                .is_some_and(|l| matches!(l.trim(), "ready" | "standby"))
        {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "postgres was not ready after 60 s; log: {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Creates the login roles. Runs on its own thread and runtime, so it works from sync code and
/// from inside a test's runtime alike.
fn create_roles(cluster: &Cluster) -> anyhow::Result<()> {
    let conninfo = cluster.conninfo(TestUser::Superuser, "postgres");
    let pw = TEST_PASSWORD;
    let sql = format!(
        "CREATE ROLE walflow_trust LOGIN REPLICATION;
         SET password_encryption = 'md5';
         CREATE ROLE walflow_md5 LOGIN REPLICATION PASSWORD '{pw}';
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE walflow_scram LOGIN REPLICATION PASSWORD '{pw}';
         CREATE ROLE walflow_password LOGIN REPLICATION PASSWORD '{pw}';
         CREATE ROLE walflow_tls_only LOGIN REPLICATION PASSWORD '{pw}';"
    );
    let log = cluster.log_path.clone();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let client = connect(&conninfo).await?;
            client.batch_execute(&sql).await?;
            Ok::<_, tokio_postgres::Error>(())
        })?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("role setup thread panicked"))?
    .with_context(|| format!("cannot create the test roles (log: {})", log.display()))
}

/// Appends a line to the cluster's log (to mark where a test starts, for reading it later).
pub fn mark_log(info: &ClusterInfo, text: &str) {
    if let Ok(mut f) = OpenOptions::new().append(true).open(&info.log_path) {
        let _ = writeln!(f, "---- {text}");
    }
}
