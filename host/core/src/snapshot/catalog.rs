//! What a snapshot needs to know of a table, from the catalog: its columns as the stream
//! describes them (so a snapshot row and a streamed row of the same table look the same), its
//! primary key (to chunk and de-duplicate by), and its size (to split and to estimate).

use std::sync::Arc;

use tokio_postgres::Client;

use crate::event::{Column, Relation};
use crate::value::binary::BinaryKind;
use crate::value::{TextCodec, TypeRegistry};
use walflow_config::SourceConfig;
use walflow_config::tables::TableSelector;
use walflow_pg::{ConnectError, sql};

/// A captured table.
#[derive(Debug)]
pub struct TableInfo {
    /// Columns in table order, key flags as the stream sets them.
    pub relation: Arc<Relation>,
    /// Indices of the primary key columns, in key order (empty without a primary key).
    pub primary_key: Vec<usize>,
    /// `r` (a heap that can be split by page) or `p` (partitioned: read whole).
    pub kind: char,
    /// Heap pages now.
    pub pages: u64,
    /// The planner's row estimate (0 when never analysed).
    pub rows_estimate: u64,
    /// One decoder per column.
    pub codecs: Vec<TextCodec>,
    /// Each column's type as SQL (`format_type`), for typed literals.
    pub sql_types: Vec<String>,
    /// Each column's binary kind when the table is read with binary `COPY` (every column
    /// has one), `None` to read it as text. Set by the initial snapshot.
    pub binary: Option<Arc<[BinaryKind]>>,
}

impl TableInfo {
    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        self.relation.qualified_name()
    }

    /// `"schema"."table"`, for SQL.
    pub fn sql_name(&self) -> String {
        sql::qualified(&self.relation.schema, &self.relation.table)
    }

    /// The column list, quoted, in table order.
    pub fn select_list(&self) -> String {
        let names: Vec<String> = self
            .relation
            .columns
            .iter()
            .map(|c| sql::ident(&c.name))
            .collect();
        names.join(", ")
    }

    /// The primary key column list, quoted, in key order.
    pub fn key_list(&self) -> String {
        let names: Vec<String> = self
            .primary_key
            .iter()
            .map(|&i| sql::ident(&self.relation.columns[i].name))
            .collect();
        names.join(", ")
    }
}

/// `server_version_num`.
pub async fn server_version(client: &Client) -> Result<u32, ConnectError> {
    let row = client
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .map_err(sql_error)?;
    Ok(row.get::<_, i32>(0) as u32)
}

/// Zone names that are UTC all year round (PostgreSQL's `TimeZone`, compared without case).
const UTC_ZONES: &[&str] = &[
    "UTC",
    "Etc/UTC",
    "UCT",
    "Etc/UCT",
    "GMT",
    "Etc/GMT",
    "GMT0",
    "Etc/GMT0",
    "GMT+0",
    "Etc/GMT+0",
    "GMT-0",
    "Etc/GMT-0",
    "Universal",
    "Etc/Universal",
    "Zulu",
    "Etc/Zulu",
    "Greenwich",
    "Etc/Greenwich",
];

/// Whether the session prints `timestamptz` with a `+00` offset whatever the date: then its
/// binary form (always UTC) decodes to the same value as its text.
pub async fn session_is_utc(client: &Client) -> Result<bool, ConnectError> {
    let row = client
        .query_one("SELECT current_setting('TimeZone')", &[])
        .await
        .map_err(sql_error)?;
    let zone: String = row.get(0);
    Ok(UTC_ZONES.iter().any(|z| z.eq_ignore_ascii_case(&zone)))
}

/// The type catalog, for decoding values as the stream does.
pub async fn load_registry(client: &Client) -> Result<TypeRegistry, ConnectError> {
    let mut registry = TypeRegistry::new();
    for msg in client
        .simple_query(crate::replication::stream::TYPE_QUERY)
        .await
        .map_err(sql_error)?
    {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = msg {
            let cells: Vec<Option<String>> = (0..row.len())
                .map(|i| row.get(i).map(str::to_string))
                .collect();
            if let Some(info) = crate::replication::stream::type_info(&cells)
                && registry.get(info.oid).is_none()
            {
                registry.insert(info);
            }
        }
    }
    Ok(registry)
}

/// The tables the pipeline captures: those of the publication that the selection matches,
/// without the signal table (its rows are requests, not data).
pub async fn captured_tables(
    client: &Client,
    source: &SourceConfig,
    selector: &TableSelector,
    registry: &TypeRegistry,
) -> Result<Vec<TableInfo>, ConnectError> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_catalog.pg_publication_tables \
             WHERE pubname = $1 ORDER BY 1, 2",
            &[&source.publication],
        )
        .await
        .map_err(sql_error)?;
    let signal = source.signal_table.as_deref().map(split_name);
    let version = server_version(client).await?;
    let mut tables = Vec::new();
    for row in rows {
        let (schema, table): (String, String) = (row.get(0), row.get(1));
        let is_signal = signal
            .as_ref()
            .is_some_and(|(s, t)| *s == schema && *t == table);
        if is_signal || !selector.matches(&schema, &table) {
            continue;
        }
        if let Some(info) = table_info(client, registry, version, &schema, &table).await? {
            tables.push(info);
        }
    }
    Ok(tables)
}

/// `schema.table` (or `table`, in `public`), quotes removed.
pub fn split_name(name: &str) -> (String, String) {
    let unquote = |s: &str| s.trim().trim_matches('"').replace("\"\"", "\"");
    match name.split_once('.') {
        Some((s, t)) => (unquote(s), unquote(t)),
        None => ("public".to_string(), unquote(name)),
    }
}

/// One table by name; `None` when it does not exist.
pub async fn table_info(
    client: &Client,
    registry: &TypeRegistry,
    server_version: u32,
    schema: &str,
    table: &str,
) -> Result<Option<TableInfo>, ConnectError> {
    let Some(row) = client
        .query_opt(
            "SELECT c.oid, c.relkind::text, c.relreplident::text, \
                    (pg_catalog.pg_relation_size(c.oid) / current_setting('block_size')::int8)::int8, \
                    GREATEST(c.reltuples, 0)::int8 \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
            &[&schema, &table],
        )
        .await
        .map_err(sql_error)?
    else {
        return Ok(None);
    };
    let oid: u32 = row.get(0);
    let kind = row.get::<_, String>(1).chars().next().unwrap_or('r');
    let identity = row.get::<_, String>(2).chars().next().unwrap_or('d');
    let generated = if server_version >= 120000 {
        "AND a.attgenerated = ''"
    } else {
        ""
    };
    let columns = client
        .query(
            &format!(
                "SELECT a.attname::text, a.atttypid, t.typname::text, a.atttypmod, \
                    (SELECT array_position(i.indkey::int2[], a.attnum) FROM pg_catalog.pg_index i \
                      WHERE i.indrelid = a.attrelid AND i.indisprimary), \
                    (SELECT array_position(i.indkey::int2[], a.attnum) FROM pg_catalog.pg_index i \
                      WHERE i.indrelid = a.attrelid AND i.indisreplident), \
                    pg_catalog.format_type(a.atttypid, a.atttypmod) \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped {generated} \
                 ORDER BY a.attnum"
            ),
            &[&oid],
        )
        .await
        .map_err(sql_error)?;
    let mut cols = Vec::with_capacity(columns.len());
    let sql_types = columns.iter().map(|c| c.get::<_, String>(6)).collect();
    let mut pk: Vec<(i32, usize)> = Vec::new();
    for (i, c) in columns.iter().enumerate() {
        let pk_pos: Option<i32> = c.get(4);
        let ident_pos: Option<i32> = c.get(5);
        if let Some(p) = pk_pos {
            pk.push((p, i));
        }
        // The stream's key: the replica identity index under USING INDEX, none under NOTHING,
        // else the primary key (also under FULL, as the stream is taught).
        let key = match identity {
            'i' => ident_pos.is_some(),
            'n' => false,
            _ => pk_pos.is_some(),
        };
        cols.push(Column {
            name: c.get(0),
            type_oid: c.get(1),
            type_name: c.get(2),
            type_modifier: c.get(3),
            key,
        });
    }
    pk.sort();
    let codecs = cols.iter().map(|c| registry.codec(c.type_oid)).collect();
    Ok(Some(TableInfo {
        relation: Arc::new(Relation {
            oid,
            schema: schema.to_string(),
            table: table.to_string(),
            columns: cols,
        }),
        primary_key: pk.into_iter().map(|(_, i)| i).collect(),
        kind,
        pages: row.get::<_, i64>(3).max(0) as u64,
        rows_estimate: row.get::<_, i64>(4).max(0) as u64,
        codecs,
        sql_types,
        binary: None,
    }))
}

/// An SQL error from a snapshot connection, classified like the stream's: a server error is
/// reported with its SQLSTATE, a broken connection as retryable.
pub fn sql_error(e: tokio_postgres::Error) -> ConnectError {
    if let Some(db) = e.as_db_error() {
        return walflow_pg::ServerError {
            severity: db.severity().to_string(),
            code: db.code().code().to_string(),
            message: db.message().to_string(),
            detail: db.detail().map(str::to_string),
            hint: db.hint().map(str::to_string),
        }
        .into_generic();
    }
    ConnectError::Broken {
        addr: "the source database".to_string(),
        source: std::io::Error::other(e.to_string()),
    }
}
