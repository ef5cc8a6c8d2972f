//! The plugins of `plugins/` (built-ins and test guests), built once per test binary.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Builds every plugin with `scripts/build-plugins` (once per test binary) and returns the
/// directory holding the `.wasm` files.
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace root");
        let status = std::process::Command::new(root.join("scripts/build-plugins"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed");
        root.join("plugins/target/dist")
    })
}

/// The path of a built plugin, e.g. `plugin("table_filter")`.
pub fn plugin(name: &str) -> PathBuf {
    let path = plugins_dir().join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}
