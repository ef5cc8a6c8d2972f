//! A change workload for the sink tests: committed transactions of inserts, updates (some
//! moving a row to a new key), deletes and truncates on two tables, with increasing LSNs, and
//! the table contents they leave behind.
//!
//! The sinks are fed through the real delivery loop ([`walflow::pipeline::Delivery`]), which
//! encodes, batches, retries and acknowledges exactly as `walflow run` does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use tokio::sync::{mpsc, watch};
use walflow::assemble::Transaction;
use walflow::config::Encoding;
use walflow::encode::{EncodeOptions, Encoder};
use walflow::event::{Array, Column, Event, Lsn, Op, Relation, Row, Source, Value};
use walflow::metrics::Metrics;
use walflow::pipeline::{Delivery, DeliveryError, DeliveryOptions, Passthrough, Position, Unit};
use walflow::sink::Sink;

/// The topic prefix of the workload's records.
pub const PREFIX: &str = "app";

fn column(name: &str, type_name: &str, key: bool) -> Column {
    Column {
        name: name.into(),
        type_oid: 0,
        type_name: type_name.into(),
        type_modifier: -1,
        key,
    }
}

/// `public.orders (id int8 primary key, name text, qty int4, price numeric, tags text[], at timestamptz)`
pub fn orders() -> Arc<Relation> {
    Arc::new(Relation {
        oid: 16_001,
        schema: "public".into(),
        table: "orders".into(),
        columns: vec![
            column("id", "int8", true),
            column("name", "text", false),
            column("qty", "int4", false),
            column("price", "numeric", false),
            column("tags", "_text", false),
            column("at", "timestamptz", false),
        ],
    })
}

/// `public.items (sku text primary key, stock int4)`
pub fn items() -> Arc<Relation> {
    Arc::new(Relation {
        oid: 16_002,
        schema: "public".into(),
        table: "items".into(),
        columns: vec![column("sku", "text", true), column("stock", "int4", false)],
    })
}

/// SQL creating the workload's tables (for the postgres sink's target).
pub const TABLES_SQL: &str = "
    CREATE TABLE public.orders (id int8 PRIMARY KEY, name text, qty int4, price numeric(12,2), tags text[], at timestamptz);
    CREATE TABLE public.items (sku text PRIMARY KEY, stock int4);
";

/// Transactions and the table contents after them.
pub struct Workload {
    pub units: Vec<Transaction>,
    /// `orders` rows by id and `items` rows by sku, as the source has them at the end.
    pub orders: BTreeMap<i64, Row>,
    pub items: BTreeMap<String, Row>,
}

impl Workload {
    /// Every event, in order.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.units.iter().flat_map(|u| u.events.iter())
    }

    /// The identity of every event (`op:lsn:key`), in order.
    pub fn identities(&self) -> Vec<String> {
        self.events()
            .map(|e| {
                let record = walflow::encode::json::record(e);
                identity(&record)
            })
            .collect()
    }

    /// The end LSN of the last transaction.
    pub fn last_lsn(&self) -> Lsn {
        self.units.last().map(|u| u.end_lsn).unwrap_or_default()
    }
}

/// The identity of a sink record: `op:lsn:key`.
pub fn identity(record: &Json) -> String {
    let value = &record["value"];
    format!(
        "{}:{}:{}",
        value["op"].as_str().unwrap_or("?"),
        value["source"]["lsn"],
        record["key"]
    )
}

fn order_row(rng: &mut rand::rngs::StdRng, id: i64) -> Row {
    let tags = Value::Array(Array {
        dims: vec![2],
        lower_bounds: Vec::new(),
        elements: vec![
            Value::Text(format!("t{}", rng.random_range(0..5))),
            Value::Null,
        ],
    });
    vec![
        Value::Int(id),
        Value::Text(format!("order \"{id}\" {}", rng.random_range(0..1000))),
        Value::Int(rng.random_range(0..100)),
        Value::Numeric(format!(
            "{}.{:02}",
            rng.random_range(0..10_000),
            rng.random_range(0..100)
        )),
        tags,
        Value::Temporal(
            walflow::event::TemporalKind::TimestampTz,
            format!("2024-05-{:02}T10:11:12.5+00:00", rng.random_range(1..29)),
        ),
    ]
}

/// A random workload of `transactions` transactions, reproducible from `seed`.
pub fn random(seed: u64, transactions: usize, with_truncates: bool) -> Workload {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (orders_rel, items_rel) = (orders(), items());
    let mut orders: BTreeMap<i64, Row> = BTreeMap::new();
    let mut items: BTreeMap<String, Row> = BTreeMap::new();
    let mut lsn: u64 = 0x0100_0000;
    let mut units = Vec::with_capacity(transactions);
    for t in 0..transactions {
        let xid = 1000 + t as u32;
        let mut events = Vec::new();
        for _ in 0..rng.random_range(1..8) {
            lsn += 0x40;
            let event = |op, relation: &Arc<Relation>, before, after| Event {
                op,
                relation: relation.clone(),
                source: Source {
                    db: "app".into(),
                    lsn: Lsn(lsn),
                    xid: Some(xid),
                    commit_time_us: 1_700_000_000_000_000,
                    snapshot: Default::default(),
                    last_commit_lsn: None,
                },
                before,
                after,
                topic: None,
                message: None,
            };
            let id = rng.random_range(1..40i64);
            let roll = rng.random_range(0..100);
            match roll {
                0..40 => {
                    let row = order_row(&mut rng, id);
                    let op = if orders.contains_key(&id) {
                        Op::Update
                    } else {
                        Op::Create
                    };
                    orders.insert(id, row.clone());
                    events.push(event(op, &orders_rel, None, Some(row)));
                }
                40..50 if orders.contains_key(&id) && !orders.contains_key(&(id + 100)) => {
                    // The key changes: pgoutput sends the old key in `before`.
                    let mut row = orders.remove(&id).expect("present");
                    let mut old_key = vec![Value::Null; row.len()];
                    old_key[0] = Value::Int(id);
                    row[0] = Value::Int(id + 100);
                    row[2] = Value::Int(rng.random_range(0..100));
                    orders.insert(id + 100, row.clone());
                    events.push(event(Op::Update, &orders_rel, Some(old_key), Some(row)));
                }
                50..65 => {
                    let victim = orders
                        .keys()
                        .nth(rng.random_range(0..orders.len().max(1)))
                        .copied();
                    if let Some(victim) = victim {
                        orders.remove(&victim);
                        let mut old_key = vec![Value::Null; 6];
                        old_key[0] = Value::Int(victim);
                        events.push(event(Op::Delete, &orders_rel, Some(old_key), None));
                    }
                }
                65..90 => {
                    let sku = format!("sku-{}", id % 12);
                    let row = vec![
                        Value::Text(sku.clone()),
                        Value::Int(rng.random_range(0..500)),
                    ];
                    let op = if items.contains_key(&sku) {
                        Op::Update
                    } else {
                        Op::Create
                    };
                    items.insert(sku, row.clone());
                    events.push(event(op, &items_rel, None, Some(row)));
                }
                90..98 => {
                    let sku = format!("sku-{}", id % 12);
                    if let Some(row) = items.remove(&sku) {
                        events.push(event(Op::Delete, &items_rel, Some(row), None));
                    }
                }
                _ if with_truncates => {
                    items.clear();
                    events.push(event(Op::Truncate, &items_rel, None, None));
                }
                _ => {}
            }
        }
        if events.is_empty() {
            continue;
        }
        lsn += 0x40;
        units.push(Transaction {
            xid: Some(xid),
            commit_lsn: Lsn(lsn),
            end_lsn: Lsn(lsn + 0x20),
            commit_time_us: 1_700_000_000_000_000,
            gid: None,
            events,
        });
        lsn += 0x20;
    }
    Workload {
        units,
        orders,
        items,
    }
}

/// The encoder `walflow run` uses by default, with the workload's topic prefix.
pub fn encoder() -> Encoder {
    Encoder::new(
        Encoding::Json,
        EncodeOptions {
            name: Some(PREFIX.into()),
            include_types: false,
        },
    )
}

/// A running delivery loop: feed it units, watch what it acknowledges.
pub struct Running {
    pub input: Option<mpsc::Sender<Unit>>,
    pub acks: watch::Receiver<Position>,
    _stop: watch::Sender<bool>,
    pub task: std::thread::JoinHandle<Result<Option<Lsn>, DeliveryError>>,
}

impl Running {
    /// Starts the real delivery loop over `sinks` (no plugins).
    pub fn start(sinks: Vec<Box<dyn Sink>>, dead_letter: Option<Box<dyn Sink>>) -> Running {
        let delivery = Delivery::new(
            Box::new(Passthrough),
            encoder(),
            sinks,
            dead_letter,
            DeliveryOptions {
                max_events: 64,
                flush_interval: Duration::from_millis(200),
                max_backoff: Duration::from_millis(400),
                ..DeliveryOptions::default()
            },
            Arc::new(Metrics::default()),
        );
        // Room for a whole workload: tests feed the second half while a destination is down,
        // and a smaller queue would block the feeding test itself instead of the delivery loop.
        let (input, rx) = mpsc::channel(4096);
        let (ack_tx, acks) = watch::channel(Position::Lsn(Lsn::ZERO));
        let (stop, stop_rx) = watch::channel(false);
        let task = spawn(delivery, rx, ack_tx, stop_rx);
        Running {
            input: Some(input),
            acks,
            _stop: stop,
            task,
        }
    }

    /// Sends transactions in order.
    pub async fn feed(&self, units: &[Transaction]) {
        let input = self.input.as_ref().expect("input open");
        for u in units {
            input
                .send(Unit::Transaction(u.clone()))
                .await
                .expect("delivery loop ended early");
        }
    }

    /// The last acknowledged LSN.
    pub fn acked(&self) -> Lsn {
        lsn_of(*self.acks.borrow())
    }

    /// Waits until `lsn` is acknowledged.
    pub async fn wait_acked(&mut self, lsn: Lsn, timeout: Duration) {
        let acks = &mut self.acks;
        tokio::time::timeout(timeout, acks.wait_for(|a| lsn_of(*a) >= lsn))
            .await
            .unwrap_or_else(|_| panic!("LSN {lsn} not acknowledged within {timeout:?}"))
            .expect("delivery loop ended");
    }

    /// Closes the input and waits for the loop to end.
    pub async fn finish(mut self) -> Result<Option<Lsn>, DeliveryError> {
        self.input = None;
        let task = self.task;
        tokio::task::spawn_blocking(move || task.join())
            .await
            .expect("join")
            .expect("delivery loop panicked")
    }
}

/// Runs the delivery loop on a thread of its own runtime, as `walflow run` does not share it.
pub fn spawn(
    delivery: Delivery,
    input: mpsc::Receiver<Unit>,
    acks: watch::Sender<Position>,
    stop: watch::Receiver<bool>,
) -> std::thread::JoinHandle<Result<Option<Lsn>, DeliveryError>> {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(delivery.run(input, acks, stop))
            .map(|acked| acked.and_then(Position::lsn))
    })
}

/// Feeds all of `workload` to `delivery`, closes its input and waits for it to end: what the
/// loop returned, and the last LSN it acknowledged.
pub async fn run_to_end(
    delivery: Delivery,
    workload: &Workload,
) -> (Result<Option<Lsn>, DeliveryError>, Lsn) {
    let (tx, rx) = mpsc::channel(64);
    let (ack_tx, acks) = watch::channel(Position::Lsn(Lsn::ZERO));
    let (_stop, stop_rx) = watch::channel(false);
    let task = spawn(delivery, rx, ack_tx, stop_rx);
    for unit in &workload.units {
        tx.send(Unit::Transaction(unit.clone()))
            .await
            .expect("delivery loop ended early");
    }
    drop(tx);
    let result = tokio::task::spawn_blocking(move || task.join().expect("delivery loop panicked"))
        .await
        .expect("join");
    let acked = lsn_of(*acks.borrow());
    (result, acked)
}

/// The WAL position of an acknowledgement (transactions all lead to one).
pub fn lsn_of(position: Position) -> Lsn {
    position
        .lsn()
        .expect("a transaction leads to a WAL position")
}

/// Runs `workload` through `sinks` to the end and checks everything was acknowledged.
pub async fn deliver_all(sinks: Vec<Box<dyn Sink>>, workload: &Workload) {
    let running = Running::start(sinks, None);
    running.feed(&workload.units).await;
    let acked = running.finish().await.expect("delivery failed");
    assert_eq!(acked, Some(workload.last_lsn()));
}
