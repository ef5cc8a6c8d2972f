//! The `nats` sink: records published to NATS JetStream, the subject being the record's topic.
//!
//! Each message carries a `Nats-Msg-Id` made from the event's LSN and its position among events
//! with that LSN (snapshot rows, which all share the snapshot's LSN, use their table and key
//! instead). JetStream drops a message whose id it has seen within the stream's
//! `duplicate_window`, so the tail that is delivered again after a crash is not stored twice.
//! A record is acknowledged when JetStream's publish acknowledgement for it arrived; `flush`
//! keeps a window of publishes in flight and waits for every acknowledgement.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishAckFuture, context::PublishErrorKind};
use async_trait::async_trait;
use bytes::Bytes;

use walflow_config::StringList;
use walflow_config::sinks::NatsSinkConfig;

use super::settings::{invalid, secret_env};
use super::{Sink, SinkBatch, SinkError};
use walflow_config::Encoding;
use walflow_core::encode::{EncodeOptions, Encoder};
use walflow_core::event::{Event, Op};

/// Publishes being acknowledged at once.
const WINDOW: usize = 4096;

/// A message waiting for its acknowledgement.
struct Message {
    subject: String,
    id: String,
    payload: Bytes,
}

/// Publishes records to JetStream.
pub struct NatsSink {
    name: String,
    /// The URL without its password, for messages.
    url: String,
    jetstream: jetstream::Context,
    pending: Vec<Message>,
    /// The LSN of the last event seen and how many events had it, for message ids.
    last_lsn: Option<u64>,
    run: u64,
}

impl NatsSink {
    /// Connects using its settings: `url` (required), `stream` and `subjects` (create the stream
    /// when missing), `duplicate_window`, `timeout`, `user`, `password_env`, `token_env`,
    /// `credentials_file`, `tls_ca`, `tls`.
    pub async fn from_config(config: &NatsSinkConfig) -> Result<NatsSink, SinkError> {
        let url = config.url.as_str();
        let stream = config.stream.as_deref();
        if stream.is_none() && config.subjects.is_some() {
            return Err(invalid("nats", "subjects", "given together with `stream`"));
        }
        let timeout = config.timeout.map_or(Duration::from_secs(10), |d| d.0);
        let client = connect(config, url, timeout).await?;
        let mut jetstream = jetstream::new(client);
        jetstream.set_timeout(timeout);
        if let Some(stream) = stream {
            ensure_stream(config, &jetstream, stream, url).await?;
        }
        Ok(NatsSink {
            name: format!("nats:{}", walflow_config::redact::url(url)),
            url: walflow_config::redact::url(url).into_owned(),
            jetstream,
            pending: Vec::new(),
            last_lsn: None,
            run: 0,
        })
    }

    /// The de-duplication id of the next event.
    fn message_id(&mut self, event: Option<&Event>, lsn: u64) -> String {
        if let Some(e) = event.filter(|e| e.op == Op::Read) {
            let key = Encoder::new(Encoding::Json, EncodeOptions::default())
                .encode_key(e)
                .map(|k| String::from_utf8_lossy(&k).into_owned())
                .unwrap_or_default();
            return format!("{:X}:r:{}:{key}", lsn, e.relation.qualified_name());
        }
        if self.last_lsn == Some(lsn) {
            self.run += 1;
        } else {
            self.last_lsn = Some(lsn);
            self.run = 0;
        }
        format!("{lsn:X}:{}", self.run)
    }

    /// Publishes `pending[from..]` with a window of acknowledgements in flight; returns how many
    /// were acknowledged, in order, and the first error.
    async fn publish_all(&self) -> (usize, Option<SinkError>) {
        let mut in_flight: VecDeque<PublishAckFuture> = VecDeque::with_capacity(WINDOW);
        let mut acked = 0;
        for m in &self.pending {
            if in_flight.len() >= WINDOW {
                let oldest = in_flight.pop_front().expect("window is not empty");
                if let Err(e) = oldest.await {
                    return (acked, Some(self.publish_error(e)));
                }
                acked += 1;
            }
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, m.id.as_str());
            match self
                .jetstream
                .publish_with_headers(m.subject.clone(), headers, m.payload.clone())
                .await
            {
                Ok(ack) => in_flight.push_back(ack),
                Err(e) => return (acked, Some(self.publish_error(e))),
            }
        }
        for ack in in_flight {
            if let Err(e) = ack.await {
                return (acked, Some(self.publish_error(e)));
            }
            acked += 1;
        }
        (acked, None)
    }

    fn publish_error(&self, e: jetstream::context::PublishError) -> SinkError {
        match e.kind() {
            PublishErrorKind::StreamNotFound => SinkError::Retryable(format!(
                "nats at {}: no JetStream stream captures the subject; create one or set `stream` and `subjects` ({e})",
                self.url
            )),
            PublishErrorKind::MaxPayloadExceeded => SinkError::Fatal(format!(
                "nats at {} refused a message larger than its max_payload: {e}",
                self.url
            )),
            _ => SinkError::Retryable(format!("nats at {} failed to publish: {e}", self.url)),
        }
    }
}

async fn connect(
    config: &NatsSinkConfig,
    url: &str,
    timeout: Duration,
) -> Result<async_nats::Client, SinkError> {
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .name("walflow");
    if let Some(user) = &config.user {
        let password =
            secret_env("nats", "password_env", config.password_env.as_deref())?.unwrap_or_default();
        options = options.user_and_password(user.to_owned(), password);
    }
    if let Some(token) = secret_env("nats", "token_env", config.token_env.as_deref())? {
        options = options.token(token);
    }
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await.map_err(|e| {
            SinkError::Fatal(format!("cannot read nats credentials_file {path}: {e}"))
        })?;
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.into()).require_tls(true);
    }
    if config.tls {
        options = options.require_tls(true);
    }
    options.connect(url).await.map_err(|e| {
        let message = format!(
            "cannot reach nats at {}: {e}; check `url` and that nats-server is running",
            walflow_config::redact::url(url)
        );
        // Down or unreachable may pass; refused credentials or TLS will not by themselves.
        use async_nats::ConnectErrorKind as Kind;
        match e.kind() {
            Kind::Io | Kind::TimedOut | Kind::Dns | Kind::MaxReconnects => {
                SinkError::Retryable(message)
            }
            _ => SinkError::Fatal(message),
        }
    })
}

async fn ensure_stream(
    config: &NatsSinkConfig,
    jetstream: &jetstream::Context,
    stream: &str,
    url: &str,
) -> Result<(), SinkError> {
    let subjects = config
        .subjects
        .as_ref()
        .map(StringList::to_vec)
        .unwrap_or_default();
    if subjects.is_empty() {
        return Err(SinkError::Fatal(format!(
            "a nats sink with `stream = \"{stream}\"` needs `subjects = [\"app.>\"]`, the subjects the stream captures"
        )));
    }
    let duplicate_window = config
        .duplicate_window
        .map_or(Duration::from_secs(120), |d| d.0);
    let config = jetstream::stream::Config {
        name: stream.to_owned(),
        subjects,
        duplicate_window,
        ..Default::default()
    };
    jetstream.get_or_create_stream(config).await.map_err(|e| {
        SinkError::Fatal(format!(
            "cannot create JetStream stream `{stream}` at {}: {e}; is JetStream enabled (nats-server -js)?",
            walflow_config::redact::url(url)
        ))
    })?;
    Ok(())
}

#[async_trait]
impl Sink for NatsSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        self.pending.reserve(batch.records.len());
        for (i, r) in batch.records.iter().enumerate() {
            // Debezium records are not paired with events by index: their ids run by LSN.
            let event = batch.events.get(i).filter(|_| r.value.is_none());
            let id = self.message_id(event, r.lsn.0);
            self.pending.push(Message {
                subject: r.topic.to_string(),
                id,
                payload: Bytes::from(r.payload.clone()),
            });
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let (acked, error) = self.publish_all().await;
        self.pending.drain(..acked);
        match error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
