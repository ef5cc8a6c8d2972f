//! A transform that tries what a sandboxed plugin must not be able to do and writes what it
//! got into the after row: `file` (read /etc/passwd, list `/` and `.`), `env` (variables),
//! `args` (arguments), `socket` (connect to 127.0.0.1 on the port given in the config).

use std::sync::atomic::{AtomicU16, Ordering};

static PORT: AtomicU16 = AtomicU16::new(9);

#[walflow_sdk::init]
fn setup(config: &str) -> Result<(), String> {
    let json: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    if let Some(port) = json.get("port").and_then(|p| p.as_u64()) {
        PORT.store(port as u16, Ordering::Relaxed);
    }
    Ok(())
}

#[walflow_sdk::transform]
fn probe(event: &mut walflow_sdk::Event) -> Result<(), String> {
    let file = [
        describe(std::fs::read_to_string("/etc/passwd").map(|s| s.len())),
        describe(std::fs::read_dir("/").map(|d| d.count())),
        describe(std::fs::read_dir(".").map(|d| d.count())),
    ]
    .join("; ");
    let env = format!("{} variables", std::env::vars_os().count());
    let args = format!("{} arguments", std::env::args_os().count());
    let port = PORT.load(Ordering::Relaxed);
    let socket = describe(std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| "connected"));
    let mut after = event.after_mut();
    after.set("file", file)?;
    after.set("env", env)?;
    after.set("args", args)?;
    after.set("socket", socket)?;
    Ok(())
}

fn describe<T: std::fmt::Debug>(result: std::io::Result<T>) -> String {
    match result {
        Ok(v) => format!("ok: {v:?}"),
        Err(e) => format!("error: {e}"),
    }
}
