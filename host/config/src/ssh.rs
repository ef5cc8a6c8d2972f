//! `[source.ssh]`: reaching the source database through an SSH host (a bastion) when it is not
//! reachable directly.
//!
//! Only what a user writes lives here; the session itself is `walflow-pg`'s. Secrets never live
//! in the file: the key is a file of the host (or the SSH agent holds it) and its passphrase
//! comes from an environment variable named here. A host key is never trusted on first sight:
//! the config must say how to recognise it (`known_hosts_file`, or a pinned `host_key`).

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

/// `[source.ssh]`
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SshConfig {
    /// The SSH host (bastion) to connect to.
    pub host: String,
    /// Its SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The login user on the SSH host.
    pub user: String,
    /// An OpenSSH private key file; without it, the SSH agent at `SSH_AUTH_SOCK` signs.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// The environment variable holding the private key's passphrase, when it has one.
    #[serde(default)]
    pub private_key_passphrase_env: Option<String>,
    /// An OpenSSH `known_hosts` file that lists the SSH host's key.
    #[serde(default)]
    pub known_hosts_file: Option<PathBuf>,
    /// The SSH host's key fingerprint, pinned instead of a known_hosts file (`SHA256:…`, as
    /// `ssh-keygen -lf` prints it).
    #[serde(default)]
    pub host_key: Option<String>,
    /// How long the session may be silent before walflow asks the SSH host for a reply
    /// (e.g. `"15s"`; `"0s"` never); three unanswered requests close it.
    #[serde(default, deserialize_with = "crate::duration_opt::deserialize")]
    #[schemars(with = "Option<String>")]
    pub keepalive_interval: Option<Duration>,
    /// How long connecting to the SSH host and logging in may take (e.g. `"10s"`).
    #[serde(default, deserialize_with = "crate::duration_opt::deserialize")]
    #[schemars(with = "Option<String>")]
    pub connect_timeout: Option<Duration>,
}

/// `keepalive_interval` when the config does not set one.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);

/// `connect_timeout` when the config does not set one.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn default_port() -> u16 {
    22
}

impl SshConfig {
    /// The keepalive interval in effect: `None` when disabled with `"0s"`.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        match self.keepalive_interval {
            None => Some(DEFAULT_KEEPALIVE_INTERVAL),
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
        }
    }

    /// The connect timeout in effect.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// `host:port` for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Refuses settings that cannot work, with what to change.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.host.is_empty() {
            return Err("[source.ssh] host is required (the SSH host to tunnel through)".into());
        }
        if self.user.is_empty() {
            return Err("[source.ssh] user is required (the login user on the SSH host)".into());
        }
        if self.port == 0 {
            return Err("[source.ssh] port must be a TCP port (1-65535)".into());
        }
        match (&self.known_hosts_file, &self.host_key) {
            (None, None) => {
                return Err(format!(
                    "[source.ssh] needs known_hosts_file (a known_hosts file listing {}'s key) or host_key (its pinned fingerprint, SHA256:…); walflow never trusts an unknown host key",
                    self.host
                ));
            }
            (Some(_), Some(_)) => {
                return Err("[source.ssh] has both known_hosts_file and host_key; keep one".into());
            }
            (None, Some(key)) if !is_fingerprint(key) => {
                return Err(format!(
                    "[source.ssh] host_key `{key}` is not a SHA256 fingerprint; give it as `ssh-keygen -lf` prints it, e.g. SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"
                ));
            }
            _ => {}
        }
        if self.private_key_passphrase_env.is_some() && self.private_key_file.is_none() {
            return Err(
                "[source.ssh] private_key_passphrase_env is set without private_key_file; name the key file, or remove it to use the SSH agent".into(),
            );
        }
        Ok(())
    }
}

/// `SHA256:` and 43 base64 characters (a SHA-256 digest without padding).
fn is_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:").is_some_and(|b64| {
        b64.len() == 43
            && b64
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/')
    })
}
