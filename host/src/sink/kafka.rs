//! The `kafka` sink: records produced to Kafka (or any Kafka-protocol broker) with `acks=all`.
//!
//! The client is rskafka (pure Rust, rustls). Each record goes to the topic its event was named
//! for, keyed by the event key and partitioned by the murmur2 hash of that key exactly as Kafka's
//! default partitioner does, so a row's changes stay in one partition, in order, and Java
//! consumers agree on the placement. Records without a key go to partition 0 so their order is
//! kept too. Records stay pending until the broker acknowledged the produce request that carried
//! them, written by every in-sync replica (`acks=all`); a failed flush sends the rest again.
//!
//! rskafka has no idempotent producer, so a produce that reached the broker but whose
//! acknowledgement was lost is repeated: Kafka may hold a bounded tail twice after such a
//! failure, and every record carries its LSN (the `walflow.lsn` header) for de-duplication.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;

use super::settings::Settings;
use super::{Sink, SinkBatch, SinkError};

/// Most records in one produce request.
const MAX_RECORDS_PER_REQUEST: usize = 2000;
/// Most payload bytes in one produce request (brokers default to 1 MiB per batch).
const MAX_BYTES_PER_REQUEST: usize = 900 * 1024;

/// A record waiting for its acknowledgement.
struct Pending {
    topic: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    lsn: u64,
}

/// How missing topics are handled.
#[derive(Debug, Clone, Copy)]
struct TopicCreation {
    partitions: i32,
    replication_factor: i16,
}

/// Produces records to Kafka.
pub struct KafkaSink {
    name: String,
    brokers: String,
    client: Client,
    compression: Compression,
    create: Option<TopicCreation>,
    timeout: Duration,
    partitions: HashMap<String, Vec<Arc<PartitionClient>>>,
    pending: Vec<Pending>,
}

impl KafkaSink {
    /// Connects using its settings: `brokers` (required), `create_topics`, `partitions`,
    /// `replication_factor`, `compression`, `timeout`, `client_id`, `tls`, `tls_ca`,
    /// `sasl_mechanism`, `sasl_username`, `sasl_password_env`.
    pub async fn from_settings(settings: &toml::Table) -> Result<KafkaSink, SinkError> {
        let s = Settings::new(
            "kafka",
            settings,
            &[
                "brokers",
                "create_topics",
                "partitions",
                "replication_factor",
                "compression",
                "timeout",
                "client_id",
                "tls",
                "tls_ca",
                "sasl_mechanism",
                "sasl_username",
                "sasl_password_env",
            ],
        )?;
        let brokers: Vec<String> = match s.str_list("brokers")? {
            Some(list) => list
                .iter()
                .flat_map(|b| b.split(','))
                .map(|b| b.trim().to_owned())
                .filter(|b| !b.is_empty())
                .collect(),
            None => Vec::new(),
        };
        if brokers.is_empty() {
            return Err(SinkError::Fatal(
                "a kafka sink needs `brokers = [\"host:9092\"]`".into(),
            ));
        }
        let compression = compression(&s)?;
        let timeout = s.duration("timeout")?.unwrap_or(Duration::from_secs(30));
        let create = match s.bool("create_topics")?.unwrap_or(false) {
            false => None,
            true => Some(TopicCreation {
                partitions: s.uint("partitions")?.unwrap_or(1).clamp(1, 100_000) as i32,
                replication_factor: s.uint("replication_factor")?.unwrap_or(1).clamp(1, 100) as i16,
            }),
        };
        let mut builder = ClientBuilder::new(brokers.clone())
            .client_id(s.str("client_id")?.unwrap_or("walflow"))
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 2.0,
                deadline: Some(timeout),
            });
        if let Some(tls) = tls_config(&s)? {
            builder = builder.tls_config(tls);
        }
        if let Some(sasl) = sasl_config(&s)? {
            builder = builder.sasl_config(sasl);
        }
        let joined = brokers.join(",");
        let client = tokio::time::timeout(timeout + Duration::from_secs(1), builder.build())
            .await
            .map_err(|_| unreachable_error(&joined, "timed out"))?
            .map_err(|e| unreachable_error(&joined, &e.to_string()))?;
        Ok(KafkaSink {
            name: format!("kafka:{joined}"),
            brokers: joined,
            client,
            compression,
            create,
            timeout,
            partitions: HashMap::new(),
            pending: Vec::new(),
        })
    }

    /// The partition clients of `topic`, creating the topic first when allowed.
    async fn topic(&mut self, topic: &str) -> Result<Vec<Arc<PartitionClient>>, SinkError> {
        if let Some(p) = self.partitions.get(topic) {
            return Ok(p.clone());
        }
        let mut count = self.partition_count(topic).await?;
        if count.is_none() {
            let Some(create) = self.create else {
                return Err(SinkError::Fatal(format!(
                    "kafka topic `{topic}` does not exist at {}; create it, or set `create_topics = true`",
                    self.brokers
                )));
            };
            self.create_topic(topic, create).await?;
            count = self.wait_for_topic(topic).await?;
        }
        let count = count.unwrap_or(0);
        let mut clients = Vec::with_capacity(count);
        for partition in 0..count as i32 {
            let client = self
                .client
                .partition_client(topic, partition, UnknownTopicHandling::Retry)
                .await
                .map_err(|e| self.classify(topic, e))?;
            clients.push(Arc::new(client));
        }
        self.partitions.insert(topic.to_owned(), clients.clone());
        Ok(clients)
    }

    async fn partition_count(&self, topic: &str) -> Result<Option<usize>, SinkError> {
        let topics = self
            .client
            .list_topics()
            .await
            .map_err(|e| self.classify(topic, e))?;
        Ok(topics
            .into_iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.len())
            .filter(|n| *n > 0))
    }

    async fn create_topic(&self, topic: &str, create: TopicCreation) -> Result<(), SinkError> {
        let controller = self
            .client
            .controller_client()
            .map_err(|e| self.classify(topic, e))?;
        let result = controller
            .create_topic(
                topic,
                create.partitions,
                create.replication_factor,
                self.timeout.as_millis() as i32,
            )
            .await;
        match result {
            Ok(()) => {
                tracing::info!(topic, partitions = create.partitions, "created kafka topic");
                Ok(())
            }
            Err(KafkaError::ServerError {
                protocol_error: ProtocolError::TopicAlreadyExists,
                ..
            }) => Ok(()),
            Err(e @ KafkaError::ServerError { .. }) => Err(SinkError::Fatal(format!(
                "cannot create kafka topic `{topic}` at {}: {e}; create it yourself or fix `partitions`/`replication_factor`",
                self.brokers
            ))),
            Err(e) => Err(self.classify(topic, e)),
        }
    }

    async fn wait_for_topic(&self, topic: &str) -> Result<Option<usize>, SinkError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            if let Some(n) = self.partition_count(topic).await? {
                return Ok(Some(n));
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
        let fatal = matches!(
            &e,
            KafkaError::ServerError {
                protocol_error: ProtocolError::MessageTooLarge
                    | ProtocolError::RecordListTooLarge
                    | ProtocolError::InvalidRecord
                    | ProtocolError::InvalidTopicException
                    | ProtocolError::TopicAuthorizationFailed
                    | ProtocolError::ClusterAuthorizationFailed
                    | ProtocolError::SaslAuthenticationFailed,
                ..
            }
        );
        let message = format!("kafka at {} failed for topic `{topic}`: {e}", self.brokers);
        if fatal {
            SinkError::Fatal(message)
        } else {
            SinkError::Retryable(message)
        }
    }

    /// Groups pending records by partition, keeping their order within each.
    async fn plan(&mut self) -> Result<BTreeMap<(String, i32), Vec<usize>>, SinkError> {
        let mut groups: BTreeMap<(String, i32), Vec<usize>> = BTreeMap::new();
        for i in 0..self.pending.len() {
            let topic = self.pending[i].topic.clone();
            let count = self.topic(&topic).await?.len();
            let partition = partition_for(self.pending[i].key.as_deref(), count);
            groups.entry((topic, partition)).or_default().push(i);
        }
        Ok(groups)
    }

    /// Produces one partition's records in order, request by request.
    async fn produce(
        client: Arc<PartitionClient>,
        records: Vec<Record>,
        compression: Compression,
    ) -> Result<(), KafkaError> {
        let mut start = 0;
        while start < records.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < records.len()
                && end - start < MAX_RECORDS_PER_REQUEST
                && (end == start
                    || bytes + records[end].approximate_size() <= MAX_BYTES_PER_REQUEST)
            {
                bytes += records[end].approximate_size();
                end += 1;
            }
            client
                .produce(records[start..end].to_vec(), compression)
                .await?;
            start = end;
        }
        Ok(())
    }
}

fn unreachable_error(brokers: &str, why: &str) -> SinkError {
    SinkError::Fatal(format!(
        "cannot reach kafka brokers {brokers}: {why}; check `brokers` and that the broker is running"
    ))
}

fn compression(s: &Settings<'_>) -> Result<Compression, SinkError> {
    Ok(match s.str("compression")?.unwrap_or("none") {
        "none" => Compression::NoCompression,
        "gzip" => Compression::Gzip,
        "lz4" => Compression::Lz4,
        "snappy" => Compression::Snappy,
        "zstd" => Compression::Zstd,
        _ => {
            return Err(s.invalid(
                "compression",
                "one of \"none\", \"gzip\", \"lz4\", \"snappy\", \"zstd\"",
            ));
        }
    })
}

fn tls_config(s: &Settings<'_>) -> Result<Option<Arc<rustls::ClientConfig>>, SinkError> {
    let ca = s.str("tls_ca")?;
    if !s.bool("tls")?.unwrap_or(false) && ca.is_none() {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                SinkError::Fatal(format!("cannot read the kafka sink's tls_ca {path}: {e}"))
            })?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| {
                    SinkError::Fatal(format!("the kafka sink's tls_ca {path} is not PEM: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    SinkError::Fatal(format!(
                        "bad certificate in the kafka sink's tls_ca {path}: {e}"
                    ))
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::Fatal(format!("cannot set up TLS for kafka: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

fn sasl_config(s: &Settings<'_>) -> Result<Option<SaslConfig>, SinkError> {
    let Some(mechanism) = s.str("sasl_mechanism")? else {
        return Ok(None);
    };
    let username = s
        .str("sasl_username")?
        .ok_or_else(|| s.invalid("sasl_username", "set when `sasl_mechanism` is"))?;
    let password = s
        .secret_env("sasl_password_env")?
        .ok_or_else(|| s.invalid("sasl_password_env", "set when `sasl_mechanism` is"))?;
    let credentials = Credentials::new(username.to_owned(), password);
    Ok(Some(match mechanism {
        "PLAIN" => SaslConfig::Plain(credentials),
        "SCRAM-SHA-256" => SaslConfig::ScramSha256(credentials),
        "SCRAM-SHA-512" => SaslConfig::ScramSha512(credentials),
        _ => {
            return Err(s.invalid(
                "sasl_mechanism",
                "one of \"PLAIN\", \"SCRAM-SHA-256\", \"SCRAM-SHA-512\"",
            ));
        }
    }))
}

/// Kafka's default partitioner: murmur2 of the key, made positive, modulo the partition count.
pub fn partition_for(key: Option<&[u8]>, partitions: usize) -> i32 {
    match key {
        Some(key) if partitions > 0 => ((murmur2(key) & 0x7fff_ffff) % partitions as u32) as i32,
        _ => 0,
    }
}

/// The 32-bit murmur2 hash with Kafka's seed, as `org.apache.kafka.common.utils.Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
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
                topic: r.topic.clone(),
                key: super::key::record_key(r, batch.events.get(i)),
                payload: r.payload.clone(),
                lsn: r.lsn,
            });
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let groups = self.plan().await?;
        let now = chrono::Utc::now();
        let mut tasks = Vec::with_capacity(groups.len());
        for ((topic, partition), indices) in &groups {
            let client = self.partitions[topic][*partition as usize].clone();
            let records = indices
                .iter()
                .map(|&i| {
                    let p = &self.pending[i];
                    Record {
                        key: p.key.clone(),
                        value: Some(p.payload.clone()),
                        headers: BTreeMap::from([(
                            "walflow.lsn".to_owned(),
                            crate::event::format_lsn(p.lsn).into_bytes(),
                        )]),
                        timestamp: now,
                    }
                })
                .collect();
            tasks.push(KafkaSink::produce(client, records, self.compression));
        }
        let results = futures::future::join_all(tasks).await;
        let mut done = vec![false; self.pending.len()];
        let mut first_error = None;
        for (((topic, _), indices), result) in groups.iter().zip(results) {
            match result {
                Ok(()) => indices.iter().for_each(|&i| done[i] = true),
                Err(e) => {
                    // A partition's leader may have moved: look the topic up again next time.
                    self.partitions.remove(topic);
                    first_error.get_or_insert_with(|| self.classify(topic, e));
                }
            }
        }
        let mut i = 0;
        self.pending.retain(|_| {
            i += 1;
            !done[i - 1]
        });
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        let cases: [(&[u8], i32); 3] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input) as i32, expected, "{:?}", input);
        }
    }

    #[test]
    fn keyless_records_keep_one_partition() {
        assert_eq!(partition_for(None, 12), 0);
        let p = partition_for(Some(b"{\"id\":1}"), 12);
        assert!((0..12).contains(&p));
        assert_eq!(p, partition_for(Some(b"{\"id\":1}"), 12));
    }
}
