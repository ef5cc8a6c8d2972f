//! A real headless browser (Chromium from Debian) for pages walflow serves: load a URL, let its
//! scripts run, and read the DOM they built.

use std::process::Command;
use std::time::Duration;

use anyhow::Context;

/// The DOM of `url` after its scripts ran for `budget` of virtual time (network included).
pub fn dom_after_scripts(url: &str, budget: Duration) -> anyhow::Result<String> {
    let profile = tempfile::Builder::new()
        .prefix("walflow-chromium-")
        .tempdir()?;
    let output = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={}", budget.as_millis()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .context("cannot run chromium; scripts/test installs it (Debian package chromium)")?;
    anyhow::ensure!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
