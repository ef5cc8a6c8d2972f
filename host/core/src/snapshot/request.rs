//! Incremental snapshot requests: what a signal row or a control-socket message asks for, how it
//! is checked, and how it is written as a signal row (`walflow snapshot` sends it: `command`).
//!
//! A signal row has the seed's layout (`id`, `type`, `data`) and Debezium's types:
//! `execute-snapshot` with `{"data-collections": ["public.orders"], "type": "incremental"}`,
//! `stop-snapshot` (optionally with `data-collections`), `pause-snapshot`, `resume-snapshot`.
//! Watermark rows (`snapshot-window-open`/`-close`) are walflow's own. Anything else is logged
//! and skipped: a bad row never stops the stream.

use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use super::catalog::{self, TableInfo, split_name};
use crate::value::TypeRegistry;
use walflow_config::tables::TableSelector;
use walflow_config::{Config, SourceConfig};
use walflow_pg::sql;

/// Watermark row type written before a chunk is read.
pub const WINDOW_OPEN: &str = "snapshot-window-open";
/// Watermark row type written after a chunk is read.
pub const WINDOW_CLOSE: &str = "snapshot-window-close";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Request {
    /// Snapshot these tables (`schema.table`).
    ExecuteSnapshot {
        /// The tables.
        #[serde(rename = "data-collections")]
        tables: Vec<String>,
    },
    /// Stop these tables' snapshots, or all when empty.
    StopSnapshot {
        /// The tables.
        #[serde(rename = "data-collections", default)]
        tables: Vec<String>,
    },
    /// Read no more chunks until resumed.
    PauseSnapshot,
    /// Continue after a pause.
    ResumeSnapshot,
}

/// What a signal row turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A request.
    Request(Request),
    /// A watermark walflow wrote itself.
    Watermark,
}

/// The `data` of an `execute-snapshot` / `stop-snapshot` row.
#[derive(Debug, Deserialize)]
struct SignalData {
    #[serde(rename = "data-collections", default)]
    tables: Option<Vec<String>>,
    #[serde(rename = "type", default)]
    kind: Option<String>,
}

/// Reads a signal row. `Err` says why it is skipped.
pub fn parse_signal(kind: &str, data: Option<&str>) -> Result<Signal, String> {
    let parsed = || -> Result<SignalData, String> {
        let text = data.filter(|d| !d.trim().is_empty()).unwrap_or("{}");
        serde_json::from_str(text).map_err(|e| format!("its data is not JSON ({e})"))
    };
    match kind {
        WINDOW_OPEN | WINDOW_CLOSE => Ok(Signal::Watermark),
        "execute-snapshot" => {
            let d = parsed()?;
            let kind = d.kind.as_deref().unwrap_or("incremental");
            if !kind.eq_ignore_ascii_case("incremental") {
                return Err(format!(
                    "snapshot type \"{kind}\" is not supported; use \"incremental\""
                ));
            }
            let tables = d
                .tables
                .filter(|t| !t.is_empty())
                .ok_or("its data has no \"data-collections\" list of tables".to_string())?;
            Ok(Signal::Request(Request::ExecuteSnapshot { tables }))
        }
        "stop-snapshot" => Ok(Signal::Request(Request::StopSnapshot {
            tables: parsed()?.tables.unwrap_or_default(),
        })),
        "pause-snapshot" => Ok(Signal::Request(Request::PauseSnapshot)),
        "resume-snapshot" => Ok(Signal::Request(Request::ResumeSnapshot)),
        other => Err(format!("signal type \"{other}\" is unknown")),
    }
}

/// The table, when it can be snapshotted incrementally; else (inner `Err`) why not.
pub async fn check_table(
    client: &Client,
    source: &SourceConfig,
    selector: &TableSelector,
    (registry, server_version): (&TypeRegistry, u32),
    table: &str,
) -> anyhow::Result<Result<TableInfo, String>> {
    let (schema, name) = split_name(table);
    let Some(info) = catalog::table_info(client, registry, server_version, &schema, &name).await?
    else {
        return Ok(Err(format!(
            "table {schema}.{name} does not exist; check the name (schema.table)"
        )));
    };
    if !selector.matches(&schema, &name) {
        return Ok(Err(format!(
            "table {schema}.{name} is not captured by this pipeline; add it to [source] tables first"
        )));
    }
    if info.primary_key.is_empty() {
        return Ok(Err(format!(
            "table {schema}.{name} has no primary key, which incremental snapshots chunk by; add one (ALTER TABLE {} ADD PRIMARY KEY (…))",
            info.sql_name()
        )));
    }
    let published = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_publication_tables \
             WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&source.publication, &schema, &name],
        )
        .await
        .map_err(catalog::sql_error)?;
    if published.is_none() {
        return Ok(Err(format!(
            "table {schema}.{name} is not in publication {}; add it (ALTER PUBLICATION {} ADD TABLE {}) so its changes are streamed too",
            source.publication,
            sql::ident(&source.publication),
            info.sql_name()
        )));
    }
    Ok(Ok(info))
}

/// Why read-only incremental snapshots cannot work on a server of `version` (they need
/// `pg_current_snapshot`, PostgreSQL 13+); `None` when they can.
pub fn read_only_unsupported(version: u32) -> Option<String> {
    (version < 130000).then(|| {
        format!(
            "read-only incremental snapshots need PostgreSQL 13 or newer (pg_current_snapshot), and this server is {}.{}; set read_only = false and a signal_table instead",
            version / 10000,
            version % 10000 / 100
        )
    })
}

/// Checks a request against the database: every table it names must be snapshottable.
pub async fn validate(client: &Client, config: &Config, request: &Request) -> anyhow::Result<()> {
    let source = &config.source;
    let version = catalog::server_version(client).await?;
    if source.read_only
        && let Some(why) = read_only_unsupported(version)
    {
        anyhow::bail!("{why}");
    }
    if let Request::ExecuteSnapshot { tables } = request {
        let selector = TableSelector::from_source(source)?;
        // Only the key and names matter here, not how values decode.
        let registry = TypeRegistry::new();
        for t in tables {
            if let Err(why) =
                check_table(client, source, &selector, (&registry, version), t).await?
            {
                anyhow::bail!("{why}");
            }
        }
    }
    Ok(())
}

/// Inserts `request` as a signal row; returns its id.
pub async fn insert_signal(
    client: &Client,
    signal_table: &str,
    request: &Request,
) -> anyhow::Result<String> {
    let (kind, data) = signal_row(request);
    write_signal(client, signal_table, &kind, &data).await
}

/// Writes one row into the signal table; returns its id.
pub async fn write_signal(
    client: &Client,
    signal_table: &str,
    kind: &str,
    data: &str,
) -> anyhow::Result<String> {
    let (schema, table) = split_name(signal_table);
    let id = format!("walflow-{:016x}", rand::random::<u64>());
    let sql = format!(
        "INSERT INTO {} (id, type, data) VALUES ({}, {}, {})",
        sql::qualified(&schema, &table),
        sql::literal(&id),
        sql::literal(kind),
        sql::literal(data)
    );
    client.batch_execute(&sql).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot write to the signal table {schema}.{table} ({}); create it with `walflow setup-sql` and grant INSERT on it",
            catalog::sql_error(e)
        )
    })?;
    Ok(id)
}

/// The `type` and `data` of a signal row for `request`.
pub fn signal_row(request: &Request) -> (String, String) {
    let data = |tables: &[String]| {
        serde_json::json!({"data-collections": tables, "type": "incremental"}).to_string()
    };
    match request {
        Request::ExecuteSnapshot { tables } => ("execute-snapshot".into(), data(tables)),
        Request::StopSnapshot { tables } => ("stop-snapshot".into(), data(tables)),
        Request::PauseSnapshot => ("pause-snapshot".into(), "{}".into()),
        Request::ResumeSnapshot => ("resume-snapshot".into(), "{}".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debezium_rows_parse() {
        assert_eq!(
            parse_signal(
                "execute-snapshot",
                Some(r#"{"data-collections": ["public.orders"], "type": "incremental"}"#)
            ),
            Ok(Signal::Request(Request::ExecuteSnapshot {
                tables: vec!["public.orders".into()]
            }))
        );
        assert_eq!(
            parse_signal("stop-snapshot", None),
            Ok(Signal::Request(Request::StopSnapshot { tables: vec![] }))
        );
        assert_eq!(parse_signal(WINDOW_OPEN, Some("x")), Ok(Signal::Watermark));
    }

    #[test]
    fn bad_rows_say_why() {
        assert!(
            parse_signal("launch-rockets", None)
                .unwrap_err()
                .contains("unknown")
        );
        assert!(
            parse_signal("execute-snapshot", Some("{oops"))
                .unwrap_err()
                .contains("not JSON")
        );
        assert!(
            parse_signal("execute-snapshot", Some("{}"))
                .unwrap_err()
                .contains("data-collections")
        );
        assert!(
            parse_signal(
                "execute-snapshot",
                Some(r#"{"data-collections": ["a.b"], "type": "blocking"}"#)
            )
            .unwrap_err()
            .contains("not supported")
        );
    }

    #[test]
    fn requests_round_trip_as_signal_rows() {
        let r = Request::ExecuteSnapshot {
            tables: vec!["public.t".into()],
        };
        let (kind, data) = signal_row(&r);
        assert_eq!(parse_signal(&kind, Some(&data)), Ok(Signal::Request(r)));
    }
}
