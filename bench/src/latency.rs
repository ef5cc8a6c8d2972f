//! Commit-to-sink latency: how long after PostgreSQL commits a transaction it is durable in
//! walflow's file sink, beside how long after the commit `pg_recvlogical` hands the same
//! transaction to its reader, at fixed commit rates, in the same run.
//!
//! One throwaway PostgreSQL 15, one tiny table, one publication and two fresh pgoutput slots.
//! A writer commits single-row transactions at fixed rates (1,000, 10,000 and 50,000/s, and
//! 70% of the highest rate it reached with both readers running). Both readers measure from
//! the commit timestamp the transaction carries (the server's clock, read when the commit
//! record is written — this machine's clock too):
//!
//! * `pg_recvlogical` writes the pgoutput bytes to a pipe (no fsync: it can fsync at most once
//!   a second); this process reads them and times each Commit message as it arrives.
//! * `walflow run` (a child process, default `[batch]`, no plugins, JSON) writes to a file sink
//!   wrapped in [`TimedFile`], which times each record twice: when the sink took it (before
//!   the fsync, the same footing as pg_recvlogical's), and when the fsync covering it
//!   returned (durable: the moment walflow may acknowledge it).
//!
//! Printed per rate: the achieved rate and p50/p95/p99/max of each, and the targets as
//! numbers (p99 durable ≤ 10 ms at 10,000/s; walflow's p99 within 2 ms of pg_recvlogical's).
//! Nothing is asserted: the machine's disk and cores are what they are.
//!
//! Measured 2026-12-07 (release, 2-core VM shared with other builds, load average 4–7; one
//! fdatasync of this disk takes ~4 ms, p99 ~8 ms), 5 s per rate, at 1,000 commits/s:
//! before natural batching (100 ms `max_wait`), walflow durable p50 54–57 ms, p99 105–178 ms;
//! after, p50 1.0–2.5 ms, p99 6.4–15.5 ms (in the sink before the fsync: p99 3.3–6.8 ms),
//! beside pg_recvlogical's p50 0.3–0.6 ms, p99 3.0–6.6 ms. At 10,000/s and above, this
//! loaded machine fell behind on the source side too: pg_recvlogical itself lagged by
//! 0.2–2.3 s, so those rows measured the queue, not the pipeline.

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use async_trait::async_trait;
use walflow::sink::{FileSink, PendingFlush, Sink, SinkBatch, SinkError};
use walflow_tests::{Cluster, ClusterOptions, TestDb};

/// The slot `pg_recvlogical` reads.
const PEER_SLOT: &str = "latency_recvlogical";
/// The slot walflow reads.
const WALFLOW_SLOT: &str = "latency_walflow";
/// The publication both read.
const PUBLICATION: &str = "latency_pub";

/// Connections committing in parallel (each pipelines its statements).
const WRITERS: usize = 4;
/// Most statements one connection has in flight at once.
const IN_FLIGHT: u64 = 32;
/// The fixed rates measured, commits/s (and 70% of the measured maximum after them).
const RATES: [f64; 3] = [1_000.0, 10_000.0, 50_000.0];
/// The start of each phase left out of its figures (connections and caches warming up).
const SETTLE: Duration = Duration::from_millis(500);

/// One timed transaction: commit time and the two latencies, µs.
#[derive(Clone, Copy)]
struct Sample {
    commit_us: i64,
    /// Until the sink took it (walflow) or it arrived (pg_recvlogical).
    taken_us: i64,
    /// Until the fsync covering it returned (walflow only; pg_recvlogical does not fsync).
    durable_us: i64,
}

/// Runs the benchmark with phases of `seconds` each.
pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let phase = Duration::from_secs(seconds.max(1));
    let cluster =
        tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default().without_tls()))
            .await??;
    let db = cluster.new_database().await;
    setup(&db).await?;
    let dir = tempfile::tempdir()?;
    let url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        cluster.port(),
        db.name()
    );
    let samples_path = dir.path().join("walflow.samples");
    let mut walflow = spawn_walflow(dir.path(), &url, &samples_path)?;
    let peer_samples = Arc::new(Mutex::new(Vec::new()));
    let mut peer = spawn_peer(&cluster, &db, peer_samples.clone())?;
    let writer = Writer::connect(&db).await?;
    wait_for_readers(&db).await?;

    let drained = Drain {
        peer: peer_samples.clone(),
        written: std::cell::Cell::new(0),
    };
    let warm_up = writer.phase(Some(1_000.0), Duration::from_secs(1)).await?; // not counted
    drained.after(&db, warm_up).await?;
    let max = writer.phase(None, Duration::from_secs(3)).await?;
    drained.after(&db, max).await?;
    let mut rates: Vec<f64> = RATES.to_vec();
    rates.push((0.7 * max.rate()).round());
    let mut phases = Vec::new();
    for rate in rates {
        let done = writer.phase(Some(rate), phase).await?;
        drained.after(&db, done).await?;
        phases.push((rate, done));
    }

    drop(walflow.stdin.take()); // the child's signal to flush and stop
    let status = tokio::task::spawn_blocking(move || walflow.wait()).await??;
    if !status.success() {
        bail!("walflow exited with {status}");
    }
    let _ = peer.kill();
    let _ = peer.wait();
    let ours = read_samples(&samples_path)?;
    let theirs = peer_samples.lock().unwrap().clone();
    report(&cluster, max, &phases, &ours, &theirs);
    Ok(())
}

/// The table, the publication and both slots.
async fn setup(db: &TestDb) -> anyhow::Result<()> {
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE lat (id bigserial PRIMARY KEY, v int NOT NULL DEFAULT 1);
             CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES;"
        ))
        .await?;
    for slot in [PEER_SLOT, WALFLOW_SLOT] {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
    }
    Ok(())
}

/// `walflow run` as a child (`__walflow-latency`), stopped by closing its stdin.
fn spawn_walflow(dir: &Path, url: &str, samples: &Path) -> anyhow::Result<Child> {
    let config = dir.join("walflow.toml");
    std::fs::write(
        &config,
        format!(
            r#"[source]
url = "{url}"
sslmode = "disable"
slot = "{WALFLOW_SLOT}"
publication = "{PUBLICATION}"
publication_autocreate = "disabled"
snapshot = "never"
"#
        ),
    )?;
    Command::new(std::env::current_exe()?)
        .arg("__walflow-latency")
        .arg(&config)
        .arg(dir.join("out/events.jsonl"))
        .arg(samples)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("cannot start walflow")
}

/// `pg_recvlogical` writing its slot's pgoutput bytes to a pipe, and a thread timing each
/// Commit message that comes out of it.
fn spawn_peer(
    cluster: &Cluster,
    db: &TestDb,
    samples: Arc<Mutex<Vec<Sample>>>,
) -> anyhow::Result<Child> {
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        cluster.port(),
        db.name()
    );
    let bundled = cluster.bin_dir().join("pg_recvlogical");
    let program = if bundled.exists() {
        bundled
    } else {
        "pg_recvlogical".into()
    };
    let mut child = Command::new(program)
        .args(["-d", &conninfo, "-S", PEER_SLOT, "--start", "-f", "-"])
        .args(["-F", "0", "-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={PUBLICATION}"))
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start pg_recvlogical")?;
    let mut out = child.stdout.take().context("pg_recvlogical's stdout")?;
    std::thread::spawn(move || {
        if let Err(e) = time_commits(&mut out, &samples) {
            eprintln!("reading pg_recvlogical's output failed: {e}");
        }
    });
    Ok(child)
}

/// Reads pg_recvlogical's output (each pgoutput message followed by a newline) and records,
/// for each Commit message, how long after its commit timestamp it arrived.
fn time_commits(out: &mut impl Read, samples: &Mutex<Vec<Sample>>) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        let n = out.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        let now = now_us();
        buf.extend_from_slice(&chunk[..n]);
        let mut at = 0;
        while let Some(len) = pgoutput_len(&buf[at..])? {
            if buf[at] == b'C' {
                let commit_us = pg_epoch_us(&buf[at + 18..at + 26]);
                samples.lock().unwrap().push(Sample {
                    commit_us,
                    taken_us: now - commit_us,
                    durable_us: 0,
                });
            }
            at += len + 1; // the newline pg_recvlogical writes after each message
        }
        buf.drain(..at);
    }
}

/// The length of the pgoutput (protocol 1) message at the start of `buf`, when all of it
/// and the newline after it are there.
fn pgoutput_len(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let r = Cursor { buf, at: 1 };
    let parsed = match buf.first() {
        None => return Ok(None),
        Some(b'B') => r.skip(20),
        Some(b'C') => r.skip(25),
        Some(b'R') => r.relation(),
        Some(b'I') => r.skip(5).and_then(|r| r.tuple()),
        Some(b'Y') => r.skip(4).and_then(|r| r.cstr()).and_then(|r| r.cstr()),
        Some(b'O') => r.skip(8).and_then(|r| r.cstr()),
        Some(other) => bail!("unexpected pgoutput message `{}`", *other as char),
    };
    let Some(r) = parsed else { return Ok(None) };
    match buf.get(r.at) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(r.at)),
        Some(_) => bail!("pgoutput message not followed by a newline"),
    }
}

/// A position in a partly received message; `None` once it runs past what arrived.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip(mut self, n: usize) -> Option<Cursor<'a>> {
        self.at += n;
        (self.at <= self.buf.len()).then_some(self)
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.buf.get(self.at..self.at + 2)?;
        self.at += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        let b = self.buf.get(self.at..self.at + 4)?;
        self.at += 4;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn cstr(mut self) -> Option<Cursor<'a>> {
        let end = self.buf.get(self.at..)?.iter().position(|b| *b == 0)?;
        self.at += end + 1;
        Some(self)
    }

    /// Relation id, namespace, name, replica identity, then each column's flags, name, type
    /// and modifier.
    fn relation(self) -> Option<Cursor<'a>> {
        let mut r = self.skip(4)?.cstr()?.cstr()?.skip(1)?;
        for _ in 0..r.u16()? {
            r = r.skip(1)?.cstr()?.skip(8)?;
        }
        Some(r)
    }

    /// A TupleData: column count, then per column a kind and, for text or binary, a value.
    fn tuple(mut self) -> Option<Cursor<'a>> {
        for _ in 0..self.u16()? {
            let kind = *self.buf.get(self.at)?;
            self.at += 1;
            if matches!(kind, b't' | b'b') {
                let len = self.u32()? as usize;
                self = self.skip(len)?;
            }
        }
        Some(self)
    }
}

/// A PostgreSQL timestamp (µs since 2000-01-01) as µs since the Unix epoch.
fn pg_epoch_us(bytes: &[u8]) -> i64 {
    const PG_EPOCH_US: i64 = 946_684_800_000_000;
    i64::from_be_bytes(bytes.try_into().expect("8 bytes")) + PG_EPOCH_US
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Waits until both readers stream from their slots.
async fn wait_for_readers(db: &TestDb) -> anyhow::Result<()> {
    let client = db.client().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name = ANY($1)",
                &[&vec![PEER_SLOT, WALFLOW_SLOT]],
            )
            .await?
            .get(0);
        if active == 2 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the readers did not start streaming within a minute");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits, after each phase, until both readers have caught up, so that one phase's backlog
/// does not spill into the next.
struct Drain {
    /// What pg_recvlogical received so far.
    peer: Arc<Mutex<Vec<Sample>>>,
    /// Transactions committed so far.
    written: std::cell::Cell<u64>,
}

impl Drain {
    /// Waits until pg_recvlogical has received every transaction written so far and walflow
    /// has confirmed the WAL written so far.
    async fn after(&self, db: &TestDb, phase: Phase) -> anyhow::Result<()> {
        self.written.set(self.written.get() + phase.commits);
        let client = db.client().await;
        let end: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let confirmed: bool = client
                .query_one(
                    "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots \
                     WHERE slot_name = $2",
                    &[&end, &WALFLOW_SLOT],
                )
                .await?
                .get(0);
            let received = self.peer.lock().unwrap().len() as u64;
            if confirmed && received >= self.written.get() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the readers did not catch up within two minutes");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The connections committing single-row transactions.
struct Writer {
    clients: Vec<Arc<(tokio_postgres::Client, tokio_postgres::Statement)>>,
}

/// What one phase of writing did.
#[derive(Clone, Copy)]
struct Phase {
    /// Commit times of the phase's counted transactions lie in `from_us..to_us`.
    from_us: i64,
    to_us: i64,
    commits: u64,
    took: Duration,
}

impl Phase {
    fn rate(&self) -> f64 {
        self.commits as f64 / self.took.as_secs_f64()
    }
}

impl Writer {
    async fn connect(db: &TestDb) -> anyhow::Result<Writer> {
        let mut clients = Vec::new();
        for _ in 0..WRITERS {
            let client = db.client().await;
            let insert = client.prepare("INSERT INTO lat DEFAULT VALUES").await?;
            clients.push(Arc::new((client, insert)));
        }
        Ok(Writer { clients })
    }

    /// Commits at `rate` per second (as fast as possible when `None`) for `took`.
    async fn phase(&self, rate: Option<f64>, took: Duration) -> anyhow::Result<Phase> {
        let per_client = rate.map(|r| r / self.clients.len() as f64);
        let start = Instant::now();
        let from_us = now_us();
        let tasks: Vec<_> = self
            .clients
            .iter()
            .map(|c| tokio::spawn(commit_at(c.clone(), per_client, start, took)))
            .collect();
        let mut commits = 0;
        for t in tasks {
            commits += t.await??;
        }
        let took = start.elapsed();
        Ok(Phase {
            from_us: from_us + SETTLE.as_micros() as i64,
            to_us: now_us(),
            commits,
            took,
        })
    }
}

/// One connection's share of a phase: statements pipelined up to [`IN_FLIGHT`] at a time,
/// each its own transaction, paced to `rate` per second from `start`.
async fn commit_at(
    client: Arc<(tokio_postgres::Client, tokio_postgres::Statement)>,
    rate: Option<f64>,
    start: Instant,
    took: Duration,
) -> anyhow::Result<u64> {
    let (client, insert) = &*client;
    let mut done = 0u64;
    while start.elapsed() < took {
        let due = match rate {
            Some(r) => (start.elapsed().as_secs_f64() * r) as u64,
            None => done + IN_FLIGHT,
        };
        if due <= done {
            let next = Duration::from_secs_f64((done + 1) as f64 / rate.unwrap_or(1.0));
            tokio::time::sleep_until((start + next).into()).await;
            continue;
        }
        let n = (due - done).min(IN_FLIGHT);
        let statements = (0..n).map(|_| client.execute(insert, &[]));
        for result in futures::future::join_all(statements).await {
            result?;
        }
        done += n;
    }
    Ok(done)
}

/// The file sink, timing each record when it takes it and when the fsync covering it
/// returns. Records are timed per event: every transaction here holds one row.
struct TimedFile {
    inner: FileSink,
    /// Commit and take times of records not yet covered by a flush that began.
    unflushed: Vec<(i64, i64)>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl TimedFile {
    /// Records `covered` as durable now.
    fn durable(samples: &Mutex<Vec<Sample>>, covered: Vec<(i64, i64)>) {
        let now = now_us();
        let mut samples = samples.lock().unwrap();
        samples.extend(covered.into_iter().map(|(commit_us, taken_at)| Sample {
            commit_us,
            taken_us: taken_at - commit_us,
            durable_us: now - commit_us,
        }));
    }
}

#[async_trait]
impl Sink for TimedFile {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        self.inner.write(batch).await?;
        let now = now_us();
        let commits = batch.events.iter().map(|e| e.source.commit_time_us);
        self.unflushed
            .extend(commits.filter(|c| *c != 0).map(|c| (c, now)));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.inner.flush().await?;
        TimedFile::durable(&self.samples, std::mem::take(&mut self.unflushed));
        Ok(())
    }

    fn begin_flush(&mut self) -> Option<PendingFlush> {
        let flushing = self.inner.begin_flush()?;
        let covered = std::mem::take(&mut self.unflushed);
        let samples = self.samples.clone();
        Some(Box::pin(async move {
            flushing.await?;
            TimedFile::durable(&samples, covered);
            Ok(())
        }))
    }

    async fn close(&mut self) -> Result<(), SinkError> {
        self.inner.close().await?;
        TimedFile::durable(&self.samples, std::mem::take(&mut self.unflushed));
        Ok(())
    }
}

/// The `__walflow-latency CONFIG OUT SAMPLES` child: `walflow run` of CONFIG into a timed file
/// sink at OUT until its stdin closes; then each record's times go to SAMPLES, one
/// `commit_us taken_us durable_us` line each.
pub async fn child(args: &[String]) -> anyhow::Result<()> {
    let [config, out, samples_path] = args else {
        bail!("usage: __walflow-latency CONFIG OUT SAMPLES");
    };
    let config = walflow::config::Config::load(Path::new(config))?;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sink = TimedFile {
        inner: FileSink::open(out.into(), None).map_err(|e| anyhow::anyhow!("{e}"))?,
        unflushed: Vec::new(),
        samples: samples.clone(),
    };
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        let _ = stop_tx.send(true);
    });
    walflow::run(
        config,
        walflow::pipeline::RunOptions {
            extra_sinks: vec![Box::new(sink)],
            stop: Some(stop),
            ..Default::default()
        },
    )
    .await?;
    let mut text = String::new();
    for s in samples.lock().unwrap().iter() {
        text.push_str(&format!(
            "{} {} {}\n",
            s.commit_us, s.taken_us, s.durable_us
        ));
    }
    std::fs::write(samples_path, text)?;
    Ok(())
}

fn read_samples(path: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .map(|line| {
            let mut n = line.split(' ').map(str::parse::<i64>);
            match (n.next(), n.next(), n.next()) {
                (Some(Ok(commit_us)), Some(Ok(taken_us)), Some(Ok(durable_us))) => Ok(Sample {
                    commit_us,
                    taken_us,
                    durable_us,
                }),
                _ => bail!("bad sample line `{line}`"),
            }
        })
        .collect()
}

/// p50, p95, p99 and max of `values` (µs), in ms; `None` without values.
fn quantiles(mut values: Vec<i64>) -> Option<[f64; 4]> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = |q: f64| {
        let i = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[i] as f64 / 1e3
    };
    Some([at(0.5), at(0.95), at(0.99), at(1.0)])
}

/// One reader's figures for one phase, as a table row; its p99 (ms).
fn row(label: &str, values: Vec<i64>) -> Option<f64> {
    let n = values.len();
    match quantiles(values) {
        Some([p50, p95, p99, max]) => {
            println!("    {label:<34} {n:>8} {p50:>8.2} {p95:>8.2} {p99:>8.2} {max:>8.2}");
            Some(p99)
        }
        None => {
            println!("    {label:<34} {n:>8}   (no samples)");
            None
        }
    }
}

fn report(
    cluster: &Cluster,
    max: Phase,
    phases: &[(f64, Phase)],
    ours: &[Sample],
    theirs: &[Sample],
) {
    println!(
        "latency benchmark: single-row transactions, PostgreSQL {}, {} writer connections",
        cluster.version(),
        WRITERS
    );
    println!("  walflow run: default [batch], no plugins, JSON to a file sink (fsync on flush)");
    println!(
        "  highest commit rate reached (writer unthrottled, both readers running): {:.0}/s",
        max.rate()
    );
    println!(
        "    {:<34} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "commit → … (ms)", "n", "p50", "p95", "p99", "max"
    );
    let mut targets = Vec::new();
    for (rate, phase) in phases {
        println!(
            "  {rate:.0} commits/s asked, {:.0}/s reached:",
            phase.rate()
        );
        let inside = |s: &&Sample| s.commit_us >= phase.from_us && s.commit_us < phase.to_us;
        let peer: Vec<i64> = theirs.iter().filter(inside).map(|s| s.taken_us).collect();
        let taken: Vec<i64> = ours.iter().filter(inside).map(|s| s.taken_us).collect();
        let durable: Vec<i64> = ours.iter().filter(inside).map(|s| s.durable_us).collect();
        let peer_p99 = row("pg_recvlogical, arrived (no fsync)", peer);
        row("walflow, in the file sink", taken);
        let durable_p99 = row("walflow, durable (fsync returned)", durable);
        targets.push((*rate, peer_p99, durable_p99));
    }
    println!("  targets:");
    for (rate, peer, durable) in targets {
        let (Some(peer), Some(durable)) = (peer, durable) else {
            continue;
        };
        let ten_k = if rate == 10_000.0 {
            format!("; p99 durable {durable:.2} ms (target ≤ 10)")
        } else {
            String::new()
        };
        println!(
            "    {rate:>6.0}/s: walflow durable p99 − pg_recvlogical p99 = {:+.2} ms (target ≤ 2){ten_k}",
            durable - peer
        );
    }
}
