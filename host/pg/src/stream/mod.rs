//! The replication stream on the wire. For now the messages inside CopyBoth ([`frames`]);
//! the stream itself is still read in `walflow-core`.

pub mod frames;

pub use frames::{CopyMessage, WalData};
