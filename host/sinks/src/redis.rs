//! The `redis` sink: each record XADDed to a Redis stream named after its topic.
//!
//! Records wait in memory until `flush`, which sends them all in one `MULTI`/`EXEC` transaction:
//! Redis applies all of them or none, so a failed flush can simply be sent again. The reply to
//! `EXEC` is the acknowledgement (how durable that is is Redis's `appendfsync` setting). Redis
//! cannot de-duplicate stream entries, so a crash between `EXEC` and the checkpoint repeats that
//! tail; every entry carries its `lsn` field for consumers that de-duplicate.

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::streams::StreamMaxlen;

use walflow_config::sinks::RedisSinkConfig;

use super::settings::{invalid, secret_env};
use super::{EncodedRecord, Sink, SinkBatch, SinkError};

/// Appends records to Redis streams.
pub struct RedisSink {
    name: String,
    url: String,
    connection: ConnectionManager,
    maxlen: Option<StreamMaxlen>,
    stream_prefix: String,
    pending: Vec<EncodedRecord>,
}

impl RedisSink {
    /// Connects using its settings: `url` (required), `password_env`, `maxlen`,
    /// `maxlen_approximate` (default true), `stream_prefix`.
    pub async fn from_config(config: &RedisSinkConfig) -> Result<RedisSink, SinkError> {
        let url = config.url.as_str();
        let mut info: redis::ConnectionInfo = url
            .parse::<redis::ConnectionInfo>()
            .map_err(|e| invalid("redis", "url", &format!("a redis:// URL ({e})")))?;
        if let Some(password) = secret_env("redis", "password_env", config.password_env.as_deref())?
        {
            let redis_settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis_settings);
        }
        let maxlen = match config.maxlen {
            None => None,
            Some(n) if config.maxlen_approximate.unwrap_or(true) => {
                Some(StreamMaxlen::Approx(n as usize))
            }
            Some(n) => Some(StreamMaxlen::Equals(n as usize)),
        };
        let stream_prefix = config.stream_prefix.clone().unwrap_or_default();
        let connection = connect(info, url).await?;
        Ok(RedisSink {
            name: format!("redis:{}", walflow_config::redact::url(url)),
            url: walflow_config::redact::url(url).into_owned(),
            connection,
            maxlen,
            stream_prefix,
            pending: Vec::new(),
        })
    }
}

async fn connect(info: redis::ConnectionInfo, url: &str) -> Result<ConnectionManager, SinkError> {
    // Down or unreachable at start is transient (a later start may succeed); a refused
    // login is not.
    let unreachable = |e: redis::RedisError| {
        let fatal = e.kind() == redis::ErrorKind::AuthenticationFailed;
        let message = format!(
            "cannot reach redis at {}: {e}; check `url` and that the server is running",
            walflow_config::redact::url(url)
        );
        if fatal {
            SinkError::Fatal(message)
        } else {
            SinkError::Retryable(message)
        }
    };
    let client = redis::Client::open(info).map_err(unreachable)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(std::time::Duration::from_secs(10)))
        .set_response_timeout(Some(std::time::Duration::from_secs(30)))
        .set_number_of_retries(2);
    let mut connection = tokio::time::timeout(
        std::time::Duration::from_secs(15),
        ConnectionManager::new_with_config(client, config),
    )
    .await
    .map_err(|_| {
        SinkError::Retryable(format!(
            "cannot reach redis at {}: timed out; check `url` and that the server is running",
            walflow_config::redact::url(url)
        ))
    })?
    .map_err(unreachable)?;
    let _: () = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .map_err(unreachable)?;
    Ok(connection)
}

fn classify(url: &str, e: redis::RedisError) -> SinkError {
    let retryable = e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading)
                | redis::ErrorKind::Server(redis::ServerErrorKind::TryAgain)
                | redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
                | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
        );
    let message = format!("redis at {url} failed: {e}");
    if retryable {
        SinkError::Retryable(message)
    } else {
        SinkError::Fatal(message)
    }
}

#[async_trait]
impl Sink for RedisSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        for (i, record) in batch.records.iter().enumerate() {
            let mut record = record.clone();
            record.key = super::key::record_key(&record, batch.events.get(i));
            self.pending.push(record);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in &self.pending {
            let stream = format!("{}{}", self.stream_prefix, r.topic);
            let lsn = walflow_core::event::format_lsn(r.lsn);
            let mut fields: Vec<(&str, &[u8])> = vec![("lsn", lsn.as_bytes())];
            if let Some(key) = &r.key {
                fields.push(("key", key));
            }
            fields.push(("value", &r.payload));
            match self.maxlen {
                Some(maxlen) => pipe.xadd_maxlen(stream, maxlen, "*", &fields).ignore(),
                None => pipe.xadd(stream, "*", &fields).ignore(),
            };
        }
        let _: () = pipe
            .query_async(&mut self.connection)
            .await
            .map_err(|e| classify(&self.url, e))?;
        self.pending.clear();
        Ok(())
    }
}
