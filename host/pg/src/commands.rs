//! Replication commands and catalog queries on a [`Connection`]: IDENTIFY_SYSTEM, the server's
//! version and the protocol it allows, slots (look up, create if missing, with or without an
//! exported snapshot), publications (check and autocreate), and START_REPLICATION.
//!
//! In `replication=database` mode the walsender also runs plain SQL (PostgreSQL 10+), so the
//! catalog queries share this one connection.

use crate::sql::{ident, literal, qualified, replication_literal};

use super::conn::{Connection, TextRow};
use super::error::ConnectError;
use crate::lsn::{Lsn, format_lsn};
use walflow_config::tables::TableSelector;
use walflow_config::{PublicationAutocreate, SourceConfig};

/// What IDENTIFY_SYSTEM says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's system identifier (changes with initdb, pg_upgrade keeps it, a different
    /// server has another).
    pub system_id: u64,
    /// Current timeline.
    pub timeline: u32,
    /// Current WAL flush position.
    pub xlogpos: Lsn,
    /// The database this connection is for.
    pub dbname: String,
}

/// A row of `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotInfo {
    /// Slot name.
    pub name: String,
    /// Output plugin.
    pub plugin: String,
    /// `logical` or `physical`.
    pub slot_type: String,
    /// Database the slot belongs to.
    pub database: Option<String>,
    /// Whether a walsender is using it now.
    pub active: bool,
    /// Oldest WAL the slot still needs.
    pub restart_lsn: Option<Lsn>,
    /// What consumers have confirmed.
    pub confirmed_flush_lsn: Option<Lsn>,
    /// `reserved`, `extended`, `unreserved`, `lost` (PostgreSQL 13+).
    pub wal_status: Option<String>,
    /// Why the server invalidated the slot, when it did: `invalidation_reason` on
    /// PostgreSQL 17+ (`wal_removed`, `rows_removed`, `wal_level_insufficient`,
    /// `idle_timeout`); on 16, `rows_removed` when `conflicting` says so.
    pub invalidation_reason: Option<String>,
    /// Whether it is a failover slot (PostgreSQL 17+; `false` before).
    pub failover: bool,
}

impl SlotInfo {
    /// Whether the server invalidated the slot: it can no longer stream from it.
    pub fn is_invalidated(&self) -> bool {
        self.wal_status.as_deref() == Some("lost") || self.invalidation_reason.is_some()
    }
}

/// A slot just created.
#[derive(Debug, Clone)]
pub struct CreatedSlot {
    /// The LSN from which the slot's changes start.
    pub consistent_point: Lsn,
    /// The exported snapshot, when one was asked for.
    pub snapshot_name: Option<String>,
}

/// What to do with the snapshot of a newly created slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSnapshot {
    /// No snapshot.
    Nothing,
    /// Export it for other sessions (`SET TRANSACTION SNAPSHOT`); valid until the next command on
    /// this connection.
    Export,
    /// Use it in this connection's open transaction (the caller issued `BEGIN ISOLATION LEVEL
    /// REPEATABLE READ` first).
    Use,
}

/// The pgoutput protocol version walflow uses with a server of `server_version_num`.
pub fn protocol_version(server_version_num: u32) -> u32 {
    match server_version_num {
        v if v >= 160000 => 4,
        v if v >= 150000 => 3,
        v if v >= 140000 => 2,
        _ => 1,
    }
}

fn protocol_error(what: &str) -> ConnectError {
    ConnectError::Protocol(format!("malformed {what} result"))
}

fn cell(row: &TextRow, i: usize) -> Option<&str> {
    row.get(i).and_then(|c| c.as_deref())
}

impl Connection {
    /// IDENTIFY_SYSTEM.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ConnectError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = rows
            .first()
            .ok_or_else(|| protocol_error("IDENTIFY_SYSTEM"))?;
        Ok(SystemIdentity {
            system_id: cell(row, 0)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| protocol_error("IDENTIFY_SYSTEM"))?,
            timeline: cell(row, 1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| protocol_error("IDENTIFY_SYSTEM"))?,
            xlogpos: cell(row, 2)
                .and_then(Lsn::parse)
                .ok_or_else(|| protocol_error("IDENTIFY_SYSTEM"))?,
            dbname: cell(row, 3).unwrap_or_default().to_string(),
        })
    }

    /// `server_version_num`, e.g. 150004.
    pub async fn server_version_num(&mut self) -> Result<u32, ConnectError> {
        let rows = self.simple_query("SHOW server_version_num").await?;
        rows.first()
            .and_then(|r| cell(r, 0))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| protocol_error("SHOW server_version_num"))
    }

    /// One setting (`SHOW name`).
    pub async fn show(&mut self, name: &str) -> Result<String, ConnectError> {
        let rows = self.simple_query(&format!("SHOW {name}")).await?;
        Ok(rows
            .first()
            .and_then(|r| cell(r, 0))
            .unwrap_or_default()
            .to_string())
    }

    /// One scalar from a SQL query (empty string for NULL or no rows).
    pub async fn query_scalar(&mut self, sql: &str) -> Result<Option<String>, ConnectError> {
        let rows = self.simple_query(sql).await?;
        Ok(rows.first().and_then(|r| cell(r, 0)).map(str::to_string))
    }

    /// The slot's row of `pg_replication_slots`, if it exists.
    pub async fn slot_info(&mut self, slot: &str) -> Result<Option<SlotInfo>, ConnectError> {
        let version = self.server_version_num().await?;
        let wal_status = if version >= 130000 {
            "wal_status"
        } else {
            "NULL"
        };
        let reason = match version {
            170000.. => "invalidation_reason",
            160000.. => "CASE WHEN conflicting THEN 'rows_removed' END",
            _ => "NULL",
        };
        let failover = if version >= 170000 {
            "failover"
        } else {
            "false"
        };
        let sql = format!(
            "SELECT slot_name, coalesce(plugin, ''), slot_type, database, active, restart_lsn, \
             confirmed_flush_lsn, {wal_status}, {reason}, {failover} \
             FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
            literal(slot)
        );
        let rows = self.simple_query(&sql).await?;
        Ok(rows.first().map(|r| SlotInfo {
            name: cell(r, 0).unwrap_or_default().to_string(),
            plugin: cell(r, 1).unwrap_or_default().to_string(),
            slot_type: cell(r, 2).unwrap_or_default().to_string(),
            database: cell(r, 3).map(str::to_string),
            active: cell(r, 4) == Some("t"),
            restart_lsn: cell(r, 5).and_then(Lsn::parse),
            confirmed_flush_lsn: cell(r, 6).and_then(Lsn::parse),
            wal_status: cell(r, 7).map(str::to_string),
            invalidation_reason: cell(r, 8).map(str::to_string),
            failover: cell(r, 9) == Some("t"),
        }))
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput` with the snapshot handling asked for.
    pub async fn create_slot(
        &mut self,
        slot: &str,
        snapshot: SlotSnapshot,
    ) -> Result<CreatedSlot, ConnectError> {
        let sql = if self.options().slot_failover {
            // The options list (15+) is the only spelling FAILOVER (17+) has.
            let snapshot = match snapshot {
                SlotSnapshot::Nothing => "nothing",
                SlotSnapshot::Export => "export",
                SlotSnapshot::Use => "use",
            };
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{snapshot}', FAILOVER true)",
                ident(slot)
            )
        } else {
            let snapshot_kw = match snapshot {
                SlotSnapshot::Nothing => "NOEXPORT_SNAPSHOT",
                SlotSnapshot::Export => "EXPORT_SNAPSHOT",
                SlotSnapshot::Use => "USE_SNAPSHOT",
            };
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {snapshot_kw}",
                ident(slot)
            )
        };
        let rows = self.simple_query(&sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| protocol_error("CREATE_REPLICATION_SLOT"))?;
        Ok(CreatedSlot {
            consistent_point: cell(row, 1)
                .and_then(Lsn::parse)
                .ok_or_else(|| protocol_error("CREATE_REPLICATION_SLOT"))?,
            snapshot_name: cell(row, 2).map(str::to_string),
        })
    }

    /// Makes an existing slot a failover slot (PostgreSQL 17+). Never right after creating
    /// one: the ALTER would end the snapshot the creation exported.
    pub async fn make_failover_slot(&mut self, slot: &str) -> Result<(), ConnectError> {
        self.simple_query(&format!(
            "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
            ident(slot)
        ))
        .await
        .map(|_| ())
    }

    /// Drops a slot (used by tests and the accept-gap path never: only explicit callers).
    pub async fn drop_slot(&mut self, slot: &str) -> Result<(), ConnectError> {
        self.simple_query(&format!("DROP_REPLICATION_SLOT {}", ident(slot)))
            .await
            .map(|_| ())
    }

    /// Whether the publication exists.
    pub async fn publication_exists(&mut self, publication: &str) -> Result<bool, ConnectError> {
        let sql = format!(
            "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
            literal(publication)
        );
        Ok(!self.simple_query(&sql).await?.is_empty())
    }

    /// Makes sure the publication exists as `publication_autocreate` says; returns what it did.
    pub async fn ensure_publication(
        &mut self,
        source: &SourceConfig,
    ) -> Result<PublicationAction, PublicationError> {
        let name = &source.publication;
        let exists = self.publication_exists(name).await?;
        // The signal table must be published too: incremental snapshot requests and their
        // watermarks travel through the stream.
        let selector =
            TableSelector::from_source(source)?.including(source.signal_table.as_deref());
        match source.publication_autocreate {
            PublicationAutocreate::Disabled if exists => Ok(PublicationAction::Unchanged),
            PublicationAutocreate::Disabled => Err(PublicationError::Missing {
                publication: name.clone(),
            }),
            PublicationAutocreate::AllTables if exists => Ok(PublicationAction::Unchanged),
            PublicationAutocreate::AllTables => {
                self.publication_ddl(
                    "create",
                    name,
                    format!("CREATE PUBLICATION {} FOR ALL TABLES", ident(name)),
                )
                .await?;
                Ok(PublicationAction::Created)
            }
            PublicationAutocreate::Filtered if selector.is_all() => {
                if exists {
                    return Ok(PublicationAction::Unchanged);
                }
                self.publication_ddl(
                    "create",
                    name,
                    format!("CREATE PUBLICATION {} FOR ALL TABLES", ident(name)),
                )
                .await?;
                Ok(PublicationAction::Created)
            }
            PublicationAutocreate::Filtered => self.sync_filtered(name, exists, &selector).await,
        }
    }

    async fn sync_filtered(
        &mut self,
        name: &str,
        exists: bool,
        selector: &TableSelector,
    ) -> Result<PublicationAction, PublicationError> {
        let wanted = self.matching_tables(selector).await?;
        if wanted.is_empty() {
            return Err(PublicationError::NoTables {
                patterns: selector.patterns().join(", "),
            });
        }
        let list = |tables: &[(String, String)]| {
            tables
                .iter()
                .map(|(s, t)| qualified(s, t))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if !exists {
            self.publication_ddl(
                "create",
                name,
                format!(
                    "CREATE PUBLICATION {} FOR TABLE {}",
                    ident(name),
                    list(&wanted)
                ),
            )
            .await?;
            return Ok(PublicationAction::Created);
        }
        let all = self
            .query_scalar(&format!(
                "SELECT puballtables FROM pg_catalog.pg_publication WHERE pubname = {}",
                literal(name)
            ))
            .await?;
        if all.as_deref() == Some("t") {
            return Ok(PublicationAction::Unchanged);
        }
        let rows = self
            .simple_query(&format!(
                "SELECT schemaname, tablename FROM pg_catalog.pg_publication_tables WHERE pubname = {}",
                literal(name)
            ))
            .await?;
        let current: Vec<(String, String)> = rows
            .iter()
            .map(|r| {
                (
                    cell(r, 0).unwrap_or_default().to_string(),
                    cell(r, 1).unwrap_or_default().to_string(),
                )
            })
            .collect();
        let add: Vec<_> = wanted
            .iter()
            .filter(|t| !current.contains(t))
            .cloned()
            .collect();
        let drop: Vec<_> = current
            .iter()
            .filter(|t| !wanted.contains(t))
            .cloned()
            .collect();
        if !add.is_empty() {
            self.publication_ddl(
                "alter",
                name,
                format!("ALTER PUBLICATION {} ADD TABLE {}", ident(name), list(&add)),
            )
            .await?;
        }
        if !drop.is_empty() {
            self.publication_ddl(
                "alter",
                name,
                format!(
                    "ALTER PUBLICATION {} DROP TABLE {}",
                    ident(name),
                    list(&drop)
                ),
            )
            .await?;
        }
        Ok(if add.is_empty() && drop.is_empty() {
            PublicationAction::Unchanged
        } else {
            PublicationAction::Altered {
                added: add.len(),
                dropped: drop.len(),
            }
        })
    }

    /// Runs a CREATE/ALTER PUBLICATION, turning a refusal into the fix.
    async fn publication_ddl(
        &mut self,
        action: &'static str,
        name: &str,
        sql: String,
    ) -> Result<(), PublicationError> {
        match self.simple_query(&sql).await {
            Ok(_) => Ok(()),
            Err(ConnectError::Server { code, message, .. })
                if code == "42501" || code.starts_with("42") =>
            {
                Err(PublicationError::NotAllowed {
                    action,
                    publication: name.to_string(),
                    sql: format!("{sql};"),
                    message,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Ordinary and partitioned tables whose `schema.table` matches any pattern.
    async fn matching_tables(
        &mut self,
        selector: &TableSelector,
    ) -> Result<Vec<(String, String)>, ConnectError> {
        let rows = self
            .simple_query(
                "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                 AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2",
            )
            .await;
        // `relispartition` exists from PostgreSQL 10; keep the error if the query fails.
        let rows = rows?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((cell(r, 0)?.to_string(), cell(r, 1)?.to_string())))
            .filter(|(s, t)| selector.matches(s, t))
            .collect())
    }

    /// START_REPLICATION for `slot` from `start` with the pgoutput options of this server.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        publication: &str,
        start: Lsn,
        server_version_num: u32,
    ) -> Result<u32, ConnectError> {
        let proto = protocol_version(server_version_num);
        let mut options = vec![
            format!("\"proto_version\" '{proto}'"),
            format!(
                "\"publication_names\" {}",
                replication_literal(&ident(publication))
            ),
        ];
        if server_version_num >= 140000 {
            options.push("\"messages\" 'true'".into());
            options.push("\"streaming\" 'on'".into());
        }
        if server_version_num >= 150000 {
            options.push("\"two_phase\" 'on'".into());
        }
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({})",
            ident(slot),
            format_lsn(start),
            options.join(", ")
        );
        self.start_copy_both(&sql).await?;
        Ok(proto)
    }
}

/// What [`Connection::ensure_publication`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicationAction {
    /// Already as wanted.
    Unchanged,
    /// Created.
    Created,
    /// Tables added to or dropped from it to follow the configured list.
    Altered {
        /// Tables added.
        added: usize,
        /// Tables dropped.
        dropped: usize,
    },
}

/// Why the publication cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PublicationError {
    /// Missing and autocreate is disabled.
    #[error(
        "publication \"{publication}\" does not exist; create it with `CREATE PUBLICATION {} FOR TABLE …;` or set publication_autocreate = \"filtered\"",
        ident(.publication)
    )]
    Missing {
        /// The name.
        publication: String,
    },
    /// The table patterns match nothing.
    #[error(
        "no table matches [source] tables ({patterns}); fix the patterns (schema.table, `*` wildcards) or create the tables first"
    )]
    NoTables {
        /// The patterns.
        patterns: String,
    },
    /// The tables CSV cannot be used.
    #[error(transparent)]
    Csv(#[from] walflow_config::tables::TablesCsvError),
    /// Creating or altering the publication was not allowed.
    #[error(
        "cannot {action} publication \"{publication}\" ({message}); run `{sql}` as the tables' owner or a superuser, or set publication_autocreate = \"disabled\" and manage it yourself"
    )]
    NotAllowed {
        /// create / alter.
        action: &'static str,
        /// The name.
        publication: String,
        /// The statement that failed.
        sql: String,
        /// The server's message.
        message: String,
    },
    /// The server could not answer.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_per_version() {
        assert_eq!(protocol_version(100023), 1);
        assert_eq!(protocol_version(130010), 1);
        assert_eq!(protocol_version(140001), 2);
        assert_eq!(protocol_version(150004), 3);
        assert_eq!(protocol_version(160000), 4);
        assert_eq!(protocol_version(180001), 4);
    }
}
