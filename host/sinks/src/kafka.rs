//! The `kafka` sink: records produced to Kafka (or any Kafka-protocol broker) by an idempotent
//! producer with `acks=all`.
//!
//! The client is rdkafka over its bundled librdkafka. The producer is idempotent: the broker
//! assigns it a producer id and numbers its batches per partition, so a produce that reached the
//! broker but whose acknowledgement was lost is retried without being written twice, and the
//! order within a partition survives retries. Each record goes to the topic its event was named
//! for, keyed by the event key and partitioned by the murmur2 hash of that key as Kafka's Java
//! client does (`murmur2_random`), so a row's changes stay in one partition, in order. Records
//! without a key go to partition 0 so their order is kept too. A record is acknowledged once
//! every in-sync replica has it (`acks=all`); until then it stays pending, and a failed flush
//! sends what is still pending again. A new producer (after a restart of walflow, or after
//! librdkafka's own delivery timeout) gets a new producer id, so only a tail that was written
//! but never confirmed to PostgreSQL can appear twice; every record carries its LSN (the
//! `walflow.lsn` header) to recognise it.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

use walflow_config::sinks::KafkaSinkConfig;

use super::settings::{invalid, secret_env};
use super::{Sink, SinkBatch, SinkError};

/// The Kafka message value of `record`: the whole payload, or under the `debezium` envelope the
/// Debezium value alone, `None` (a null value) for a tombstone.
fn message_value(record: &walflow_core::sink::EncodedRecord) -> Option<Vec<u8>> {
    match &record.value {
        None => Some(record.payload.clone()),
        Some(range) => {
            let value = record.payload.get(range.clone())?;
            (value != b"null").then(|| value.to_vec())
        }
    }
}

/// A record waiting for its acknowledgement.
struct Pending {
    topic: String,
    key: Option<Vec<u8>>,
    /// The message value; `None` for a tombstone (a null value).
    payload: Option<Vec<u8>>,
    lsn: u64,
    /// Its delivery, once handed to the producer.
    delivery: Option<DeliveryFuture>,
}

/// How missing topics are handled.
#[derive(Debug, Clone, Copy)]
struct TopicCreation {
    partitions: i32,
    replication_factor: i32,
}

/// Produces records to Kafka.
pub struct KafkaSink {
    name: String,
    brokers: String,
    config: ClientConfig,
    producer: FutureProducer<KafkaLog>,
    create: Option<TopicCreation>,
    timeout: Duration,
    /// Topics known to exist.
    topics: HashSet<String>,
    pending: Vec<Pending>,
}

impl KafkaSink {
    /// Connects using its settings: `brokers` (required), `create_topics`, `partitions`,
    /// `replication_factor`, `compression`, `timeout`, `client_id`, `tls`, `tls_ca`,
    /// `sasl_mechanism`, `sasl_username`, `sasl_password_env`, `librdkafka_options`.
    pub async fn from_config(settings: &KafkaSinkConfig) -> Result<KafkaSink, SinkError> {
        let brokers: Vec<String> = settings
            .brokers
            .to_vec()
            .iter()
            .flat_map(|b| b.split(','))
            .map(|b| b.trim().to_owned())
            .filter(|b| !b.is_empty())
            .collect();
        if brokers.is_empty() {
            return Err(SinkError::Fatal(
                "a kafka sink needs `brokers = [\"host:9092\"]`".into(),
            ));
        }
        let joined = brokers.join(",");
        let timeout = settings.timeout.map_or(Duration::from_secs(30), |d| d.0);
        let create = settings.create_topics.then(|| TopicCreation {
            partitions: settings.partitions.unwrap_or(1).clamp(1, 100_000) as i32,
            replication_factor: settings.replication_factor.unwrap_or(1).clamp(1, 100) as i32,
        });
        let config = client_config(settings, &joined, timeout)?;
        let producer = config.create_with_context(KafkaLog).map_err(|e| {
            SinkError::Fatal(format!(
                "cannot set up the kafka producer: {e}; check the sink's settings and `librdkafka_options`"
            ))
        })?;
        let sink = KafkaSink {
            name: format!("kafka:{joined}"),
            brokers: joined,
            config,
            producer,
            create,
            timeout,
            topics: HashSet::new(),
            pending: Vec::new(),
        };
        sink.list_topics()
            .await
            .map_err(|e| unreachable_error(&sink.brokers, &e.to_string()))?;
        Ok(sink)
    }

    /// The names of the topics the cluster has (asking for all of them, so that no broker
    /// creates one just because it was asked about).
    async fn list_topics(&self) -> Result<Vec<String>, KafkaError> {
        let producer = self.producer.clone();
        let timeout = self.timeout;
        let metadata =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, timeout))
                .await
                .map_err(|_| KafkaError::Canceled)??;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .map(|t| t.name().to_owned())
            .collect())
    }

    /// Makes sure `topic` exists, creating it when allowed.
    async fn ensure_topic(&mut self, topic: &str) -> Result<(), SinkError> {
        if self.topics.contains(topic) {
            return Ok(());
        }
        let listed = self
            .list_topics()
            .await
            .map_err(|e| self.classify(topic, e))?;
        self.topics.extend(listed);
        if self.topics.contains(topic) {
            return Ok(());
        }
        if let Err(why) = legal_topic(topic) {
            return Err(SinkError::Fatal(format!(
                "cannot create kafka topic `{topic}`: {why}; name topics with a topic-namer plugin or `topic_prefix`"
            )));
        }
        let Some(create) = self.create else {
            return Err(SinkError::Fatal(format!(
                "kafka topic `{topic}` does not exist at {}; create it, or set `create_topics = true`",
                self.brokers
            )));
        };
        self.create_topic(topic, create).await?;
        self.wait_for_topic(topic).await
    }

    async fn create_topic(&self, topic: &str, create: TopicCreation) -> Result<(), SinkError> {
        let admin: AdminClient<KafkaLog> = self
            .config
            .create_with_context(KafkaLog)
            .map_err(|e| SinkError::Fatal(format!("cannot set up the kafka admin client: {e}")))?;
        let new = NewTopic::new(
            topic,
            create.partitions,
            TopicReplication::Fixed(create.replication_factor),
        );
        let options = AdminOptions::new().operation_timeout(Some(self.timeout));
        let results = admin
            .create_topics([&new], &options)
            .await
            .map_err(|e| self.classify(topic, e))?;
        match results.into_iter().next() {
            Some(Ok(_)) => {
                tracing::info!(topic, partitions = create.partitions, "created kafka topic");
                Ok(())
            }
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(()),
            Some(Err((_, code))) if is_transient(code) => Err(SinkError::Retryable(format!(
                "cannot create kafka topic `{topic}` at {} yet: {code}",
                self.brokers
            ))),
            Some(Err((_, code))) => Err(SinkError::Fatal(format!(
                "cannot create kafka topic `{topic}` at {}: {code}; create it yourself or fix `partitions`/`replication_factor`",
                self.brokers
            ))),
            None => Err(SinkError::Retryable(format!(
                "kafka at {} did not answer the creation of topic `{topic}`",
                self.brokers
            ))),
        }
    }

    async fn wait_for_topic(&mut self, topic: &str) -> Result<(), SinkError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let listed = self
                .list_topics()
                .await
                .map_err(|e| self.classify(topic, e))?;
            if listed.iter().any(|t| t == topic) {
                self.topics.extend(listed);
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(SinkError::Retryable(format!(
                    "kafka topic `{topic}` was created but its metadata did not appear at {}",
                    self.brokers
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn classify(&self, topic: &str, e: KafkaError) -> SinkError {
        let message = format!("kafka at {} failed for topic `{topic}`: {e}", self.brokers);
        match e.rdkafka_error_code() {
            Some(code) if is_permanent(code) => SinkError::Fatal(message),
            _ => SinkError::Retryable(message),
        }
    }

    /// Hands every pending record without a delivery to the producer, in order.
    async fn send_pending(&mut self) -> Result<(), SinkError> {
        for i in 0..self.pending.len() {
            if self.pending[i].delivery.is_some() {
                continue;
            }
            if !self.topics.contains(&self.pending[i].topic) {
                let topic = self.pending[i].topic.clone();
                self.ensure_topic(&topic).await?;
            }
            let delivery = self.send(i).await?;
            self.pending[i].delivery = Some(delivery);
        }
        Ok(())
    }

    /// Enqueues one record, waiting while the producer's queue is full.
    async fn send(&self, i: usize) -> Result<DeliveryFuture, SinkError> {
        let p = &self.pending[i];
        let lsn = walflow_core::event::format_lsn(p.lsn);
        loop {
            let headers = OwnedHeaders::new().insert(Header {
                key: "walflow.lsn",
                value: Some(lsn.as_str()),
            });
            let mut record = FutureRecord::to(&p.topic).headers(headers);
            if let Some(payload) = &p.payload {
                record = record.payload(payload.as_slice());
            }
            record = match &p.key {
                Some(key) => record.key(key.as_slice()),
                None => record.partition(0),
            };
            match self.producer.send_result(record) {
                Ok(delivery) => return Ok(delivery),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(self.classify(&p.topic, e)),
            }
        }
    }

    /// Starts a new producer after a delivery failed. librdkafka had retried within the
    /// delivery timeout already; what failed has an unknown outcome and is sent again, and a
    /// producer whose broker-side state is broken (fenced, a broker that lost its producer ids)
    /// would not recover by itself. The new one gets a new producer id.
    fn renew_producer(&mut self) {
        if let Some((code, reason)) = self.producer.client().fatal_error() {
            tracing::warn!(sink = %self.name, %code, reason, "kafka producer failed fatally");
        }
        match self.config.create_with_context(KafkaLog) {
            Ok(producer) => self.producer = producer,
            Err(e) => {
                tracing::error!(sink = %self.name, error = %e, "cannot start a new kafka producer")
            }
        }
    }
}

/// librdkafka's log lines and global errors, into tracing. Its global errors repeat what its
/// log lines and the sink's own errors already say, so they go to debug.
#[derive(Clone, Copy)]
struct KafkaLog;

impl ClientContext for KafkaLog {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", facility, "{message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, reason, "kafka client error");
    }
}

/// librdkafka's configuration for these settings.
fn client_config(
    s: &KafkaSinkConfig,
    brokers: &str,
    timeout: Duration,
) -> Result<ClientConfig, SinkError> {
    let timeout_ms = timeout
        .as_millis()
        .clamp(1000, i32::MAX as u128)
        .to_string();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", s.client_id.as_deref().unwrap_or("walflow"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", compression(s)?)
        .set("partitioner", "murmur2_random")
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", &timeout_ms)
        .set("socket.timeout.ms", &timeout_ms)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576");
    // librdkafka's own debug contexts (e.g. `eos,msg,topic`), for diagnosing a cluster.
    if let Ok(contexts) = std::env::var("WALFLOW_KAFKA_DEBUG") {
        config.set("debug", contexts);
    }
    security(s, &mut config)?;
    for (key, value) in &s.librdkafka_options {
        if let Some(why) = protected_option(key) {
            return Err(invalid("kafka", "librdkafka_options", why));
        }
        config.set(key, value);
    }
    Ok(config)
}

/// The brokers did not answer at start: transient, since a broker coming up lets a later
/// start succeed (`walflow run` exits with the transient code for its supervisor).
fn unreachable_error(brokers: &str, why: &str) -> SinkError {
    SinkError::Retryable(format!(
        "cannot reach kafka brokers {brokers}: {why}; check `brokers` and that the broker is running"
    ))
}

fn compression(s: &KafkaSinkConfig) -> Result<&'static str, SinkError> {
    Ok(match s.compression.as_deref().unwrap_or("none") {
        "none" => "none",
        "gzip" => "gzip",
        "lz4" => "lz4",
        "snappy" => "snappy",
        "zstd" => "zstd",
        _ => {
            return Err(invalid(
                "kafka",
                "compression",
                "one of \"none\", \"gzip\", \"lz4\", \"snappy\", \"zstd\"",
            ));
        }
    })
}

/// `security.protocol` and the TLS and SASL settings behind it.
fn security(s: &KafkaSinkConfig, config: &mut ClientConfig) -> Result<(), SinkError> {
    let ca = s.tls_ca.as_deref();
    let tls = s.tls || ca.is_some();
    if let Some(path) = ca {
        if let Err(e) = std::fs::metadata(path) {
            return Err(SinkError::Fatal(format!(
                "cannot read the kafka sink's tls_ca {path}: {e}"
            )));
        }
        config.set("ssl.ca.location", path);
    } else if tls {
        config.set("ssl.ca.location", "probe");
    }
    let sasl = match s.sasl_mechanism.as_deref() {
        None => false,
        Some(mechanism) => {
            if !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&mechanism) {
                return Err(invalid(
                    "kafka",
                    "sasl_mechanism",
                    "one of \"PLAIN\", \"SCRAM-SHA-256\", \"SCRAM-SHA-512\"",
                ));
            }
            let username = s
                .sasl_username
                .as_deref()
                .ok_or_else(|| invalid("kafka", "sasl_username", "set when `sasl_mechanism` is"))?;
            let password =
                secret_env("kafka", "sasl_password_env", s.sasl_password_env.as_deref())?
                    .ok_or_else(|| {
                        invalid("kafka", "sasl_password_env", "set when `sasl_mechanism` is")
                    })?;
            config
                .set("sasl.mechanism", mechanism)
                .set("sasl.username", username)
                .set("sasl.password", password);
            true
        }
    };
    let protocol = match (tls, sasl) {
        (false, false) => "plaintext",
        (true, false) => "ssl",
        (false, true) => "sasl_plaintext",
        (true, true) => "sasl_ssl",
    };
    config.set("security.protocol", protocol);
    Ok(())
}

/// Why a librdkafka property may not be set through `librdkafka_options`, if it may not.
fn protected_option(key: &str) -> Option<&'static str> {
    match key {
        "enable.idempotence" | "acks" | "enable.gapless.guarantee" | "transactional.id" => Some(
            "free of `enable.idempotence`, `acks` and transactions: walflow's delivery guarantee depends on them",
        ),
        "bootstrap.servers" | "metadata.broker.list" => Some("free of the brokers: use `brokers`"),
        _ => None,
    }
}

/// Kafka's rule for topic names (`org.apache.kafka.common.internals.Topic.validate`).
fn legal_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() || topic == "." || topic == ".." {
        return Err("not a legal kafka topic name");
    }
    if topic.len() > 249 {
        return Err("kafka topic names are at most 249 characters");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("kafka topic names may only hold ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Errors that no retry fixes: the data or the credentials are wrong.
fn is_permanent(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::UnsupportedSASLMechanism
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::PolicyViolation
    )
}

/// Errors of a cluster that is starting or electing leaders.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
    )
}

#[async_trait]
impl Sink for KafkaSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        self.pending.reserve(batch.records.len());
        for (i, r) in batch.records.iter().enumerate() {
            self.pending.push(Pending {
                topic: r.topic.to_string(),
                key: super::key::record_key(r, batch.events.get(i)),
                payload: message_value(r),
                lsn: r.lsn.0,
                delivery: None,
            });
        }
        // Start producing now; `flush` waits for the acknowledgements and sends again what
        // could not be sent. The batch is kept either way, so a transient failure is left to
        // `flush` (see the contract in `sink/mod.rs`).
        match self.send_pending().await {
            Err(SinkError::Retryable(e)) => {
                tracing::debug!(sink = %self.name, error = %e, "kafka send deferred to flush");
                Ok(())
            }
            other => other,
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.send_pending().await?;
        let mut first_error = None;
        let mut done = vec![false; self.pending.len()];
        for (i, pending) in self.pending.iter_mut().enumerate() {
            let Some(delivery) = pending.delivery.take() else {
                continue;
            };
            match delivery.await {
                Ok(Ok(_)) => done[i] = true,
                Ok(Err((e, _))) => {
                    first_error.get_or_insert((pending.topic.clone(), e));
                }
                Err(_) => {
                    first_error.get_or_insert((pending.topic.clone(), KafkaError::Canceled));
                }
            }
        }
        let mut i = 0;
        self.pending.retain(|_| {
            i += 1;
            !done[i - 1]
        });
        match first_error {
            Some((topic, e)) => {
                // The topic may have gone (a cluster that lost its data): look again next time.
                self.topics.remove(&topic);
                self.renew_producer();
                Err(self.classify(&topic, e))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::legal_topic;

    #[test]
    fn topic_names_follow_kafkas_rule() {
        assert!(legal_topic("app.public.orders").is_ok());
        assert!(legal_topic("App_1-x").is_ok());
        for bad in ["", ".", "..", "app.public.order items", "app.public.zähler"] {
            assert!(legal_topic(bad).is_err(), "{bad:?}");
        }
        assert!(legal_topic(&"a".repeat(250)).is_err());
    }
}
