//! The replication connection: our own, on postgres-protocol's message codecs over a tokio TCP
//! or TLS stream, because tokio-postgres cannot stream replication (CopyBoth).
//!
//! - [`options`]: connection options from `[source]` (URL, password from the environment).
//! - [`tls`]: rustls for every sslmode, shared with ordinary SQL connections.
//! - [`sql`]: [`connect_sql`], ordinary tokio-postgres connections with the same rules.
//! - [`error`]: [`ConnectError`], classified into retryable and fatal.

pub mod error;
pub mod options;
pub mod sql;
pub mod tls;

pub use error::{ConnectError, ServerError};
pub use options::ConnectOptions;
pub use sql::connect_sql;
