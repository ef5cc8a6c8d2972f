//! The pipeline configuration (`walflow.toml`), kept separate from the runtime that executes it.
//!
//! Parsing is strict: unknown keys and wrong types are errors that name the key and the line, so
//! a typo never silently turns a feature off. Secrets never live in the file: `password_env` names
//! an environment variable instead.

pub mod redact;
pub mod sinks;
pub mod ssh;
pub mod tables;

use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

pub use sinks::{SINK_TYPES, SinkConfig, SinkKind, SinkOnError, StringList};
pub use ssh::SshConfig;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The PostgreSQL source.
    pub source: SourceConfig,
    /// Where checkpoints live.
    #[serde(default)]
    pub state: StateConfig,
    /// Optional Prometheus listener.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The plugin chain, in order.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// Batching of events through the chain and into sinks.
    #[serde(default)]
    pub batch: BatchConfig,
    /// How much event data the pipeline may hold at once.
    #[serde(default)]
    pub memory: MemoryConfig,
    /// Where events go.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Where events a plugin fails on go under `on_error = "dead-letter"` (same keys as a
    /// `[[sinks]]` entry); a file `dead-letter.jsonl` in the state directory when omitted.
    #[serde(default)]
    pub dead_letter: Option<SinkConfig>,
    /// Encoder for sinks that take bytes.
    #[serde(default)]
    pub encoding: Encoding,
    /// The shape of JSON records: walflow's own (the default, unchanged for existing
    /// consumers) or exactly Debezium's PostgreSQL connector's.
    #[serde(default)]
    pub envelope: Envelope,
    /// Debezium's settings, with Debezium's names and defaults, for `envelope = "debezium"`.
    #[serde(default)]
    pub debezium: Option<DebeziumConfig>,
    /// The directory of the config file; relative paths in it (sink files too) start here.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// TLS mode, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plain TCP only.
    Disable,
    /// TLS if the server offers it, without verification; plain otherwise.
    #[default]
    Prefer,
    /// TLS, without certificate verification.
    Require,
    /// TLS, certificate chain verified against the root certificates.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

/// What to do about the publication at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublicationAutocreate {
    /// Create it `FOR ALL TABLES` if missing.
    AllTables,
    /// Create it for the configured tables if missing, and keep it following the list.
    #[default]
    Filtered,
    /// Never create or alter it; fail if missing.
    Disabled,
}

/// When to take a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotMode {
    /// Snapshot when there is no checkpoint, then stream.
    #[default]
    Initial,
    /// Never snapshot.
    Never,
    /// Snapshot, then exit.
    InitialOnly,
    /// Like `initial`, and also re-snapshot when the slot's history is broken.
    WhenNeeded,
}

/// `[source]`
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// `postgres://user@host:port/db` (no password here).
    pub url: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS mode.
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM file of root certificates for verify-ca/verify-full.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// The same root certificates as PEM text, inline: for pipelines given to `walflow serve`
    /// through its API, which may not name files of the host. Not with `sslrootcert`.
    #[serde(default)]
    pub sslrootcert_pem: Option<String>,
    /// Replication slot name.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication name.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Publication handling.
    #[serde(default)]
    pub publication_autocreate: PublicationAutocreate,
    /// Table globs (`schema.table`, `*` wildcards). Empty means all tables.
    #[serde(default)]
    pub tables: Vec<String>,
    /// A CSV file of `schema,table` rows (no header), added to `tables`.
    #[serde(default)]
    pub tables_csv: Option<PathBuf>,
    /// Snapshots without writing to the source.
    #[serde(default)]
    pub read_only: bool,
    /// Snapshot mode.
    #[serde(default)]
    pub snapshot: SnapshotMode,
    /// Parallel connections for snapshots.
    #[serde(default = "default_parallelism")]
    pub snapshot_parallelism: usize,
    /// Rows per chunk of an incremental snapshot.
    #[serde(default = "default_chunk_size")]
    pub snapshot_chunk_size: usize,
    /// Signal table for incremental snapshots.
    #[serde(default)]
    pub signal_table: Option<String>,
    /// Heartbeat interval (e.g. `"10s"`); also the standby status interval.
    #[serde(default, deserialize_with = "duration_opt::deserialize")]
    #[schemars(with = "Option<String>")]
    pub heartbeat_interval: Option<Duration>,
    /// How heartbeats are written: `message` (the default: `pg_logical_emit_message`, no
    /// table and no grants needed) or `table` (an upsert into `walflow_heartbeat`, created by
    /// `walflow setup-sql`).
    #[serde(default)]
    pub heartbeat: HeartbeatKind,
    /// Where heartbeats are written when not on the source itself: the primary's URL, for a
    /// source that is a standby (which cannot be written to). Same credentials and TLS
    /// settings as `url`. Heartbeats are written there even with `read_only`.
    #[serde(default)]
    pub heartbeat_url: Option<String>,
    /// Retained WAL (the server's position minus the slot's `restart_lsn`), in MiB, past
    /// which walflow logs a warning and sets `walflow_slot_retained_wal_over_threshold`:
    /// the slot is pinning WAL the server cannot recycle. Default
    /// [`DEFAULT_RETAINED_WAL_WARN_MB`] (10 GiB).
    #[serde(default)]
    pub retained_wal_warn_mb: Option<u64>,
    /// How long the replication stream waits without a byte from the server before it
    /// declares the connection dead and reconnects (e.g. `"30s"`; `"0s"` never). Halfway
    /// through it asks the server for a reply, so a live idle server is never mistaken for a
    /// dead one. Default [`DEFAULT_RECEIVE_TIMEOUT`].
    #[serde(default, deserialize_with = "duration_opt::deserialize")]
    #[schemars(with = "Option<String>")]
    pub receive_timeout: Option<Duration>,
    /// Prefix of default topic names.
    #[serde(default)]
    pub topic_prefix: Option<String>,
    /// Create the slot as a failover slot (PostgreSQL 17+): standbys with
    /// `sync_replication_slots = on` keep a copy of it, so after a promotion walflow continues
    /// on the new primary where it stopped. Set at creation; an existing slot is altered.
    #[serde(default)]
    pub failover: bool,
    /// Continue even though the slot's history has a gap (an explicit, logged choice).
    #[serde(default)]
    pub accept_gap: bool,
    /// Reach the database through an SSH host: every connection to it (replication,
    /// snapshots, SQL) is a channel of one SSH session.
    #[serde(default)]
    pub ssh: Option<SshConfig>,
}

/// `receive_timeout` when the config does not set one (PostgreSQL's own
/// `wal_receiver_timeout` is 60 s; walflow reconnects sooner, as a standby with a 10 s status
/// interval would).
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

impl SourceConfig {
    /// The retained-WAL warning threshold in bytes.
    pub fn retained_wal_warn_bytes(&self) -> u64 {
        self.retained_wal_warn_mb
            .unwrap_or(DEFAULT_RETAINED_WAL_WARN_MB)
            .saturating_mul(1024 * 1024)
    }

    /// The receive timeout in effect: `None` when disabled with `"0s"`.
    pub fn receive_timeout(&self) -> Option<Duration> {
        match self.receive_timeout {
            None => Some(DEFAULT_RECEIVE_TIMEOUT),
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
        }
    }
}

/// `retained_wal_warn_mb` when the config does not set one.
pub const DEFAULT_RETAINED_WAL_WARN_MB: u64 = 10 * 1024;

/// How walflow writes heartbeats (`[source] heartbeat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeartbeatKind {
    /// `pg_logical_emit_message(false, 'walflow_heartbeat', '')`: moves the server's WAL with
    /// no table and no privilege beyond the default EXECUTE; walflow never delivers its own
    /// messages.
    #[default]
    Message,
    /// An upsert into the `walflow_heartbeat` table beside the signal table (for tools
    /// downstream that watch a table).
    Table,
}

/// The prefix of walflow's heartbeat messages; messages with it are never delivered.
pub const HEARTBEAT_MESSAGE_PREFIX: &str = "walflow_heartbeat";

fn default_slot() -> String {
    "walflow_slot".into()
}
fn default_publication() -> String {
    "walflow_pub".into()
}
fn default_parallelism() -> usize {
    2
}
fn default_chunk_size() -> usize {
    1024
}

/// `[state]`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Directory for checkpoints and the slot identity.
    #[serde(default = "default_state_dir")]
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: default_state_dir(),
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(".walflow")
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP listener serving `/metrics` and `/health`.
    pub listen: String,
}

/// What the pipeline does when a plugin fails on a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum OnError {
    /// Stop the pipeline; nothing from the failing batch on is emitted or confirmed.
    #[default]
    Stop,
    /// Drop the events the plugin fails on and continue.
    Skip,
    /// Send the events the plugin fails on, with the error, to the dead-letter sink.
    DeadLetter,
}

/// `[[plugins]]`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Path of the component (`.wasm`).
    pub path: PathBuf,
    /// Name used in logs and metrics (defaults to the file stem).
    #[serde(default)]
    pub name: Option<String>,
    /// Plugin configuration, passed to its `init` as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Failure policy.
    #[serde(default)]
    pub on_error: OnError,
    /// Memory cap in MiB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Deadline of one call in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Optional fuel per call.
    #[serde(default)]
    pub fuel: Option<u64>,
}

/// `[batch]`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events in one batch.
    #[serde(default = "default_batch_size")]
    pub max_events: usize,
    /// Accepted so that older configurations still load, and otherwise ignored: a batch no
    /// longer waits to fill (it takes what is queued, and grows while the sinks are busy), so
    /// a change in a quiet period is not held back by it.
    #[serde(
        default = "default_batch_wait",
        deserialize_with = "duration::deserialize"
    )]
    #[schemars(with = "String")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_events: default_batch_size(),
            max_wait: default_batch_wait(),
        }
    }
}

fn default_batch_size() -> usize {
    1024
}
fn default_batch_wait() -> Duration {
    Duration::from_millis(100)
}

/// `[memory]`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// The memory walflow aims to stay under, in MiB. The event data it holds — queued behind a
    /// slow sink, in the plugin chain, being written — is bounded by shares of it, so an
    /// outage with large rows makes walflow wait, not grow.
    #[serde(default = "default_memory_budget")]
    pub budget_mb: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            budget_mb: default_memory_budget(),
        }
    }
}

impl MemoryConfig {
    /// Bytes of events that may wait between the reader and the delivery loop: a sixteenth
    /// of the budget (the rest covers the transaction being read, batches in the chain,
    /// encoded records, sink buffers and walflow itself).
    pub fn queue_bytes(&self) -> usize {
        (self.budget_mb.max(16) as usize * 1024 * 1024) / 16
    }

    /// Most bytes of events in one batch: a sixty-fourth of the budget.
    pub fn batch_bytes(&self) -> usize {
        (self.budget_mb.max(16) as usize * 1024 * 1024) / 64
    }

    /// Most bytes of records written to the sinks and not yet flushed: a sixteenth of the
    /// budget (a sink may hold two or three copies of them while it sends).
    pub fn unflushed_bytes(&self) -> usize {
        (self.budget_mb.max(16) as usize * 1024 * 1024) / 16
    }
}

fn default_memory_budget() -> u64 {
    256
}

/// Encoding of sink records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The Debezium-compatible JSON envelope.
    #[default]
    Json,
    /// The same structure in MessagePack.
    Msgpack,
}

/// The shape of a JSON record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum Envelope {
    /// walflow's envelope: one record per change, values in their natural JSON form
    /// (README, "Events").
    #[default]
    Walflow,
    /// Byte-for-byte what Debezium's PostgreSQL connector emits through Kafka Connect's JSON
    /// converter without schemas: tombstones, primary-key changes as delete + create, Debezium's
    /// value representations; tuned by the `[debezium]` settings.
    Debezium,
}

/// `[debezium]`: the Debezium PostgreSQL connector settings `envelope = "debezium"` honours,
/// under Debezium's own names (quoted in TOML: `"decimal.handling.mode" = "string"`) and with
/// Debezium's defaults.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DebeziumConfig {
    /// `numeric`/`decimal`/`money`: `precise` (the unscaled value's bytes, base64), `string`
    /// or `double`.
    #[serde(
        rename = "decimal.handling.mode",
        default,
        deserialize_with = "keyed::decimal_handling_mode"
    )]
    pub decimal_handling_mode: DecimalHandlingMode,
    /// Dates, times and timestamps: `adaptive`, `adaptive_time_microseconds`, `connect` or
    /// `isostring`.
    #[serde(
        rename = "time.precision.mode",
        default,
        deserialize_with = "keyed::time_precision_mode"
    )]
    pub time_precision_mode: TimePrecisionMode,
    /// `bytea`: `bytes` (base64 in JSON), `base64`, `base64-url-safe` or `hex`.
    #[serde(
        rename = "binary.handling.mode",
        default,
        deserialize_with = "keyed::binary_handling_mode"
    )]
    pub binary_handling_mode: BinaryHandlingMode,
    /// Whether a delete is followed by a tombstone (the key with a null value).
    #[serde(rename = "tombstones.on.delete", default = "default_true")]
    pub tombstones_on_delete: bool,
    /// What a TOASTed value an update left unchanged is written as (its UTF-8 bytes for
    /// `bytea` columns).
    #[serde(
        rename = "unavailable.value.placeholder",
        default = "default_unavailable_value"
    )]
    pub unavailable_value_placeholder: String,
    /// The logical server name: `source.name` and the first part of every topic. Defaults to
    /// `[source] topic_prefix`, else the database name.
    #[serde(rename = "topic.prefix", default)]
    pub topic_prefix: Option<String>,
    /// Operations not emitted, comma-separated from `c`, `u`, `d`, `t`, or `none`.
    #[serde(rename = "skipped.operations", default = "default_skipped_operations")]
    pub skipped_operations: String,
}

impl Default for DebeziumConfig {
    fn default() -> Self {
        DebeziumConfig {
            decimal_handling_mode: DecimalHandlingMode::default(),
            time_precision_mode: TimePrecisionMode::default(),
            binary_handling_mode: BinaryHandlingMode::default(),
            tombstones_on_delete: true,
            unavailable_value_placeholder: default_unavailable_value(),
            topic_prefix: None,
            skipped_operations: default_skipped_operations(),
        }
    }
}

impl DebeziumConfig {
    /// Whether `skipped.operations` names the operation with Debezium's letter `op`.
    pub fn skips(&self, op: &str) -> bool {
        self.skipped_operations.split(',').any(|o| o.trim() == op)
    }

    fn validate(&self) -> Result<(), String> {
        let ops: Vec<&str> = self.skipped_operations.split(',').map(str::trim).collect();
        let valid = ops == ["none"] || ops.iter().all(|o| ["c", "u", "d", "t"].contains(o));
        if !valid {
            return Err(format!(
                "[debezium] \"skipped.operations\" is `{}`; supported: a comma-separated list of c, u, d, t, or none",
                self.skipped_operations
            ));
        }
        Ok(())
    }
}

/// Deserializers that put the setting's name in front of serde's message (`unknown variant
/// `x`, expected one of …`), so the sentence names the key, the value and the supported ones.
mod keyed {
    use serde::de::{Deserialize, Deserializer, Error};

    fn named<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
        key: &str,
    ) -> Result<T, D::Error> {
        T::deserialize(d).map_err(|e| D::Error::custom(format!("[debezium] \"{key}\": {e}")))
    }

    pub fn decimal_handling_mode<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<super::DecimalHandlingMode, D::Error> {
        named(d, "decimal.handling.mode")
    }

    pub fn time_precision_mode<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<super::TimePrecisionMode, D::Error> {
        named(d, "time.precision.mode")
    }

    pub fn binary_handling_mode<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<super::BinaryHandlingMode, D::Error> {
        named(d, "binary.handling.mode")
    }
}

fn default_true() -> bool {
    true
}

fn default_unavailable_value() -> String {
    "__debezium_unavailable_value".into()
}

fn default_skipped_operations() -> String {
    "t".into()
}

/// Debezium's `decimal.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum DecimalHandlingMode {
    /// The unscaled value as big-endian two's-complement bytes (base64 in JSON); a `numeric`
    /// without a declared scale as `{"scale", "value"}`.
    #[default]
    Precise,
    /// The decimal as a string.
    String,
    /// A JSON number (may lose precision).
    Double,
}

/// Debezium's `time.precision.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimePrecisionMode {
    /// Epoch days, and milliseconds or microseconds by the column's precision.
    #[default]
    Adaptive,
    /// As `adaptive`, but `time` always in microseconds.
    AdaptiveTimeMicroseconds,
    /// Kafka Connect's logical types: epoch days and milliseconds.
    Connect,
    /// ISO-8601 strings.
    Isostring,
}

/// Debezium's `binary.handling.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BinaryHandlingMode {
    /// Bytes (base64 in JSON).
    #[default]
    Bytes,
    /// A base64 string.
    Base64,
    /// A URL-safe base64 string.
    #[serde(rename = "base64-url-safe")]
    Base64UrlSafe,
    /// A lowercase hex string.
    Hex,
}

/// A configuration problem, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not parse or has wrong keys or types.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and key.
        message: String,
    },
}

impl Config {
    /// Reads and validates a configuration file: JSON when its name ends in `.json`, TOML
    /// otherwise.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"))
        {
            Config::parse_json(&text, path)
        } else {
            Config::parse(&text, path)
        }
    }

    /// Parses TOML configuration text; `path` is used in messages and to resolve relative
    /// paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| invalid(path, one_line(&e)))?;
        config.finish(path)
    }

    /// Parses JSON configuration text (the same keys as TOML); errors name the key's path,
    /// like `sinks[0].url`.
    pub fn parse_json(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let at = e.path().to_string();
            invalid(path, format!("{} (at `{at}`)", e.into_inner()))
        })?;
        config.finish(path)
    }

    /// The JSON Schema of a configuration (what `walflow config schema` prints).
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).expect("a schema is plain JSON")
    }

    fn finish(mut self, path: &Path) -> Result<Config, ConfigError> {
        self.validate().map_err(|m| invalid(path, m))?;
        let base = path.parent().unwrap_or(Path::new("."));
        self.base_dir = base.to_owned();
        self.resolve_paths(base);
        Ok(self)
    }

    fn validate(&self) -> Result<(), String> {
        if self.source.url.is_empty() {
            return Err("[source] url is required".into());
        }
        if self.batch.max_events == 0 {
            return Err("[batch] max_events must be at least 1".into());
        }
        if self.source.snapshot_parallelism == 0 {
            return Err("[source] snapshot_parallelism must be at least 1".into());
        }
        if self.source.snapshot_chunk_size == 0 {
            return Err("[source] snapshot_chunk_size must be at least 1".into());
        }
        if self.source.sslrootcert.is_some() && self.source.sslrootcert_pem.is_some() {
            return Err(
                "[source] has both sslrootcert and sslrootcert_pem; keep one (the file, or the PEM text inline)"
                    .into(),
            );
        }
        if let Some(ssh) = &self.source.ssh {
            ssh.validate()?;
        }
        match (self.envelope, &self.debezium) {
            (Envelope::Walflow, Some(_)) => {
                return Err(
                    "[debezium] settings apply only with envelope = \"debezium\"; set it or remove the section".into(),
                );
            }
            (Envelope::Debezium, debezium) => {
                if self.encoding != Encoding::Json {
                    return Err("envelope = \"debezium\" writes JSON; set encoding = \"json\" or use envelope = \"walflow\"".into());
                }
                if let Some(d) = debezium {
                    d.validate()?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Makes relative paths relative to the config file's directory.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for plugin in &mut self.plugins {
            fix(&mut plugin.path);
        }
        if let Some(csv) = &mut self.source.tables_csv {
            fix(csv);
        }
        if let Some(cert) = &mut self.source.sslrootcert {
            fix(cert);
        }
        if let Some(ssh) = &mut self.source.ssh {
            for file in [&mut ssh.private_key_file, &mut ssh.known_hosts_file]
                .into_iter()
                .flatten()
            {
                fix(file);
            }
        }
        fix(&mut self.state.dir);
    }
}

fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid {
        path: path.to_owned(),
        message,
    }
}

/// Folds toml's multi-line diagnostic into one line that keeps the line number and the message.
fn one_line(e: &toml::de::Error) -> String {
    let message = e.message().trim();
    match e.span() {
        Some(_) => {
            let rendered = e.to_string();
            let line = rendered
                .lines()
                .next()
                .map(str::trim)
                .unwrap_or_default()
                .trim_end_matches(':')
                .to_string();
            format!("{message} ({line})")
        }
        None => message.to_string(),
    }
}

/// Parses durations such as `"250ms"`, `"10s"`, `"5m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like \"10s\" or \"250ms\""))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` (use ms, s, m or h)"
            ));
        }
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A duration written as text (`"250ms"`, `"10s"`, `"5m"`, `"1h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[schemars(with = "String")]
pub struct TextDuration(pub Duration);

impl<'de> Deserialize<'de> for TextDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TextDuration, D::Error> {
        duration::deserialize(d).map(TextDuration)
    }
}

mod duration {
    use super::*;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod duration_opt {
    use super::*;
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let s = String::deserialize(d)?;
        parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[source]\nurl = \"postgres://u@h/db\"\nslott = \"x\"\n";
        let err = Config::parse(text, Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("slott"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_is_rejected() {
        let text = "[source]\nurl = \"postgres://u@h/db\"\nread_only = \"yes\"\n";
        let err = Config::parse(text, Path::new("w.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn a_sink_on_error_is_not_one_of_its_settings() {
        let sink: SinkConfig =
            toml::from_str("type = \"http\"\nurl = \"http://x\"\non_error = \"dead-letter\"")
                .unwrap();
        assert_eq!(sink.on_error, SinkOnError::DeadLetter);
        assert!(matches!(&sink.kind, SinkKind::Http(h) if h.url == "http://x"));
        let sink: SinkConfig = toml::from_str("type = \"stdout\"").unwrap();
        assert_eq!(sink.on_error, SinkOnError::Stop);
    }

    fn parse_with(root: &str, tail: &str) -> Result<Config, String> {
        let text = format!("{root}\n[source]\nurl = \"postgres://u@h/db\"\n{tail}");
        Config::parse(&text, Path::new("w.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_walflow_envelope_is_the_default_and_debezium_takes_debeziums_defaults() {
        let config = parse_with("", "").unwrap();
        assert_eq!(config.envelope, Envelope::Walflow);
        let config = parse_with("envelope = \"debezium\"", "").unwrap();
        assert_eq!(config.envelope, Envelope::Debezium);
        assert_eq!(config.debezium, None);
        let config = parse_with(
            "envelope = \"debezium\"",
            "[debezium]\n\"decimal.handling.mode\" = \"string\"\n\"tombstones.on.delete\" = false",
        )
        .unwrap();
        let d = config.debezium.unwrap();
        assert_eq!(d.decimal_handling_mode, DecimalHandlingMode::String);
        assert_eq!(d.time_precision_mode, TimePrecisionMode::Adaptive);
        assert_eq!(d.binary_handling_mode, BinaryHandlingMode::Bytes);
        assert!(!d.tombstones_on_delete);
        assert_eq!(
            d.unavailable_value_placeholder,
            "__debezium_unavailable_value"
        );
        assert!(d.skips("t") && !d.skips("d"));
    }

    #[test]
    fn an_unsupported_debezium_value_names_the_key_the_value_and_the_supported_ones() {
        let err = parse_with(
            "envelope = \"debezium\"",
            "[debezium]\n\"time.precision.mode\" = \"nanos\"",
        )
        .unwrap_err();
        for part in [
            "time.precision.mode",
            "nanos",
            "adaptive_time_microseconds",
            "isostring",
        ] {
            assert!(err.contains(part), "{part} missing from: {err}");
        }
        assert_eq!(err.lines().count(), 1, "{err}");
        let err = parse_with(
            "envelope = \"debezium\"",
            "[debezium]\n\"skipped.operations\" = \"c,x\"",
        )
        .unwrap_err();
        assert!(
            err.contains("skipped.operations") && err.contains("c,x") && err.contains("none"),
            "{err}"
        );
        let err = parse_with("envelope = \"debezium\"\nencoding = \"msgpack\"", "").unwrap_err();
        assert!(err.contains("envelope = \"debezium\" writes JSON"), "{err}");
        let err = parse_with("", "[debezium]\n\"topic.prefix\" = \"x\"").unwrap_err();
        assert!(err.contains("envelope = \"debezium\""), "{err}");
        let err = parse_with("envelope = \"dbz\"", "").unwrap_err();
        assert!(
            err.contains("dbz") && err.contains("walflow") && err.contains("debezium"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("10 parsecs").is_err());
    }

    #[test]
    fn receive_timeout_defaults_and_turns_off_with_zero() {
        let parse = |extra: &str| {
            Config::parse(
                &format!("[source]\nurl = \"postgres://u@h/db\"\n{extra}"),
                Path::new("w.toml"),
            )
            .unwrap()
            .source
            .receive_timeout()
        };
        assert_eq!(parse(""), Some(DEFAULT_RECEIVE_TIMEOUT));
        assert_eq!(
            parse("receive_timeout = \"5s\""),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse("receive_timeout = \"0s\""), None);
    }

    #[test]
    fn root_certificates_come_from_a_file_or_inline_not_both() {
        let parse = |extra: &str| {
            Config::parse(
                &format!("[source]\nurl = \"postgres://u@h/db\"\n{extra}"),
                Path::new("w.toml"),
            )
        };
        let inline = parse("sslrootcert_pem = \"-----BEGIN CERTIFICATE-----\"").unwrap();
        assert!(inline.source.sslrootcert_pem.is_some());
        let both = parse("sslrootcert = \"ca.pem\"\nsslrootcert_pem = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(both.contains("keep one"), "{both}");
    }

    #[test]
    fn full_example_parses() {
        let text = r#"
[source]
url = "postgres://walflow_user@db.example.com:5432/app"
password_env = "WALFLOW_PASSWORD"
sslmode = "require"
slot = "walflow_slot"
publication = "walflow_pub"
tables = ["public.orders", "inventory.*"]
read_only = true
snapshot = "initial"
signal_table = "walflow.walflow_signal"
heartbeat_interval = "10s"
topic_prefix = "app"

[state]
dir = ".walflow"

[metrics]
listen = "127.0.0.1:9187"

[[plugins]]
path = "plugins/table_filter.wasm"
config = { include = ["public.*"] }
on_error = "stop"

[[sinks]]
type = "file"
path = "out/events.jsonl"

[[sinks]]
type = "redis"
url = "redis://127.0.0.1:6379"
"#;
        let c = Config::parse(text, Path::new("/etc/walflow/w.toml")).unwrap();
        assert_eq!(c.source.sslmode, SslMode::Require);
        assert_eq!(
            c.plugins[0].path,
            Path::new("/etc/walflow/plugins/table_filter.wasm")
        );
        assert_eq!(c.sinks.len(), 2);
        assert_eq!(c.source.heartbeat_interval, Some(Duration::from_secs(10)));
    }

    #[test]
    fn json_configs_read_like_toml_and_name_the_path_of_a_bad_key() {
        let json = r#"{"source": {"url": "postgres://u@h/db"}, "sinks": [{"type": "stdout"}]}"#;
        let c = Config::parse_json(json, Path::new("w.json")).unwrap();
        assert_eq!(c.sinks[0].kind.name(), "stdout");
        let json = r#"{"source": {"url": "postgres://u@h/db", "slott": "x"}}"#;
        let err = Config::parse_json(json, Path::new("w.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("slott") && err.contains("source"), "{err}");
        let json =
            r#"{"source": {"url": "u"}, "sinks": [{"type": "http", "url": "x", "hedaers": {}}]}"#;
        let err = Config::parse_json(json, Path::new("w.json"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hedaers") && err.contains("sinks[0]"), "{err}");
    }

    #[test]
    fn the_schema_describes_every_sink() {
        let schema = Config::json_schema().to_string();
        for kind in SINK_TYPES {
            assert!(schema.contains(&format!("\"{kind}\"")), "{kind} missing");
        }
        assert!(
            schema.contains("librdkafka_options"),
            "kafka settings missing"
        );
    }

    fn with_ssh(extra: &str) -> Result<Config, String> {
        Config::parse(
            &format!(
                "[source]\nurl = \"postgres://u@db.internal/app\"\n[source.ssh]\nhost = \"bastion\"\nuser = \"tunnel\"\n{extra}"
            ),
            Path::new("/etc/walflow/w.toml"),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn ssh_settings_have_defaults_and_paths_relative_to_the_file() {
        let config =
            with_ssh("private_key_file = \"id_ed25519\"\nknown_hosts_file = \"known_hosts\"\n")
                .unwrap();
        let ssh = config.source.ssh.unwrap();
        assert_eq!(ssh.port, 22);
        assert_eq!(
            ssh.private_key_file.as_deref(),
            Some(Path::new("/etc/walflow/id_ed25519"))
        );
        assert_eq!(
            ssh.known_hosts_file.as_deref(),
            Some(Path::new("/etc/walflow/known_hosts"))
        );
        assert_eq!(
            ssh.keepalive_interval(),
            Some(ssh::DEFAULT_KEEPALIVE_INTERVAL)
        );
        assert_eq!(ssh.connect_timeout(), ssh::DEFAULT_CONNECT_TIMEOUT);
        let quiet = with_ssh("known_hosts_file = \"k\"\nkeepalive_interval = \"0s\"\nconnect_timeout = \"3s\"\nport = 2222\n").unwrap();
        let quiet = quiet.source.ssh.unwrap();
        assert_eq!(quiet.keepalive_interval(), None);
        assert_eq!(quiet.connect_timeout(), Duration::from_secs(3));
        assert_eq!(quiet.addr(), "bastion:2222");
    }

    #[test]
    fn an_ssh_host_key_is_never_trusted_unannounced() {
        let e = with_ssh("").unwrap_err();
        assert!(
            e.contains("known_hosts_file") && e.contains("host_key"),
            "{e}"
        );
        let e = with_ssh("known_hosts_file = \"k\"\nhost_key = \"SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s\"\n").unwrap_err();
        assert!(e.contains("keep one"), "{e}");
        let e = with_ssh("host_key = \"ssh-ed25519 AAAA\"\n").unwrap_err();
        assert!(e.contains("not a SHA256 fingerprint"), "{e}");
        with_ssh("host_key = \"SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s\"\n").unwrap();
    }

    #[test]
    fn bad_ssh_settings_name_the_key() {
        let e = with_ssh("known_hosts_file = \"k\"\nidentity = \"x\"\n").unwrap_err();
        assert!(e.contains("identity") && e.contains("line 7"), "{e}");
        let e =
            with_ssh("known_hosts_file = \"k\"\nprivate_key_passphrase_env = \"P\"\n").unwrap_err();
        assert!(e.contains("without private_key_file"), "{e}");
        let e = with_ssh("known_hosts_file = \"k\"\nkeepalive_interval = \"often\"\n").unwrap_err();
        assert!(e.contains("often"), "{e}");
        let schema = Config::json_schema().to_string();
        assert!(
            schema.contains("known_hosts_file") && schema.contains("private_key_passphrase_env")
        );
    }
}
