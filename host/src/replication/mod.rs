//! replication (being written)
