//! Uploaded plugins, stored by content: `<state_dir>/<tenant>/plugins/<sha256>.wasm`.
//!
//! A pipeline config refers to an uploaded plugin as `path = "sha256:<hex>"`, and only to its
//! own tenant's: the same bytes uploaded by two tenants are two files, so no tenant can find
//! out what another uploaded. A file is checked (it must be a plugin this host runs) before it
//! is stored, and never changes once stored, so a pipeline always runs what it named.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The prefix of a plugin reference by digest.
pub const DIGEST_PREFIX: &str = "sha256:";

/// Where tenant `tenant`'s plugin with digest `hex` is stored under `state_dir`.
pub fn path_of(state_dir: &Path, tenant: &str, hex: &str) -> PathBuf {
    state_dir
        .join(tenant)
        .join("plugins")
        .join(format!("{hex}.wasm"))
}

/// The digest `path` refers to, when its file name is `sha256:<64 hex digits>`.
pub fn digest_in(path: &Path) -> Option<&str> {
    let hex = path.file_name()?.to_str()?.strip_prefix(DIGEST_PREFIX)?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(hex)
}

/// Stores `bytes` as one of `tenant`'s plugins once `check` accepts the file; its digest.
pub fn put(
    state_dir: &Path,
    tenant: &str,
    bytes: &[u8],
    check: impl FnOnce(&Path) -> Result<(), String>,
) -> anyhow::Result<Result<String, String>> {
    let hex = hex_of(&Sha256::digest(bytes));
    let path = path_of(state_dir, tenant, &hex);
    if path.exists() {
        return Ok(Ok(format!("{DIGEST_PREFIX}{hex}")));
    }
    let dir = path.parent().expect("a plugin path has a directory");
    std::fs::create_dir_all(dir)?;
    let staged = dir.join(format!(".{hex}.{}.upload", std::process::id()));
    std::fs::write(&staged, bytes)?;
    if let Err(why) = check(&staged) {
        let _ = std::fs::remove_file(&staged);
        return Ok(Err(why));
    }
    std::fs::rename(&staged, &path)?;
    Ok(Ok(format!("{DIGEST_PREFIX}{hex}")))
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_what_the_check_accepts_is_stored_under_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let refused = put(dir.path(), "acme", b"junk", |_| {
            Err("not a component".into())
        })
        .unwrap();
        assert_eq!(refused, Err("not a component".to_string()));
        assert_eq!(
            std::fs::read_dir(dir.path().join("acme/plugins"))
                .unwrap()
                .count(),
            0
        );
        let digest = put(dir.path(), "acme", b"good", |_| Ok(()))
            .unwrap()
            .unwrap();
        let hex = digest.strip_prefix(DIGEST_PREFIX).unwrap();
        assert_eq!(
            std::fs::read(path_of(dir.path(), "acme", hex)).unwrap(),
            b"good"
        );
        assert_eq!(digest_in(Path::new(&format!("base/{digest}"))), Some(hex));
        assert_eq!(digest_in(Path::new("base/sha256:abc")), None);
        assert_eq!(digest_in(Path::new("/plugins/filter.wasm")), None);
    }
}
