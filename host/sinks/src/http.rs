//! The `http` sink: batches of records POSTed to a URL (a webhook), as a JSON array or NDJSON.
//!
//! A request that the endpoint answers with 2xx is the acknowledgement of the records in it, so
//! records stay pending until then and a failed flush sends them again. 5xx answers, timeouts and
//! connection failures are retryable; 429 is retryable after the `Retry-After` the endpoint asks
//! for; any other 4xx means the endpoint rejects the data, which retrying cannot fix: the
//! records written since the last flush are dropped and reported as
//! [`SinkError::Rejected`], for the pipeline to stop or dead-letter them per `on_error`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};

use walflow_config::sinks::HttpSinkConfig;

use super::settings::{invalid, is_json};
use super::{Sink, SinkBatch, SinkError};

/// How records are put in a request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// `[record,record,…]`
    JsonArray,
    /// One record per line.
    Ndjson,
}

/// POSTs batches of records to a URL.
pub struct HttpSink {
    name: String,
    url: String,
    /// `url` without its password, for messages.
    shown_url: String,
    client: reqwest::Client,
    format: Format,
    max_records: usize,
    max_retry_after: Duration,
    pending: Vec<Vec<u8>>,
}

impl HttpSink {
    /// Builds the sink from its settings: `url` (required), `format` (`json` | `ndjson`),
    /// `headers`, `timeout`, `max_records` per request, `max_retry_after`.
    pub fn from_config(config: &HttpSinkConfig) -> Result<HttpSink, SinkError> {
        let url = config.url.as_str();
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| invalid("http", "url", &format!("a valid URL ({e})")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid("http", "url", "an http:// or https:// URL"));
        }
        let format = match config.format.as_deref().unwrap_or("json") {
            "json" => Format::JsonArray,
            "ndjson" => Format::Ndjson,
            _ => {
                return Err(invalid(
                    "http",
                    "format",
                    "\"json\" (an array per request) or \"ndjson\"",
                ));
            }
        };
        let headers = headers(&config.headers)?;
        let timeout = config.timeout.map_or(Duration::from_secs(30), |d| d.0);
        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| SinkError::Fatal(format!("cannot set up the http sink's client: {e}")))?;
        let max_records = config.max_records.unwrap_or(1000).max(1) as usize;
        let max_retry_after = config
            .max_retry_after
            .map_or(Duration::from_secs(60), |d| d.0);
        Ok(HttpSink {
            name: format!("http:{}", walflow_config::redact::url(url)),
            url: url.to_owned(),
            shown_url: walflow_config::redact::url(url).into_owned(),
            client,
            format,
            max_records,
            max_retry_after,
            pending: Vec::new(),
        })
    }

    fn body(&self, records: &[Vec<u8>]) -> Vec<u8> {
        let size: usize = records.iter().map(|r| r.len() + 1).sum::<usize>() + 2;
        let mut body = Vec::with_capacity(size);
        match self.format {
            Format::JsonArray => {
                body.push(b'[');
                for (i, r) in records.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(r);
                }
                body.push(b']');
            }
            Format::Ndjson => {
                for r in records {
                    body.extend_from_slice(r);
                    body.push(b'\n');
                }
            }
        }
        body
    }

    /// Sends one request; `Ok` once the endpoint answered 2xx.
    async fn post(&self, records: &[Vec<u8>]) -> Result<(), SinkError> {
        let content_type = match self.format {
            Format::JsonArray => "application/json",
            Format::Ndjson => "application/x-ndjson",
        };
        let response = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, content_type)
            .body(self.body(records))
            .send()
            .await
            .map_err(|e| {
                SinkError::Retryable(format!(
                    "http sink cannot POST to {}: {}",
                    self.shown_url,
                    walflow_core::error::chain(&e.without_url())
                ))
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = retry_after(response.headers()).map(|d| d.min(self.max_retry_after));
        let text = response.text().await.unwrap_or_default();
        let detail = snippet(&text);
        if status == StatusCode::TOO_MANY_REQUESTS {
            let wait = retry_after.unwrap_or(Duration::from_secs(1));
            tracing::warn!(url = %self.shown_url, wait_ms = wait.as_millis() as u64, "http endpoint asks to slow down");
            tokio::time::sleep(wait).await;
            return Err(SinkError::Retryable(format!(
                "http endpoint {} answered 429 Too Many Requests{detail}",
                self.shown_url
            )));
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Err(SinkError::Retryable(format!(
                "http endpoint {} answered {status}{detail}",
                self.shown_url
            )));
        }
        Err(SinkError::Rejected(format!(
            "http endpoint {} rejected a batch with {status}{detail}; fix the endpoint or the data (retrying cannot help), or set on_error = \"dead-letter\"",
            self.shown_url
        )))
    }
}

fn headers(headers: &BTreeMap<String, String>) -> Result<HeaderMap, SinkError> {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                "http",
                "headers",
                &format!("valid header names (`{name}` is not)"),
            )
        })?;
        let v = HeaderValue::from_str(value).map_err(|_| {
            invalid(
                "http",
                "headers",
                &format!("valid header values (that of `{name}` is not)"),
            )
        })?;
        map.insert(n, v);
    }
    Ok(map)
}

/// `Retry-After` in seconds (the HTTP-date form is rare for 429 and treated as absent).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn snippet(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let cut: String = body.chars().take(200).collect();
    format!(": {cut}")
}

#[async_trait]
impl Sink for HttpSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        if batch.records.first().is_some_and(|r| !is_json(&r.payload)) {
            return Err(SinkError::Fatal(
                "the http sink sends JSON; set `encoding = \"json\"` (the default)".into(),
            ));
        }
        self.pending
            .extend(batch.records.iter().map(|r| r.payload.clone()));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.max_records);
            match self.post(&self.pending[..n]).await {
                Ok(()) => drop(self.pending.drain(..n)),
                Err(e @ SinkError::Rejected(_)) => {
                    // Everything written since the last flush is reported rejected together.
                    self.pending.clear();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
