//! The captured tables: privileges on them, patterns that match nothing, replica identity and
//! primary keys.

use tokio_postgres::Client;

use super::report::Report;
use super::{Context, QueryError};
use walflow_config::tables::TableSelector;
use walflow_pg::sql::{self, ident};

/// A captured table as it exists.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub schema: String,
    pub name: String,
    /// `d` default, `n` nothing, `f` full, `i` index.
    pub replident: String,
    pub has_pk: bool,
    pub owned: bool,
    pub can_select: bool,
    pub schema_usage: bool,
}

impl Table {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        sql::qualified(&self.schema, &self.name)
    }
}

/// Loads the ordinary and partitioned tables the selection captures.
pub(super) async fn load(
    client: &Client,
    selector: &TableSelector,
) -> Result<Vec<Table>, QueryError> {
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.relreplident::text,
                    EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                    pg_has_role(c.relowner, 'USAGE'),
                    has_table_privilege(c.oid, 'SELECT'),
                    has_schema_privilege(n.oid, 'USAGE')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
                AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                AND n.nspname NOT LIKE 'pg\\_%'
              ORDER BY 1, 2",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Table {
            schema: r.get(0),
            name: r.get(1),
            replident: r.get(2),
            has_pk: r.get(3),
            owned: r.get(4),
            can_select: r.get(5),
            schema_usage: r.get(6),
        })
        .filter(|t| selector.matches(&t.schema, &t.name))
        .collect())
}

/// `1 table`, `3 tables`.
fn count(n: usize) -> String {
    if n == 1 {
        "1 table".into()
    } else {
        format!("{n} tables")
    }
}

/// Up to five names, then "and N more".
pub(super) fn names(tables: &[&Table]) -> String {
    let mut shown: Vec<String> = tables
        .iter()
        .take(5)
        .map(|t| format!("{}.{}", t.schema, t.name))
        .collect();
    if tables.len() > 5 {
        shown.push(format!("and {} more", tables.len() - 5));
    }
    shown.join(", ")
}

/// One statement per table, at most five, then a hint.
fn statements(tables: &[&Table], each: impl Fn(&Table) -> String) -> String {
    let mut lines: Vec<String> = tables.iter().take(5).map(|t| each(t)).collect();
    if tables.len() > 5 {
        lines.push(format!(
            "-- … and the same for the other {} tables",
            tables.len() - 5
        ));
    }
    lines.join("\n")
}

pub(super) async fn check_privileges(
    ctx: &Context<'_>,
    report: &mut Report,
) -> Result<(), QueryError> {
    let row = ctx
        .client
        .query_one(
            "SELECT rolreplication, rolsuper,
                    EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')
                      AND pg_has_role(current_user, 'rds_replication', 'MEMBER'),
                    has_database_privilege(current_database(), 'CONNECT')
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (replication, superuser, rds_member, connect): (bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let user = ident(&ctx.user);
    if replication || superuser || rds_member {
        let how = if superuser {
            "superuser"
        } else if rds_member {
            "rds_replication"
        } else {
            "REPLICATION"
        };
        report.ok(
            "replication privilege",
            format!("\"{}\" has {how}", ctx.user),
        );
    } else {
        let fix = if ctx.rds {
            format!("GRANT rds_replication TO {user};")
        } else {
            format!("ALTER ROLE {user} WITH REPLICATION;")
        };
        report.fail(
            "replication privilege",
            format!("\"{}\" may not replicate", ctx.user),
            fix,
        );
    }
    if connect {
        report.ok("connect privilege", "CONNECT on the database");
    } else {
        report.fail(
            "connect privilege",
            format!("\"{}\" lacks CONNECT on the database", ctx.user),
            format!(
                "GRANT CONNECT ON DATABASE current_database() TO {user};  -- name the database"
            ),
        );
    }
    let no_usage: Vec<&Table> = ctx.tables.iter().filter(|t| !t.schema_usage).collect();
    let mut schemas: Vec<&str> = no_usage.iter().map(|t| t.schema.as_str()).collect();
    schemas.dedup();
    if schemas.is_empty() {
        report.ok("schema usage", "USAGE on every captured schema");
    } else {
        report.fail(
            "schema usage",
            format!("no USAGE on schema {}", schemas.join(", ")),
            schemas
                .iter()
                .map(|s| format!("GRANT USAGE ON SCHEMA {} TO {user};", ident(s)))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    let no_select: Vec<&Table> = ctx.tables.iter().filter(|t| !t.can_select).collect();
    if no_select.is_empty() {
        report.ok(
            "select privilege",
            format!("SELECT on all {} captured tables", ctx.tables.len()),
        );
    } else {
        report.fail(
            "select privilege",
            format!("no SELECT on {} (snapshots need it)", names(&no_select)),
            statements(&no_select, |t| {
                format!("GRANT SELECT ON {} TO {user};", t.qualified())
            }),
        );
    }
    Ok(())
}

pub(super) fn check_selection(ctx: &Context<'_>, selector: &TableSelector, report: &mut Report) {
    let unmatched: Vec<&String> = selector
        .patterns()
        .iter()
        .filter(|p| {
            !ctx.tables
                .iter()
                .any(|t| TableSelector::new(vec![(*p).clone()]).matches(&t.schema, &t.name))
        })
        .collect();
    if ctx.tables.is_empty() {
        report.fail(
            "captured tables",
            "no table matches the configuration",
            "fix [source] tables (schema.table, `*` wildcards) or create the tables",
        );
    } else if !unmatched.is_empty() {
        let list: Vec<&str> = unmatched.iter().map(|s| s.as_str()).collect();
        report.warn(
            "captured tables",
            format!(
                "{} captured; no table matches {}",
                count(ctx.tables.len()),
                list.join(", ")
            ),
            "correct the pattern in [source] tables, or create the table",
        );
    } else {
        let scope = if selector.is_all() {
            "all tables"
        } else {
            "the configured patterns"
        };
        report.ok(
            "captured tables",
            format!("{} ({scope})", count(ctx.tables.len())),
        );
    }
}

pub(super) fn check_identity(ctx: &Context<'_>, report: &mut Report) {
    let none: Vec<&Table> = ctx
        .tables
        .iter()
        .filter(|t| t.replident == "n" || (t.replident == "d" && !t.has_pk))
        .collect();
    if !none.is_empty() {
        report.fail(
            "primary keys",
            format!(
                "{} have no primary key and no replica identity: once published, their UPDATEs and DELETEs fail on the server",
                names(&none)
            ),
            statements(&none, |t| {
                format!("ALTER TABLE {} ADD PRIMARY KEY (…);  -- or: REPLICA IDENTITY FULL", t.qualified())
            }),
        );
    }
    let full_no_pk: Vec<&Table> = ctx
        .tables
        .iter()
        .filter(|t| t.replident == "f" && !t.has_pk)
        .collect();
    if !full_no_pk.is_empty() {
        report.warn(
            "primary keys",
            format!(
                "{} have no primary key: their events carry no key",
                names(&full_no_pk)
            ),
            statements(&full_no_pk, |t| {
                format!("ALTER TABLE {} ADD PRIMARY KEY (…);", t.qualified())
            }),
        );
    }
    if none.is_empty() && full_no_pk.is_empty() {
        report.ok("primary keys", "every captured table has a primary key");
    }
    let keys_only: Vec<&Table> = ctx
        .tables
        .iter()
        .filter(|t| (t.replident == "d" && t.has_pk) || t.replident == "i")
        .collect();
    if keys_only.is_empty() {
        report.ok(
            "replica identity",
            "FULL on every captured table: deletes carry whole rows",
        );
    } else {
        report.warn(
            "replica identity",
            format!(
                "{} use the key only: updates and deletes carry only the key of the old row",
                names(&keys_only)
            ),
            statements(&keys_only, |t| {
                format!(
                    "ALTER TABLE {} REPLICA IDENTITY FULL;  -- if you need whole old rows",
                    t.qualified()
                )
            }),
        );
    }
}
