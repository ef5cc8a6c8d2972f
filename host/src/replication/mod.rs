//! The replication connection: our own, on postgres-protocol's message codecs over a tokio TCP
//! or TLS stream, because tokio-postgres cannot stream replication (CopyBoth).
//!
//! - [`options`]: connection options from `[source]` (URL, password from the environment).
//! - [`tls`]: rustls for every sslmode, shared with ordinary SQL connections.
//! - [`sql`]: [`connect_sql`], ordinary tokio-postgres connections with the same rules.
//! - [`error`]: [`ConnectError`], classified into retryable and fatal.
//! - [`socket`]: TCP keepalive and user timeout on every socket to PostgreSQL.
//! - [`link`]: [`Link`], whether the connection is up (for `/health`), and the startup wait.
//! - [`silence`]: the stream's receive timeout.
//! - [`conn`]: startup, authentication, simple queries and CopyBoth framing.
//! - [`commands`]: IDENTIFY_SYSTEM, slots, publications, START_REPLICATION.
//! - [`continuity`]: the check at every start that the slot continues the checkpoint.
//! - [`holds`]: [`PreparedHolds`], how far two-phase transactions let a slot be confirmed.
//! - [`stream`]: [`ReplicationStream`], committed transactions with feedback and reconnects.
//! - [`tail`]: the `walflow tail` command.

pub mod commands;
pub mod conn;
pub mod continuity;
pub mod error;
pub mod holds;
pub mod link;
pub mod options;
pub mod silence;
pub mod socket;
pub mod sql;
pub mod stream;
pub mod tail;
pub mod tls;

pub use commands::{PublicationAction, PublicationError, SlotInfo, SlotSnapshot, SystemIdentity};
pub use conn::{Connection, CopyMessage};
pub use continuity::{ContinuityError, Verified};
pub use error::{ConnectError, ServerError};
pub use holds::PreparedHolds;
pub use link::{Link, LinkState, wait_until_reachable};
pub use options::ConnectOptions;
pub use sql::connect_sql;
pub use stream::{ReplicationStream, StreamError, StreamItem, StreamOptions};
