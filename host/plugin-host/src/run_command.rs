//! `walflow plugin run --plugin FILE[=JSON] … [--input FILE]`: the plugin author's inner loop.
//!
//! Reads sink records as JSON lines (the record format of the README's Events section; with a
//! `types` object the input is lossless: bytea as base64, numeric as exact strings, temporal
//! values as ISO-8601 strings, see [`walflow_core::encode::json`]), runs them through the
//! chain in batches, and writes the resulting records as JSON lines with their `types`, so the
//! output can be fed to another run.
//! Dead-lettered and skipped events are reported on standard error.

use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::chain::Chain;
use super::engine::PluginEngine;
use super::instance::PluginSpec;
use walflow_core::encode::EncodeOptions;
use walflow_core::encode::json::{RecordParser, record_with};
use walflow_core::event::Event;

/// What `walflow plugin run` was asked to do.
#[derive(Debug, Clone)]
pub struct PluginRunOptions {
    /// `FILE[=JSON]`: a plugin and its config, in chain order.
    pub plugins: Vec<String>,
    /// JSON-lines input (sink records); standard input when `None`.
    pub input: Option<PathBuf>,
    /// Events per batch.
    pub batch_size: usize,
}

/// Runs the command. Blocking: call it off the async runtime.
pub fn run(args: &PluginRunOptions) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    let specs = args
        .plugins
        .iter()
        .map(|arg| parse_plugin_arg(arg))
        .collect::<Vec<_>>();
    let engine = PluginEngine::shared()?;
    let mut chain = Chain::from_specs(&engine, specs)?;
    let (reader, source): (Box<dyn BufRead>, String) = match &args.input {
        Some(path) => {
            let file = std::fs::File::open(path)
                .with_context(|| format!("cannot open input {}; check the path", path.display()))?;
            (
                Box::new(std::io::BufReader::new(file)),
                path.display().to_string(),
            )
        }
        None => (
            Box::new(std::io::stdin().lock()),
            "standard input".to_string(),
        ),
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let options = EncodeOptions {
        include_types: true,
        ..EncodeOptions::default()
    };
    let mut parser = RecordParser::default();
    let mut batch: Vec<Event> = Vec::with_capacity(args.batch_size);
    let mut last_line = 0;
    for (index, line) in reader.lines().enumerate() {
        let number = index + 1;
        let line = line.with_context(|| format!("cannot read {source} at line {number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let event = parser
            .parse_line(&line)
            .map_err(|e| anyhow::anyhow!("{source} line {number} is not a sink record: {e}"))?;
        batch.push(event);
        last_line = number;
        if batch.len() == args.batch_size {
            flush(
                &mut chain,
                std::mem::take(&mut batch),
                &mut out,
                &options,
                &source,
                last_line,
            )?;
        }
    }
    flush(&mut chain, batch, &mut out, &options, &source, last_line)?;
    out.flush().context("cannot write to standard output")?;
    Ok(())
}

/// `FILE[=JSON]`: the config starts at the first `=` unless the whole argument names a file.
fn parse_plugin_arg(arg: &str) -> PluginSpec {
    match arg.split_once('=') {
        Some((path, config)) if !Path::new(arg).exists() => {
            PluginSpec::new(PathBuf::from(path), config)
        }
        _ => PluginSpec::new(PathBuf::from(arg), "{}"),
    }
}

fn flush(
    chain: &mut Chain,
    batch: Vec<Event>,
    out: &mut impl Write,
    options: &EncodeOptions,
    source: &str,
    last_line: usize,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let output = chain.run(batch).map_err(|e| {
        anyhow::anyhow!("the batch ending at {source} line {last_line} failed: {e}")
    })?;
    for letter in &output.dead_letters {
        let record = record_with(&letter.event, options);
        tracing::warn!(plugin = %letter.plugin, error = %letter.error, record = %record, "dead letter");
    }
    if output.skipped > 0 {
        tracing::warn!(
            skipped = output.skipped,
            "skipped events the plugins failed on"
        );
    }
    for event in &output.events {
        serde_json::to_writer(&mut *out, &record_with(event, options))
            .context("cannot write to standard output")?;
        out.write_all(b"\n")
            .context("cannot write to standard output")?;
    }
    Ok(())
}
