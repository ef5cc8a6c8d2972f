//! `webhook-sink`: an example sink plugin that POSTs each batch to a webhook as a JSON array.
//!
//! Config: `{"url": "https://hooks.example.com/cdc", "headers": {"authorization": "Bearer …"}}`.
//! The host must allow the URL's host in the sink's `allow_hosts`. Each element is
//! `{"topic", "op", "schema", "table", "lsn", "key", "before", "after"}` (`op` is Debezium's
//! letter) with values as JSON
//! (bytea in base64, numeric/temporal/uuid as text, json embedded). A 2xx answer acknowledges
//! the batch; 4xx other than 408/429 rejects it (the pipeline stops or dead-letters it per
//! `on_error`); anything else is retried by the host.

use std::sync::OnceLock;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use walflow_sdk::{Event, Row, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

#[walflow_sdk::init]
fn setup(config: &str) -> Result<(), String> {
    let parsed: Config =
        serde_json::from_str(config).map_err(|e| format!("webhook-sink config: {e}"))?;
    CONFIG
        .set(parsed)
        .map_err(|_| "init called twice".to_string())
}

#[walflow_sdk::sink]
fn write(events: &[Event], topics: &[&str]) -> Result<(), String> {
    let config = CONFIG.get().ok_or("webhook-sink was not initialised")?;
    let body: Vec<Json> = events
        .iter()
        .zip(topics)
        .map(|(e, t)| record(e, t))
        .collect();
    let mut headers: Vec<(String, String)> = config
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers.push(("content-type".into(), "application/json".into()));
    let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    let response = walflow_sdk::http::post(&config.url, &headers, body)?;
    match response.status {
        200..=299 => Ok(()),
        408 | 429 => Err(format!("webhook answered {}; retrying", response.status)),
        400..=499 => Err(format!(
            "rejected: webhook answered {}: {}",
            response.status,
            String::from_utf8_lossy(&response.body)
        )),
        status => Err(format!("webhook answered {status}")),
    }
}

fn record(e: &Event, topic: &str) -> Json {
    let key: Map<String, Json> = e
        .columns()
        .iter()
        .zip(0..)
        .filter(|(c, _)| c.key)
        .filter_map(|(c, i)| {
            let row = if e.after().exists() {
                e.after()
            } else {
                e.before()
            };
            row.get_index(i).map(|v| (c.name.clone(), value(v)))
        })
        .collect();
    json!({
        "topic": topic,
        "op": e.op().code(),
        "schema": e.schema(),
        "table": e.table(),
        "lsn": e.lsn(),
        "key": key,
        "before": row(e.before()),
        "after": row(e.after()),
    })
}

fn row(r: Row<'_, '_>) -> Json {
    if !r.exists() {
        return Json::Null;
    }
    Json::Object(r.iter().map(|(c, v)| (c.name.clone(), value(v))).collect())
}

fn value(v: &Value<'_>) -> Json {
    match v {
        Value::Null | Value::UnchangedToast => Json::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(i) => json!(i),
        Value::Float(f) => json!(f),
        Value::Text(s) | Value::Numeric(s) | Value::Uuid(s) => json!(s),
        Value::Json(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        Value::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::Temporal(_, text) | Value::Raw { text, .. } => json!(text),
        Value::Array(a) => Json::Array(a.elements.iter().map(value).collect()),
    }
}
