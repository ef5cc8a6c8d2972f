//! The SSH tunnel of `[source.ssh]`: one SSH session to the SSH host (a bastion) per source,
//! carrying every connection to PostgreSQL — replication, snapshot readers, SQL sessions — as
//! its own `direct-tcpip` channel. TLS and authentication with PostgreSQL run end to end inside
//! the channel; the SSH host only forwards bytes.
//!
//! Why one session: a pipeline opens many connections (the stream, a snapshot's readers, the
//! heartbeat, the catalog), and a login per connection would multiply the bastion's load and
//! its audit log. [`tunnel`] hands every [`ConnectOptions`](crate::ConnectOptions) of the same
//! `[source.ssh]` the same [`Tunnel`], for the life of the process: connections come and go
//! (a startup probe, then the stream; a check's queries), and a session closed between them
//! would mean a login per connection again. An idle session costs the SSH host one connection
//! and a keepalive now and then.
//!
//! Why it reconnects by itself: a session that died (the SSH host restarted, the link dropped
//! and keepalives went unanswered) closes all its channels, so every connection through it
//! breaks the way a TCP connection would, and its owner reconnects as it always does; the
//! next channel then finds the session closed and logs in again. Nothing else needs to know.
//!
//! Why verification is strict: a tunnel through a host that is not the one configured would
//! hand the database's credentials and data to whoever answered. The host key must be listed in
//! `known_hosts_file` or match the pinned `host_key`; otherwise walflow refuses before logging
//! in. Key material and passphrases never appear in a message: errors name the file and the
//! environment variable, never their content.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use russh::ChannelOpenFailure;
use russh::client::{self, Handle};
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use walflow_config::SshConfig;

/// Keepalives the SSH host may leave unanswered before the session is given up.
const KEEPALIVE_MAX: usize = 3;

/// Why the tunnel could not carry a connection. Every message is one sentence saying what to
/// fix; none contains key material or a passphrase.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// Nothing answered at the SSH host's address, or it did not answer in time.
    #[error(
        "cannot reach the SSH host {addr} ({source}); check host and port in [source.ssh] and that the SSH server is running and reachable"
    )]
    Unreachable {
        /// `host:port` of the SSH host.
        addr: String,
        /// The socket error.
        source: io::Error,
    },
    /// The SSH session broke (during the handshake or later).
    #[error("the SSH session with {addr} broke ({message}); it will be retried")]
    Lost {
        /// `host:port` of the SSH host.
        addr: String,
        /// What broke.
        message: String,
    },
    /// `known_hosts_file` does not list the SSH host.
    #[error(
        "the SSH host {addr} presented the host key {fingerprint}, which {known_hosts} does not list, so walflow refused to connect; if this is the right host, add its key to that file (ssh-keyscan -p {port} {host}) or pin it with host_key = \"{fingerprint}\" in [source.ssh]",
        known_hosts = .known_hosts.display()
    )]
    UnknownHostKey {
        /// `host:port` of the SSH host.
        addr: String,
        /// The host name, for the suggested command.
        host: String,
        /// The port, for the suggested command.
        port: u16,
        /// The presented key's fingerprint (`SHA256:…`).
        fingerprint: String,
        /// The known_hosts file.
        known_hosts: PathBuf,
    },
    /// The SSH host presented a different key than the one on record.
    #[error(
        "the SSH host {addr} presented the host key {fingerprint}, which does not match {expected}, so walflow refused to connect; someone may be intercepting the connection, or the host was replaced: verify its key before updating [source.ssh]"
    )]
    HostKeyMismatch {
        /// `host:port` of the SSH host.
        addr: String,
        /// The presented key's fingerprint (`SHA256:…`).
        fingerprint: String,
        /// What it should have matched (a known_hosts file and line, or the pinned key).
        expected: String,
    },
    /// The private key file cannot be read or decrypted.
    #[error("cannot use the SSH private key {path}: {message}", path = .path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong and what to do (never the key's content).
        message: String,
    },
    /// The known_hosts file cannot be read.
    #[error(
        "cannot read known_hosts_file {path} ({source}); fix the path in [source.ssh]",
        path = .path.display()
    )]
    KnownHosts {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// No private key file is configured and the SSH agent cannot be used.
    #[error(
        "cannot use the SSH agent ({0}); set private_key_file in [source.ssh], or start an agent holding the key and export SSH_AUTH_SOCK"
    )]
    Agent(String),
    /// The SSH host refused the login.
    #[error(
        "the SSH host {addr} refused the login of user \"{user}\" with {tried}; add the matching public key to that user's ~/.ssh/authorized_keys on the SSH host, or fix user and private_key_file in [source.ssh]"
    )]
    AuthRefused {
        /// `host:port` of the SSH host.
        addr: String,
        /// The SSH user.
        user: String,
        /// Which keys were offered (a file name, or the agent's keys).
        tried: String,
    },
    /// The SSH host could not open a connection to PostgreSQL.
    #[error("the SSH host {addr} could not connect to PostgreSQL at {target} ({reason}); {what}")]
    Forward {
        /// `host:port` of the SSH host.
        addr: String,
        /// `host:port` of PostgreSQL as the SSH host sees it.
        target: String,
        /// The SSH host's reason.
        reason: String,
        /// What to do.
        what: &'static str,
        /// Whether waiting may help (the database is down, or the SSH host is short of
        /// resources) rather than a setting (forwarding prohibited).
        retryable: bool,
    },
}

impl SshError {
    /// Whether trying again later may succeed without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            SshError::Unreachable { .. } | SshError::Lost { .. } => true,
            SshError::Forward { retryable, .. } => *retryable,
            _ => false,
        }
    }
}

/// The tunnel for `config`: the same one for every caller with the same settings, so a
/// source's connections share one SSH session.
pub fn tunnel(config: &SshConfig) -> Arc<Tunnel> {
    static TUNNELS: Mutex<Option<HashMap<SshConfig, Arc<Tunnel>>>> = Mutex::new(None);
    let mut tunnels = TUNNELS.lock().unwrap_or_else(|p| p.into_inner());
    let tunnel = tunnels
        .get_or_insert_with(HashMap::new)
        .entry(config.clone())
        .or_insert_with(|| {
            Arc::new(Tunnel {
                config: config.clone(),
                session: tokio::sync::Mutex::new(None),
            })
        });
    Arc::clone(tunnel)
}

type Session = Handle<HostKeyCheck>;

/// One SSH host's session, opened on first use and again whenever it has closed.
pub struct Tunnel {
    config: SshConfig,
    session: tokio::sync::Mutex<Option<Arc<Session>>>,
}

impl std::fmt::Debug for Tunnel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnel")
            .field("ssh", &self.addr())
            .field("user", &self.config.user)
            .finish()
    }
}

impl Tunnel {
    /// `host:port` of the SSH host.
    pub fn addr(&self) -> String {
        self.config.addr()
    }

    /// A connection to `host:port` as the SSH host sees it, through the session (logging in
    /// first when there is none or it has closed).
    pub async fn open(self: &Arc<Self>, host: &str, port: u16) -> Result<TunnelStream, SshError> {
        let session = self.session().await?;
        let channel = match self.forward(&session, host, port).await {
            Err(Reopen) => {
                self.forget(&session).await;
                let session = self.session().await?;
                self.forward(&session, host, port)
                    .await
                    .map_err(|Reopen| self.lost("the session closed while opening a channel"))??
            }
            Ok(channel) => channel?,
        };
        Ok(TunnelStream {
            channel: channel.into_stream(),
            _tunnel: Arc::clone(self),
        })
    }

    /// Logs in (once) and says how the SSH host was verified, for `walflow check`.
    pub async fn verify(self: &Arc<Self>) -> Result<String, SshError> {
        self.session().await?;
        Ok(match &self.config.host_key {
            Some(pinned) => format!("host key {pinned} (pinned)"),
            None => format!(
                "host key listed in {}",
                self.config
                    .known_hosts_file
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
            ),
        })
    }

    /// Opens a channel to `host:port`; `Err(Reopen)` when the session turns out to be dead.
    /// Bounded by the connect timeout (a session that stopped answering is closed by its
    /// keepalives, and the next attempt logs in again).
    async fn forward(
        &self,
        session: &Session,
        host: &str,
        port: u16,
    ) -> Result<Result<russh::Channel<client::Msg>, SshError>, Reopen> {
        let opening = session.channel_open_direct_tcpip(host, port.into(), "127.0.0.1", 0);
        let timeout = self.config.connect_timeout();
        let Ok(opened) = tokio::time::timeout(timeout, opening).await else {
            return Ok(Err(SshError::Forward {
                addr: self.addr(),
                target: host_port(host, port),
                reason: format!("no answer within {}s", timeout.as_secs()),
                what: "check that PostgreSQL is reachable from the SSH host; it will be retried",
                retryable: true,
            }));
        };
        match opened {
            Ok(channel) => Ok(Ok(channel)),
            Err(russh::Error::ChannelOpenFailure(reason)) => {
                Ok(Err(self.forward_refused(host, port, reason)))
            }
            Err(e) => {
                tracing::debug!(error = %e, "ssh channel open failed; reopening the session");
                Err(Reopen)
            }
        }
    }

    fn forward_refused(&self, host: &str, port: u16, reason: ChannelOpenFailure) -> SshError {
        let (reason, what, retryable) = match reason {
            ChannelOpenFailure::ConnectFailed => (
                "connection failed".to_string(),
                "check the host and port in [source] url as the SSH host sees them, and that PostgreSQL is running; it will be retried",
                true,
            ),
            ChannelOpenFailure::ResourceShortage => {
                ("resource shortage".to_string(), "it will be retried", true)
            }
            ChannelOpenFailure::AdministrativelyProhibited => (
                "forwarding prohibited".to_string(),
                "allow TCP forwarding for this user on the SSH host (AllowTcpForwarding, PermitOpen)",
                false,
            ),
            other => (
                format!("{other:?}"),
                "allow TCP forwarding for this user on the SSH host (AllowTcpForwarding, PermitOpen)",
                false,
            ),
        };
        SshError::Forward {
            addr: self.addr(),
            target: host_port(host, port),
            reason,
            what,
            retryable,
        }
    }

    /// The open session, or a new one.
    async fn session(&self) -> Result<Arc<Session>, SshError> {
        let mut slot = self.session.lock().await;
        if let Some(session) = slot.as_ref() {
            if !session.is_closed() {
                return Ok(Arc::clone(session));
            }
            tracing::info!(ssh_host = %self.addr(), "ssh session closed; logging in again");
        }
        *slot = None;
        let session = Arc::new(self.login().await?);
        *slot = Some(Arc::clone(&session));
        Ok(session)
    }

    /// Drops `stale` if it is still the cached session.
    async fn forget(&self, stale: &Arc<Session>) {
        let mut slot = self.session.lock().await;
        if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, stale)) {
            *slot = None;
        }
    }

    /// Connects, verifies the host key and authenticates, within the connect timeout.
    async fn login(&self) -> Result<Session, SshError> {
        let timeout = self.config.connect_timeout();
        match tokio::time::timeout(timeout, self.login_untimed()).await {
            Ok(result) => result,
            Err(_) => Err(SshError::Unreachable {
                addr: self.addr(),
                source: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no login within {}s", timeout.as_secs()),
                ),
            }),
        }
    }

    async fn login_untimed(&self) -> Result<Session, SshError> {
        let tcp = TcpStream::connect((self.config.host.as_str(), self.config.port))
            .await
            .map_err(|source| SshError::Unreachable {
                addr: self.addr(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        if let Err(e) = crate::socket::configure(&tcp) {
            tracing::warn!(error = %e, "cannot set tcp keepalive on the ssh connection");
        }
        let check = HostKeyCheck::new(&self.config)?;
        let verdict = Arc::clone(&check.refusal);
        let mut session = client::connect_stream(self.client_config(), tcp, check)
            .await
            .map_err(|e| {
                let refusal = verdict.lock().unwrap_or_else(|p| p.into_inner()).take();
                refusal.unwrap_or_else(|| self.lost(&e.to_string()))
            })?;
        self.authenticate(&mut session).await?;
        tracing::info!(ssh_host = %self.addr(), user = %self.config.user, "ssh tunnel up");
        Ok(session)
    }

    fn client_config(&self) -> Arc<client::Config> {
        Arc::new(client::Config {
            keepalive_interval: self.config.keepalive_interval(),
            keepalive_max: KEEPALIVE_MAX,
            nodelay: true,
            ..Default::default()
        })
    }

    async fn authenticate(&self, session: &mut Session) -> Result<(), SshError> {
        let user = self.config.user.clone();
        let hash = session
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten();
        let (accepted, tried) = match &self.config.private_key_file {
            Some(path) => {
                let key = PrivateKeyWithHashAlg::new(Arc::new(self.private_key(path)?), hash);
                let result = session
                    .authenticate_publickey(user, key)
                    .await
                    .map_err(|e| self.lost(&e.to_string()))?;
                (result.success(), format!("the key {}", path.display()))
            }
            None => self.authenticate_with_agent(session, hash).await?,
        };
        if accepted {
            return Ok(());
        }
        Err(SshError::AuthRefused {
            addr: self.addr(),
            user: self.config.user.clone(),
            tried,
        })
    }

    async fn authenticate_with_agent(
        &self,
        session: &mut Session,
        hash: Option<HashAlg>,
    ) -> Result<(bool, String), SshError> {
        let mut agent = AgentClient::connect_env()
            .await
            .map_err(|e| SshError::Agent(e.to_string()))?;
        let identities = agent
            .request_identities()
            .await
            .map_err(|e| SshError::Agent(e.to_string()))?;
        if identities.is_empty() {
            return Err(SshError::Agent("the agent holds no keys".into()));
        }
        for identity in &identities {
            let key = identity.public_key().into_owned();
            let result = session
                .authenticate_publickey_with(self.config.user.clone(), key, hash, &mut agent)
                .await
                .map_err(|e| self.lost(&e.to_string()))?;
            if result.success() {
                return Ok((true, String::new()));
            }
        }
        Ok((
            false,
            format!("the SSH agent's {} key(s)", identities.len()),
        ))
    }

    /// Reads and decrypts the private key; errors name the file and the variable, never the
    /// content.
    fn private_key(&self, path: &Path) -> Result<russh::keys::PrivateKey, SshError> {
        let bad = |message: String| SshError::Key {
            path: path.to_owned(),
            message,
        };
        let passphrase = match &self.config.private_key_passphrase_env {
            Some(var) => Some(std::env::var(var).map_err(|_| {
                bad(format!(
                    "private_key_passphrase_env names the environment variable `{var}`, which is not set; export it with the key's passphrase"
                ))
            })?),
            None => None,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(format!("{e}; fix private_key_file in [source.ssh]")))?;
        russh::keys::decode_secret_key(&text, passphrase.as_deref()).map_err(|e| {
            bad(match (e, &self.config.private_key_passphrase_env) {
                (russh::keys::Error::KeyIsEncrypted, _) => "it is encrypted; set private_key_passphrase_env to the name of an environment variable holding its passphrase".into(),
                (_, Some(var)) => format!("it cannot be decrypted with the passphrase in `{var}`, or it is not an OpenSSH private key; check both"),
                (e, None) => format!("it is not an OpenSSH private key ({e}); give the private half of the key pair (ssh-keygen writes it without .pub)"),
            })
        })
    }

    fn lost(&self, message: &str) -> SshError {
        SshError::Lost {
            addr: self.addr(),
            message: message.to_string(),
        }
    }
}

/// The session was closed; open a new one and try again.
struct Reopen;

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Where the SSH host's key must be found.
enum Expected {
    KnownHosts(PathBuf),
    Pinned(String),
}

/// The session's handler: checks the host key and keeps the reason of a refusal, which the
/// library reports only as "unknown key".
struct HostKeyCheck {
    host: String,
    port: u16,
    expected: Expected,
    refusal: Arc<Mutex<Option<SshError>>>,
}

impl HostKeyCheck {
    fn new(config: &SshConfig) -> Result<HostKeyCheck, SshError> {
        let expected = match (&config.host_key, &config.known_hosts_file) {
            (Some(pinned), _) => Expected::Pinned(pinned.clone()),
            (None, Some(path)) => {
                // An unreadable file would otherwise look like an empty one.
                std::fs::File::open(path).map_err(|source| SshError::KnownHosts {
                    path: path.clone(),
                    source,
                })?;
                Expected::KnownHosts(path.clone())
            }
            (None, None) => unreachable!("the config requires known_hosts_file or host_key"),
        };
        Ok(HostKeyCheck {
            host: config.host.clone(),
            port: config.port,
            expected,
            refusal: Arc::new(Mutex::new(None)),
        })
    }

    /// `Ok(())` when `key` is the one on record; otherwise the refusal.
    fn verdict(&self, key: &PublicKey) -> Result<(), SshError> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let addr = host_port(&self.host, self.port);
        match &self.expected {
            Expected::Pinned(pinned) if *pinned == fingerprint => Ok(()),
            Expected::Pinned(pinned) => Err(SshError::HostKeyMismatch {
                addr,
                fingerprint,
                expected: format!("the pinned host_key {pinned}"),
            }),
            Expected::KnownHosts(path) => {
                let listed =
                    russh::keys::known_hosts::known_host_keys_path(&self.host, self.port, path)
                        .map_err(|e| SshError::KnownHosts {
                            path: path.clone(),
                            source: io::Error::other(e.to_string()),
                        })?;
                if listed.iter().any(|(_, k)| k.key_data() == key.key_data()) {
                    return Ok(());
                }
                if let Some((line, _)) = listed.first() {
                    return Err(SshError::HostKeyMismatch {
                        addr,
                        fingerprint,
                        expected: format!("the key {} lists for it (line {line})", path.display()),
                    });
                }
                Err(SshError::UnknownHostKey {
                    addr,
                    host: self.host.clone(),
                    port: self.port,
                    fingerprint,
                    known_hosts: path.clone(),
                })
            }
        }
    }
}

impl client::Handler for HostKeyCheck {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        presented: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match presented {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => PublicKey::from(cert.public_key().clone()),
        };
        match self.verdict(&key) {
            Ok(()) => Ok(true),
            Err(refusal) => {
                tracing::debug!(error = %refusal, "ssh host key refused");
                *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(refusal);
                Ok(false)
            }
        }
    }
}

/// One connection through the tunnel: a `direct-tcpip` channel as a byte stream. It keeps the
/// session alive while it is open, and closes its channel when dropped.
pub struct TunnelStream {
    channel: russh::ChannelStream<client::Msg>,
    _tunnel: Arc<Tunnel>,
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().channel).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().channel).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().channel).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().channel).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHCZaCchsBN7+gBwwA0ELcksUK/1UZV7OvOwP+p3ERR7";
    const FINGERPRINT: &str = "SHA256:uwJk4sKj5PVo1jcDJ7qSG3AVaOOCMgajTkp1fFFKmIs";
    const OTHER: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIC5nGJUkt2ukBlDMQj2hiyro9P9U4YAa5d7MnhjtPf0s";

    fn config(known_hosts: Option<PathBuf>, host_key: Option<&str>) -> SshConfig {
        SshConfig {
            host: "bastion".into(),
            port: 2222,
            user: "tunnel".into(),
            private_key_file: None,
            private_key_passphrase_env: None,
            known_hosts_file: known_hosts,
            host_key: host_key.map(str::to_string),
            keepalive_interval: None,
            connect_timeout: None,
        }
    }

    fn presented() -> PublicKey {
        russh::keys::parse_public_key_base64(KEY).unwrap()
    }

    fn known_hosts(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("known_hosts");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_pinned_fingerprint_must_match() {
        let check = HostKeyCheck::new(&config(None, Some(FINGERPRINT))).unwrap();
        check.verdict(&presented()).unwrap();
        let other = "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        let check = HostKeyCheck::new(&config(None, Some(other))).unwrap();
        let e = check.verdict(&presented()).unwrap_err();
        assert!(matches!(e, SshError::HostKeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains(FINGERPRINT), "{e}");
        assert!(!e.is_retryable());
    }

    #[test]
    fn known_hosts_lists_the_key_or_it_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let listed = known_hosts(dir.path(), &format!("[bastion]:2222 ssh-ed25519 {KEY}\n"));
        HostKeyCheck::new(&config(Some(listed), None))
            .unwrap()
            .verdict(&presented())
            .unwrap();

        let other = known_hosts(dir.path(), &format!("[bastion]:2222 ssh-ed25519 {OTHER}\n"));
        let e = HostKeyCheck::new(&config(Some(other), None))
            .unwrap()
            .verdict(&presented())
            .unwrap_err();
        assert!(matches!(e, SshError::HostKeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("line 1"), "{e}");

        // Port 22's entry is not port 2222's: an unknown host, not a match.
        let elsewhere = known_hosts(dir.path(), &format!("bastion ssh-ed25519 {KEY}\n"));
        let e = HostKeyCheck::new(&config(Some(elsewhere.clone()), None))
            .unwrap()
            .verdict(&presented())
            .unwrap_err();
        assert!(matches!(e, SshError::UnknownHostKey { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(FINGERPRINT) && text.contains(&elsewhere.display().to_string()));
        assert!(text.contains("ssh-keyscan -p 2222 bastion"), "{text}");
    }

    #[test]
    fn a_missing_known_hosts_file_is_an_error_not_an_empty_list() {
        let e = HostKeyCheck::new(&config(Some("/nonexistent/known_hosts".into()), None))
            .err()
            .unwrap();
        assert!(matches!(e, SshError::KnownHosts { .. }), "{e}");
    }

    #[test]
    fn key_errors_name_the_file_and_variable_never_the_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id");
        let secret = "-----BEGIN OPENSSH PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END OPENSSH PRIVATE KEY-----\n";
        std::fs::write(&path, secret).unwrap();
        let mut with_key = config(None, Some(FINGERPRINT));
        with_key.private_key_file = Some(path.clone());
        with_key.private_key_passphrase_env = Some("WALFLOW_SSH_TEST_UNSET_VARIABLE".into());
        let tunnel = Tunnel {
            config: with_key.clone(),
            session: tokio::sync::Mutex::new(None),
        };
        let e = tunnel.private_key(&path).unwrap_err().to_string();
        assert!(
            e.contains("WALFLOW_SSH_TEST_UNSET_VARIABLE") && e.contains("not set"),
            "{e}"
        );

        with_key.private_key_passphrase_env = None;
        let tunnel = Tunnel {
            config: with_key,
            session: tokio::sync::Mutex::new(None),
        };
        let e = tunnel.private_key(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(!e.contains("c2VjcmV0"), "{e}");
    }

    #[test]
    fn one_tunnel_per_ssh_host_config() {
        let a = tunnel(&config(None, Some(FINGERPRINT)));
        let b = tunnel(&config(None, Some(FINGERPRINT)));
        assert!(Arc::ptr_eq(&a, &b));
        let mut other = config(None, Some(FINGERPRINT));
        other.user = "someone-else".into();
        assert!(!Arc::ptr_eq(&a, &tunnel(&other)));
    }
}
