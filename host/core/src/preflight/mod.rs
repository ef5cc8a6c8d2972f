//! `walflow check`: a preflight of the source database, so that every setup step of the seed
//! (parameters, privileges, publication, slot, replica identity) is verified before the first
//! run, and each problem comes with the SQL or parameter change that fixes it.
//!
//! The checks only read: they run as the configured user over the same connection settings as
//! the pipeline (`replication::connect_sql`), so what they see is what walflow will see.

mod failover;
mod publication;
pub mod report;
mod server;
mod slot;
mod tables;
mod tunnel;

use tokio_postgres::Client;

use walflow_config::{Config, SourceConfig};

pub use report::{Finding, Report, Status};
pub use slot::human_bytes;
use walflow_config::tables::TableSelector;

/// What every check needs to know about the connection and the config.
pub(crate) struct Context<'a> {
    client: &'a Client,
    source: &'a SourceConfig,
    /// `server_version_num`, e.g. 150004.
    version_num: u32,
    /// The login user.
    user: String,
    /// Amazon RDS / Aurora (has `rds.logical_replication` or the `rds_replication` role).
    rds: bool,
    /// The tables the config captures, as they exist.
    tables: Vec<tables::Table>,
    /// `[state] dir`, where the pipeline's checkpoint lives.
    state_dir: &'a std::path::Path,
}

/// A query failed while checking: the report so far is still shown.
#[derive(Debug, thiserror::Error)]
#[error("a check query failed: {0}")]
pub struct QueryError(#[from] tokio_postgres::Error);

fn sql_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// Runs every check against the source of `config`.
pub async fn check(config: &Config) -> Report {
    let mut report = Report::default();
    // Held for the whole check, so every query below uses the session verified here.
    let Some(_tunnel) = tunnel::check(&config.source, &mut report).await else {
        return report;
    };
    let client = match walflow_pg::connect_sql(&config.source).await {
        Ok(client) => client,
        Err(e) => {
            report.fail(
                "connection",
                e.to_string(),
                "correct [source] url, password_env or sslmode, or allow this client in the server's pg_hba.conf",
            );
            return report;
        }
    };
    if let Err(e) = run_checks(&client, config, &mut report).await {
        report.fail(
            "check",
            format!("a check query failed: {}", sql_error_text(&e.0)),
            "make sure the user can read the system catalogs, then run `walflow check` again",
        );
    }
    report
}

async fn run_checks(
    client: &Client,
    config: &Config,
    report: &mut Report,
) -> Result<(), QueryError> {
    let source = &config.source;
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version'),
                    current_user::text, current_database()::text,
                    current_setting('rds.logical_replication', true) IS NOT NULL
                    OR EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication')",
            &[],
        )
        .await?;
    let version_num = row.get::<_, i32>(0) as u32;
    let version: String = row.get(1);
    let (user, database): (String, String) = (row.get(2), row.get(3));
    report.ok(
        "connection",
        format!("connected as \"{user}\" to database \"{database}\""),
    );
    if !server::version(report, version_num, &version) {
        return Ok(());
    }
    server::read_only_snapshots(report, source, version_num);
    let selector = match TableSelector::from_source(source) {
        Ok(s) => s,
        Err(e) => {
            report.fail(
                "captured tables",
                e.to_string(),
                "fix tables_csv in [source]",
            );
            TableSelector::default()
        }
    };
    let ctx = Context {
        client,
        source,
        version_num,
        rds: row.get(4),
        tables: tables::load(client, &selector).await?,
        state_dir: &config.state.dir,
        user,
    };
    server::check(&ctx, report).await?;
    tables::check_privileges(&ctx, report).await?;
    tables::check_selection(&ctx, &selector, report);
    publication::check(&ctx, report).await?;
    slot::check(&ctx, report).await?;
    failover::check(&ctx, report).await?;
    tables::check_identity(&ctx, report);
    Ok(())
}

/// `walflow check -c walflow.toml`: prints the report; an error (exit 1) when not ready.
pub async fn run(config_path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    println!(
        "walflow check: {} (slot \"{}\", publication \"{}\")\n",
        target(&config.source),
        config.source.slot,
        config.source.publication
    );
    let report = check(&config).await;
    print!("{}", report.render());
    if report.ready() {
        Ok(())
    } else {
        anyhow::bail!(
            "the database is not ready for walflow: apply the fixes above and run `walflow check` again"
        )
    }
}

/// `user@host:port/db` without any password the URL may carry.
fn target(source: &SourceConfig) -> String {
    let mut url_only = source.clone();
    url_only.password_env = None;
    match walflow_pg::ConnectOptions::from_source(&url_only) {
        Ok(o) => format!("{}@{}/{}", o.user, o.addr(), o.dbname),
        Err(_) => "the configured source".to_string(),
    }
}
