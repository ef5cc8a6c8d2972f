//! A sink that POSTs every batch to the URL in its config and fails with whatever the host
//! answered: for testing that only allowed hosts are reached.

use std::sync::OnceLock;

use walflow_sdk::Event;

static URL: OnceLock<String> = OnceLock::new();

#[walflow_sdk::init]
fn setup(config: &str) -> Result<(), String> {
    let v: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    let url = v["url"].as_str().ok_or("config needs url")?.to_string();
    URL.set(url).map_err(|_| "init twice".to_string())
}

#[walflow_sdk::sink]
fn write(events: &[Event], _topics: &[&str]) -> Result<(), String> {
    let url = URL.get().ok_or("not initialised")?;
    let body = format!("{} events", events.len()).into_bytes();
    match walflow_sdk::http::post(url, &[], body) {
        Ok(r) if (200..300).contains(&r.status) => Ok(()),
        Ok(r) => Err(format!("rejected: status {}", r.status)),
        Err(e) => Err(format!("rejected: host refused the request: {e}")),
    }
}
