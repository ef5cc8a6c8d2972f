//! `[[sinks]]` entries as typed data: the `type` key picks one of [`SinkKind`]'s variants, whose
//! struct holds that sink's settings, so a misspelt or misplaced key is refused while the
//! configuration is read (naming the key, the sink type and the line), the same in TOML and
//! JSON, and the JSON Schema of the configuration describes every sink.
//!
//! The entry is read in two steps (the `type`, then the settings of that type) rather than by
//! serde's internally tagged enums, because those buffer the entry and lose which key was
//! wrong. Which sinks a build can run is `walflow-sinks`' business: every type parses here, and
//! one that is not compiled in is refused when the pipeline builds its sinks.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer};

use crate::TextDuration;

/// One `[[sinks]]` (or `[dead_letter]`) entry.
#[derive(Debug, Clone, JsonSchema)]
pub struct SinkConfig {
    /// What to do with events the destination rejects.
    #[serde(default)]
    pub on_error: SinkOnError,
    /// The sink type (the `type` key) and its settings.
    #[serde(flatten)]
    pub kind: SinkKind,
}

/// `on_error` of a `[[sinks]]` entry: what happens to events the destination rejects (an HTTP
/// 400, say — data that retrying cannot get accepted). Transient failures are always retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SinkOnError {
    /// Stop the pipeline without confirming the batch.
    #[default]
    Stop,
    /// Send the rejected batch, with the error, to the `[dead_letter]` sink and go on.
    DeadLetter,
}

/// The sink types, each with its settings (see `docs/sinks.md`).
#[derive(Debug, Clone, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SinkKind {
    /// JSON lines (or MessagePack frames) appended to a file, fsynced before acknowledging.
    File(FileSinkConfig),
    /// Standard output.
    Stdout(StdoutSinkConfig),
    /// Apache Kafka (or any Kafka-protocol broker), idempotent producer.
    Kafka(KafkaSinkConfig),
    /// NATS, optionally JetStream with de-duplication.
    Nats(NatsSinkConfig),
    /// Redis streams.
    Redis(RedisSinkConfig),
    /// HTTP POST of batches.
    Http(HttpSinkConfig),
    /// Another PostgreSQL database, changes applied as upserts and deletes.
    Postgres(PostgresSinkConfig),
    /// A sink written as a WebAssembly component.
    Plugin(PluginSinkConfig),
}

impl SinkKind {
    /// The `type` key's value.
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::File(_) => "file",
            SinkKind::Stdout(_) => "stdout",
            SinkKind::Kafka(_) => "kafka",
            SinkKind::Nats(_) => "nats",
            SinkKind::Redis(_) => "redis",
            SinkKind::Http(_) => "http",
            SinkKind::Postgres(_) => "postgres",
            SinkKind::Plugin(_) => "plugin",
        }
    }
}

/// Every sink type, in the order the documentation lists them.
pub const SINK_TYPES: &[&str] = &[
    "file", "stdout", "kafka", "nats", "redis", "http", "postgres", "plugin",
];

/// `type = "file"`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file (relative to the config file's directory).
    pub path: PathBuf,
    /// Rotate to a new file once this many bytes are written.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// `type = "stdout"` (no settings).
#[derive(Debug, Clone, Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {}

/// `type = "kafka"`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers: a list, or one string of comma-separated `host:port`s.
    pub brokers: StringList,
    /// Create missing topics.
    #[serde(default)]
    pub create_topics: bool,
    /// Partitions of a created topic (default 1).
    #[serde(default)]
    pub partitions: Option<u64>,
    /// Replication factor of a created topic (default 1).
    #[serde(default)]
    pub replication_factor: Option<u64>,
    /// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Option<String>,
    /// How long a flush waits for acknowledgements (default `30s`).
    #[serde(default)]
    pub timeout: Option<TextDuration>,
    /// The producer's client id (default `walflow`).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Connect over TLS.
    #[serde(default)]
    pub tls: bool,
    /// Root certificates (PEM) for TLS; implies `tls`.
    #[serde(default)]
    pub tls_ca: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// Environment variable holding the SASL password.
    #[serde(default)]
    pub sasl_password_env: Option<String>,
    /// Further librdkafka producer properties.
    #[serde(default)]
    pub librdkafka_options: BTreeMap<String, String>,
}

/// `type = "nats"`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsSinkConfig {
    /// `nats://host:4222`
    pub url: String,
    /// A JetStream stream to publish into (created when missing).
    #[serde(default)]
    pub stream: Option<String>,
    /// Subjects of a created stream (with `stream`).
    #[serde(default)]
    pub subjects: Option<StringList>,
    /// JetStream's de-duplication window of a created stream (default `2m`).
    #[serde(default)]
    pub duplicate_window: Option<TextDuration>,
    /// Request timeout (default `10s`).
    #[serde(default)]
    pub timeout: Option<TextDuration>,
    /// User name.
    #[serde(default)]
    pub user: Option<String>,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Environment variable holding a token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// A `.creds` file.
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Require TLS.
    #[serde(default)]
    pub tls: bool,
    /// Root certificates (PEM) for TLS.
    #[serde(default)]
    pub tls_ca: Option<String>,
}

/// `type = "redis"`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisSinkConfig {
    /// `redis://host:6379`
    pub url: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Trim each stream to about this many entries.
    #[serde(default)]
    pub maxlen: Option<u64>,
    /// Trim approximately (`~`, the default) rather than exactly.
    #[serde(default)]
    pub maxlen_approximate: Option<bool>,
    /// Prefix of every stream key.
    #[serde(default)]
    pub stream_prefix: Option<String>,
}

/// `type = "http"`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSinkConfig {
    /// `https://example.com/hook`
    pub url: String,
    /// `json` (an array per request, the default) or `ndjson`.
    #[serde(default)]
    pub format: Option<String>,
    /// Headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Request timeout (default `30s`).
    #[serde(default)]
    pub timeout: Option<TextDuration>,
    /// Most records per request (default 1000).
    #[serde(default)]
    pub max_records: Option<u64>,
    /// Longest `Retry-After` honoured (default `60s`).
    #[serde(default)]
    pub max_retry_after: Option<TextDuration>,
}

/// `type = "postgres"`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSinkConfig {
    /// `postgres://user@replica:5432/app`
    pub url: String,
    /// Environment variable holding the password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// TLS mode (default `prefer`).
    #[serde(default)]
    pub sslmode: Option<crate::SslMode>,
    /// Root certificates (PEM) for verify-ca / verify-full.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Write every table into this schema instead of the source's.
    #[serde(default)]
    pub schema: Option<String>,
}

/// `type = "plugin"`
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSinkConfig {
    /// The component (`.wasm`, relative to the config file's directory).
    pub path: PathBuf,
    /// Passed to the plugin's `init` as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Hosts the plugin may send HTTP requests to.
    #[serde(default)]
    pub allow_hosts: Option<StringList>,
    /// Timeout of one outbound request (default `10s`).
    #[serde(default)]
    pub timeout: Option<TextDuration>,
    /// Deadline of one call (default four times `timeout`, at least `30s`).
    #[serde(default)]
    pub deadline: Option<TextDuration>,
    /// Memory cap in MiB.
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StringList {
    /// One string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl StringList {
    /// The strings.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            StringList::One(s) => vec![s.clone()],
            StringList::Many(v) => v.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for SinkConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SinkConfig, D::Error> {
        let mut entry = serde_json::Map::<String, serde_json::Value>::deserialize(d)?;
        let kind = match entry.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            Some(_) => return Err(D::Error::custom("`type` of a sink must be a string")),
            None => {
                return Err(D::Error::custom(format!(
                    "a sink needs `type`, one of {}",
                    SINK_TYPES.join(", ")
                )));
            }
        };
        let on_error = match entry.remove("on_error") {
            None => SinkOnError::default(),
            Some(v) => SinkOnError::deserialize(v).map_err(|_| {
                D::Error::custom("`on_error` of a sink must be \"stop\" or \"dead-letter\"")
            })?,
        };
        let settings = serde_json::Value::Object(entry);
        let kind = settings_of(&kind, settings).map_err(D::Error::custom)?;
        Ok(SinkConfig { on_error, kind })
    }
}

/// The settings of a sink of type `kind`.
fn settings_of(kind: &str, settings: serde_json::Value) -> Result<SinkKind, String> {
    Ok(match kind {
        "file" => SinkKind::File(typed(kind, settings)?),
        "stdout" => SinkKind::Stdout(typed(kind, settings)?),
        "kafka" => SinkKind::Kafka(typed(kind, settings)?),
        "nats" => SinkKind::Nats(typed(kind, settings)?),
        "redis" => SinkKind::Redis(typed(kind, settings)?),
        "http" => SinkKind::Http(typed(kind, settings)?),
        "postgres" => SinkKind::Postgres(typed(kind, settings)?),
        "plugin" => SinkKind::Plugin(typed(kind, settings)?),
        other => {
            return Err(format!(
                "unknown sink type `{other}`; walflow has {}",
                SINK_TYPES.join(", ")
            ));
        }
    })
}

/// Reads one sink's settings, naming the key that is wrong.
fn typed<T: DeserializeOwned>(kind: &str, settings: serde_json::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(settings).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // An unknown key's message names it already.
        if path == "." || inner.starts_with("unknown field") {
            format!("a {kind} sink: {inner}")
        } else {
            format!("`{path}` of a {kind} sink: {inner}")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<SinkConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    #[test]
    fn the_type_picks_the_settings() {
        let c =
            parse("type = \"redis\"\nurl = \"redis://x\"\nmaxlen = 3\non_error = \"dead-letter\"")
                .unwrap();
        assert_eq!(c.on_error, SinkOnError::DeadLetter);
        let SinkKind::Redis(r) = c.kind else {
            panic!("{:?}", c.kind)
        };
        assert_eq!(r.maxlen, Some(3));
    }

    #[test]
    fn an_unknown_key_is_named_with_the_sink_type() {
        let e = parse("type = \"redis\"\nurl = \"redis://x\"\nmax_len = 3").unwrap_err();
        assert!(e.contains("max_len") && e.contains("redis sink"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let e = parse("type = \"redis\"\nurl = \"redis://x\"\nmaxlen = \"3\"").unwrap_err();
        assert!(e.contains("`maxlen` of a redis sink"), "{e}");
        let e = parse("type = \"http\"\nurl = \"http://x\"\ntimeout = \"soon\"").unwrap_err();
        assert!(e.contains("`timeout` of a http sink"), "{e}");
    }

    #[test]
    fn an_unknown_type_lists_the_known_ones() {
        let e = parse("type = \"carrier-pigeon\"").unwrap_err();
        assert!(e.contains("carrier-pigeon") && e.contains("kafka"), "{e}");
    }

    #[test]
    fn json_reads_the_same() {
        let c: SinkConfig =
            serde_json::from_str(r#"{"type": "kafka", "brokers": "a:9092,b:9092"}"#).unwrap();
        assert_eq!(c.kind.name(), "kafka");
    }
}
