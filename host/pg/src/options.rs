//! Connection options resolved from `[source]`: the `postgres://` URL (host, port, user,
//! database, query parameters such as `sslmode`), the password from the environment variable
//! named by `password_env`, and the TLS settings.
//!
//! The URL's query parameters win over the config's fields for the same setting, as libpq's do
//! over defaults, so a URL copied from elsewhere behaves as it did there.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::error::ConnectError;
use super::ssh::{self, Tunnel};
use walflow_config::{SourceConfig, SslMode};

/// Everything needed to open a connection.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Database name.
    pub dbname: String,
    /// The password, when one is configured.
    pub password: Option<String>,
    /// TLS mode.
    pub sslmode: SslMode,
    /// PEM root certificates for verify-ca / verify-full.
    pub sslrootcert: Option<PathBuf>,
    /// The same as PEM text, given inline (wins over `sslrootcert`).
    pub sslrootcert_pem: Option<String>,
    /// `application_name` shown in `pg_stat_activity`.
    pub application_name: String,
    /// How long to wait for TCP connect and the TLS handshake.
    pub connect_timeout: Duration,
    /// Logical slots this connection creates are failover slots (`[source] failover`,
    /// PostgreSQL 17+).
    pub slot_failover: bool,
    /// The further hosts of a multi-host URL (`postgres://u@h1:5432,h2:5432/db`), tried in
    /// order after `host:port`, as libpq does.
    pub other_hosts: Vec<(String, u16)>,
    /// `target_session_attrs`: which of the hosts will do.
    pub target_session_attrs: SessionAttrs,
    /// The SSH tunnel every connection goes through (`[source.ssh]`); `host` and `port` are
    /// then as the SSH host sees them.
    pub tunnel: Option<Arc<Tunnel>>,
}

/// Which server of a multi-host URL a connection settles on (`target_session_attrs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAttrs {
    /// The first that accepts the connection.
    #[default]
    Any,
    /// The first that accepts writes (`transaction_read_only` off): after a failover, the
    /// promoted standby rather than a stale primary that came back.
    ReadWrite,
}

impl ConnectOptions {
    /// Every host to try, in order: `host:port` first.
    pub fn hosts(&self) -> impl Iterator<Item = (&str, u16)> {
        std::iter::once((self.host.as_str(), self.port))
            .chain(self.other_hosts.iter().map(|(h, p)| (h.as_str(), *p)))
    }

    /// The same hosts with `host:port` tried first (the one a connection settled on, so a
    /// reconnect tries it again before the others).
    pub fn preferring(&self, host: &str, port: u16) -> ConnectOptions {
        let others = self
            .hosts()
            .filter(|&(h, p)| (h, p) != (host, port))
            .map(|(h, p)| (h.to_string(), p))
            .collect();
        ConnectOptions {
            host: host.to_string(),
            port,
            other_hosts: others,
            ..self.clone()
        }
    }

    /// These options for one of the [`hosts`](Self::hosts) alone.
    pub fn for_host(&self, host: &str, port: u16) -> ConnectOptions {
        ConnectOptions {
            host: host.to_string(),
            port,
            other_hosts: Vec::new(),
            ..self.clone()
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("tunnel", &self.tunnel)
            .finish()
    }
}

impl ConnectOptions {
    /// Resolves the options of `source`, reading the password from the environment.
    pub fn from_source(source: &SourceConfig) -> Result<ConnectOptions, ConnectError> {
        let mut opts = parse_url(&source.url)?;
        if !opts.sslmode_from_url {
            opts.options.sslmode = source.sslmode;
        }
        if opts.options.sslrootcert.is_none() {
            opts.options.sslrootcert = source.sslrootcert.clone();
        }
        opts.options.sslrootcert_pem = source.sslrootcert_pem.clone();
        opts.options.slot_failover = source.failover;
        opts.options.tunnel = source.ssh.as_ref().map(ssh::tunnel);
        if let Some(var) = &source.password_env {
            match std::env::var(var) {
                Ok(p) => opts.options.password = Some(p),
                Err(_) => {
                    return Err(ConnectError::Options(format!(
                        "password_env names the environment variable `{var}`, which is not set; export it with the password"
                    )));
                }
            }
        }
        Ok(opts.options)
    }

    /// `host:port` for messages (`host:port via SSH host:port` through a tunnel).
    pub fn addr(&self) -> String {
        let addr = if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        };
        match &self.tunnel {
            Some(tunnel) => format!("{addr} via SSH host {}", tunnel.addr()),
            None => addr,
        }
    }
}

struct Parsed {
    options: ConnectOptions,
    sslmode_from_url: bool,
}

fn bad(msg: impl Into<String>) -> ConnectError {
    ConnectError::Options(msg.into())
}

/// Parses `postgres://user[:password]@host[:port]/dbname[?key=value&…]`.
fn parse_url(url: &str) -> Result<Parsed, ConnectError> {
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| {
            bad(format!(
                "[source] url `{}` must start with postgres:// (e.g. postgres://user@host:5432/db)",
                walflow_config::redact::url(url)
            ))
        })?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, password) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((u, p)) => (decode(u)?, Some(decode(p)?)),
            None => (decode(u)?, None),
        },
        None => (String::new(), None),
    };
    let mut hosts = hostport
        .split(',')
        .map(split_host_port)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter();
    let (host, port) = hosts.next().unwrap_or_else(|| ("localhost".into(), 5432));
    let mut options = ConnectOptions {
        host,
        port,
        other_hosts: hosts.collect(),
        target_session_attrs: SessionAttrs::Any,
        user,
        dbname: decode(path)?,
        password,
        sslmode: SslMode::Prefer,
        sslrootcert: None,
        sslrootcert_pem: None,
        application_name: "walflow".into(),
        connect_timeout: Duration::from_secs(10),
        slot_failover: false,
        tunnel: None,
    };
    let mut sslmode_from_url = false;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = decode(v)?;
        match k {
            "sslmode" => {
                options.sslmode = parse_sslmode(&v)?;
                sslmode_from_url = true;
            }
            "sslrootcert" => options.sslrootcert = Some(PathBuf::from(v)),
            "application_name" => options.application_name = v,
            "connect_timeout" => {
                let secs: u64 = v.parse().map_err(|_| {
                    bad(format!("connect_timeout `{v}` is not a number of seconds"))
                })?;
                options.connect_timeout = Duration::from_secs(secs.max(1));
            }
            "user" => options.user = v,
            "dbname" => options.dbname = v,
            "host" => options.host = v,
            "port" => {
                options.port = v
                    .parse()
                    .map_err(|_| bad(format!("port `{v}` in [source] url is not a port number")))?
            }
            "password" => options.password = Some(v),
            "target_session_attrs" => {
                options.target_session_attrs = match v.as_str() {
                    "any" => SessionAttrs::Any,
                    "read-write" | "primary" => SessionAttrs::ReadWrite,
                    other => {
                        return Err(bad(format!(
                            "target_session_attrs `{other}` is not supported; use any or read-write"
                        )));
                    }
                }
            }
            other => {
                return Err(bad(format!(
                    "[source] url has the unknown parameter `{other}`; supported: sslmode, sslrootcert, application_name, connect_timeout, user, dbname, host, port, target_session_attrs"
                )));
            }
        }
    }
    if options.host.starts_with('/') {
        return Err(bad(
            "unix-domain sockets are not supported; give a TCP host (e.g. 127.0.0.1) in [source] url",
        ));
    }
    if options.user.is_empty() {
        options.user = std::env::var("USER").unwrap_or_else(|_| "postgres".into());
    }
    if options.dbname.is_empty() {
        options.dbname = options.user.clone();
    }
    Ok(Parsed {
        options,
        sslmode_from_url,
    })
}

fn split_host_port(hostport: &str) -> Result<(String, u16), ConnectError> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| bad(format!("unclosed `[` in host `{hostport}`")))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        None | Some("") => 5432,
        Some(p) => p
            .parse()
            .map_err(|_| bad(format!("port `{p}` in [source] url is not a port number")))?,
    };
    let host = if host.is_empty() {
        "localhost".to_string()
    } else {
        decode(&host)?
    };
    Ok((host, port))
}

/// Parses a libpq sslmode name.
pub fn parse_sslmode(s: &str) -> Result<SslMode, ConnectError> {
    Ok(match s {
        "disable" => SslMode::Disable,
        "allow" | "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        other => {
            return Err(bad(format!(
                "sslmode `{other}` is unknown; use disable, prefer, require, verify-ca or verify-full"
            )));
        }
    })
}

/// Percent-decodes a URL component.
fn decode(s: &str) -> Result<String, ConnectError> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("bad percent-escape in `{s}`")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("`{s}` is not UTF-8 once percent-decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(url: &str) -> SourceConfig {
        SourceConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn full_url() {
        let o = ConnectOptions::from_source(&source(
            "postgres://walflow%40x@db.example.com:6543/app?sslmode=verify-full&application_name=t",
        ))
        .unwrap();
        assert_eq!(o.user, "walflow@x");
        assert_eq!(o.host, "db.example.com");
        assert_eq!(o.port, 6543);
        assert_eq!(o.dbname, "app");
        assert_eq!(o.sslmode, SslMode::VerifyFull);
        assert_eq!(o.application_name, "t");
    }

    #[test]
    fn multi_host_urls_list_every_host_in_order() {
        let o = ConnectOptions::from_source(&source(
            "postgres://u@a:5433,b,[::1]:5435/app?target_session_attrs=read-write",
        ))
        .unwrap();
        let hosts: Vec<_> = o.hosts().collect();
        assert_eq!(hosts, vec![("a", 5433), ("b", 5432), ("::1", 5435)]);
        assert_eq!(o.target_session_attrs, SessionAttrs::ReadWrite);
        let one = o.for_host("b", 5432);
        assert_eq!(one.hosts().count(), 1);
        let settled = o.preferring("b", 5432);
        let hosts: Vec<_> = settled.hosts().collect();
        assert_eq!(hosts, vec![("b", 5432), ("a", 5433), ("::1", 5435)]);
        let e =
            ConnectOptions::from_source(&source("postgres://u@a/db?target_session_attrs=standby"))
                .err()
                .unwrap()
                .to_string();
        assert!(e.contains("use any or read-write"), "{e}");
    }

    #[test]
    fn defaults_and_ipv6() {
        let o = ConnectOptions::from_source(&source("postgresql://u@[::1]/")).unwrap();
        assert_eq!(o.host, "::1");
        assert_eq!(o.port, 5432);
        assert_eq!(o.dbname, "u");
        assert_eq!(o.addr(), "[::1]:5432");
    }

    #[test]
    fn config_sslmode_applies_unless_url_sets_it() {
        let mut s = source("postgres://u@h/db");
        s.sslmode = SslMode::Require;
        assert_eq!(
            ConnectOptions::from_source(&s).unwrap().sslmode,
            SslMode::Require
        );
        s.url = "postgres://u@h/db?sslmode=disable".into();
        assert_eq!(
            ConnectOptions::from_source(&s).unwrap().sslmode,
            SslMode::Disable
        );
    }

    #[test]
    fn bad_input_says_what_to_do() {
        let e = ConnectOptions::from_source(&source("mysql://h/db")).unwrap_err();
        assert!(e.to_string().contains("must start with postgres://"), "{e}");
        let e =
            ConnectOptions::from_source(&source("postgres://u@h/db?sslmode=maybe")).unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        let mut s = source("postgres://u@h/db");
        s.password_env = Some("WALFLOW_TEST_SURELY_UNSET_VAR".into());
        let e = ConnectOptions::from_source(&s).unwrap_err();
        assert!(
            e.to_string().contains("WALFLOW_TEST_SURELY_UNSET_VAR"),
            "{e}"
        );
    }
}
