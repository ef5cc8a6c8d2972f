//! The sinks against real destinations started by this test: nats-server with JetStream,
//! redis-server, tansu (Kafka protocol), an HTTP endpoint, and a second PostgreSQL cluster.
//!
//! Each test drives the real delivery loop (`walflow::pipeline::Delivery`: batching, encoding,
//! retries with backoff, acknowledgements) with a workload of committed transactions, reads the
//! destination back with an independent client, and checks that it holds exactly the workload's
//! events; destinations are killed mid-stream to check that nothing is acknowledged before the
//! destination has it and nothing is lost after it comes back.

#[path = "sinks/brokers.rs"]
mod brokers;
#[path = "sinks/http_server.rs"]
mod http_server;
#[path = "sinks/kafka_proxy.rs"]
mod kafka_proxy;
#[path = "sinks/workload.rs"]
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value as Json;
use walflow::config::SinkConfig;
use walflow::event::{Event, Lsn, Value};
use walflow::pipeline::{Delivery, DeliveryOptions, Processed, Processor};
use walflow::sink::{Sink, SinkError};
use walflow_tests::{Cluster, ClusterOptions};

use brokers::{Broker, Kind};
use http_server::Endpoint;
use workload::{Running, Workload, identity};

const LONG: Duration = Duration::from_secs(60);

/// Builds a sink from the body of a `[[sinks]]` entry.
/// Builds the sink an entry describes; a refused entry (when read or when built) is a fatal
/// error, as `walflow run` reports it.
async fn sink(entry: &str) -> Result<Box<dyn Sink>, SinkError> {
    let config: SinkConfig =
        toml::from_str(entry).map_err(|e| SinkError::Fatal(e.message().to_owned()))?;
    walflow::sink::build(&config, std::path::Path::new(".")).await
}

/// Why building a sink was refused (whatever the class).
fn refusal(result: Result<Box<dyn Sink>, SinkError>) -> SinkError {
    match result {
        Ok(_) => panic!("expected the sink to be refused"),
        Err(e) => e,
    }
}

fn fatal_message(result: Result<Box<dyn Sink>, SinkError>) -> String {
    match refusal(result) {
        SinkError::Fatal(m) => m,
        SinkError::Retryable(m) => panic!("expected a fatal error, got a retryable one: {m}"),
        SinkError::Rejected(m) => panic!("expected a fatal error, got a rejection: {m}"),
    }
}

/// The message of a refusal that trying again later may overcome.
fn transient_message(result: Result<Box<dyn Sink>, SinkError>) -> String {
    match refusal(result) {
        SinkError::Retryable(m) => m,
        e => panic!("expected a transient error, got {e:?}"),
    }
}

/// Identities (`op:lsn:key`) of records, in LSN order, and how often each occurred.
fn tally(records: &[Json]) -> (Vec<String>, BTreeMap<String, usize>) {
    let mut by_lsn: Vec<(u64, String)> = records
        .iter()
        .map(|r| {
            (
                r["value"]["source"]["lsn"].as_u64().unwrap_or(0),
                identity(r),
            )
        })
        .collect();
    by_lsn.sort();
    let mut counts = BTreeMap::new();
    let mut unique = Vec::new();
    for (_, id) in by_lsn {
        let n = counts.entry(id.clone()).or_insert(0);
        if *n == 0 {
            unique.push(id);
        }
        *n += 1;
    }
    (unique, counts)
}

/// Asserts the destination holds every event of `workload` exactly once.
fn assert_exactly(records: &[Json], workload: &Workload) {
    let (unique, counts) = tally(records);
    assert_eq!(
        unique,
        workload.identities(),
        "events differ from the workload's"
    );
    let dups: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(dups.is_empty(), "duplicated events: {dups:?}");
}

/// Asserts the destination holds every event of `workload` at least once, and only those.
fn assert_all_present(records: &[Json], workload: &Workload) {
    let (unique, _) = tally(records);
    assert_eq!(
        unique,
        workload.identities(),
        "events differ from the workload's"
    );
}

/// Waits until the loop has been unable to acknowledge past `lsn` for a while, proving
/// nothing was confirmed early while the destination was down.
async fn assert_stuck_at(running: &Running, lsn: Lsn, for_how_long: Duration) {
    let deadline = tokio::time::Instant::now() + for_how_long;
    while tokio::time::Instant::now() < deadline {
        assert_eq!(
            running.acked(),
            lsn,
            "the loop acknowledged past {lsn} while the destination was down"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------- redis

async fn redis_records(url: &str, streams: &[&str]) -> Vec<Json> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut out = Vec::new();
    for stream in streams {
        // Paged: a stream of large records would make one huge reply.
        let mut entries = Vec::new();
        let mut from = "-".to_string();
        loop {
            let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(stream)
                .arg(&from)
                .arg("+")
                .arg("COUNT")
                .arg(20)
                .query_async(&mut conn)
                .await
                .unwrap();
            let Some(last) = reply.ids.last() else { break };
            from = format!("({}", last.id);
            entries.extend(reply.ids);
        }
        for entry in entries {
            let value: Vec<u8> = entry.get("value").expect("value field");
            let record: Json = serde_json::from_slice(&value).unwrap();
            let lsn: String = entry.get("lsn").expect("lsn field");
            let expected =
                walflow::event::format_lsn(record["value"]["source"]["lsn"].as_u64().unwrap());
            assert_eq!(lsn, expected, "the lsn field matches the record");
            if let Some(key) = entry.get::<Vec<u8>>("key") {
                let key: Json = serde_json::from_slice(&key).unwrap();
                assert_eq!(key, record["key"], "the key field is the record's key");
            }
            out.push(record);
        }
    }
    out
}

const STREAMS: [&str; 2] = ["app.public.orders", "app.public.items"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_get_every_event_once() {
    let redis = Broker::start(Kind::Redis);
    let workload = workload::random(1, 120, true);
    let s = sink(&format!("type = \"redis\"\nurl = \"{}\"", redis.url()))
        .await
        .unwrap();
    workload::deliver_all(vec![s], &workload).await;
    assert_exactly(&redis_records(&redis.url(), &STREAMS).await, &workload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_maxlen_trims_each_stream() {
    let redis = Broker::start(Kind::Redis);
    let workload = workload::random(2, 100, false);
    let entry = format!(
        "type = \"redis\"\nurl = \"{}\"\nmaxlen = 5\nmaxlen_approximate = false\nstream_prefix = \"cdc:\"",
        redis.url()
    );
    workload::deliver_all(vec![sink(&entry).await.unwrap()], &workload).await;
    let records = redis_records(&redis.url(), &["cdc:app.public.orders"]).await;
    assert_eq!(records.len(), 5, "MAXLEN 5 keeps five entries");
    let last_orders: Vec<String> = workload
        .events()
        .filter(|e| e.relation.table == "orders")
        .map(|e| identity(&walflow::encode::json::record(e)))
        .collect();
    let kept: Vec<String> = records.iter().map(identity).collect();
    assert_eq!(
        kept,
        last_orders[last_orders.len() - 5..],
        "the newest entries stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_mid_stream_loses_nothing_and_confirms_nothing_early() {
    let mut redis = Broker::start(Kind::Redis);
    let workload = workload::random(3, 80, true);
    let (first, second) = workload.units.split_at(40);
    let s = sink(&format!("type = \"redis\"\nurl = \"{}\"", redis.url()))
        .await
        .unwrap();
    let mut running = Running::start(vec![s], None);
    running.feed(first).await;
    let first_lsn = first.last().unwrap().end_lsn;
    running.wait_acked(first_lsn, LONG).await;

    redis.stop();
    running.feed(second).await;
    assert_stuck_at(&running, first_lsn, Duration::from_secs(2)).await;

    redis.restart();
    running.wait_acked(workload.last_lsn(), LONG).await;
    running.finish().await.unwrap();
    // Redis applies a MULTI/EXEC all or nothing, so even the retried batch is there once.
    assert_exactly(&redis_records(&redis.url(), &STREAMS).await, &workload);
}

// ---------------------------------------------------------------- nats

fn nats_entry(url: &str) -> String {
    format!(
        "type = \"nats\"\nurl = \"{url}\"\nstream = \"walflow\"\nsubjects = [\"app.>\"]\ntimeout = \"3s\""
    )
}

async fn nats_records(url: &str) -> Vec<Json> {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream("walflow").await.unwrap();
    let info = stream.info().await.unwrap();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        let id = m
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.to_string())
            .expect("every message has a Nats-Msg-Id");
        let record: Json = serde_json::from_slice(&m.payload).unwrap();
        let lsn = record["value"]["source"]["lsn"].as_u64().unwrap();
        assert!(
            id.starts_with(&format!("{lsn:X}:")),
            "msg id {id} is made from LSN {lsn:X}"
        );
        assert_eq!(
            m.subject.as_str(),
            record["topic"].as_str().unwrap(),
            "subject = topic"
        );
        out.push(record);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_jetstream_gets_every_event_once_even_when_redelivered() {
    let nats = Broker::start(Kind::Nats);
    let workload = workload::random(4, 100, true);
    let s = sink(&nats_entry(&nats.url())).await.unwrap();
    workload::deliver_all(vec![s], &workload).await;
    // A crash before the checkpoint: a new process delivers the last 30 transactions again.
    let tail = Workload {
        units: workload.units[workload.units.len() - 30..].to_vec(),
        orders: Default::default(),
        items: Default::default(),
    };
    let again = sink(&nats_entry(&nats.url())).await.unwrap();
    workload::deliver_all(vec![again], &tail).await;
    assert_exactly(&nats_records(&nats.url()).await, &workload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_mid_stream_loses_nothing_and_confirms_nothing_early() {
    let mut nats = Broker::start(Kind::Nats);
    let workload = workload::random(5, 80, false);
    let (first, second) = workload.units.split_at(40);
    let s = sink(&nats_entry(&nats.url())).await.unwrap();
    let mut running = Running::start(vec![s], None);
    running.feed(first).await;
    let first_lsn = first.last().unwrap().end_lsn;
    running.wait_acked(first_lsn, LONG).await;

    nats.stop();
    running.feed(second).await;
    assert_stuck_at(&running, first_lsn, Duration::from_secs(2)).await;

    nats.restart();
    running.wait_acked(workload.last_lsn(), LONG).await;
    running.finish().await.unwrap();
    // Republished messages are dropped by JetStream's de-duplication.
    assert_exactly(&nats_records(&nats.url()).await, &workload);
}

// ---------------------------------------------------------------- http

fn http_records(endpoint: &Endpoint) -> Vec<Json> {
    let seen = endpoint.seen.lock().unwrap();
    let mut out = Vec::new();
    for (content_type, body) in &seen.accepted {
        if content_type == "application/x-ndjson" {
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                out.push(serde_json::from_slice(line).unwrap());
            }
        } else {
            assert_eq!(content_type, "application/json");
            let array: Vec<Json> = serde_json::from_slice(body).unwrap();
            out.extend(array);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_posts_batches_and_retries_5xx_and_429_after_retry_after() {
    let endpoint = Endpoint::start(vec![(503, None), (429, Some("1")), (502, None)]).await;
    let workload = workload::random(6, 60, true);
    let entry = format!(
        "type = \"http\"\nurl = \"{}\"\nheaders = {{ authorization = \"Bearer t0ken\" }}\ntimeout = \"5s\"\nmax_records = 50",
        endpoint.url()
    );
    workload::deliver_all(vec![sink(&entry).await.unwrap()], &workload).await;
    assert_exactly(&http_records(&endpoint), &workload);
    let seen = endpoint.seen.lock().unwrap();
    let statuses: Vec<u16> = seen.answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(&statuses[..3], &[503, 429, 502]);
    let waited = seen.answers[2].1 - seen.answers[1].1;
    assert!(
        waited >= Duration::from_secs(1),
        "Retry-After: 1 honoured (waited {waited:?})"
    );
    assert!(
        seen.auth
            .iter()
            .all(|a| a.as_deref() == Some("Bearer t0ken"))
    );
    assert!(seen.accepted.len() > 1, "batches are split by max_records");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ndjson_bodies_hold_one_record_per_line() {
    let endpoint = Endpoint::start(vec![]).await;
    let workload = workload::random(7, 30, false);
    let entry = format!(
        "type = \"http\"\nurl = \"{}\"\nformat = \"ndjson\"",
        endpoint.url()
    );
    workload::deliver_all(vec![sink(&entry).await.unwrap()], &workload).await;
    assert_exactly(&http_records(&endpoint), &workload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_400_stops_the_pipeline_without_confirming() {
    let endpoint = Endpoint::start(vec![(400, None)]).await;
    let workload = workload::random(8, 10, false);
    let s = sink(&format!("type = \"http\"\nurl = \"{}\"", endpoint.url()))
        .await
        .unwrap();
    let running = Running::start(vec![s], None);
    running.feed(&workload.units).await;
    let acks = running.acks.clone();
    let err = running.finish().await.expect_err("a 400 is fatal");
    let message = err.to_string();
    assert!(
        message.contains("400") && message.contains("bad field `qty`"),
        "{message}"
    );
    use walflow::error::{Class, Classify};
    assert_eq!(err.class(), Class::Rejected, "{message}");
    assert_eq!(
        workload::lsn_of(*acks.borrow()),
        Lsn::ZERO,
        "nothing confirmed"
    );
    assert_eq!(
        endpoint.seen.lock().unwrap().answers.len(),
        1,
        "no retry after a 400"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_400_dead_letters_the_batch_under_on_error_dead_letter() {
    let endpoint = Endpoint::start(vec![(400, None)]).await;
    let dead_endpoint = Endpoint::start(vec![]).await;
    let workload = workload::random(11, 40, false);
    let main = sink(&format!("type = \"http\"\nurl = \"{}\"", endpoint.url()))
        .await
        .unwrap();
    let dead = sink(&format!(
        "type = \"http\"\nurl = \"{}\"",
        dead_endpoint.url()
    ))
    .await
    .unwrap();
    let delivery = Delivery::new(
        Box::new(walflow::pipeline::Passthrough),
        workload::encoder(),
        vec![main],
        Some(dead),
        DeliveryOptions {
            max_events: 16,
            max_backoff: Duration::from_millis(300),
            ..DeliveryOptions::default()
        },
        Default::default(),
    )
    .with_rejections_dead_lettered(vec![true]);
    let (result, acked) = workload::run_to_end(delivery, &workload).await;
    assert_eq!(
        result.unwrap(),
        Some(workload.last_lsn()),
        "the pipeline went on"
    );
    assert_eq!(acked, workload.last_lsn());

    let dead_records = http_records(&dead_endpoint);
    assert!(
        !dead_records.is_empty() && dead_records.len() <= 16,
        "one batch dead-lettered, got {}",
        dead_records.len()
    );
    assert!(
        dead_records
            .iter()
            .all(|r| r["error"].as_str().is_some_and(|e| e.contains("400"))),
        "each dead letter carries the rejection"
    );
    let main_records = http_records(&endpoint);
    let delivered: Vec<Json> = main_records.into_iter().chain(dead_records).collect();
    assert_exactly(&delivered, &workload);
}

// ---------------------------------------------------------------- dead letters, several sinks

/// A processor that fails every `items` event, as a plugin under `on_error = "dead-letter"` does.
struct FailItems;

#[async_trait]
impl Processor for FailItems {
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, walflow::error::Error> {
        let (bad, good): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| e.relation.table == "items");
        Ok(Processed {
            events: good,
            dead_letters: bad
                .into_iter()
                .map(|e| (e, "plugin trapped".into()))
                .collect(),
            ..Processed::default()
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_go_to_a_broker_sink_with_their_error() {
    let redis = Broker::start(Kind::Redis);
    let endpoint = Endpoint::start(vec![(503, None)]).await;
    let workload = workload::random(9, 60, false);
    let main = sink(&format!("type = \"redis\"\nurl = \"{}\"", redis.url()))
        .await
        .unwrap();
    let dead = sink(&format!("type = \"http\"\nurl = \"{}\"", endpoint.url()))
        .await
        .unwrap();
    let delivery = Delivery::new(
        Box::new(FailItems),
        workload::encoder(),
        vec![main],
        Some(dead),
        DeliveryOptions {
            max_backoff: Duration::from_millis(300),
            ..DeliveryOptions::default()
        },
        Default::default(),
    );
    let (result, acked) = workload::run_to_end(delivery, &workload).await;
    assert_eq!(result.unwrap(), Some(workload.last_lsn()));
    assert_eq!(acked, workload.last_lsn());

    let dead_records = http_records(&endpoint);
    let expected_dead: Vec<String> = workload
        .events()
        .filter(|e| e.relation.table == "items")
        .map(|e| identity(&walflow::encode::json::record(e)))
        .collect();
    assert_eq!(
        dead_records.iter().map(identity).collect::<Vec<_>>(),
        expected_dead
    );
    assert!(dead_records.iter().all(|r| r["error"] == "plugin trapped"));
    let main_records = redis_records(&redis.url(), &STREAMS).await;
    assert!(
        main_records
            .iter()
            .all(|r| r["value"]["source"]["table"] == "orders")
    );
    assert_eq!(
        main_records.len(),
        workload.events().count() - expected_dead.len()
    );
}

/// The mode bits of every file in `dir`, in octal, by name.
fn file_modes(dir: &std::path::Path) -> BTreeMap<String, String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap())
        .map(|entry| {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            (
                entry.file_name().to_string_lossy().into_owned(),
                format!("{mode:o}"),
            )
        })
        .collect()
}

/// Records hold source rows: the file sink's files, rotated ones and dead letters included,
/// are readable by their owner only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_and_dead_letter_files_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let workload = workload::random(17, 60, false);
    let file_sink = |name: &str, extra: &str| {
        let path = dir.path().join(name);
        format!("type = \"file\"\npath = \"{}\"\n{extra}", path.display())
    };
    let main = sink(&file_sink("events.jsonl", "max_bytes = 4000"))
        .await
        .unwrap();
    let dead = sink(&file_sink("dead.jsonl", "")).await.unwrap();
    let delivery = Delivery::new(
        Box::new(FailItems),
        workload::encoder(),
        vec![main],
        Some(dead),
        DeliveryOptions::default(),
        Default::default(),
    );
    let (result, _) = workload::run_to_end(delivery, &workload).await;
    assert_eq!(result.unwrap(), Some(workload.last_lsn()));

    let modes = file_modes(dir.path());
    assert!(
        modes.contains_key("dead.jsonl") && modes.contains_key("events.jsonl.000002"),
        "rotated files and dead letters were written: {modes:?}"
    );
    assert!(modes.values().all(|m| m == "600"), "{modes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_sinks_nothing_is_confirmed_until_both_have_it() {
    let mut redis = Broker::start(Kind::Redis);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let workload = workload::random(10, 60, false);
    let (first, second) = workload.units.split_at(30);
    let file_sink = sink(&format!("type = \"file\"\npath = \"{}\"", file.display()))
        .await
        .unwrap();
    let redis_sink = sink(&format!("type = \"redis\"\nurl = \"{}\"", redis.url()))
        .await
        .unwrap();
    let mut running = Running::start(vec![file_sink, redis_sink], None);
    running.feed(first).await;
    let first_lsn = first.last().unwrap().end_lsn;
    running.wait_acked(first_lsn, LONG).await;

    redis.stop();
    running.feed(second).await;
    // The file sink keeps working, yet nothing past what redis has is confirmed.
    assert_stuck_at(&running, first_lsn, Duration::from_secs(2)).await;

    redis.restart();
    running.wait_acked(workload.last_lsn(), LONG).await;
    running.finish().await.unwrap();
    let lines: Vec<Json> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_all_present(&lines, &workload);
    assert_all_present(&redis_records(&redis.url(), &STREAMS).await, &workload);
}

// ---------------------------------------------------------------- kafka

async fn kafka_records(brokers: &str, topics: &[&str]) -> Vec<(i32, Json, Option<Vec<u8>>)> {
    use rskafka::client::ClientBuilder;
    use rskafka::client::partition::UnknownTopicHandling;
    let client = ClientBuilder::new(vec![brokers.to_owned()])
        .build()
        .await
        .unwrap();
    let listed = client.list_topics().await.unwrap();
    let mut out = Vec::new();
    for topic in topics {
        let Some(t) = listed.iter().find(|t| t.name == *topic) else {
            continue;
        };
        for &partition in &t.partitions {
            let pc = client
                .partition_client(*topic, partition, UnknownTopicHandling::Retry)
                .await
                .unwrap();
            let mut offset = 0;
            loop {
                let (records, high) = pc.fetch_records(offset, 1..10_000_000, 500).await.unwrap();
                for r in &records {
                    let value = r.record.value.as_ref().expect("value");
                    out.push((
                        partition,
                        serde_json::from_slice(value).unwrap(),
                        r.record.key.clone(),
                    ));
                    offset = r.offset + 1;
                }
                if offset >= high || records.is_empty() {
                    break;
                }
            }
        }
    }
    out
}

/// The partition Kafka's Java client (DefaultPartitioner) picks for `key`: murmur2 with Kafka's
/// seed, made positive, modulo the partition count.
fn java_partition(key: &[u8], partitions: u32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions) as i32
}

/// `org.apache.kafka.common.utils.Utils.murmur2`.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    let mut h = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]).wrapping_mul(M);
        k ^= k >> 24;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    let rest = chunks.remainder();
    for (i, byte) in rest.iter().enumerate().rev() {
        h ^= u32::from(*byte) << (8 * i);
    }
    if !rest.is_empty() {
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

#[test]
fn murmur2_matches_kafka() {
    // Kafka's UtilsTest.testMurmur2.
    assert_eq!(murmur2(b"21") as i32, -973932308);
    assert_eq!(murmur2(b"foobar") as i32, -790332482);
    assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
}

/// The records in the workload's topics, without partitions and keys.
async fn kafka_values(brokers: &str) -> Vec<Json> {
    kafka_records(brokers, &STREAMS)
        .await
        .into_iter()
        .map(|(_, r, _)| r)
        .collect()
}

fn kafka_entry(brokers: &str) -> String {
    format!(
        "type = \"kafka\"\nbrokers = [\"{brokers}\"]\ncreate_topics = true\npartitions = 3\ncompression = \"zstd\"\ntimeout = \"3s\""
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_gets_every_event_keyed_and_partitioned_by_key() {
    let tansu = Broker::start(Kind::Tansu);
    let workload = workload::random(11, 80, true);
    let s = sink(&kafka_entry(&tansu.url())).await.unwrap();
    workload::deliver_all(vec![s], &workload).await;
    let got = kafka_records(&tansu.url(), &STREAMS).await;
    let mut partitions_by_key: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
    for (partition, record, key) in &got {
        let key = key.as_ref().expect("every record has a key");
        let key_json: Json = serde_json::from_slice(key).unwrap();
        assert_eq!(key_json, record["key"], "the Kafka key is the event key");
        assert_eq!(
            *partition,
            java_partition(key, 3),
            "placed where Kafka's Java client would place the key"
        );
        partitions_by_key
            .entry(format!("{}{}", record["topic"], key_json))
            .or_default()
            .insert(*partition);
    }
    assert!(
        partitions_by_key.values().all(|p| p.len() == 1),
        "a row's changes stay in one partition"
    );
    let used: BTreeSet<i32> = got.iter().map(|(p, _, _)| *p).collect();
    assert!(used.len() > 1, "keys spread over partitions: {used:?}");
    let records: Vec<Json> = got.into_iter().map(|(_, r, _)| r).collect();
    assert_exactly(&records, &workload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_mid_stream_confirms_nothing_early_and_redelivers_the_rest() {
    let mut tansu = Broker::start(Kind::Tansu);
    let workload = workload::random(12, 60, false);
    let (first, second) = workload.units.split_at(30);
    let s = sink(&kafka_entry(&tansu.url())).await.unwrap();
    let mut running = Running::start(vec![s], None);
    running.feed(first).await;
    let first_lsn = first.last().unwrap().end_lsn;
    running.wait_acked(first_lsn, LONG).await;

    tansu.stop();
    running.feed(second).await;
    assert_stuck_at(&running, first_lsn, Duration::from_secs(3)).await;

    // tansu runs on memory storage: it comes back empty, so what must be there afterwards is
    // every event that was not confirmed before it went down.
    tansu.restart();
    running.wait_acked(workload.last_lsn(), LONG).await;
    running.finish().await.unwrap();
    let records = kafka_values(&tansu.url()).await;
    let tail = Workload {
        units: second.to_vec(),
        orders: Default::default(),
        items: Default::default(),
    };
    let (unique, _) = tally(&records);
    let expected = tail.identities();
    let present: BTreeSet<&String> = unique.iter().collect();
    let missing: Vec<&String> = expected.iter().filter(|id| !present.contains(id)).collect();
    assert!(missing.is_empty(), "unconfirmed events lost: {missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_before_a_new_topic_takes_each_batch_once() {
    let mut tansu = Broker::start(Kind::Tansu);
    let workload = workload::random(14, 20, false);
    let s = sink(&kafka_entry(&tansu.url())).await.unwrap();
    // Down before the first record: looking its topic up fails, and the loop retries.
    tansu.stop();
    let mut running = Running::start(vec![s], None);
    running.feed(&workload.units).await;
    assert_stuck_at(&running, Lsn::ZERO, Duration::from_secs(3)).await;
    tansu.restart();
    running.wait_acked(workload.last_lsn(), LONG).await;
    running.finish().await.unwrap();
    let records = kafka_values(&tansu.url()).await;
    // A write that failed must not have kept its batch: the retried write would add it again.
    assert_exactly(&records, &workload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_writes_a_produce_once_when_its_answer_is_lost() {
    let (proxy, listener) = kafka_proxy::KafkaProxy::bind().await;
    let tansu = Broker::start_tansu_behind(proxy.port());
    proxy.forward_to(listener, tansu.port());
    let workload = workload::random(13, 60, false);
    let entry = format!(
        "type = \"kafka\"\nbrokers = \"{}\"\ncreate_topics = true\npartitions = 3\ntimeout = \"20s\"\n\
         librdkafka_options = {{ \"linger.ms\" = \"20\" }}",
        proxy.address()
    );
    let s = sink(&entry).await.unwrap();
    proxy.lose_next_produce_answer();
    workload::deliver_all(vec![s], &workload).await;
    assert_eq!(
        proxy.answers_lost(),
        1,
        "the proxy lost one produce answer, so the producer had to retry"
    );
    let records = kafka_values(&tansu.url()).await;
    // The retried produce reached the broker twice; the idempotent producer's sequence numbers
    // let the broker keep one copy.
    assert_exactly(&records, &workload);
}

// ---------------------------------------------------------------- postgres

async fn target_rows(client: &tokio_postgres::Client) -> (Vec<String>, Vec<String>) {
    let orders = client
        .query(
            "SELECT format('%s|%s|%s|%s|%s|%s', id, name, qty, price, tags, extract(epoch from at))
               FROM public.orders ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let items = client
        .query(
            "SELECT format('%s|%s', sku, stock) FROM public.items ORDER BY sku",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    (orders, items)
}

/// The rows the workload leaves, formatted as [`target_rows`] reads them.
async fn expected_rows(
    client: &tokio_postgres::Client,
    workload: &Workload,
) -> (Vec<String>, Vec<String>) {
    let text = |v: &Value| match v {
        Value::Int(n) => n.to_string(),
        Value::Text(s) | Value::Numeric(s) => s.clone(),
        other => panic!("unexpected {other:?}"),
    };
    let mut orders = Vec::new();
    for row in workload.orders.values() {
        let Value::Temporal(_, at) = &row[5] else {
            panic!()
        };
        // Let PostgreSQL render the array and the timestamp the way the query above does.
        let r = client
            .query_one(
                "SELECT format('%s|%s|%s|%s|%s|%s', $1::text::int8, $2::text, $3::text::int4, $4::text::numeric(12,2), $5::text::text[], extract(epoch from $6::text::timestamptz))",
                &[&text(&row[0]), &text(&row[1]), &text(&row[2]), &text(&row[3]), &"{\"t\"}".to_string(), at],
            )
            .await
            .unwrap();
        let mut s: String = r.get(0);
        // The tags column differs per row: put the real one in.
        let Value::Array(tags) = &row[4] else {
            panic!()
        };
        let Value::Text(first) = &tags.elements[0] else {
            panic!()
        };
        s = s.replacen("|{t}|", &format!("|{{{first},NULL}}|"), 1);
        orders.push(s);
    }
    let items = workload
        .items
        .values()
        .map(|r| format!("{}|{}", text(&r[0]), text(&r[1])))
        .collect();
    (orders, items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_equals_the_source_even_after_redelivery() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let target = cluster.new_database().await;
    let client = target.client().await;
    client.batch_execute(workload::TABLES_SQL).await.unwrap();
    let workload = workload::random(13, 200, true);
    let entry = format!("type = \"postgres\"\nurl = \"{}\"", target.url("postgres"));
    workload::deliver_all(vec![sink(&entry).await.unwrap()], &workload).await;
    let expected = expected_rows(&client, &workload).await;
    assert_eq!(target_rows(&client).await, expected);

    // A crash before the checkpoint: the last 80 transactions arrive again, in order.
    let tail = Workload {
        units: workload.units[workload.units.len() - 80..].to_vec(),
        orders: Default::default(),
        items: Default::default(),
    };
    workload::deliver_all(vec![sink(&entry).await.unwrap()], &tail).await;
    assert_eq!(
        target_rows(&client).await,
        expected,
        "redelivery changes nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_target_down_mid_stream_loses_nothing() {
    let cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let target = cluster.new_database().await;
    let admin = cluster.superuser("postgres").await;
    let client = target.client().await;
    client.batch_execute(workload::TABLES_SQL).await.unwrap();
    let workload = workload::random(14, 120, true);
    let (first, second) = workload.units.split_at(60);
    let entry = format!("type = \"postgres\"\nurl = \"{}\"", target.url("postgres"));
    let mut running = Running::start(vec![sink(&entry).await.unwrap()], None);
    running.feed(first).await;
    let first_lsn = first.last().unwrap().end_lsn;
    running.wait_acked(first_lsn, LONG).await;

    // The target refuses connections and drops the sink's.
    let db = target.name().to_owned();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
        ))
        .await
        .unwrap();
    running.feed(second).await;
    assert_stuck_at(&running, first_lsn, Duration::from_secs(2)).await;

    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
    running.wait_acked(workload.last_lsn(), LONG).await;
    running.finish().await.unwrap();
    let client = target.client().await;
    assert_eq!(
        target_rows(&client).await,
        expected_rows(&client, &workload).await
    );
}

/// Applies `events` to a new postgres sink in one flush, as one batch, and checks it took the
/// bulk path: the flush committed a staging table on the sink's connection (a flush that
/// failed in bulk and was applied event by event leaves none).
async fn flush_in_bulk(entry: &str, events: &[Event], client: &tokio_postgres::Client) {
    assert!(
        flush_once(entry, events, client).await,
        "the flush was applied in bulk"
    );
}

/// Applies `events` to a new postgres sink in one flush; whether it was applied in bulk.
async fn flush_once(entry: &str, events: &[Event], client: &tokio_postgres::Client) -> bool {
    let mut s = sink(entry).await.unwrap();
    let batch = walflow::sink::SinkBatch {
        records: &[],
        events,
    };
    s.write(batch).await.unwrap();
    s.flush().await.unwrap();
    let staged = client
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'walflow_stage_%' AND relpersistence = 't'",
            &[],
        )
        .await
        .unwrap();
    staged.get::<_, i64>(0) > 0
}

/// Changes to `orders` (id, name) and `items` (sku), and the rows they leave.
#[derive(Default)]
struct Script {
    events: Vec<Event>,
    orders: BTreeMap<i64, String>,
    items: BTreeSet<String>,
}

impl Script {
    fn push(
        &mut self,
        op: walflow::event::Op,
        before: Option<Vec<Value>>,
        after: Option<Vec<Value>>,
    ) {
        let relation = match before.as_ref().or(after.as_ref()).map(|r| r.len()) {
            Some(2) | None => workload::items(),
            _ => workload::orders(),
        };
        self.events.push(Event {
            op,
            relation,
            source: Default::default(),
            before,
            after,
            topic: None,
            message: None,
        });
    }

    fn order(id: i64, name: &str) -> Vec<Value> {
        let mut row = vec![Value::Null; 6];
        row[0] = Value::Int(id);
        row[1] = Value::Text(name.into());
        row
    }

    fn upsert(&mut self, id: i64, name: &str) {
        use walflow::event::Op;
        let op = if self.orders.contains_key(&id) {
            Op::Update
        } else {
            Op::Create
        };
        self.orders.insert(id, name.into());
        self.push(op, None, Some(Script::order(id, name)));
    }

    fn delete(&mut self, id: i64) {
        self.orders.remove(&id);
        self.push(
            walflow::event::Op::Delete,
            Some(Script::order(id, "")),
            None,
        );
    }

    /// An update that changes the key from `old` to `new`.
    fn rekey(&mut self, old: i64, new: i64, name: &str) {
        assert!(self.orders.remove(&old).is_some() && !self.orders.contains_key(&new));
        self.orders.insert(new, name.into());
        let (before, after) = (Script::order(old, ""), Script::order(new, name));
        self.push(walflow::event::Op::Update, Some(before), Some(after));
    }

    fn item(&mut self, sku: &str) {
        self.items.insert(sku.into());
        let row = vec![Value::Text(sku.into()), Value::Int(1)];
        self.push(walflow::event::Op::Create, None, Some(row));
    }

    fn truncate_items(&mut self) {
        self.items.clear();
        self.push(walflow::event::Op::Truncate, None, None);
    }
}

/// `orders` as `id|name` and `items` as `sku`, in key order.
async fn script_rows(client: &tokio_postgres::Client) -> (Vec<String>, Vec<String>) {
    let text = |sql| async move {
        let rows = client.query(sql, &[]).await.unwrap();
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    (
        text("SELECT format('%s|%s', id, name) FROM orders ORDER BY id").await,
        text("SELECT sku FROM items ORDER BY sku").await,
    )
}

/// One flush with everything the bulk path folds or splits: a key inserted, updated, deleted
/// and reinserted; inserted then deleted; deleted then inserted; a key change chain a→b→c; a
/// key freed by a change and taken by another; a truncate of one table between changes of the
/// other. Enough rows change for the bulk `COPY`. Applied twice (a redelivery), the tables are
/// the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bulk_flush_keeps_source_order_and_is_idempotent() {
    let target = Cluster::shared().new_database().await;
    let client = target.client().await;
    client.batch_execute(workload::TABLES_SQL).await.unwrap();
    let entry = format!("type = \"postgres\"\nurl = \"{}\"", target.url("postgres"));
    let mut script = Script::default();
    for id in 1..=300 {
        script.upsert(id, &format!("first {id}"));
    }
    script.item("a");
    flush_in_bulk(&entry, &script.events, &client).await;
    script.events.clear();

    script.upsert(1000, "v1");
    script.upsert(1000, "v2");
    script.delete(1000);
    script.upsert(1000, "v3");
    script.upsert(1001, "gone");
    script.delete(1001);
    script.delete(5);
    script.upsert(5, "back");
    script.upsert(2000, "chain");
    script.rekey(2000, 2001, "chain b");
    script.rekey(2001, 2002, "chain c");
    script.rekey(7, 3007, "seven moved");
    script.rekey(6, 7, "six took seven's key");
    script.item("b");
    script.truncate_items();
    script.item("c");
    script.upsert(1000, "v4");
    script.rekey(3007, 6, "seven took six's old key");
    for id in 100..=250 {
        script.upsert(id, &format!("second {id}"));
    }
    let expected = (
        script
            .orders
            .iter()
            .map(|(id, name)| format!("{id}|{name}"))
            .collect::<Vec<_>>(),
        script.items.iter().cloned().collect::<Vec<_>>(),
    );
    flush_in_bulk(&entry, &script.events, &client).await;
    assert_eq!(script_rows(&client).await, expected);
    flush_in_bulk(&entry, &script.events, &client).await;
    assert_eq!(
        script_rows(&client).await,
        expected,
        "redelivery changes nothing"
    );
}

/// A target with a unique index besides its key: two rows swap names through a temporary one,
/// which the bulk path's reordering breaks (the second row takes the first's name before the
/// first lets it go). The flush is applied again event by event and ends right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_flush_that_fails_in_bulk_is_applied_in_source_order() {
    let target = Cluster::shared().new_database().await;
    let client = target.client().await;
    client.batch_execute(workload::TABLES_SQL).await.unwrap();
    client
        .batch_execute("CREATE UNIQUE INDEX ON public.orders (name)")
        .await
        .unwrap();
    let entry = format!("type = \"postgres\"\nurl = \"{}\"", target.url("postgres"));
    let mut script = Script::default();
    script.upsert(1, "x");
    script.upsert(2, "y");
    for id in 100..200 {
        script.upsert(id, &format!("first {id}"));
    }
    flush_in_bulk(&entry, &script.events, &client).await;
    script.events.clear();
    script.upsert(1, "temporary");
    script.upsert(2, "x");
    script.upsert(1, "y");
    for id in 100..200 {
        script.upsert(id, &format!("second {id}"));
    }
    assert!(
        !flush_once(&entry, &script.events, &client).await,
        "the bulk attempt was rolled back"
    );
    let expected: Vec<String> = script
        .orders
        .iter()
        .map(|(id, name)| format!("{id}|{name}"))
        .collect();
    assert_eq!(script_rows(&client).await.0, expected);
}

/// A random workload (key changes, deletes, truncates, two tables) in one flush, then again:
/// the replica equals the source both times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_large_flush_equals_the_source_even_when_delivered_twice() {
    let target = Cluster::shared().new_database().await;
    let client = target.client().await;
    client.batch_execute(workload::TABLES_SQL).await.unwrap();
    let workload = workload::random(17, 1500, true);
    let events: Vec<Event> = workload.events().cloned().collect();
    let entry = format!("type = \"postgres\"\nurl = \"{}\"", target.url("postgres"));
    let expected = expected_rows(&client, &workload).await;
    flush_in_bulk(&entry, &events, &client).await;
    assert_eq!(target_rows(&client).await, expected);
    flush_in_bulk(&entry, &events, &client).await;
    assert_eq!(
        target_rows(&client).await,
        expected,
        "redelivery changes nothing"
    );
}

// ---------------------------------------------------------------- bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_destinations_are_named_at_start() {
    let port = brokers::free_port();
    // Nothing listening is transient: a later start may find the destination up (and
    // `walflow run` exits with the transient code, for its supervisor to start it again).
    let m = transient_message(
        sink(&format!(
            "type = \"redis\"\nurl = \"redis://127.0.0.1:{port}\""
        ))
        .await,
    );
    assert!(
        m.contains(&format!("redis at redis://127.0.0.1:{port}")),
        "{m}"
    );
    let m = transient_message(
        sink(&format!(
            "type = \"nats\"\nurl = \"nats://127.0.0.1:{port}\""
        ))
        .await,
    );
    assert!(
        m.contains(&format!("nats at nats://127.0.0.1:{port}")),
        "{m}"
    );
    let m = transient_message(
        sink(&format!(
            "type = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\ntimeout = \"1s\""
        ))
        .await,
    );
    assert!(
        m.contains(&format!("kafka brokers 127.0.0.1:{port}")),
        "{m}"
    );
    let m = transient_message(
        sink(&format!(
            "type = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:{port}/x\""
        ))
        .await,
    );
    assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");
}

/// A password inline in a sink's URL never appears in its errors or its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_urls_in_errors_and_names_hide_their_password() {
    let port = brokers::free_port();
    for url in [
        format!("postgres://postgres:url-secret@127.0.0.1:{port}/x"),
        format!("redis://:url-secret@127.0.0.1:{port}"),
        format!("nats://walflow:url-secret@127.0.0.1:{port}"),
    ] {
        let kind = url.split("://").next().unwrap();
        let m = refusal(sink(&format!("type = \"{kind}\"\nurl = \"{url}\"")).await).to_string();
        assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");
        assert!(!m.contains("url-secret"), "{m}");
    }
    let url = format!("http://walflow:url-secret@127.0.0.1:{port}/hook");
    let mut http = sink(&format!("type = \"http\"\nurl = \"{url}\""))
        .await
        .unwrap();
    assert!(!http.name().contains("url-secret"), "{}", http.name());
    http.write(batch(&numbered_records(0, 1))).await.unwrap();
    let m = http.flush().await.expect_err("nothing listens").to_string();
    assert!(m.contains(&format!("127.0.0.1:{port}")), "{m}");
    assert!(!m.contains("url-secret"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_settings_name_the_key() {
    let cases = [
        (
            "type = \"redis\"\nurl = \"redis://x\"\nmax_len = 3",
            "unknown field `max_len`",
        ),
        (
            "type = \"redis\"\nurl = \"redis://x\"\nmaxlen = \"3\"",
            "`maxlen` of a redis sink",
        ),
        ("type = \"http\"", "missing field `url`"),
        ("type = \"http\"\nurl = \"ftp://x\"", "`url` of a http sink"),
        (
            "type = \"http\"\nurl = \"http://x\"\nformat = \"xml\"",
            "`format`",
        ),
        (
            "type = \"http\"\nurl = \"http://x\"\ntimeout = \"soon\"",
            "`timeout`",
        ),
        ("type = \"kafka\"\nbrokers = []", "needs `brokers"),
        (
            "type = \"kafka\"\nbrokers = \"b:9092\"\ncompression = \"brotli\"",
            "`compression`",
        ),
        (
            "type = \"kafka\"\nbrokers = \"b:9092\"\nsasl_mechanism = \"PLAIN\"",
            "`sasl_username`",
        ),
        (
            "type = \"kafka\"\nbrokers = \"b:9092\"\nlibrdkafka_options = { \"no.such.property\" = \"1\" }",
            "no.such.property",
        ),
        (
            "type = \"kafka\"\nbrokers = \"b:9092\"\nlibrdkafka_options = { \"enable.idempotence\" = \"false\" }",
            "delivery guarantee depends on them",
        ),
        (
            "type = \"nats\"\nurl = \"nats://x\"\nsubjects = [\"a\"]",
            "`subjects`",
        ),
        (
            "type = \"postgres\"\nurl = \"postgres://x/y\"\nsslmode = \"maybe\"",
            "`sslmode`",
        ),
        ("type = \"smtp\"", "unknown sink type `smtp`"),
    ];
    for (entry, expected) in cases {
        let m = fatal_message(sink(entry).await);
        assert!(m.contains(expected), "{entry:?}: {m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_topic_that_cannot_be_created_is_fatal_and_named() {
    let tansu = Broker::start(Kind::Tansu);
    let entry = format!(
        "type = \"kafka\"\nbrokers = \"{}\"\ncreate_topics = true\ntimeout = \"2s\"",
        tansu.url()
    );
    let mut s = sink(&entry).await.unwrap();
    let record = walflow::sink::EncodedRecord {
        topic: "app.public.order items".into(),
        key: None,
        payload: b"{}".to_vec(),
        lsn: Lsn(1),
        value: None,
    };
    let batch = walflow::sink::SinkBatch {
        records: std::slice::from_ref(&record),
        events: &[],
    };
    let err = match s.write(batch).await {
        Err(e) => e,
        Ok(()) => s.flush().await.expect_err("an illegal topic is refused"),
    };
    assert!(!err.is_retryable(), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("`app.public.order items`") && message.contains("topic-namer"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_kafka_topic_without_auto_creation_is_fatal() {
    let tansu = Broker::start(Kind::Tansu);
    let workload = workload::random(15, 5, false);
    let entry = format!(
        "type = \"kafka\"\nbrokers = \"{}\"\ntimeout = \"2s\"",
        tansu.url()
    );
    let running = Running::start(vec![sink(&entry).await.unwrap()], None);
    running.feed(&workload.units).await;
    let err = running
        .finish()
        .await
        .expect_err("missing topic is fatal")
        .to_string();
    assert!(
        err.contains("does not exist") && err.contains("create_topics = true"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_table_is_fatal_and_named() {
    let target = Cluster::shared().new_database().await;
    let workload = workload::random(16, 5, false);
    let entry = format!("type = \"postgres\"\nurl = \"{}\"", target.url("postgres"));
    let running = Running::start(vec![sink(&entry).await.unwrap()], None);
    running.feed(&workload.units).await;
    let err = running
        .finish()
        .await
        .expect_err("missing table is fatal")
        .to_string();
    assert!(
        err.contains("does not exist") && err.contains("public."),
        "{err}"
    );
}

// ---------------------------------------------------------------- end to end

#[path = "sinks/end_to_end.rs"]
mod end_to_end;

/// A tmpfs of a fixed size mounted on a temporary directory (unmounted on drop), to fill up.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the sink tests run as root, like the network fault tests)"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

fn batch(records: &[walflow::sink::EncodedRecord]) -> walflow::sink::SinkBatch<'_> {
    walflow::sink::SinkBatch {
        records,
        events: &[],
    }
}

/// `count` records of about 1000 bytes, numbered from `first`.
fn numbered_records(first: usize, count: usize) -> Vec<walflow::sink::EncodedRecord> {
    (first..first + count)
        .map(|n| walflow::sink::EncodedRecord {
            topic: "t".into(),
            key: None,
            payload: format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(980)).into_bytes(),
            lsn: Lsn(n as u64),
            value: None,
        })
        .collect()
}

/// The file sink on a disk that fills up in the middle of a batch larger than its buffer:
/// the write fails retryably, what of the batch reached the disk is cut off again (and, with
/// rotation, the files it started are undone), and once there is room the retried batch leaves
/// every record in the files exactly once, none torn. Without the cut, the retry appended the
/// whole batch after its first megabyte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_mid_batch_leaves_each_record_once_after_the_retry() {
    for max_bytes in [None, Some(600_000)] {
        let disk = SmallDisk::mount("4m");
        let filler = disk.path().join("filler");
        std::fs::write(&filler, vec![0u8; 5 << 19]).unwrap();
        let path = disk.path().join("events.jsonl");
        let mut sink = walflow::sink::FileSink::open(path.clone(), max_bytes).unwrap();
        let (a, b) = (numbered_records(0, 100), numbered_records(100, 3000));
        sink.write(batch(&a)).await.expect("the first batch fits");
        sink.flush().await.expect("and is flushed");
        let err = sink
            .write(batch(&b))
            .await
            .expect_err("the second batch cannot fit");
        assert!(err.is_retryable(), "{max_bytes:?}: {err}");
        std::fs::remove_file(&filler).unwrap();
        sink.write(batch(&b)).await.expect("the retry fits");
        sink.flush().await.unwrap();
        let mut numbers = Vec::new();
        for file in walflow::sink::written_files(&path) {
            for line in std::fs::read_to_string(&file).unwrap().lines() {
                let record: Json = serde_json::from_str(line).unwrap_or_else(|e| {
                    panic!("{max_bytes:?}: torn line in {}: {e}", file.display())
                });
                numbers.push(record["n"].as_u64().unwrap() as usize);
            }
        }
        assert_eq!(
            numbers,
            (0..3100).collect::<Vec<_>>(),
            "{max_bytes:?}: every record once, in order"
        );
    }
}

/// Under `envelope = "debezium"` a Kafka message is Debezium's: the value alone (no walflow
/// wrapper) with the key as the message key, and a delete's tombstone is a null value, so a
/// compacted topic forgets the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_gets_debezium_values_and_tombstones_as_null_values() {
    use std::sync::Arc;
    use walflow::event::{Column, Op, Relation, Source};
    let tansu = Broker::start(Kind::Tansu);
    let mut s = sink(&kafka_entry(&tansu.url())).await.unwrap();
    let relation = Arc::new(Relation {
        oid: 1,
        schema: "public".into(),
        table: "orders".into(),
        columns: ["id", "note"]
            .iter()
            .map(|name| Column {
                name: (*name).into(),
                type_oid: 0,
                type_name: if *name == "id" { "int4" } else { "text" }.into(),
                type_modifier: -1,
                key: *name == "id",
            })
            .collect(),
    });
    let event = |op: Op, id: i64, lsn: u64| Event {
        op,
        relation: relation.clone(),
        source: Source {
            db: "shop".into(),
            lsn: Lsn(lsn),
            xid: Some(7),
            commit_time_us: 1_700_000_000_000_000,
            ..Source::default()
        },
        before: (op == Op::Delete).then(|| vec![Value::Int(id), Value::Null]),
        after: (op == Op::Create).then(|| vec![Value::Int(id), Value::Text("n".into())]),
        topic: None,
        message: None,
    };
    let events = vec![event(Op::Create, 1, 100), event(Op::Delete, 1, 200)];
    let encoder = walflow::encode::Encoder::debezium(
        walflow::config::DebeziumConfig::default(),
        walflow::encode::EncodeOptions {
            name: Some("app".into()),
            include_types: false,
        },
    );
    let debezium = encoder.debezium_envelope().unwrap();
    let records: Vec<walflow::sink::EncodedRecord> = events
        .iter()
        .flat_map(|e| {
            debezium
                .records(e, 1)
                .into_iter()
                .map(|r| walflow::sink::EncodedRecord {
                    topic: r.topic,
                    key: r.key,
                    payload: r.line,
                    lsn: e.source.lsn,
                    value: Some(r.value),
                })
        })
        .collect();
    assert_eq!(records.len(), 3, "create, delete, tombstone");
    s.write(walflow::sink::SinkBatch {
        records: &records,
        events: &events,
    })
    .await
    .unwrap();
    s.flush().await.unwrap();

    use rskafka::client::ClientBuilder;
    use rskafka::client::partition::UnknownTopicHandling;
    let client = ClientBuilder::new(vec![tansu.url()]).build().await.unwrap();
    let mut got = Vec::new();
    for partition in 0..3 {
        let pc = client
            .partition_client("app.public.orders", partition, UnknownTopicHandling::Retry)
            .await
            .unwrap();
        let (fetched, _) = pc.fetch_records(0, 1..10_000_000, 500).await.unwrap();
        got.extend(fetched.into_iter().map(|r| (r.record.key, r.record.value)));
    }
    assert_eq!(got.len(), 3, "{got:?}");
    for (key, _) in &got {
        let key: Json = serde_json::from_slice(key.as_deref().expect("a key")).unwrap();
        assert_eq!(key, serde_json::json!({"id": 1}));
    }
    let values: Vec<Option<Json>> = got
        .iter()
        .map(|(_, v)| v.as_deref().map(|v| serde_json::from_slice(v).unwrap()))
        .collect();
    let value = |op: &str| {
        values
            .iter()
            .flatten()
            .find(|v| v["op"] == op)
            .unwrap_or_else(|| panic!("no {op} among {values:?}"))
    };
    assert_eq!(
        value("c")["after"],
        serde_json::json!({"id": 1, "note": "n"})
    );
    assert!(value("c").get("topic").is_none(), "the value alone");
    assert_eq!(
        value("d")["before"],
        serde_json::json!({"id": 1, "note": null})
    );
    assert_eq!(
        values.iter().filter(|v| v.is_none()).count(),
        1,
        "one tombstone: {values:?}"
    );
    // One key, one partition, in order: the tombstone comes last.
    assert_eq!(values.last(), Some(&None), "{values:?}");
}
