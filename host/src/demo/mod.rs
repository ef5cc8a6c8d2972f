//! `walflow demo` (being written)
pub mod local_postgres;
