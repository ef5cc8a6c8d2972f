//! The pipeline's view of the change source: committed units in commit order, and a way to
//! confirm what every sink has acknowledged.

use async_trait::async_trait;

use super::Unit;
use crate::config::Config;
use crate::tables::TableSelector;

/// A stream of committed units.
///
/// `next` must be cancel-safe: the reader selects on it together with acknowledgements and the
/// stop signal, and a dropped `next` future must lose nothing.
#[async_trait]
pub trait ChangeStream: Send {
    /// The next committed unit, or `None` when the source has ended.
    async fn next(&mut self) -> anyhow::Result<Option<Unit>>;

    /// Everything up to `lsn` is delivered by every sink: checkpoint it, then confirm it.
    async fn acknowledge(&mut self, lsn: u64) -> anyhow::Result<()>;

    /// The server's WAL position as last reported (for the lag metric).
    fn server_lsn(&self) -> u64;

    /// Stops streaming cleanly.
    async fn close(self: Box<Self>);
}

/// Connects to the source of `config`, checks continuity, and starts streaming.
pub async fn open_stream(
    _config: &Config,
    _selector: &TableSelector,
    _accept_gap: bool,
) -> anyhow::Result<Box<dyn ChangeStream>> {
    anyhow::bail!("the replication source is not wired into the pipeline yet")
}
