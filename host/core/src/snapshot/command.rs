//! `walflow snapshot`: checks an incremental snapshot request against the source, then hands
//! it to where the running pipeline will see it — the signal table, or the control socket of a
//! read-only source. A client of both, so neither needs to know the other.

use super::control;
use super::request::{self, Request};
use walflow_config::Config;

/// `walflow snapshot`: checks the request, then inserts it into the signal table, or (for a
/// read-only source) hands it to the running process over its control socket. Returns what
/// to tell the user.
pub async fn send(config: &Config, request: Request) -> anyhow::Result<String> {
    let source = &config.source;
    let client = walflow_pg::connect_sql(source).await?;
    request::validate(&client, config, &request).await?;
    if source.read_only || source.signal_table.is_none() {
        if !source.read_only {
            anyhow::bail!(
                "incremental snapshots need a signal_table in [source] (or read_only = true to send requests to the running walflow)"
            );
        }
        return control::request(config, &request).await;
    }
    let table = source.signal_table.as_deref().unwrap_or_default();
    let id = request::insert_signal(&client, table, &request).await?;
    Ok(format!("requested (signal {id} in {table})"))
}
