//! Snapshot progress for people and for monitoring: a bar per table on a terminal (rows, rows/s,
//! ETA), a log line per table every few seconds otherwise, and the `walflow_snapshot_rows*`
//! gauges either way.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::metrics::Metrics;

/// How often a table's progress is logged when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Progress of the tables of one snapshot.
#[derive(Clone)]
pub struct Progress {
    inner: Arc<Mutex<Inner>>,
    metrics: Arc<Metrics>,
}

struct Inner {
    bars: Option<MultiProgress>,
    tables: HashMap<String, Table>,
}

struct Table {
    done: u64,
    estimated: u64,
    started: Instant,
    logged: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Bars when standard error is a terminal, log lines otherwise.
    pub fn new(metrics: Arc<Metrics>) -> Progress {
        let bars = std::io::stderr().is_terminal().then(MultiProgress::new);
        Progress {
            inner: Arc::new(Mutex::new(Inner {
                bars,
                tables: HashMap::new(),
            })),
            metrics,
        }
    }

    /// Starts tracking `table` (a no-op when it is tracked already).
    pub fn table(&self, table: &str, estimated: u64, done: u64) {
        let mut inner = self.lock();
        if inner.tables.contains_key(table) {
            return;
        }
        let bar = inner.bars.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(estimated.max(done)));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:>24} {bar:30} {pos}/{len} rows {per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(table.to_string());
            bar.set_position(done);
            bar
        });
        let now = Instant::now();
        inner.tables.insert(
            table.to_string(),
            Table {
                done,
                estimated,
                started: now,
                logged: now,
                bar,
            },
        );
        self.metrics.set_snapshot_rows(table, done, estimated);
    }

    /// `rows` more rows of `table` were read.
    pub fn add(&self, table: &str, rows: u64) {
        let mut inner = self.lock();
        let Some(t) = inner.tables.get_mut(table) else {
            return;
        };
        t.done += rows;
        if t.done > t.estimated {
            t.estimated = t.done;
        }
        self.metrics.set_snapshot_rows(table, t.done, t.estimated);
        match &t.bar {
            Some(bar) => {
                bar.set_length(t.estimated);
                bar.set_position(t.done);
            }
            None if t.logged.elapsed() >= LOG_EVERY => {
                t.logged = Instant::now();
                log_line(table, t, "snapshot progress");
            }
            None => {}
        }
    }

    /// `table` is read completely.
    pub fn finish(&self, table: &str) {
        let mut inner = self.lock();
        let Some(t) = inner.tables.get_mut(table) else {
            return;
        };
        t.estimated = t.done;
        self.metrics.set_snapshot_rows(table, t.done, t.done);
        if let Some(bar) = &t.bar {
            bar.set_length(t.done);
            bar.finish();
        }
        log_line(table, t, "snapshot of table read");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn log_line(table: &str, t: &Table, what: &str) {
    let secs = t.started.elapsed().as_secs_f64().max(0.001);
    let rate = t.done as f64 / secs;
    let eta = if rate > 0.0 {
        (t.estimated.saturating_sub(t.done)) as f64 / rate
    } else {
        0.0
    };
    tracing::info!(
        table,
        rows = t.done,
        estimated = t.estimated,
        rows_per_s = rate.round() as u64,
        eta_s = eta.round() as u64,
        "{what}"
    );
}
