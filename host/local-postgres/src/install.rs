//! Where the server binaries are: an explicit directory, `$PATH`, or Debian's
//! `/usr/lib/postgresql/N/bin`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// What to tell someone who has no server binaries.
const INSTALL_HINT: &str = "install the PostgreSQL server binaries (Debian: apt-get install \
     postgresql) or put their directory on PATH";

/// A PostgreSQL server installation: a directory holding `initdb` and `postgres` (and usually
/// `pg_basebackup`, `psql`, …), and the version its `postgres` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Install {
    bin_dir: PathBuf,
    major: u32,
    version: String,
}

impl Install {
    /// The server in `bin_dir`; fails unless `bin_dir/postgres --version` runs.
    pub fn in_dir(bin_dir: impl Into<PathBuf>) -> anyhow::Result<Install> {
        let bin_dir = bin_dir.into();
        for program in ["postgres", "initdb"] {
            if !bin_dir.join(program).is_file() {
                bail!(
                    "there is no PostgreSQL server in {}: {program} is missing; {INSTALL_HINT}",
                    bin_dir.display()
                );
            }
        }
        let postgres = bin_dir.join("postgres");
        let output = Command::new(&postgres)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", postgres.display()))?;
        let text = String::from_utf8_lossy(&output.stdout);
        let version = match parse_version(&text) {
            Some(v) if output.status.success() => v,
            _ => bail!(
                "{} --version answered {:?}, not a PostgreSQL version; {INSTALL_HINT}",
                postgres.display(),
                text.trim()
            ),
        };
        let major = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .with_context(|| format!("cannot read the major version of {version}"))?;
        Ok(Install {
            bin_dir,
            major,
            version,
        })
    }

    /// The first server on `$PATH` (the directory of the real `postgres` when that is a
    /// symlink), else the newest under `/usr/lib/postgresql/*/bin` (where Debian and Ubuntu put
    /// it, off `$PATH`).
    pub fn find() -> anyhow::Result<Install> {
        let has_server = |d: &Path| d.join("postgres").is_file() && d.join("initdb").is_file();
        let on_path = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        if let Some(dir) = on_path.into_iter().find(|d| has_server(d)) {
            // A symlink on PATH (e.g. /usr/local/bin/postgres) stands for a directory that also
            // has the other programs (pg_basebackup, psql, …): use that one.
            let real = std::fs::canonicalize(dir.join("postgres"))
                .ok()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .filter(|d| has_server(d));
            return Install::in_dir(real.unwrap_or(dir));
        }
        let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let major = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                has_server(&bin).then_some((major, bin))
            })
            .collect();
        debian.sort();
        match debian.pop() {
            Some((_, dir)) => Install::in_dir(dir),
            None => bail!(
                "no PostgreSQL server (initdb, postgres) on PATH or under /usr/lib/postgresql/*/bin; {INSTALL_HINT}"
            ),
        }
    }

    /// The directory of the server programs.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// The major version (10, 11, …).
    pub fn major(&self) -> u32 {
        self.major
    }

    /// The version as `postgres --version` prints it, e.g. `15.14`.
    pub fn version(&self) -> &str {
        &self.version
    }
}

/// `postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)` → `15.14`.
fn parse_version(text: &str) -> Option<String> {
    let after = text.split(')').nth(1)?.trim();
    let version = after.split_whitespace().next()?;
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_version_lines() {
        assert_eq!(
            parse_version("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)\n").as_deref(),
            Some("15.14")
        );
        assert_eq!(
            parse_version("postgres (PostgreSQL) 10.23\n").as_deref(),
            Some("10.23")
        );
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn a_directory_without_a_server_says_what_to_install() {
        let err = Install::in_dir("/nonexistent/bin").unwrap_err().to_string();
        assert!(err.contains("apt-get install postgresql"), "{err}");
    }
}
