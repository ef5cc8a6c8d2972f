//! Outbound HTTP, the capability a sink plugin can be granted: the host performs the request
//! only when the URL's host (and port, when the entry names one) is on the plugin's allow list,
//! with a timeout and a cap on the response size. Everything else — another host, a malformed
//! URL, a plugin without a grant — is an error string to the guest, and no connection is made.
//!
//! Plugin calls run on blocking threads, so the request is driven to completion there with the
//! runtime's handle (or, outside any runtime, a small one of its own).

use std::sync::Arc;
use std::time::Duration;

use super::bindings::walflow::plugin::outbound_http::{Request, Response};
use walflow_core::error::chain as error_chain;

/// Largest response body handed to a plugin.
const MAX_RESPONSE: usize = 16 * 1024 * 1024;

/// One entry of `allow_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    host: String,
    port: Option<u16>,
}

/// What a sink plugin may reach.
#[derive(Debug)]
pub struct HttpGrant {
    allow: Vec<AllowedHost>,
    timeout: Duration,
    client: reqwest::Client,
    own_runtime: std::sync::OnceLock<tokio::runtime::Runtime>,
}

impl HttpGrant {
    /// A grant for `allow_hosts` entries (`host` or `host:port`), each request bounded by
    /// `timeout`. `Err` names the first malformed entry.
    pub fn new(allow_hosts: &[String], timeout: Duration) -> Result<Arc<HttpGrant>, String> {
        let allow = allow_hosts
            .iter()
            .map(|e| parse_entry(e))
            .collect::<Result<Vec<_>, _>>()?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect could lead anywhere: the plugin sees the 3xx and decides.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(Arc::new(HttpGrant {
            allow,
            timeout,
            client,
            own_runtime: std::sync::OnceLock::new(),
        }))
    }

    /// Whether `url` may be requested; `Err` says why not.
    fn check(&self, url: &reqwest::Url) -> Result<(), String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "scheme {} is not allowed; use http or https",
                url.scheme()
            ));
        }
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let port = url.port_or_known_default();
        let allowed = self
            .allow
            .iter()
            .any(|a| a.host == host && a.port.is_none_or(|p| Some(p) == port));
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "host {host}{} is not in this sink's allow_hosts; add it there to let the plugin reach it",
                port.map(|p| format!(":{p}")).unwrap_or_default()
            ))
        }
    }

    pub(crate) fn send(&self, request: Request) -> Result<Response, String> {
        let url = reqwest::Url::parse(&request.url)
            .map_err(|e| format!("malformed URL {:?}: {e}", request.url))?;
        self.check(&url)?;
        let method = reqwest::Method::from_bytes(request.method.as_bytes())
            .map_err(|_| format!("malformed method {:?}", request.method))?;
        let mut builder = self.client.request(method, url).body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let timeout = self.timeout;
        let exchange = async move {
            let response = builder.send().await.map_err(|e| error_chain(&e))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = response.bytes().await.map_err(|e| error_chain(&e))?;
            if body.len() > MAX_RESPONSE {
                return Err(format!(
                    "the response body is larger than {MAX_RESPONSE} bytes"
                ));
            }
            Ok(Response {
                status,
                headers,
                body: body.to_vec(),
            })
        };
        let bounded = async move {
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle.block_on(bounded),
            Err(_) => self.runtime()?.block_on(bounded),
        }
    }

    fn runtime(&self) -> Result<&tokio::runtime::Runtime, String> {
        if let Some(rt) = self.own_runtime.get() {
            return Ok(rt);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start an HTTP runtime: {e}"))?;
        Ok(self.own_runtime.get_or_init(|| rt))
    }
}

/// `host` or `host:port`: no scheme, path, user or spaces.
fn parse_entry(entry: &str) -> Result<AllowedHost, String> {
    let bad = |why: &str| {
        Err(format!(
            "allow_hosts entry {entry:?} {why}; write a host name or address, optionally with :port (e.g. \"hooks.example.com\" or \"127.0.0.1:8080\")"
        ))
    };
    let e = entry.trim();
    if e.is_empty() {
        return bad("is empty");
    }
    if e.contains("://") || e.contains('/') || e.contains('@') || e.contains(char::is_whitespace) {
        return bad("is not a bare host");
    }
    let (host, port) = match e.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(port) if port > 0 => (h, Some(port)),
            _ => return bad("has an invalid port"),
        },
        _ => (e, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return bad("has no valid host");
    }
    Ok(AllowedHost {
        host: host.to_ascii_lowercase(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_entries_parse_or_say_why_not() {
        assert_eq!(
            parse_entry("Hooks.Example.com").unwrap(),
            AllowedHost {
                host: "hooks.example.com".into(),
                port: None
            }
        );
        assert_eq!(parse_entry("127.0.0.1:8080").unwrap().port, Some(8080));
        assert_eq!(parse_entry("[::1]:80").unwrap().host, "::1");
        for bad in ["", "http://x", "x/y", "x:0", "x:http", "a b", "user@x"] {
            assert!(parse_entry(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn only_listed_hosts_and_ports_pass() {
        let grant = HttpGrant::new(
            &["hooks.example.com".into(), "127.0.0.1:8080".into()],
            Duration::from_secs(1),
        )
        .unwrap();
        let ok = |u: &str| grant.check(&reqwest::Url::parse(u).unwrap()).is_ok();
        assert!(ok("https://hooks.example.com/x"));
        assert!(ok("http://HOOKS.example.com:9/x"));
        assert!(ok("http://127.0.0.1:8080/hook"));
        assert!(!ok("http://127.0.0.1:8081/hook"));
        assert!(!ok("http://evil.example.com/"));
        assert!(!ok("ftp://hooks.example.com/"));
    }
}
