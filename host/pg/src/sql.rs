//! Ordinary SQL connections (tokio-postgres) with the same options and TLS rules as the
//! replication connection, for `check`, snapshots, the type registry and the pipeline; and
//! [`ident`], [`qualified`], [`literal`] and [`replication_literal`], the one way walflow quotes
//! names and text into SQL.

pub use crate::quote::{ident, literal, qualified, replication_literal};

use std::error::Error as _;
use std::io;

use tokio_postgres::tls::MakeTlsConnect;

use super::dial::{Socket, dial};
use super::error::{ConnectError, ServerError};
use super::options::{ConnectOptions, SessionAttrs};
use super::tls::{self, MakeRustls};
use walflow_config::{SourceConfig, SslMode};

/// Opens an SQL connection to the source database and spawns its connection task.
pub async fn connect_sql(source: &SourceConfig) -> Result<tokio_postgres::Client, ConnectError> {
    let opts = ConnectOptions::from_source(source)?;
    connect_sql_with(&opts).await
}

/// Opens an SQL connection with resolved options: to the first of its hosts that accepts it
/// (and, with `target_session_attrs=read-write`, accepts writes), each on a socket from
/// [`dial`], so through the SSH tunnel when there is one (TCP keepalive is set there).
pub async fn connect_sql_with(
    opts: &ConnectOptions,
) -> Result<tokio_postgres::Client, ConnectError> {
    let mut last = None;
    for (host, port) in opts.hosts() {
        let one = opts.for_host(host, port);
        let client = match connect_one(&one).await {
            Ok(client) => client,
            Err(e) if e.is_retryable() => {
                last = Some(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if will_do(&client, opts.target_session_attrs)
            .await
            .map_err(|e| classify(&one, e))?
        {
            return Ok(client);
        }
        last = Some(ConnectError::Broken {
            addr: one.addr(),
            source: io::Error::other(
                "the server is read-only and target_session_attrs asks for read-write",
            ),
        });
    }
    Err(last.unwrap_or_else(|| io_error(opts, io::Error::other("no host to connect to"))))
}

/// Whether the server behind `client` is one `attrs` accepts.
async fn will_do(
    client: &tokio_postgres::Client,
    attrs: SessionAttrs,
) -> Result<bool, tokio_postgres::Error> {
    match attrs {
        SessionAttrs::Any => Ok(true),
        SessionAttrs::ReadWrite => {
            let row = client.query_one("SHOW transaction_read_only", &[]).await?;
            Ok(row.get::<_, String>(0) == "off")
        }
    }
}

/// Connects to `opts`' first host only.
async fn connect_one(opts: &ConnectOptions) -> Result<tokio_postgres::Client, ConnectError> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&opts.host)
        .port(opts.port)
        .user(&opts.user)
        .dbname(&opts.dbname)
        .application_name(&opts.application_name)
        .connect_timeout(opts.connect_timeout)
        .ssl_mode(match opts.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
    if let Some(p) = &opts.password {
        config.password(p);
    }
    let tls_config = tls::client_config(opts)?;
    let socket = dial(opts).await?;
    let result = match tls_config {
        None => config
            .connect_raw(socket, tokio_postgres::NoTls)
            .await
            .map(|(client, conn)| {
                spawn_connection(conn);
                client
            }),
        Some(tls_config) => {
            let tls = MakeTlsConnect::<Socket>::make_tls_connect(
                &mut MakeRustls::new(tls_config),
                &opts.host,
            )
            .map_err(|e| ConnectError::Tls {
                addr: opts.addr(),
                message: format!("{e}; give a host name or IP address in [source] url"),
            })?;
            config.connect_raw(socket, tls).await.map(|(client, conn)| {
                spawn_connection(conn);
                client
            })
        }
    };
    result.map_err(|e| classify(opts, e))
}

fn spawn_connection<F>(conn: F)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "sql connection ended with an error");
        }
    });
}

/// Classifies a tokio-postgres connect error like the replication connection's errors.
pub(crate) fn classify(opts: &ConnectOptions, e: tokio_postgres::Error) -> ConnectError {
    if let Some(db) = e.as_db_error() {
        let server = ServerError {
            severity: db.severity().to_string(),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
        };
        return server.into_connect_error(&opts.user, &opts.dbname);
    }
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io_err) = s.downcast_ref::<io::Error>() {
            if io_err
                .get_ref()
                .is_some_and(|i| i.downcast_ref::<rustls::Error>().is_some())
            {
                return tls_from_io(opts, io_err);
            }
            return io_error(opts, io::Error::new(io_err.kind(), io_err.to_string()));
        }
        if let Some(r) = s.downcast_ref::<rustls::Error>() {
            return tls::handshake_error(
                opts,
                io::Error::new(io::ErrorKind::InvalidData, r.clone()),
            );
        }
        source = s.source();
    }
    let text = e.to_string();
    if text.contains("password missing") {
        return ConnectError::PasswordMissing {
            user: opts.user.clone(),
        };
    }
    if text.contains("TLS") || text.contains("tls") {
        return ConnectError::Tls {
            addr: opts.addr(),
            message: format!(
                "{text}; the server does not offer TLS, so enable ssl on the server or use sslmode=prefer/disable"
            ),
        };
    }
    ConnectError::Broken {
        addr: opts.addr(),
        source: io::Error::other(text),
    }
}

fn tls_from_io(opts: &ConnectOptions, e: &io::Error) -> ConnectError {
    let r = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or(rustls::Error::General(e.to_string()));
    tls::handshake_error(opts, io::Error::new(io::ErrorKind::InvalidData, r))
}

/// Maps a socket error at connect time: refused/unreachable/timeouts vs a broken connection.
pub(crate) fn io_error(opts: &ConnectOptions, e: io::Error) -> ConnectError {
    use io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused | TimedOut | HostUnreachable | NetworkUnreachable | AddrNotAvailable
        | NotFound => ConnectError::Unreachable {
            addr: opts.addr(),
            source: e,
        },
        _ if e.to_string().contains("failed to lookup address") => ConnectError::Unreachable {
            addr: opts.addr(),
            source: e,
        },
        _ => ConnectError::Broken {
            addr: opts.addr(),
            source: e,
        },
    }
}
