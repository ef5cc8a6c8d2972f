//! Pipeline metrics and the optional HTTP listener serving them (`/metrics` in Prometheus text
//! format, `/health` as a one-line status).
//!
//! `/health` is 200 only while the pipeline streams over a working connection: before that,
//! and while the connection to PostgreSQL is down and being retried, it is 503 with the reason
//! (see [`Link`]), so a load balancer or orchestrator sees an outage while walflow rides it out.
//!
//! Counters are plain atomics updated on the hot path; per-table counts sit behind a mutex that
//! is taken once per batch, not per event. Latencies are Prometheus histograms with fixed
//! buckets (cumulative `_bucket{le=…}`, `_sum`, `_count`), also plain atomics. The listener is
//! axum on hyper's HTTP/1 server.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::event::Event;
use crate::sink::EncodedRecord;
use walflow_pg::Link;

/// Counters of one pipeline.
#[derive(Default)]
pub struct Metrics {
    events_in: Mutex<BTreeMap<String, u64>>,
    events_out: Mutex<BTreeMap<String, u64>>,
    bytes_out: AtomicU64,
    chain_events_in: AtomicU64,
    chain_micros: AtomicU64,
    chain_batches: AtomicU64,
    dead_letters: AtomicU64,
    sink_errors: Mutex<BTreeMap<String, u64>>,
    sink_flushes: AtomicU64,
    acked_lsn: AtomicU64,
    server_lsn: AtomicU64,
    last_commit_us: AtomicI64,
    plugin_reloads: AtomicU64,
    plugin_reload_failures: AtomicU64,
    healthy: AtomicBool,
    link: Mutex<Option<Link>>,
    snapshot_rows: Mutex<BTreeMap<String, (u64, u64)>>,
    commit_to_ack: Histogram,
}

/// Upper bounds, in seconds, of the latency histograms' buckets: fine around the few
/// milliseconds a durable sink takes, coarse up to the minutes a stalled one can.
const LATENCY_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
    60.0,
];

/// A Prometheus histogram over [`LATENCY_BUCKETS`] (plus `+Inf`).
#[derive(Default)]
struct Histogram {
    /// Observations per bucket (not cumulative; the last is `+Inf`).
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let i = LATENCY_BUCKETS.partition_point(|le| *le < seconds);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        let bounds = LATENCY_BUCKETS.iter().map(|le| le.to_string());
        for (n, le) in self.buckets.iter().zip(bounds.chain(["+Inf".into()])) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", self.count.load(Ordering::Relaxed));
    }
}

/// Adds events to per-table counts. Consecutive events of one table (the usual case: a
/// transaction or a snapshot chunk) cost one name and one map update, not one per event.
fn count_per_table(map: &Mutex<BTreeMap<String, u64>>, events: &[Event]) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    let mut runs = events.chunk_by(|a, b| std::sync::Arc::ptr_eq(&a.relation, &b.relation));
    for run in &mut runs {
        let name = run[0].relation.qualified_name();
        match map.get_mut(&name) {
            Some(n) => *n += run.len() as u64,
            None => {
                map.insert(name, run.len() as u64);
            }
        }
    }
}

impl Metrics {
    /// Marks the pipeline as streaming (or not) for `/health`.
    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Follows `link` for `/health` from now on (the startup wait's, then the stream's).
    pub fn watch_link(&self, link: Link) {
        *self.link.lock().unwrap_or_else(|p| p.into_inner()) = Some(link);
    }

    /// `Ok` when streaming over a working connection; otherwise why not.
    pub fn health(&self) -> Result<(), String> {
        let link = self.link.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(problem) = link.and_then(|l| l.problem()) {
            return Err(problem);
        }
        if self.healthy.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not streaming".into())
        }
    }

    /// Events written to the sinks so far.
    pub fn events_out_total(&self) -> u64 {
        let map = self.events_out.lock().unwrap_or_else(|p| p.into_inner());
        map.values().sum()
    }

    /// Counts events read from the source, per table.
    pub fn record_in(&self, events: &[Event]) {
        if let Some(t) = events.iter().rev().find(|e| e.source.commit_time_us != 0) {
            self.last_commit_us
                .store(t.source.commit_time_us, Ordering::Relaxed);
        }
        count_per_table(&self.events_in, events);
    }

    /// Counts events and bytes written to the sinks, per table.
    pub fn record_out(&self, events: &[Event], records: &[EncodedRecord]) {
        count_per_table(&self.events_out, events);
        let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
        self.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Records one run of the plugin chain.
    pub fn record_chain(&self, events_in: usize, _events_out: usize, took: Duration) {
        self.chain_events_in
            .fetch_add(events_in as u64, Ordering::Relaxed);
        self.chain_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
        self.chain_batches.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts dead-lettered events.
    pub fn record_dead_letters(&self, n: usize) {
        self.dead_letters.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a sink error.
    pub fn record_sink_error(&self, sink: &str) {
        let mut map = self.sink_errors.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(sink.to_owned()).or_default() += 1;
    }

    /// Counts a successful flush of every sink (an acknowledgement).
    pub fn record_flush(&self) {
        self.sink_flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Transactions (their commit times, µs since the Unix epoch) that every sink has just
    /// acknowledged: observes how long after its commit each became durable. A commit time
    /// ahead of this host's clock (skew) counts as no time at all.
    pub fn record_acked_commits(&self, commit_times_us: &[i64]) {
        if commit_times_us.is_empty() {
            return;
        }
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        for commit in commit_times_us {
            let took = u64::try_from(now_us - commit).unwrap_or(0);
            self.commit_to_ack.observe(Duration::from_micros(took));
        }
    }

    /// The LSN every sink has acknowledged.
    pub fn set_acked_lsn(&self, lsn: u64) {
        self.acked_lsn.store(lsn, Ordering::Relaxed);
    }

    /// The server's current WAL position, as last reported.
    pub fn set_server_lsn(&self, lsn: u64) {
        self.server_lsn.store(lsn, Ordering::Relaxed);
    }

    /// Plugin hot reloads so far: accepted and rejected.
    pub fn set_reloads(&self, accepted: u64, rejected: u64) {
        self.plugin_reloads.store(accepted, Ordering::Relaxed);
        self.plugin_reload_failures
            .store(rejected, Ordering::Relaxed);
    }

    /// Snapshot progress of `table`: rows read so far and the estimated total.
    pub fn set_snapshot_rows(&self, table: &str, done: u64, estimated: u64) {
        let mut map = self.snapshot_rows.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(table.to_string(), (done, estimated));
    }

    fn render_snapshot(&self, out: &mut String) {
        let map = self.snapshot_rows.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(
            out,
            "# HELP walflow_snapshot_rows Rows read by the current snapshot of a table.\n# TYPE walflow_snapshot_rows gauge"
        );
        for (table, (done, _)) in map.iter() {
            let _ = writeln!(
                out,
                "walflow_snapshot_rows{{table=\"{}\"}} {done}",
                escape(table)
            );
        }
        let _ = writeln!(
            out,
            "# HELP walflow_snapshot_rows_estimated Estimated rows of a table being snapshotted.\n# TYPE walflow_snapshot_rows_estimated gauge"
        );
        for (table, (_, estimated)) in map.iter() {
            let _ = writeln!(
                out,
                "walflow_snapshot_rows_estimated{{table=\"{}\"}} {estimated}",
                escape(table)
            );
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_snapshot(&mut out);
        let per_table =
            |out: &mut String, name: &str, help: &str, map: &Mutex<BTreeMap<String, u64>>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (table, n) in map.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                    let _ = writeln!(out, "{name}{{table=\"{}\"}} {n}", escape(table));
                }
            };
        per_table(
            &mut out,
            "walflow_events_in_total",
            "Events read from the source.",
            &self.events_in,
        );
        per_table(
            &mut out,
            "walflow_events_out_total",
            "Events written to the sinks.",
            &self.events_out,
        );
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let gauge = |out: &mut String, name: &str, help: &str, v: f64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "walflow_bytes_out_total",
            "Encoded bytes written to the sinks.",
            load(&self.bytes_out),
        );
        counter(
            &mut out,
            "walflow_plugin_events_total",
            "Events passed through the plugin chain.",
            load(&self.chain_events_in),
        );
        counter(
            &mut out,
            "walflow_plugin_batches_total",
            "Batches run through the plugin chain.",
            load(&self.chain_batches),
        );
        gauge(
            &mut out,
            "walflow_plugin_seconds_total",
            "Time spent in the plugin chain.",
            load(&self.chain_micros) as f64 / 1e6,
        );
        counter(
            &mut out,
            "walflow_dead_letters_total",
            "Events sent to the dead-letter sink.",
            load(&self.dead_letters),
        );
        counter(
            &mut out,
            "walflow_plugin_reloads_total",
            "Successful plugin hot reloads.",
            load(&self.plugin_reloads),
        );
        counter(
            &mut out,
            "walflow_plugin_reload_failures_total",
            "Rejected plugin hot reloads.",
            load(&self.plugin_reload_failures),
        );
        self.commit_to_ack.render(
            &mut out,
            "walflow_commit_to_ack_seconds",
            "Time from a transaction's commit on the source to the end of the sink flush that made it durable.",
        );
        counter(
            &mut out,
            "walflow_sink_acks_total",
            "Flushes acknowledged by every sink.",
            load(&self.sink_flushes),
        );
        let _ = writeln!(
            out,
            "# HELP walflow_sink_errors_total Sink errors.\n# TYPE walflow_sink_errors_total counter"
        );
        for (sink, n) in self
            .sink_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "walflow_sink_errors_total{{sink=\"{}\"}} {n}",
                escape(sink)
            );
        }
        gauge(
            &mut out,
            "walflow_replication_connected",
            "1 while streaming over a working connection, 0 while connecting or reconnecting.",
            if self.health().is_ok() { 1.0 } else { 0.0 },
        );
        let acked = load(&self.acked_lsn);
        let server = load(&self.server_lsn);
        gauge(
            &mut out,
            "walflow_acked_lsn",
            "LSN acknowledged by every sink.",
            acked as f64,
        );
        gauge(
            &mut out,
            "walflow_replication_lag_bytes",
            "Server WAL position minus the acknowledged LSN.",
            server.saturating_sub(acked) as f64,
        );
        let last = self.last_commit_us.load(Ordering::Relaxed);
        let lag_s = if last == 0 {
            0.0
        } else {
            (crate::encode::now_ms() as f64 / 1e3 - last as f64 / 1e6).max(0.0)
        };
        gauge(
            &mut out,
            "walflow_replication_lag_seconds",
            "Age of the newest commit seen.",
            lag_s,
        );
        out
    }

    /// Serves `/metrics` and `/health` on `listen` for as long as the process runs.
    pub async fn serve(
        self: std::sync::Arc<Self>,
        listen: &str,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        tracing::info!(listen, "serving metrics");
        Ok(tokio::spawn(http::serve(listener, http::router(self))))
    }
}

/// The listener: an axum router on hyper's HTTP/1 server.
///
/// Each connection answers one request and is closed, so a client that reads to the end of the
/// stream (a probe, `nc`, the tests) gets its answer; scrapes are seconds apart, so keeping
/// connections alive would save nothing. A client has [`HEAD_TIMEOUT`](http::HEAD_TIMEOUT) to
/// send its request head, so idle connections cannot pile up.
mod http {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    use super::Metrics;

    /// How long a client has to send its request head.
    pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

    /// The content type of `/metrics` (the Prometheus text format).
    const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

    /// `/metrics`, `/health`, and 404 for anything else.
    pub(super) fn router(metrics: Arc<Metrics>) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .route("/health", get(health))
            .fallback(not_found)
            .with_state(metrics)
    }

    async fn scrape(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
        (
            [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
            metrics.render(),
        )
    }

    /// 200 `ok` while streaming over a working connection, else 503 with the reason.
    async fn health(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
        match metrics.health() {
            Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        }
    }

    async fn not_found() -> impl IntoResponse {
        (StatusCode::NOT_FOUND, "try /metrics or /health\n")
    }

    /// Accepts connections on `listener` and serves `app` on each until the process ends.
    pub(super) async fn serve(listener: tokio::net::TcpListener, app: Router) {
        loop {
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(err) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %err, "metrics listener cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let service = TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEAD_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Op, Relation, Source};

    fn event(relation: &Arc<Relation>) -> Event {
        Event {
            op: Op::Create,
            relation: relation.clone(),
            source: Source::default(),
            before: None,
            after: None,
            topic: None,
            message: None,
        }
    }

    /// Buckets are cumulative and end at `+Inf`; a commit "in the future" (clock skew) counts
    /// as zero; `_count` and `_sum` follow every observation.
    #[test]
    fn acknowledged_commits_fill_the_latency_histogram() {
        let metrics = Metrics::default();
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        metrics.record_acked_commits(&[
            now_us + 10_000_000,
            now_us - 3_000_000,
            now_us - 120_000_000,
        ]);
        let text = metrics.render();
        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` in {text}"))
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string()
        };
        let name = "walflow_commit_to_ack_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram")), "{text}");
        assert_eq!(line(&format!("{name}_bucket{{le=\"0.001\"}}")), "1");
        assert_eq!(line(&format!("{name}_bucket{{le=\"2.5\"}}")), "1");
        assert_eq!(line(&format!("{name}_bucket{{le=\"10\"}}")), "2");
        assert_eq!(line(&format!("{name}_bucket{{le=\"60\"}}")), "2");
        assert_eq!(line(&format!("{name}_bucket{{le=\"+Inf\"}}")), "3");
        assert_eq!(line(&format!("{name}_count")), "3");
        let sum: f64 = line(&format!("{name}_sum")).parse().unwrap();
        assert!((123.0..124.0).contains(&sum), "{sum}");
    }

    #[test]
    fn health_follows_the_link_and_says_why() {
        let metrics = Metrics::default();
        assert_eq!(metrics.health(), Err("not streaming".into()));
        let link = Link::default();
        metrics.watch_link(link.clone());
        link.up();
        metrics.set_healthy(true);
        assert_eq!(metrics.health(), Ok(()));
        assert!(metrics.render().contains("walflow_replication_connected 1"));
        link.down(&"nothing received for 5s");
        let why = metrics.health().unwrap_err();
        assert!(why.contains("nothing received for 5s"), "{why}");
        assert!(metrics.render().contains("walflow_replication_connected 0"));
        link.up();
        assert_eq!(metrics.health(), Ok(()));
    }

    /// `GET path` over a fresh connection, read to its end: the status line and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        // The server closes the connection after answering: reading to the end terminates.
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut out))
            .await
            .expect("the server closes the connection after its answer")
            .unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    async fn listening(metrics: &Arc<Metrics>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(http::serve(listener, http::router(metrics.clone())));
        addr
    }

    #[tokio::test]
    async fn the_listener_serves_metrics_health_and_404() {
        let metrics = Arc::new(Metrics::default());
        let addr = listening(&metrics).await;
        let (head, body) = get(addr, "/health").await;
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert_eq!(body, "not streaming\n");
        metrics.set_healthy(true);
        let (head, body) = get(addr, "/health").await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert_eq!(body, "ok\n");
        let link = Link::default();
        metrics.watch_link(link.clone());
        link.down(&"connection refused");
        let (head, body) = get(addr, "/health").await;
        assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
        assert!(
            body.contains("connection refused") && body.ends_with('\n'),
            "{body}"
        );
        let (head, body) = get(addr, "/metrics").await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(body.contains("walflow_replication_connected 0"), "{body}");
        let (head, _) = get(addr, "/nope").await;
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    }

    /// A client that connects and says nothing is dropped, so idle connections cannot pile up.
    #[tokio::test]
    async fn a_silent_client_is_disconnected() {
        use tokio::io::AsyncReadExt;
        let metrics = Arc::new(Metrics::default());
        let addr = listening(&metrics).await;
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(
            http::HEAD_TIMEOUT + Duration::from_secs(5),
            conn.read_to_end(&mut out),
        )
        .await
        .expect("the connection is closed")
        .ok();
    }

    #[tokio::test]
    async fn a_taken_address_is_one_clear_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let err = Arc::new(Metrics::default())
            .serve(&addr)
            .await
            .expect_err("the address is taken");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    }

    #[test]
    fn runs_of_one_table_are_counted_together_and_tables_apart() {
        let rel = |t: &str| {
            Arc::new(Relation {
                oid: 1,
                schema: "public".into(),
                table: t.into(),
                columns: Vec::new(),
            })
        };
        let (a, b, a_again) = (rel("a"), rel("b"), rel("a"));
        let events = vec![event(&a), event(&a), event(&b), event(&a_again), event(&a)];
        let metrics = Metrics::default();
        metrics.record_in(&events);
        metrics.record_in(&events[..1]);
        let text = metrics.render();
        assert!(
            text.contains("walflow_events_in_total{table=\"public.a\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("walflow_events_in_total{table=\"public.b\"} 1"),
            "{text}"
        );
    }
}
