//! Pipeline metrics and the optional HTTP listener serving them (`/metrics` in the OpenMetrics
//! text format, `/health` as a one-line status).
//!
//! `/health` is 200 only while the pipeline streams over a working connection: before that,
//! and while the connection to PostgreSQL is down and being retried, it is 503 with the reason
//! (see [`Link`]), so a load balancer or orchestrator sees an outage while walflow rides it out.
//!
//! The metrics are prometheus-client's: counters and gauges are atomics updated on the hot
//! path; per-table counts are one label lookup per run of events of one table (a transaction,
//! a snapshot chunk), not one per event; histograms take one uncontended lock per observation
//! (per batch, per acknowledged transaction). Values derived from others (lag, whether the
//! link is up) are worked out when scraped. The exposition is OpenMetrics text: counters are
//! registered without `_total` and exposed with it, so the sample names are the classic
//! Prometheus ones (`walflow_events_out_total{table="public.t"}`), and a Prometheus text
//! (0.0.4) parser reads it as well. The listener is axum on hyper's HTTP/1 server.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::event::Event;
use crate::sink::EncodedRecord;
use walflow_pg::Link;

/// The formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0 text: what `/metrics` answers unless asked otherwise.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for a scraper that asks for `text/plain` and not
    /// for OpenMetrics (in its `Accept` header).
    PrometheusText,
}

impl Exposition {
    /// The format a scrape with this `Accept` header gets: OpenMetrics unless the header
    /// names `text/plain` without naming OpenMetrics (quality values are not weighed).
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let accept = accept.unwrap_or_default().to_ascii_lowercase();
        if !accept.contains("application/openmetrics-text") && accept.contains("text/plain") {
            Exposition::PrometheusText
        } else {
            Exposition::OpenMetrics
        }
    }

    /// The `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::PrometheusText => {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            }
        }
    }
}

/// Upper bounds, in seconds, of the commit-to-acknowledgement histogram's buckets: fine around
/// the few milliseconds a durable sink takes, coarse up to the minutes a stalled one can.
const ACK_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
    60.0,
];

/// Upper bounds, in seconds, of the plugin-chain histogram's buckets: from the tens of
/// microseconds a small batch through a filter takes to a plugin's default deadline (2 s) and
/// beyond.
const CHAIN_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A pipeline's numbers at a glance (see [`Metrics::summary`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Summary {
    /// Events written to the sinks so far.
    pub events_out: u64,
    /// The position every sink has acknowledged.
    pub acked_lsn: crate::event::Lsn,
    /// WAL the server has written past it.
    pub lag_bytes: u64,
    /// Age of the oldest commit read and not yet acknowledged, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Streaming, and the replication connection is up.
    pub healthy: bool,
}

/// Transactions read and not yet acknowledged, oldest first: (acknowledged at, committed at).
/// At most [`Unacked::MOST`] are kept; past that, the newest are not noted, so the lag reads
/// a little low until the oldest are acknowledged.
#[derive(Debug, Default)]
struct Unacked(std::collections::VecDeque<(u64, i64)>);

impl Unacked {
    const MOST: usize = 4096;

    fn push(&mut self, lsn: u64, commit_us: i64) {
        if self.0.len() < Self::MOST && commit_us != 0 {
            self.0.push_back((lsn, commit_us));
        }
    }

    fn acked(&mut self, lsn: u64) {
        while self.0.front().is_some_and(|(at, _)| *at <= lsn) {
            self.0.pop_front();
        }
    }

    fn oldest_commit_us(&self) -> Option<i64> {
        self.0.front().map(|(_, commit)| *commit)
    }
}

/// The label of per-table metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

/// The label of per-sink metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabel {
    sink: String,
}

/// A counter of seconds (fractional).
type SecondsCounter = Counter<f64, AtomicU64>;

/// A gauge of fractional values.
type FloatGauge = Gauge<f64, AtomicU64>;

/// Metrics of one pipeline.
pub struct Metrics {
    registry: Registry,
    events_in: Family<TableLabel, Counter>,
    events_out: Family<TableLabel, Counter>,
    /// The sum of `events_out` over the tables (for the run's summary).
    events_out_sum: AtomicU64,
    bytes_out: Counter,
    chain_events_in: Counter,
    chain_seconds: SecondsCounter,
    chain_batches: Counter,
    chain_batch_seconds: Histogram,
    dead_letters: Counter,
    sink_errors: Family<SinkLabel, Counter>,
    sink_acks: Counter,
    plugin_reloads: Counter,
    plugin_reload_failures: Counter,
    commit_to_ack: Histogram,
    snapshot_rows: Family<TableLabel, Gauge>,
    snapshot_rows_estimated: Family<TableLabel, Gauge>,
    acked_lsn: Gauge,
    /// The server's WAL position, as last reported (exposed as `walflow_replication_lag_bytes`).
    server_lsn: AtomicU64,
    /// Transactions read and not yet acknowledged by every sink: their age is the lag.
    unacked: Mutex<Unacked>,
    connected: Gauge,
    lag_bytes: Gauge,
    lag_seconds: FloatGauge,
    healthy: AtomicBool,
    link: Mutex<Option<Link>>,
    slot: SlotGauges,
}

/// The slot's standing on the server (see [`Metrics::set_slot_health`]).
#[derive(Default)]
struct SlotGauges {
    retained_wal: Gauge,
    safe_wal_size: Gauge,
    wal_status: Family<StatusLabel, Gauge>,
    over_threshold: Gauge,
    threshold: Gauge,
}

/// The label of `walflow_slot_wal_status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

/// The values `wal_status` takes.
const WAL_STATUSES: [&str; 4] = ["reserved", "extended", "unreserved", "lost"];

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::with_registry(Registry::default())
    }
}

impl Metrics {
    /// Metrics whose every sample carries `labels` (`walflow serve` labels each pipeline's by
    /// tenant and pipeline).
    pub fn labelled(labels: &[(&str, &str)]) -> Metrics {
        let labels: Vec<(
            std::borrow::Cow<'static, str>,
            std::borrow::Cow<'static, str>,
        )> = labels
            .iter()
            .map(|(k, v)| (k.to_string().into(), v.to_string().into()))
            .collect();
        Metrics::with_registry(Registry::with_labels(labels.into_iter()))
    }

    fn with_registry(registry: Registry) -> Metrics {
        let m = Metrics {
            registry,
            events_in: Family::default(),
            events_out: Family::default(),
            events_out_sum: AtomicU64::new(0),
            bytes_out: Counter::default(),
            chain_events_in: Counter::default(),
            chain_seconds: SecondsCounter::default(),
            chain_batches: Counter::default(),
            chain_batch_seconds: Histogram::new(CHAIN_BUCKETS),
            dead_letters: Counter::default(),
            sink_errors: Family::default(),
            sink_acks: Counter::default(),
            plugin_reloads: Counter::default(),
            plugin_reload_failures: Counter::default(),
            commit_to_ack: Histogram::new(ACK_BUCKETS),
            snapshot_rows: Family::default(),
            snapshot_rows_estimated: Family::default(),
            acked_lsn: Gauge::default(),
            server_lsn: AtomicU64::new(0),
            unacked: Mutex::new(Unacked::default()),
            connected: Gauge::default(),
            lag_bytes: Gauge::default(),
            lag_seconds: FloatGauge::default(),
            healthy: AtomicBool::new(false),
            link: Mutex::new(None),
            slot: SlotGauges::default(),
        };
        m.registered()
    }
}

impl Metrics {
    /// Registers every metric (each registry entry shares its value with the field).
    /// Counter names go without `_total`: the exposition adds it.
    fn registered(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "walflow_events_in",
            "Events read from the source",
            self.events_in.clone(),
        );
        r.register(
            "walflow_events_out",
            "Events written to the sinks",
            self.events_out.clone(),
        );
        r.register(
            "walflow_bytes_out",
            "Encoded bytes written to the sinks",
            self.bytes_out.clone(),
        );
        r.register(
            "walflow_plugin_events",
            "Events passed through the plugin chain",
            self.chain_events_in.clone(),
        );
        r.register(
            "walflow_plugin_batches",
            "Batches run through the plugin chain",
            self.chain_batches.clone(),
        );
        r.register_with_unit(
            "walflow_plugin",
            "Time spent in the plugin chain",
            Unit::Seconds,
            self.chain_seconds.clone(),
        );
        r.register_with_unit(
            "walflow_plugin_batch",
            "Time the plugin chain took over one batch",
            Unit::Seconds,
            self.chain_batch_seconds.clone(),
        );
        r.register(
            "walflow_plugin_reloads",
            "Successful plugin hot reloads",
            self.plugin_reloads.clone(),
        );
        r.register(
            "walflow_plugin_reload_failures",
            "Rejected plugin hot reloads",
            self.plugin_reload_failures.clone(),
        );
        r.register(
            "walflow_dead_letters",
            "Events sent to the dead-letter sink",
            self.dead_letters.clone(),
        );
        r.register_with_unit(
            "walflow_commit_to_ack",
            "Time from a transaction's commit on the source to the end of the sink flush that made it durable",
            Unit::Seconds,
            self.commit_to_ack.clone(),
        );
        r.register(
            "walflow_sink_acks",
            "Flushes acknowledged by every sink",
            self.sink_acks.clone(),
        );
        r.register(
            "walflow_sink_errors",
            "Sink errors",
            self.sink_errors.clone(),
        );
        r.register(
            "walflow_replication_connected",
            "1 while streaming over a working connection, 0 while connecting or reconnecting",
            self.connected.clone(),
        );
        r.register(
            "walflow_acked_lsn",
            "LSN acknowledged by every sink",
            self.acked_lsn.clone(),
        );
        r.register_with_unit(
            "walflow_replication_lag",
            "Server WAL position minus the acknowledged LSN",
            Unit::Bytes,
            self.lag_bytes.clone(),
        );
        r.register_with_unit(
            "walflow_replication_lag",
            "Age of the oldest commit read and not yet acknowledged by every sink",
            Unit::Seconds,
            self.lag_seconds.clone(),
        );
        r.register(
            "walflow_snapshot_rows",
            "Rows read by the current snapshot of a table",
            self.snapshot_rows.clone(),
        );
        r.register(
            "walflow_snapshot_rows_estimated",
            "Estimated rows of a table being snapshotted",
            self.snapshot_rows_estimated.clone(),
        );
        self.slot.register(r);
        self
    }
}

impl SlotGauges {
    fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            "walflow_slot_retained_wal",
            "WAL the server keeps for the slot: its position minus the slot's restart_lsn",
            Unit::Bytes,
            self.retained_wal.clone(),
        );
        r.register_with_unit(
            "walflow_slot_safe_wal_size",
            "WAL the server may still write before the slot loses what it needs (pg_replication_slots.safe_wal_size; -1 when unlimited)",
            Unit::Bytes,
            self.safe_wal_size.clone(),
        );
        r.register(
            "walflow_slot_wal_status",
            "1 for the slot's current wal_status (reserved, extended, unreserved, lost)",
            self.wal_status.clone(),
        );
        r.register(
            "walflow_slot_retained_wal_over_threshold",
            "1 while the slot retains more WAL than retained_wal_warn_mb",
            self.over_threshold.clone(),
        );
        r.register_with_unit(
            "walflow_slot_retained_wal_threshold",
            "retained_wal_warn_mb, in bytes",
            Unit::Bytes,
            self.threshold.clone(),
        );
    }
}

/// Adds events to per-table counts. Consecutive events of one table (the usual case: a
/// transaction or a snapshot chunk) cost one name and one label lookup, not one per event.
fn count_per_table(family: &Family<TableLabel, Counter>, events: &[Event]) {
    let runs = events.chunk_by(|a, b| std::sync::Arc::ptr_eq(&a.relation, &b.relation));
    for run in runs {
        let table = run[0].relation.qualified_name();
        family
            .get_or_create(&TableLabel { table })
            .inc_by(run.len() as u64);
    }
}

/// An LSN (or a difference of two) as a gauge value.
fn lsn_gauge(lsn: u64) -> i64 {
    i64::try_from(lsn).unwrap_or(i64::MAX)
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
        self.events_out_sum.load(Ordering::Relaxed)
    }

    /// Counts events read from the source, per table.
    pub fn record_in(&self, events: &[Event]) {
        count_per_table(&self.events_in, events);
    }

    /// A transaction committed at `commit_us` (µs since the Unix epoch) was read, to be
    /// acknowledged at `lsn`: until then it counts towards the lag in seconds.
    pub fn record_unacked(&self, lsn: crate::event::Lsn, commit_us: i64) {
        self.unacked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(lsn.0, commit_us);
    }

    /// Counts events and bytes written to the sinks, per table.
    pub fn record_out(&self, events: &[Event], records: &[EncodedRecord]) {
        count_per_table(&self.events_out, events);
        self.events_out_sum
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let bytes: usize = records.iter().map(|r| r.payload.len()).sum();
        self.bytes_out.inc_by(bytes as u64);
    }

    /// Records one run of the plugin chain over a batch of `events_in` events.
    pub fn record_chain(&self, events_in: usize, _events_out: usize, took: Duration) {
        let seconds = took.as_secs_f64();
        self.chain_events_in.inc_by(events_in as u64);
        self.chain_seconds.inc_by(seconds);
        self.chain_batches.inc();
        self.chain_batch_seconds.observe(seconds);
    }

    /// Counts dead-lettered events.
    pub fn record_dead_letters(&self, n: usize) {
        self.dead_letters.inc_by(n as u64);
    }

    /// Counts a sink error.
    pub fn record_sink_error(&self, sink: &str) {
        self.sink_errors
            .get_or_create(&SinkLabel {
                sink: sink.to_owned(),
            })
            .inc();
    }

    /// Counts a successful flush of every sink (an acknowledgement).
    pub fn record_flush(&self) {
        self.sink_acks.inc();
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
            let took_us = u64::try_from(now_us - commit).unwrap_or(0);
            self.commit_to_ack.observe(took_us as f64 / 1e6);
        }
    }

    /// The LSN every sink has acknowledged.
    pub fn set_acked_lsn(&self, lsn: crate::event::Lsn) {
        let lsn = lsn.0;
        self.acked_lsn.set(lsn_gauge(lsn));
        self.unacked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .acked(lsn);
    }

    /// Records how the slot stands on the server, and whether its retained WAL passed
    /// `threshold` bytes.
    pub fn set_slot_health(&self, health: &walflow_pg::slot_health::SlotHealth, threshold: u64) {
        let g = &self.slot;
        let retained = health.retained_bytes.unwrap_or(0);
        g.retained_wal.set(retained);
        g.safe_wal_size.set(health.safe_wal_size.unwrap_or(-1));
        for status in WAL_STATUSES {
            let now = health.wal_status.as_deref() == Some(status);
            g.wal_status
                .get_or_create(&StatusLabel {
                    status: status.to_string(),
                })
                .set(i64::from(now));
        }
        g.threshold.set(threshold.min(i64::MAX as u64) as i64);
        g.over_threshold
            .set(i64::from(retained > 0 && retained as u64 > threshold));
    }

    /// The server's current WAL position, as last reported.
    pub fn set_server_lsn(&self, lsn: crate::event::Lsn) {
        let lsn = lsn.0;
        self.server_lsn.store(lsn, Ordering::Relaxed);
    }

    /// Plugin hot reloads so far: accepted and rejected.
    pub fn set_reloads(&self, accepted: u64, rejected: u64) {
        self.plugin_reloads
            .inner()
            .store(accepted, Ordering::Relaxed);
        self.plugin_reload_failures
            .inner()
            .store(rejected, Ordering::Relaxed);
    }

    /// Snapshot progress of `table`: rows read so far and the estimated total.
    pub fn set_snapshot_rows(&self, table: &str, done: u64, estimated: u64) {
        let label = TableLabel {
            table: table.to_owned(),
        };
        self.snapshot_rows
            .get_or_create(&label)
            .set(lsn_gauge(done));
        self.snapshot_rows_estimated
            .get_or_create(&label)
            .set(lsn_gauge(estimated));
    }

    /// Age of the oldest commit read and not yet acknowledged, in seconds (0 when caught up).
    fn lag_seconds(&self) -> f64 {
        let oldest = self
            .unacked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .oldest_commit_us();
        oldest.map_or(0.0, |commit| {
            (crate::encode::now_ms() as f64 / 1e3 - commit as f64 / 1e6).max(0.0)
        })
    }

    /// The numbers a status page shows of this pipeline, read now.
    pub fn summary(&self) -> Summary {
        let acked = u64::try_from(self.acked_lsn.get()).unwrap_or(0);
        let server = self.server_lsn.load(Ordering::Relaxed);
        Summary {
            events_out: self.events_out_total(),
            acked_lsn: crate::event::Lsn(acked),
            lag_bytes: server.saturating_sub(acked),
            lag_seconds: self.lag_seconds(),
            healthy: self.health().is_ok(),
        }
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        self.render_as(Exposition::OpenMetrics)
    }

    /// The exposition in `format`.
    pub fn render_as(&self, format: Exposition) -> Result<String, std::fmt::Error> {
        self.connected.set(i64::from(self.health().is_ok()));
        let acked = u64::try_from(self.acked_lsn.get()).unwrap_or(0);
        let server = self.server_lsn.load(Ordering::Relaxed);
        self.lag_bytes.set(lsn_gauge(server.saturating_sub(acked)));
        self.lag_seconds.set(self.lag_seconds());
        let mut out = String::with_capacity(8 * 1024);
        match format {
            Exposition::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)?
            }
            Exposition::PrometheusText => {
                prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?
            }
        }
        Ok(out)
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
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;

    use super::{Exposition, Metrics};

    /// How long a client has to send its request head.
    pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(1);

    /// `/metrics`, `/health`, and 404 for anything else.
    pub(super) fn router(metrics: Arc<Metrics>) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .route("/health", get(health))
            .fallback(not_found)
            .with_state(metrics)
    }

    /// The exposition, in the format the scraper asks for (see [`Exposition::negotiate`]).
    async fn scrape(
        State(metrics): State<Arc<Metrics>>,
        headers: HeaderMap,
    ) -> axum::response::Response {
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let format = Exposition::negotiate(accept);
        match metrics.render_as(format) {
            Ok(text) => ([(header::CONTENT_TYPE, format.content_type())], text).into_response(),
            Err(_) => {
                tracing::error!("cannot render the metrics");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot render the metrics\n",
                )
                    .into_response()
            }
        }
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

#[cfg(test)]
mod tests {
    use crate::event::Lsn;
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
        let text = metrics.render().unwrap();
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
        assert!(text.contains(&format!("# UNIT {name} seconds")), "{text}");
        assert_eq!(line(&format!("{name}_bucket{{le=\"0.001\"}}")), "1");
        assert_eq!(line(&format!("{name}_bucket{{le=\"2.5\"}}")), "1");
        assert_eq!(line(&format!("{name}_bucket{{le=\"10.0\"}}")), "2");
        assert_eq!(line(&format!("{name}_bucket{{le=\"60.0\"}}")), "2");
        assert_eq!(line(&format!("{name}_bucket{{le=\"+Inf\"}}")), "3");
        assert_eq!(line(&format!("{name}_count")), "3");
        let sum: f64 = line(&format!("{name}_sum")).parse().unwrap();
        assert!((123.0..124.0).contains(&sum), "{sum}");
    }

    /// Each run of the plugin chain is one observation of the per-batch histogram, besides
    /// the running totals.
    #[test]
    fn plugin_chain_runs_fill_the_batch_histogram() {
        let metrics = Metrics::default();
        metrics.record_chain(100, 90, Duration::from_micros(300));
        metrics.record_chain(50, 50, Duration::from_millis(40));
        let text = metrics.render().unwrap();
        let name = "walflow_plugin_batch_seconds";
        for expected in [
            format!("# TYPE {name} histogram"),
            format!("{name}_bucket{{le=\"0.00025\"}} 0"),
            format!("{name}_bucket{{le=\"0.0005\"}} 1"),
            format!("{name}_bucket{{le=\"0.025\"}} 1"),
            format!("{name}_bucket{{le=\"0.05\"}} 2"),
            format!("{name}_bucket{{le=\"+Inf\"}} 2"),
            format!("{name}_count 2"),
            "walflow_plugin_events_total 150".to_string(),
            "walflow_plugin_batches_total 2".to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == expected),
                "no `{expected}` in {text}"
            );
        }
        let seconds = text
            .lines()
            .find_map(|l| l.strip_prefix("walflow_plugin_seconds_total "))
            .unwrap_or_else(|| panic!("no plugin seconds in {text}"));
        let seconds: f64 = seconds.parse().unwrap();
        assert!((seconds - 0.0403).abs() < 1e-9, "{seconds}");
    }

    /// The names README.md, docs/ and the integration tests use, as exposed: counters end in
    /// `_total` (OpenMetrics adds it to the family name), nothing is renamed.
    #[test]
    fn every_documented_name_is_exposed_as_before() {
        let metrics = Metrics::default();
        let rel = Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: "t".into(),
            columns: Vec::new(),
        });
        let events = vec![event(&rel)];
        metrics.record_in(&events);
        metrics.record_out(&events, &[]);
        metrics.record_sink_error("file");
        metrics.set_snapshot_rows("public.t", 5, 10);
        metrics.record_dead_letters(2);
        metrics.set_reloads(3, 1);
        metrics.record_flush();
        metrics.set_acked_lsn(Lsn(0x1_0000_0000));
        metrics.set_server_lsn(Lsn(0x1_0000_0400));
        let text = metrics.render().unwrap();
        let samples: Vec<(&str, &str)> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.rsplit_once(' ').unwrap())
            .collect();
        let value = |series: &str| {
            samples
                .iter()
                .find(|(s, _)| *s == series)
                .unwrap_or_else(|| panic!("no `{series}` in {text}"))
                .1
        };
        assert_eq!(value("walflow_events_in_total{table=\"public.t\"}"), "1");
        assert_eq!(value("walflow_events_out_total{table=\"public.t\"}"), "1");
        assert_eq!(value("walflow_bytes_out_total"), "0");
        assert_eq!(value("walflow_sink_errors_total{sink=\"file\"}"), "1");
        assert_eq!(value("walflow_sink_acks_total"), "1");
        assert_eq!(value("walflow_dead_letters_total"), "2");
        assert_eq!(value("walflow_plugin_reloads_total"), "3");
        assert_eq!(value("walflow_plugin_reload_failures_total"), "1");
        assert_eq!(value("walflow_snapshot_rows{table=\"public.t\"}"), "5");
        assert_eq!(
            value("walflow_snapshot_rows_estimated{table=\"public.t\"}"),
            "10"
        );
        assert_eq!(value("walflow_acked_lsn"), "4294967296");
        assert_eq!(value("walflow_replication_lag_bytes"), "1024");
        assert_eq!(value("walflow_replication_connected"), "0");
        value("walflow_replication_lag_seconds");
        value("walflow_plugin_seconds_total");
        value("walflow_commit_to_ack_seconds_count");
        value("walflow_plugin_batch_seconds_count");
        assert!(
            text.contains("# TYPE walflow_events_out counter\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(metrics.events_out_total(), 1);
    }

    /// Table names are label values: quotes and backslashes in them are escaped.
    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::default();
        metrics.set_snapshot_rows("s.t\"x\\", 1, 1);
        let text = metrics.render().unwrap();
        assert!(
            text.contains("walflow_snapshot_rows{table=\"s.t\\\"x\\\\\"} 1"),
            "{text}"
        );
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
        assert!(
            metrics
                .render()
                .unwrap()
                .contains("walflow_replication_connected 1")
        );
        link.down(&"nothing received for 5s");
        let why = metrics.health().unwrap_err();
        assert!(why.contains("nothing received for 5s"), "{why}");
        assert!(
            metrics
                .render()
                .unwrap()
                .contains("walflow_replication_connected 0")
        );
        link.up();
        assert_eq!(metrics.health(), Ok(()));
    }

    /// `GET path` over a fresh connection, read to its end: the status line and the body.
    async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
        get_with(addr, path, "").await
    }

    /// `GET path` with `headers` (each line ending in CRLF).
    async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &str) -> (String, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n{headers}\r\n").as_bytes())
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
        let content_type = |head: &str| {
            head.lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-type: ")
                        .map(str::to_owned)
                })
                .unwrap_or_default()
        };
        assert_eq!(
            content_type(&head),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        assert!(body.ends_with("# EOF\n"), "{body}");
        assert!(body.contains("walflow_replication_connected 0"), "{body}");
        let (head, _) = get(addr, "/nope").await;
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
    }

    /// Prometheus asks for OpenMetrics and gets it; a scraper that asks only for the classic
    /// text format gets that, with counters typed under their `_total` names.
    #[tokio::test]
    async fn the_format_follows_the_accept_header() {
        let metrics = Arc::new(Metrics::default());
        let addr = listening(&metrics).await;
        let prometheus = "accept: application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1\r\n";
        let (head, body) = get_with(addr, "/metrics", prometheus).await;
        assert!(
            head.contains("application/openmetrics-text; version=1.0.0"),
            "{head}"
        );
        assert!(
            body.contains("# TYPE walflow_dead_letters counter\n"),
            "{body}"
        );
        let classic = "accept: text/plain;version=0.0.4;q=1,*/*;q=0.1\r\n";
        let (head, body) = get_with(addr, "/metrics", classic).await;
        assert!(head.contains("text/plain; version=0.0.4"), "{head}");
        assert!(
            body.contains(
                "# TYPE walflow_dead_letters_total counter\nwalflow_dead_letters_total 0\n"
            ),
            "{body}"
        );
        assert!(!body.contains("# EOF"), "{body}");
        let (head, _) = get_with(addr, "/metrics", "accept: */*\r\n").await;
        assert!(head.contains("application/openmetrics-text"), "{head}");
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
        let text = metrics.render().unwrap();
        assert!(
            text.contains("walflow_events_in_total{table=\"public.a\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("walflow_events_in_total{table=\"public.b\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn the_lag_in_seconds_is_the_age_of_the_oldest_unacknowledged_commit() {
        let metrics = Metrics::default();
        assert_eq!(metrics.summary().lag_seconds, 0.0);
        let now_us = crate::encode::now_ms() * 1000;
        metrics.record_unacked(crate::event::Lsn(100), now_us - 5_000_000);
        metrics.record_unacked(crate::event::Lsn(200), now_us - 1_000_000);
        let lag = metrics.summary().lag_seconds;
        assert!((4.9..6.0).contains(&lag), "{lag}");
        metrics.set_acked_lsn(crate::event::Lsn(150));
        let lag = metrics.summary().lag_seconds;
        assert!((0.9..2.0).contains(&lag), "{lag}");
        metrics.set_acked_lsn(crate::event::Lsn(200));
        assert_eq!(metrics.summary().lag_seconds, 0.0, "caught up");
    }
}
