//! Events/s through the plugin chain, against native Rust doing the same work in the same run.
//!
//! Three pipelines over identical batches of `public.orders` events (5 columns: int, text,
//! numeric, bytea, timestamptz):
//! (a) native Rust: table glob filter, bytea → hex, topic `app.{schema}.{table}`;
//! (b) one passthrough plugin (the bare cost of a call and the ABI);
//! (c) the built-in plugins table-filter → binary-repr → topic-name doing (a)'s work.
//! At batch sizes 1, 64 and 1024, printed as events/s, the ratio to (a), and CPU µs per event
//! (the calling thread's CPU time, which is where the chain runs). Issue 2's target: (c) at most
//! 1 µs of CPU per event at batch ≥ 256.
//!
//! After (c), each of its plugins alone at the largest batch, to show where the time goes.
//!
//! Measured 2026-11-24 (release, 2-core VM), at batch 1024 in two runs: (a) 0.11, (b) 0.18,
//! (c) 0.80 and 0.81 CPU µs/event, so the target is met (0.88–0.91 at batch 64); alone,
//! table-filter 0.14, binary-repr 0.54, topic-name 0.17 (each including the shared cost of
//! dropping the batch). At batch 1, (b) 2.6 and (c) 9.8: a call has a fixed cost of a few µs.
//! History of (c): 2.27 with an owned WIT copy of each batch; 1.94 lowering borrowed host
//! events (`plugin/abi/v0_1.rs`); 1.50 with ABI 0.2.0 (a batch's rows in one value list and
//! its strings in one buffer, `plugin/abi/v0_2.rs`, so a call allocates in the guest a handful
//! of times instead of several times per event); 1.12 with mimalloc (glibc's malloc and free
//! were a third of the profile); 0.80 writing events and values in the guest's memory layout
//! on the host and copying each list at once (`plugin/abi/canonical.rs`) instead of letting
//! wasmtime store them field by field. Measured 2026-12-04 on another VM of the same kind:
//! (a) 0.10, (b) 0.12, (c) 0.54 at batch 1024 (0.65 at 64); alone, table-filter 0.09,
//! binary-repr 0.39, topic-name 0.13 — a namer's distinct names are now shared by their
//! events (`Arc<str>`) instead of copied into each. Later that day, with table-filter
//! remembering the last table's verdict and binary-repr writing hex into a byte buffer:
//! (c) 0.50, table-filter 0.09, binary-repr 0.36. The sample batch's columns now carry
//! their real type oids, as the host's always do; with the SDK decoding only the values a
//! plugin reads and binary-repr reading only columns that can hold bytes: (c) 0.47–0.49,
//! binary-repr 0.32–0.33 (a plugin that reads every value pays ~0.05 more than before).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use walflow::event::{Column, Event, Op, Relation, Source, TemporalKind, Value};
use walflow::plugin::{Chain, PluginEngine, PluginSpec};

const BATCH_SIZES: [usize; 3] = [1, 64, 1024];

/// Runs the benchmark over about `events` events per pipeline and batch size.
pub fn run(events: usize) -> anyhow::Result<()> {
    let dist = build_plugins()?;
    let engine = PluginEngine::shared()?;
    let passthrough = || {
        Chain::from_specs(
            &engine,
            vec![PluginSpec::new(dist.join("passthrough.wasm"), "{}")],
        )
    };
    let three = || {
        Chain::from_specs(
            &engine,
            vec![
                PluginSpec::new(
                    dist.join("table_filter.wasm"),
                    r#"{"include": ["public.*"]}"#,
                ),
                PluginSpec::new(dist.join("binary_repr.wasm"), r#"{"mode": "hex"}"#),
                PluginSpec::new(dist.join("topic_name.wasm"), r#"{"prefix": "app"}"#),
            ],
        )
    };
    println!("plugin chain: {events} events per measurement, CPU time of the calling thread");
    println!(
        "{:<34} {:>6} {:>14} {:>10} {:>14}",
        "pipeline", "batch", "events/s", "vs native", "CPU µs/event"
    );
    for batch in BATCH_SIZES {
        let native = measure(events, batch, native_chain)?;
        print_row("(a) native Rust", batch, &native, &native);
        let mut chain = passthrough()?;
        let plugin = measure(events, batch, |b| chain_output(&mut chain, b))?;
        print_row("(b) passthrough plugin", batch, &plugin, &native);
        let mut chain = three()?;
        let three = measure(events, batch, |b| chain_output(&mut chain, b))?;
        print_row("(c) filter → binary-repr → topic", batch, &three, &native);
    }
    // Where (c)'s time goes: each of its plugins alone at the largest batch.
    let batch = BATCH_SIZES[BATCH_SIZES.len() - 1];
    let native = measure(events, batch, native_chain)?;
    for (name, plugin, config) in [
        (
            "(c1) table-filter alone",
            "table_filter.wasm",
            r#"{"include": ["public.*"]}"#,
        ),
        (
            "(c2) binary-repr alone",
            "binary_repr.wasm",
            r#"{"mode": "hex"}"#,
        ),
        (
            "(c3) topic-name alone",
            "topic_name.wasm",
            r#"{"prefix": "app"}"#,
        ),
    ] {
        let mut chain =
            Chain::from_specs(&engine, vec![PluginSpec::new(dist.join(plugin), config)])?;
        let alone = measure(events, batch, |b| chain_output(&mut chain, b))?;
        print_row(name, batch, &alone, &native);
    }
    Ok(())
}

struct Measurement {
    events: usize,
    wall_secs: f64,
    cpu_secs: f64,
}

fn print_row(name: &str, batch: usize, m: &Measurement, native: &Measurement) {
    let rate = m.events as f64 / m.wall_secs;
    let native_rate = native.events as f64 / native.wall_secs;
    println!(
        "{:<34} {:>6} {:>14.0} {:>9.3}x {:>14.3}",
        name,
        batch,
        rate,
        rate / native_rate,
        m.cpu_secs * 1e6 / m.events as f64
    );
}

fn chain_output(chain: &mut Chain, batch: Vec<Event>) -> anyhow::Result<Vec<Event>> {
    Ok(chain.run(batch)?.events)
}

/// Times `f` over prepared batches (built before the clock starts).
fn measure(
    events: usize,
    batch: usize,
    mut f: impl FnMut(Vec<Event>) -> anyhow::Result<Vec<Event>>,
) -> anyhow::Result<Measurement> {
    let template = sample_batch(batch);
    // Warm up (instances, caches) outside the measurement.
    for _ in 0..(256 / batch).max(2) {
        f(template.clone())?;
    }
    let rounds = events.div_ceil(batch);
    let batches: Vec<Vec<Event>> = (0..rounds).map(|_| template.clone()).collect();
    let wall = std::time::Instant::now();
    let cpu = thread_cpu_secs();
    let mut out = 0;
    for b in batches {
        out += f(b)?.len();
    }
    let cpu_secs = thread_cpu_secs() - cpu;
    let wall_secs = wall.elapsed().as_secs_f64();
    anyhow::ensure!(
        out == rounds * batch,
        "the pipeline lost events ({out} of {})",
        rounds * batch
    );
    Ok(Measurement {
        events: rounds * batch,
        wall_secs,
        cpu_secs,
    })
}

fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// (a): the same work as the three plugins, in Rust on host events.
fn native_chain(mut batch: Vec<Event>) -> anyhow::Result<Vec<Event>> {
    batch.retain(|e| e.relation.schema == "public");
    for event in &mut batch {
        for row in [event.before.as_mut(), event.after.as_mut()]
            .into_iter()
            .flatten()
        {
            for value in row.iter_mut() {
                if let Value::Bytes(b) = value {
                    *value = Value::Text(hex(b));
                }
            }
        }
        event.topic =
            Some(format!("app.{}.{}", event.relation.schema, event.relation.table).into());
    }
    Ok(batch)
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn sample_batch(size: usize) -> Vec<Event> {
    let column = |name: &str, type_name: &str, type_oid: u32, key: bool| Column {
        name: name.into(),
        type_oid,
        type_name: type_name.into(),
        type_modifier: -1,
        key,
    };
    let relation = Arc::new(Relation {
        oid: 16384,
        schema: "public".into(),
        table: "orders".into(),
        columns: vec![
            column("id", "int4", 23, true),
            column("status", "text", 25, false),
            column("amount", "numeric", 1700, false),
            column("payload", "bytea", 17, false),
            column("created_at", "timestamptz", 1184, false),
        ],
    });
    (0..size)
        .map(|i| Event {
            op: Op::Create,
            relation: relation.clone(),
            source: Source {
                db: "app".into(),
                lsn: walflow::event::Lsn(0x16_B374_D848 + i as u64),
                xid: Some(1000),
                commit_time_us: 1_700_000_000_000_000,
                ..Source::default()
            },
            before: None,
            after: Some(vec![
                Value::Int(i as i64),
                Value::Text("shipped".into()),
                Value::Numeric("129.95".into()),
                Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03]),
                Value::Temporal(
                    TemporalKind::TimestampTz,
                    "2024-05-01T12:34:56.789+00:00".into(),
                ),
            ]),
            topic: None,
            message: None,
        })
        .collect()
}

/// Builds the plugins with `scripts/build-plugins` and returns where they are.
fn build_plugins() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow::anyhow!("no workspace root"))?;
    let status = std::process::Command::new(root.join("scripts/build-plugins"))
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "scripts/build-plugins failed");
    Ok(root.join("plugins/target/dist"))
}
