//! Errors of connecting to PostgreSQL and of replicating from it, classified by what the caller
//! should do: retry later (the network or the server is temporarily unavailable) or stop and fix
//! something (credentials, privileges, configuration, a broken slot history).
//!
//! Every message is one sentence saying what is wrong and what to do about it.

use std::io;

/// Why a connection to PostgreSQL could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection options are malformed.
    #[error("invalid connection settings: {0}")]
    Options(String),
    /// Nothing answered at the address.
    #[error(
        "cannot reach PostgreSQL at {addr} ({source}); check the host and port in [source] url and that the server is running and reachable"
    )]
    Unreachable {
        /// `host:port`
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// The connection broke during startup or a command.
    #[error("the connection to PostgreSQL at {addr} broke ({source}); it will be retried")]
    Broken {
        /// `host:port`
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// The server has no free connection slots.
    #[error(
        "PostgreSQL refused the connection because it has too many clients ({0}); it will be retried, or raise max_connections / max_wal_senders"
    )]
    TooManyConnections(String),
    /// The server is starting up, shutting down or in recovery.
    #[error("PostgreSQL is not accepting connections right now ({0}); it will be retried")]
    ServerUnavailable(String),
    /// Password or authentication rule rejected.
    #[error(
        "PostgreSQL rejected the login of user \"{user}\" ({message}); check the user, the password in the environment variable named by password_env, and pg_hba.conf"
    )]
    AuthFailed {
        /// The user.
        user: String,
        /// The server's message.
        message: String,
    },
    /// The server asked for a password but none is configured.
    #[error(
        "PostgreSQL asks for a password for user \"{user}\" but none is set; set password_env (or --password-env) to the name of an environment variable holding it"
    )]
    PasswordMissing {
        /// The user.
        user: String,
    },
    /// The server asks for an authentication method walflow does not implement.
    #[error(
        "PostgreSQL asks for {0} authentication, which walflow does not support; allow trust, password, md5 or scram-sha-256 for this user in pg_hba.conf"
    )]
    UnsupportedAuth(String),
    /// The database does not exist.
    #[error("database \"{0}\" does not exist; fix the database name in [source] url")]
    NoSuchDatabase(String),
    /// The user may not open a replication connection.
    #[error(
        "user \"{user}\" may not replicate ({message}); run `ALTER ROLE {role} WITH REPLICATION;` (on RDS/Aurora: `GRANT rds_replication TO {role};`) and allow a `replication` line for it in pg_hba.conf",
        role = crate::quote::ident(.user)
    )]
    NoReplicationPrivilege {
        /// The user.
        user: String,
        /// The server's message.
        message: String,
    },
    /// TLS could not be established or the server's certificate failed verification.
    #[error("TLS with PostgreSQL at {addr} failed: {message}")]
    Tls {
        /// `host:port`
        addr: String,
        /// What failed and what to do.
        message: String,
    },
    /// Any other error reported by the server.
    #[error("PostgreSQL reported {severity} {code}: {message}{hint}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// ERROR, FATAL, PANIC.
        severity: String,
        /// The primary message.
        message: String,
        /// `; hint: …` or empty.
        hint: String,
    },
    /// The SSH tunnel of `[source.ssh]` could not carry the connection.
    #[error(transparent)]
    Ssh(#[from] crate::ssh::SshError),
    /// The server sent something that breaks the protocol.
    #[error(
        "PostgreSQL sent an unexpected message: {0}; this is a bug in walflow or a proxy in between"
    )]
    Protocol(String),
}

impl ConnectError {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. }
            | ConnectError::Broken { .. }
            | ConnectError::TooManyConnections(_)
            | ConnectError::ServerUnavailable(_) => true,
            ConnectError::Server { code, .. } => retryable_sqlstate(code),
            ConnectError::Ssh(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// The SQLSTATE, when the server reported the error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            ConnectError::Server { code, .. } => Some(code),
            ConnectError::TooManyConnections(_) => Some("53300"),
            _ => None,
        }
    }
}

/// Connection-class, resource and operator-intervention SQLSTATEs clear up by themselves.
pub(crate) fn retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55006"
        )
}

/// An error report from the server, before it is classified.
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    /// ERROR, FATAL, PANIC.
    pub severity: String,
    /// SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional detail.
    pub detail: Option<String>,
    /// Optional hint.
    pub hint: Option<String>,
}

impl ServerError {
    /// Reads the fields of an `ErrorResponse`/`NoticeResponse`.
    pub(crate) fn from_fields(
        mut fields: postgres_protocol::message::backend::ErrorFields<'_>,
    ) -> ServerError {
        use fallible_iterator::FallibleIterator;
        let mut e = ServerError::default();
        while let Ok(Some(f)) = fields.next() {
            let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
            match f.type_() {
                b'V' => e.severity = v,
                b'S' if e.severity.is_empty() => e.severity = v,
                b'C' => e.code = v,
                b'M' => e.message = v,
                b'D' => e.detail = Some(v),
                b'H' => e.hint = Some(v),
                _ => {}
            }
        }
        e
    }

    /// Classifies an error received while logging in as `user` into `database`.
    pub(crate) fn into_connect_error(self, user: &str, database: &str) -> ConnectError {
        match self.code.as_str() {
            "28P01" | "28000" if self.message.contains("replication") => {
                ConnectError::NoReplicationPrivilege {
                    user: user.to_owned(),
                    message: self.message,
                }
            }
            "28P01" | "28000" => ConnectError::AuthFailed {
                user: user.to_owned(),
                message: self.message,
            },
            "3D000" => ConnectError::NoSuchDatabase(database.to_owned()),
            "42501"
                if self.message.contains("replication")
                    || self.message.contains("walsender")
                    || self.message.contains("WAL sender") =>
            {
                ConnectError::NoReplicationPrivilege {
                    user: user.to_owned(),
                    message: self.message,
                }
            }
            "53300" => ConnectError::TooManyConnections(self.message),
            "57P03" | "57P01" | "57P02" => ConnectError::ServerUnavailable(self.message),
            _ => self.into_generic(),
        }
    }

    /// The error as a [`ConnectError::Server`].
    pub fn into_generic(self) -> ConnectError {
        let mut hint = String::new();
        if let Some(d) = &self.detail {
            hint.push_str("; detail: ");
            hint.push_str(d);
        }
        if let Some(h) = &self.hint {
            hint.push_str("; hint: ");
            hint.push_str(h);
        }
        ConnectError::Server {
            code: self.code,
            severity: self.severity,
            message: self.message,
            hint,
        }
    }
}
