//! Child processes that cannot outlive the test process.
//!
//! Test binaries end in many ways: normally, by panic, by `abort`, by SIGKILL from a timeout.
//! A walflow under test or a broker left running would hold ports and files, so the kernel
//! stops them for us: they are spawned the way `walflow-local-postgres` spawns its servers
//! (`PR_SET_PDEATHSIG`, from one thread that lives as long as the process).

pub use walflow_local_postgres::{signal, spawn_tied};
