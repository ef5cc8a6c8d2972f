//! The publication: exists, publishes every change kind, covers the captured tables and the
//! signal table, and can be created or followed by walflow when it is meant to.

use super::report::Report;
use super::tables::{Table, names};
use super::{Context, QueryError};
use walflow_config::PublicationAutocreate;
use walflow_pg::sql::{ident, qualified};

pub(super) async fn check(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let name = &ctx.source.publication;
    let truncate = if ctx.version_num >= 110000 {
        "pubtruncate"
    } else {
        "true"
    };
    let row = ctx
        .client
        .query_opt(
            &format!(
                "SELECT puballtables, pubinsert AND pubupdate AND pubdelete AND {truncate},
                        pg_has_role(pubowner, 'USAGE')
                   FROM pg_publication WHERE pubname = $1"
            ),
            &[name],
        )
        .await?;
    let Some(row) = row else {
        missing(ctx, report).await?;
        return signal_table(ctx, report, None).await;
    };
    let (all_tables, every_change, owned): (bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2));
    if every_change {
        report.ok(
            "publication",
            format!("\"{name}\" exists and publishes every kind of change"),
        );
    } else {
        report.warn(
            "publication",
            format!("\"{name}\" does not publish every kind of change (insert, update, delete, truncate)"),
            format!(
                "ALTER PUBLICATION {} SET (publish = 'insert, update, delete, truncate');",
                ident(name)
            ),
        );
    }
    if all_tables {
        report.ok(
            "publication tables",
            "FOR ALL TABLES covers every captured table",
        );
    } else {
        coverage(ctx, report, owned).await?;
    }
    signal_table(ctx, report, Some(all_tables)).await
}

async fn missing(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let name = &ctx.source.publication;
    let all_tables = (ctx.source.tables.is_empty() && ctx.source.tables_csv.is_none())
        || ctx.source.publication_autocreate == PublicationAutocreate::AllTables;
    let row = ctx
        .client
        .query_one(
            "SELECT rolsuper, has_database_privilege(current_database(), 'CREATE')
               FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    let (superuser, create_db): (bool, bool) = (row.get(0), row.get(1));
    let can_create = superuser || (!all_tables && create_db && ctx.tables.iter().all(|t| t.owned));
    let create = if all_tables {
        format!("CREATE PUBLICATION {} FOR ALL TABLES;", ident(name))
    } else {
        let mut list: Vec<String> = ctx.tables.iter().map(Table::qualified).collect();
        if let Some(signal) = &ctx.source.signal_table {
            list.push(qualified_name(signal));
        }
        format!(
            "CREATE PUBLICATION {} FOR TABLE {};",
            ident(name),
            list.join(", ")
        )
    };
    if ctx.source.publication_autocreate != PublicationAutocreate::Disabled && !can_create {
        let need = if all_tables {
            "FOR ALL TABLES needs a superuser"
        } else {
            "it needs CREATE on the database and ownership of every captured table"
        };
        report.fail(
            "publication",
            format!(
                "\"{name}\" does not exist and \"{}\" cannot create it ({need})",
                ctx.user
            ),
            format!("as an administrator: {create}"),
        );
    } else if ctx.source.publication_autocreate == PublicationAutocreate::Disabled {
        report.fail(
            "publication",
            format!("\"{name}\" does not exist and publication_autocreate is \"disabled\""),
            create,
        );
    } else {
        report.warn(
            "publication",
            format!("\"{name}\" does not exist; walflow creates it at start"),
            format!("or create it ahead: {create}"),
        );
    }
    Ok(())
}

fn qualified_name(table: &str) -> String {
    match table.split_once('.') {
        Some((s, t)) => qualified(s, t),
        None => ident(table),
    }
}

async fn published(ctx: &Context<'_>) -> Result<Vec<(String, String)>, QueryError> {
    let rows = ctx
        .client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&ctx.source.publication],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn coverage(ctx: &Context<'_>, report: &mut Report, owned: bool) -> Result<(), QueryError> {
    let published = published(ctx).await?;
    let missing: Vec<&Table> = ctx
        .tables
        .iter()
        .filter(|t| {
            !published
                .iter()
                .any(|(s, n)| *s == t.schema && *n == t.name)
        })
        .collect();
    if missing.is_empty() {
        report.ok(
            "publication tables",
            format!("all {} captured tables are published", ctx.tables.len()),
        );
        return Ok(());
    }
    let fix = format!(
        "ALTER PUBLICATION {} ADD TABLE {};",
        ident(&ctx.source.publication),
        missing
            .iter()
            .map(|t| t.qualified())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let follows = ctx.source.publication_autocreate == PublicationAutocreate::Filtered
        && owned
        && missing.iter().all(|t| t.owned);
    if follows {
        report.warn(
            "publication tables",
            format!(
                "{} are not published yet; walflow adds them at start",
                names(&missing)
            ),
            fix,
        );
    } else {
        report.fail(
            "publication tables",
            format!(
                "{} are captured but not in the publication: their changes would never arrive",
                names(&missing)
            ),
            fix,
        );
    }
    Ok(())
}

/// `all_tables`: whether the publication is FOR ALL TABLES; `None` when it does not exist
/// (membership is then reported under "publication").
async fn signal_table(
    ctx: &Context<'_>,
    report: &mut Report,
    all_tables: Option<bool>,
) -> Result<(), QueryError> {
    let Some(signal) = &ctx.source.signal_table else {
        return Ok(());
    };
    let Some((schema, table)) = signal.split_once('.') else {
        report.fail(
            "signal table",
            format!("\"{signal}\" is not schema.table"),
            "write signal_table as schema.table",
        );
        return Ok(());
    };
    let row = ctx
        .client
        .query_opt(
            "SELECT has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')
                    AND has_table_privilege(c.oid, 'UPDATE')
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await?;
    let quoted = qualified_name(signal);
    let Some(row) = row else {
        report.fail(
            "signal table",
            format!("{signal} does not exist"),
            format!(
                "CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {quoted} (id VARCHAR(255) PRIMARY KEY, type VARCHAR(32) NOT NULL, data VARCHAR(2000) NULL);  -- or see `walflow setup-sql`",
                ident(schema)
            ),
        );
        return Ok(());
    };
    if !row.get::<_, bool>(0) {
        report.fail(
            "signal table",
            format!("\"{}\" cannot SELECT, INSERT and UPDATE {signal}", ctx.user),
            format!(
                "GRANT SELECT, INSERT, UPDATE ON {quoted} TO {};",
                ident(&ctx.user)
            ),
        );
        return Ok(());
    }
    let Some(all_tables) = all_tables else {
        report.ok("signal table", format!("{signal} exists and is writable"));
        return Ok(());
    };
    let in_publication = all_tables
        || published(ctx)
            .await?
            .iter()
            .any(|(s, t)| s == schema && t == table);
    if in_publication {
        report.ok(
            "signal table",
            format!("{signal} exists, is writable and is published"),
        );
    } else {
        report.fail(
            "signal table",
            format!("{signal} is not in the publication, so snapshot signals would never arrive"),
            format!(
                "ALTER PUBLICATION {} ADD TABLE {quoted};",
                ident(&ctx.source.publication)
            ),
        );
    }
    Ok(())
}
