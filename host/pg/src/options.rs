//! Connection options resolved from `[source]`: the `postgres://` URL (host, port, user,
//! database, query parameters such as `sslmode`), the password from the environment variable
//! named by `password_env`, and the TLS settings.
//!
//! The URL's query parameters win over the config's fields for the same setting, as libpq's do
//! over defaults, so a URL copied from elsewhere behaves as it did there.

use std::path::PathBuf;
use std::time::Duration;

use super::error::ConnectError;
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

    /// `host:port` for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
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
    let (host, port) = split_host_port(hostport)?;
    let mut options = ConnectOptions {
        host,
        port,
        user,
        dbname: decode(path)?,
        password,
        sslmode: SslMode::Prefer,
        sslrootcert: None,
        sslrootcert_pem: None,
        application_name: "walflow".into(),
        connect_timeout: Duration::from_secs(10),
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
            other => {
                return Err(bad(format!(
                    "[source] url has the unknown parameter `{other}`; supported: sslmode, sslrootcert, application_name, connect_timeout, user, dbname, host, port"
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
