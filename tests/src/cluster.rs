//! Throwaway PostgreSQL clusters for integration tests.
//!
//! The server mechanics — finding the binaries, initdb as the `postgres` OS user when we are
//! root, a free port above 55000, start, stop, crash, removal, a server that dies with the test
//! process — are `walflow-local-postgres`'s, shared with `walflow demo`. What is the tests' own
//! is here: logical replication settings, TLS from a throwaway CA, one login role per
//! authentication method, and a database per test. Tests never share state through a
//! database: each asks for its own with [`ClusterInfo::new_database`].
//!
//! [`Cluster::shared`] is the one server of a test binary. It is never dropped (it lives in a
//! static); the kernel stops it when the test process ends, even on abort or SIGKILL. Clusters
//! from [`Cluster::start`] are stopped and removed when dropped.

use std::fs::OpenOptions;
use std::io::Write;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use walflow_local_postgres::{Install, LocalPostgres, Options, Shutdown};

use crate::certificates::{self, Certificates};
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
    server: LocalPostgres,
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
        let cluster = match Cluster::start(ClusterOptions::default()) {
            Ok(cluster) => cluster,
            Err(e) => panic!("cannot start the shared test cluster: {e:#}"),
        };
        SHARED.get_or_init(|| cluster)
    }

    /// Starts a new cluster; it is stopped and its directory removed when dropped.
    pub fn start(options: ClusterOptions) -> anyhow::Result<Cluster> {
        let install = Install::in_dir(&options.bin_dir).context(installs::INSTALL_HINT)?;
        let mut server_options = Options::new(install.clone());
        for (name, value) in harness_settings(install.major(), options.tls) {
            server_options = server_options.setting(name, &value);
        }
        for (name, value) in &options.settings {
            server_options = server_options.setting(name, value);
        }
        let server = LocalPostgres::init(server_options)?;
        let certificates = if options.tls {
            certificates::generate(&server.data_dir().join(TLS_DIR))?;
            Some(Certificates::at(&server.data_dir().join(TLS_DIR)))
        } else {
            None
        };
        std::fs::write(server.data_dir().join("pg_hba.conf"), pg_hba())?;
        server.start()?;
        let cluster = Cluster::new(server, certificates);
        create_roles(&cluster)?;
        Ok(cluster)
    }

    /// Starts a hot standby (read replica) of `primary`, streaming from it (`pg_basebackup -R`),
    /// with the same server binaries, configuration, roles and certificates. Stopped and removed
    /// when dropped.
    pub fn start_standby(primary: &ClusterInfo) -> anyhow::Result<Cluster> {
        let install =
            Install::in_dir(primary.bin_dir()).context("the primary's server binaries are gone")?;
        let server = LocalPostgres::init(Options::new(install).replica_of(primary.port()))?;
        server.start()?;
        let certificates = primary
            .certificates
            .as_ref()
            .map(|_| Certificates::at(&server.data_dir().join(TLS_DIR)));
        Ok(Cluster::new(server, certificates))
    }

    fn new(server: LocalPostgres, certificates: Option<Certificates>) -> Cluster {
        let install = server.install();
        let info = Arc::new(ClusterInfo {
            port: server.port(),
            data_dir: server.data_dir().to_owned(),
            log_path: server.log_path().to_owned(),
            certificates,
            bin_dir: install.bin_dir().to_owned(),
            major: install.major(),
            version: install.version().to_owned(),
        });
        Cluster { info, server }
    }

    /// Crashes the server (an immediate shutdown: SIGQUIT to the postmaster, no checkpoint,
    /// crash recovery at the next start), keeps it down for `down_for`, then starts it again
    /// on the same port and data directory.
    pub fn crash_and_restart(&self, down_for: Duration) -> anyhow::Result<()> {
        self.server.stop(Shutdown::Immediate);
        std::thread::sleep(down_for);
        self.start_again()
    }

    /// Starts a server [`stop`](Self::stop)ped before again, on the same port and data
    /// directory (to test what walflow does while its database is away).
    pub fn start_again(&self) -> anyhow::Result<()> {
        self.server.start()
    }

    /// Stops the server now (fast shutdown), waiting up to 30 s.
    pub fn stop(&self) {
        self.server.stop(Shutdown::Fast);
    }
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

/// Where a cluster's certificates are, relative to its data directory (PostgreSQL reads
/// relative `ssl_*_file` paths from there; a standby's base backup copies them along).
const TLS_DIR: &str = "tls";

/// The harness's `postgresql.conf` settings; [`ClusterOptions::settings`] come after them.
fn harness_settings(major: u32, tls: bool) -> Vec<(&'static str, String)> {
    let mut settings: Vec<(&'static str, String)> = vec![
        ("listen_addresses", format!("'127.0.0.1,{WRONG_HOST},::1'")),
        ("wal_level", "logical".into()),
        ("max_replication_slots", "64".into()),
        ("max_wal_senders", "64".into()),
        ("max_connections", "200".into()),
        ("max_prepared_transactions", "16".into()),
        ("fsync", "off".into()),
        ("full_page_writes", "off".into()),
        ("shared_buffers", "'32MB'".into()),
        ("log_min_messages", "warning".into()),
        ("log_line_prefix", "'%m [%p] %q%u@%d '".into()),
    ];
    if major >= 13 {
        settings.push(("logical_decoding_work_mem", "'64kB'".into()));
    }
    if tls {
        let certs = Certificates::at(Path::new(TLS_DIR));
        settings.push(("ssl", "on".into()));
        settings.push((
            "ssl_cert_file",
            format!("'{}'", certs.server_cert.display()),
        ));
        settings.push(("ssl_key_file", format!("'{}'", certs.server_key.display())));
    }
    settings
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
