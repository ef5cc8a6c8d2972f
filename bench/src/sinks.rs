//! Sink throughput: a backlog of insert events pushed through the real delivery loop into each
//! sink, reported as events/s and as a ratio to the file sink measured in the same run.
//!
//! Every destination is a real server on loopback started here (redis-server, nats-server with
//! JetStream, tansu, a PostgreSQL cluster, an HTTP endpoint in this process). A sink whose
//! server is not installed is reported as skipped (scripts/install-brokers installs them).

#[path = "../../tests/tests/sinks/brokers.rs"]
mod brokers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use brokers::{Broker, Kind};
use walflow::assemble::Transaction;
use walflow::config::{Encoding, SinkConfig};
use walflow::encode::{EncodeOptions, Encoder};
use walflow::event::{Column, Event, Op, Relation, Source, Value};
use walflow::metrics::Metrics;
use walflow::pipeline::{Delivery, DeliveryOptions, Passthrough, Position, Unit};

const EVENTS_PER_TRANSACTION: usize = 10;

fn relation() -> Arc<Relation> {
    let column = |name: &str, type_name: &str, key| Column {
        name: name.into(),
        type_oid: 0,
        type_name: type_name.into(),
        type_modifier: -1,
        key,
    };
    Arc::new(Relation {
        oid: 1,
        schema: "public".into(),
        table: "orders".into(),
        columns: vec![
            column("id", "int8", true),
            column("customer", "text", false),
            column("qty", "int4", false),
            column("price", "numeric", false),
        ],
    })
}

/// `events` inserts/updates in transactions of ten, ids cycling over 100,000 rows.
fn backlog(events: usize) -> Vec<Unit> {
    let relation = relation();
    let mut units = Vec::with_capacity(events / EVENTS_PER_TRANSACTION + 1);
    let mut lsn = 0x1_0000_0000u64;
    let mut n = 0usize;
    while n < events {
        let mut batch = Vec::with_capacity(EVENTS_PER_TRANSACTION);
        for _ in 0..EVENTS_PER_TRANSACTION.min(events - n) {
            lsn += 0x40;
            let id = (n % 100_000) as i64;
            batch.push(Event {
                op: if n < 100_000 { Op::Create } else { Op::Update },
                relation: relation.clone(),
                source: Source {
                    db: "bench".into(),
                    lsn: walflow::event::Lsn(lsn),
                    xid: Some((n / EVENTS_PER_TRANSACTION) as u32),
                    commit_time_us: 1_700_000_000_000_000,
                    snapshot: Default::default(),
                    last_commit_lsn: None,
                },
                before: None,
                after: Some(vec![
                    Value::Int(id),
                    Value::Text(format!("customer {}", n % 977)),
                    Value::Int((n % 50) as i64),
                    Value::Numeric(format!("{}.{:02}", n % 10_000, n % 100)),
                ]),
                topic: None,
                message: None,
            });
            n += 1;
        }
        lsn += 0x40;
        units.push(Unit::Transaction(Transaction {
            xid: Some(units.len() as u32),
            commit_lsn: walflow::event::Lsn(lsn),
            end_lsn: walflow::event::Lsn(lsn + 0x10),
            commit_time_us: 1_700_000_000_000_000,
            gid: None,
            events: batch,
        }));
        lsn += 0x10;
    }
    units
}

/// Runs `units` through the delivery loop into the sink of `entry`; events/s.
async fn measure(entry: &str, units: &[Unit], events: usize) -> anyhow::Result<f64> {
    let config: SinkConfig = toml::from_str(entry)?;
    let sink = walflow::sink::build(&config, std::path::Path::new("."))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let delivery = Delivery::new(
        Box::new(Passthrough),
        Encoder::new(
            Encoding::Json,
            EncodeOptions {
                name: Some("bench".into()),
                include_types: false,
            },
        ),
        vec![sink],
        None,
        DeliveryOptions::default(),
        Arc::new(Metrics::default()),
    );
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let (ack_tx, _acks) = tokio::sync::watch::channel(Position::Lsn(walflow::event::Lsn::ZERO));
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    // The loop's future is not `Send`: run it on a runtime of its own.
    let task = std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(delivery.run(rx, ack_tx, stop_rx))
    });
    for u in units {
        tx.send(u.clone()).await?;
    }
    drop(tx);
    let acked = tokio::task::spawn_blocking(move || task.join())
        .await?
        .map_err(|_| anyhow::anyhow!("delivery loop panicked"))??;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        acked == units.last().map(Unit::position),
        "not everything was acknowledged"
    );
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// An HTTP endpoint that counts NDJSON records and answers 200.
async fn counting_endpoint() -> (String, Arc<AtomicU64>) {
    use http_body_util::{BodyExt, Full};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let c = c.clone();
                        async move {
                            let body = req
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let lines = body.iter().filter(|b| **b == b'\n').count() as u64;
                            c.fetch_add(lines, Ordering::Relaxed);
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (url, count)
}

/// Runs the sink benchmark with `events` events.
pub async fn run(events: usize) -> anyhow::Result<()> {
    println!("sinks: {events} events through the delivery loop (JSON, batches of 1024)");
    let units = backlog(events);
    let dir = tempfile::tempdir()?;
    let mut results: Vec<(&str, Result<f64, String>)> = Vec::new();

    let file = format!(
        "type = \"file\"\npath = \"{}\"",
        dir.path().join("events.jsonl").display()
    );
    let baseline = measure(&file, &units, events).await?;
    results.push(("file", Ok(baseline)));

    let mut brokers_kept = Vec::new();
    for (name, kind) in [
        ("redis", Kind::Redis),
        ("nats", Kind::Nats),
        ("kafka", Kind::Tansu),
    ] {
        if brokers::binary(kind).is_none() {
            results.push((name, Err("not installed (scripts/install-brokers)".into())));
            continue;
        }
        let broker = Broker::start(kind);
        let entry = match kind {
            Kind::Redis => format!("type = \"redis\"\nurl = \"{}\"", broker.url()),
            Kind::Nats => format!(
                "type = \"nats\"\nurl = \"{}\"\nstream = \"bench\"\nsubjects = [\"bench.>\"]",
                broker.url()
            ),
            Kind::Tansu => format!(
                "type = \"kafka\"\nbrokers = \"{}\"\ncreate_topics = true\npartitions = 3",
                broker.url()
            ),
        };
        let r = measure(&entry, &units, events)
            .await
            .map_err(|e| e.to_string());
        results.push((name, r));
        brokers_kept.push(broker);
    }

    let (url, count) = counting_endpoint().await;
    let http = format!("type = \"http\"\nurl = \"{url}\"\nformat = \"ndjson\"");
    let r = measure(&http, &units, events)
        .await
        .map_err(|e| e.to_string());
    if r.is_ok() && count.load(Ordering::Relaxed) < events as u64 {
        results.push(("http", Err("endpoint saw fewer records than sent".into())));
    } else {
        results.push(("http", r));
    }

    let db = walflow_tests::Cluster::shared().new_database().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE public.orders (id int8 PRIMARY KEY, customer text, qty int4, price numeric)",
        )
        .await?;
    let pg = format!("type = \"postgres\"\nurl = \"{}\"", db.url("postgres"));
    results.push((
        "postgres",
        measure(&pg, &units, events)
            .await
            .map_err(|e| e.to_string()),
    ));

    println!("{:<10} {:>14} {:>10}", "sink", "events/s", "vs file");
    for (name, r) in &results {
        match r {
            Ok(rate) => println!("{name:<10} {rate:>14.0} {:>10.3}", rate / baseline),
            Err(e) => println!("{name:<10} {:>14} {e}", "skipped"),
        }
    }
    drop(brokers_kept);
    Ok(())
}
