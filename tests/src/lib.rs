//! Test harness: throwaway PostgreSQL clusters and helpers shared by the integration tests.
//!
//! Integration tests talk to real servers, never mocks. The usual shape of a test:
//!
//! ```no_run
//! # async fn example() {
//! use walflow_tests::{Cluster, TestUser};
//! let db = Cluster::shared().new_database().await;     // one server per test binary
//! let client = db.client().await;                       // superuser
//! client.batch_execute("CREATE TABLE t (id int primary key)").await.unwrap();
//! let config = db.config().user(TestUser::Scram).write().unwrap();
//! // walflow_tests::walflow!("check", "-c", &config.path).output(timeout) …
//! # }
//! ```
//!
//! - [`cluster`]: [`Cluster::shared`], [`Cluster::start`], [`TestDb`], the login roles.
//! - [`installs`]: the PostgreSQL 10–18 builds for version-matrix tests, and PostgreSQL 18's
//!   complete toolset ([`installs::pg18_full_bin`]).
//! - [`upgrade`]: `pg_upgrade` of a test cluster to PostgreSQL 18.
//! - [`config_file`]: `walflow.toml` files for a test database.
//! - [`walflow_command`]: running the program under test as a child ([`walflow!`]).
//! - [`wait`]: waiting on conditions with deadlines.
//! - [`debezium`]: real Debezium (embedded engine) as a peer, for the envelope equality tests.
//! - [`ports`]: [`free_port`], a loopback port nothing listens on.
//! - [`http`]: a minimal HTTP client for walflow's own listeners.
//! - [`browser`]: headless Chromium, for the pages walflow serves.
//! - [`plugins`]: the plugins of `plugins/`, built once.
//! - [`black_hole`]: dropping a server's packets with nftables, for silent link failures.
//! - [`ssh_host`]: a real sshd as an SSH host, and a network namespace that reaches the
//!   database only through it.

pub mod black_hole;
pub mod browser;
pub mod certificates;
pub mod child_process;
pub mod cluster;
pub mod config_file;
pub mod debezium;
pub mod http;
pub mod installs;
pub mod plugins;
pub mod ports;
pub mod replay;
pub mod slot;
pub mod ssh_host;
pub mod upgrade;
pub mod wait;
pub mod walflow_command;

pub use black_hole::BlackHole;
pub use cluster::{
    Cluster, ClusterInfo, ClusterOptions, PASSWORD_ENV, TEST_PASSWORD, TestDb, TestUser, WRONG_HOST,
};
pub use config_file::{ConfigBuilder, ConfigFile};
pub use installs::{PgInstall, pg_installs};
pub use ports::free_port;
pub use wait::{wait_for, wait_for_async, wait_until};
pub use walflow_command::{WalflowChild, WalflowCommand, WalflowOutput};
