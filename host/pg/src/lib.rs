//! The PostgreSQL connection walflow talks through: our own replication connection on
//! postgres-protocol's message codecs over TCP or an SSH tunnel channel, with or without TLS
//! (tokio-postgres cannot stream replication, CopyBoth), ordinary SQL connections with the same TLS and auth rules,
//! and the catalog and replication commands built on them. Nothing here knows about events,
//! snapshots or sinks (see `docs/architecture.md`).
//!
//! - [`backoff`]: the one retry policy (exponential with jitter, optional limit).
//! - [`options`]: connection options from `[source]` (URL, password from the environment).
//! - [`tls`]: rustls for every sslmode, shared with ordinary SQL connections.
//! - [`sql`]: [`connect_sql`], ordinary tokio-postgres connections with the same rules, and
//!   [`sql::ident`]/[`sql::literal`], the one place names and text are quoted into SQL.
//! - [`error`]: [`ConnectError`], classified into retryable and fatal.
//! - [`dial`]: the one place a connection to PostgreSQL is opened: TCP, or a channel of
//!   [`ssh`], the `[source.ssh]` tunnel (one SSH session per source, reopened when it dies).
//! - [`socket`]: TCP keepalive and user timeout on every socket to PostgreSQL.
//! - [`link`]: [`Link`], whether the connection is up (for `/health`), and the startup wait.
//! - [`silence`]: the stream's receive timeout.
//! - [`conn`]: startup, authentication, simple queries and COPY framing.
//! - [`lsn`]: WAL positions as text.
//! - [`commands`]: IDENTIFY_SYSTEM, slots, publications, START_REPLICATION.
//! - [`slot_health`]: how a slot stands on the server (retained WAL, `safe_wal_size`,
//!   `wal_status`, why it was invalidated).
//! - [`stream`]: [`WalStream`], the replication stream on the wire: frames, keepalives,
//!   status updates, the receive timeout and reconnects.
//! - [`setup_sql`]: the setup script `walflow setup-sql` prints.

pub mod backoff;
pub mod commands;
pub mod conn;
pub mod dial;
pub mod error;
pub mod link;
pub mod lsn;
pub mod options;
pub mod quote;
pub mod setup_sql;
pub mod silence;
pub mod slot_health;
pub mod socket;
pub mod sql;
pub mod ssh;
pub mod stream;
pub mod tls;

pub use commands::{PublicationAction, PublicationError, SlotInfo, SlotSnapshot, SystemIdentity};
pub use conn::Connection;
pub use error::{ConnectError, ServerError};
pub use link::{Link, LinkState, wait_until_reachable};
pub use options::ConnectOptions;
pub use sql::connect_sql;
pub use ssh::SshError;
pub use stream::{WalControl, WalEvent, WalOptions, WalStream};
