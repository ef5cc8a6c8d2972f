//! What the cluster mode's engine must offer, probed against tansu — the only Kafka-protocol
//! broker to be had here — before anything is built on it.
//!
//! A walflow cluster would use Kafka the way Kafka Connect's distributed mode does: nodes join
//! one consumer group and the group coordinator hands out the work (pipelines hashed onto the
//! partitions of an assignment topic) and notices a node that stops heartbeating; configs,
//! checkpoints and status live in compacted topics. This file checks each of those with a real
//! Kafka client (librdkafka, as the kafka sink uses) and records what tansu does, so the engine
//! choice rests on facts.

#[path = "sinks/brokers.rs"]
#[allow(dead_code)] // shared with the sink tests, which start the other brokers too
mod brokers;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use brokers::{Broker, Kind};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

const TOPIC: &str = "walflow-assignments";
const PARTITIONS: i32 = 4;

fn member(bootstrap: &str, session_ms: u32) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "walflow-cluster-probe")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("session.timeout.ms", session_ms.to_string())
        .set("heartbeat.interval.ms", "500")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer")
}

/// The partitions `consumer` owns after polling it (and `others`, so their heartbeats and
/// rebalances run too) until `done` holds, or `None` after `within`.
fn poll_until(
    consumer: &BaseConsumer,
    others: &[&BaseConsumer],
    within: Duration,
    done: impl Fn(&BTreeSet<i32>) -> bool,
) -> Option<BTreeSet<i32>> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for c in std::iter::once(consumer).chain(others.iter().copied()) {
            let _ = c.poll(Duration::from_millis(100));
        }
        let owned = owned(consumer);
        if done(&owned) {
            return Some(owned);
        }
    }
    None
}

fn owned(consumer: &BaseConsumer) -> BTreeSet<i32> {
    consumer
        .assignment()
        .map(|a| a.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

async fn create_topic(bootstrap: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("an admin client");
    let topic = NewTopic::new(TOPIC, PARTITIONS, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact");
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .expect("CreateTopics answered");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("cannot create topic {t}: {e}"));
    }
}

/// Join, share, take over: a lone member gets every partition; a second one joining gets a
/// share without the first giving up what it keeps (cooperative-sticky); a member that stops
/// heartbeating loses its partitions to the survivor after the session timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_runs_the_consumer_group_protocol_a_cluster_needs() {
    let broker = Broker::start(Kind::Tansu);
    let bootstrap = broker.url();
    create_topic(&bootstrap).await;
    let all: BTreeSet<i32> = (0..PARTITIONS).collect();

    let first = member(&bootstrap, 6000);
    first.subscribe(&[TOPIC]).unwrap();
    let alone = poll_until(&first, &[], Duration::from_secs(30), |o| *o == all);
    eprintln!("a lone member owns {alone:?}");
    assert_eq!(alone.as_ref(), Some(&all), "{}", broker.log());

    // A second member in a process of its own, so that it can die without a word.
    let mut second = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "member_process", "--nocapture"])
        .env(MEMBER_ENV, &bootstrap)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let kept = poll_until(&first, &[], Duration::from_secs(30), |o| {
        !o.is_empty() && o.len() < all.len()
    });
    eprintln!("after a second member joined, the first keeps {kept:?}");
    let kept = kept.unwrap_or_else(|| panic!("the second member got no share\n{}", broker.log()));
    assert_eq!(kept.len(), all.len() / 2, "an even share");

    // SIGKILL: no LeaveGroup, no more heartbeats; only the session timeout can tell.
    second.kill().unwrap();
    second.wait().unwrap();
    let killed = Instant::now();
    let took_over = poll_until(&first, &[], Duration::from_secs(40), |o| *o == all);
    eprintln!(
        "after the second member was killed: {took_over:?} within {:?}",
        killed.elapsed()
    );
    assert_eq!(took_over.as_ref(), Some(&all), "{}", broker.log());
}

/// State topics (configs, checkpoints, status keyed by pipeline) are read from the beginning,
/// the last value of each key winning, as Kafka Connect reads its config topic. That needs only
/// ordered, durable reads per key; compaction only keeps the topic small (and never removes a
/// key's newest record), so the reader must not count on it having run. tansu accepts a topic
/// created with `cleanup.policy = compact` and reads it back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tansu_keeps_a_compacted_topic_readable_last_value_wins() {
    use rdkafka::Message;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let broker = Broker::start(Kind::Tansu);
    let bootstrap = broker.url();
    create_topic(&bootstrap).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for value in ["v1", "v2", "v3"] {
        producer
            .send(
                FutureRecord::to(TOPIC)
                    .partition(0)
                    .key("pipeline-a")
                    .payload(value),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("{e}\n{}", broker.log()));
    }
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "walflow-state-reader")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = rdkafka::TopicPartitionList::new();
    partitions
        .add_partition_offset(TOPIC, 0, rdkafka::Offset::Beginning)
        .unwrap();
    reader.assign(&partitions).unwrap();
    let mut values = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while values.len() < 3 && Instant::now() < deadline {
        if let Some(Ok(m)) = reader.poll(Duration::from_millis(200)) {
            assert_eq!(m.key(), Some(&b"pipeline-a"[..]));
            values.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
        }
    }
    eprintln!("read back from the beginning: {values:?}");
    assert_eq!(
        values,
        ["v1", "v2", "v3"],
        "in order, none lost; the last one wins"
    );
}

/// Where [`member_process`] finds the broker; it does nothing without it.
const MEMBER_ENV: &str = "WALFLOW_PROBE_MEMBER_OF";

/// The second member of the probe above, run in a child process of the test binary: joins the
/// group and polls until killed. Without [`MEMBER_ENV`] (a normal test run) it returns at once.
#[test]
fn member_process() {
    let Ok(bootstrap) = std::env::var(MEMBER_ENV) else {
        return;
    };
    let me = member(&bootstrap, 6000);
    me.subscribe(&[TOPIC]).unwrap();
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        let _ = me.poll(Duration::from_millis(100));
    }
}
