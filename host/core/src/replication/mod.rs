//! The replication source: committed transactions from a slot, read from the wire stream of
//! `walflow-pg` (`walflow_pg::stream::WalStream`), decoded by `walflow-pgoutput` and assembled
//! into events here.
//!
//! - [`continuity`]: the check at every start that the slot continues the checkpoint.
//! - [`holds`]: [`PreparedHolds`], how far two-phase transactions let a slot be confirmed.
//! - [`stream`]: [`ReplicationStream`], committed transactions; vets every reconnect and decides
//!   how far a confirmation may go.
//! - [`tail`]: the `walflow tail` command.

pub mod continuity;
pub mod holds;
pub mod stream;
pub mod tail;

pub use continuity::{ContinuityError, Verified};
pub use holds::PreparedHolds;
pub use stream::{ReplicationStream, StreamError, StreamItem, StreamOptions};
