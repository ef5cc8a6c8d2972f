//! `walflow tail`: a decoded pg_recvlogical. Streams a slot and prints every event as a
//! JSON line (the README's Events section) on standard output, without plugins or sinks.
//!
//! Without `--confirm` the slot never moves (nothing is confirmed, no checkpoint written), so
//! tailing is safe to repeat. With `--confirm`, what was printed and flushed is checkpointed in
//! the state dir and then confirmed through the same [`Ledger`] the pipeline acknowledges sink
//! flushes with, so a restart (even after kill -9) resumes without losing anything.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::stream::{ReplicationStream, StreamItem, StreamOptions};
use crate::checkpoint::{CheckpointStore, Ledger};
use crate::encode::{EncodeOptions, Encoder};
use crate::event::{Lsn, format_lsn};
use walflow_config::{Config, SourceConfig};
use walflow_pg::options::parse_sslmode;

/// How often printed output is checkpointed and confirmed with `--confirm` while busy.
const CONFIRM_EVERY: Duration = Duration::from_millis(500);

/// What `walflow tail` was asked to do: a source from a config file, flags overriding it.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    /// A configuration file to take the source from.
    pub config: Option<PathBuf>,
    /// `postgres://user@host:port/db`
    pub url: Option<String>,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// disable | prefer | require | verify-ca | verify-full
    pub sslmode: Option<String>,
    /// Root certificates (PEM) for verify-ca/verify-full.
    pub sslrootcert: Option<PathBuf>,
    /// Replication slot (created if missing).
    pub slot: Option<String>,
    /// Publication.
    pub publication: Option<String>,
    /// Stop once this LSN (e.g. `0/16B3748`) has been reached.
    pub until_lsn: Option<String>,
    /// Confirm what was printed to the server, as a consumer would.
    pub confirm: bool,
    /// Continue although the slot's history has a gap.
    pub accept_gap: bool,
}

/// Runs `walflow tail`.
pub async fn run(args: &TailOptions) -> anyhow::Result<()> {
    let (source, state_dir) = resolve(args)?;
    let until = match &args.until_lsn {
        Some(s) => Some(Lsn::parse(s).with_context(|| {
            format!("--until-lsn `{s}` is not an LSN; write it as PostgreSQL does, e.g. 0/16B3748")
        })?),
        None => None,
    };
    let store = CheckpointStore::new(&state_dir, &source.slot);
    let checkpoint = store.load()?;
    let mut options = StreamOptions::for_source(&source);
    options.accept_gap = source.accept_gap;
    let mut stream = ReplicationStream::open(&source, checkpoint.as_ref(), options).await?;
    let control = stream.control();
    let snapshot = checkpoint
        .as_ref()
        .map(|c| c.snapshot.clone())
        .unwrap_or_default();
    let mut ledger = Ledger::new(store, stream.identity().clone(), snapshot);
    if args.confirm && checkpoint.is_none() {
        ledger.record(stream.confirmed_lsn(), &control).await?;
    }
    let encoder = Encoder::new(
        walflow_config::Encoding::Json,
        EncodeOptions {
            name: source.topic_prefix.clone(),
            include_types: false,
        },
    );
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut line = Vec::with_capacity(4096);
    let mut printed_up_to = Lsn::ZERO;
    let mut last_confirm = Instant::now();
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let item = tokio::select! {
            item = stream.next_item() => item?,
            _ = &mut stop => break,
        };
        let reached = match item {
            StreamItem::Transaction(txn) => {
                for event in txn.events.iter().filter(|e| !e.is_heartbeat_message()) {
                    line.clear();
                    encoder.encode_into(event, &mut line)?;
                    line.push(b'\n');
                    out.write_all(&line)
                        .context("cannot write to standard output")?;
                }
                printed_up_to = txn.end_lsn;
                until.is_some_and(|u| txn.end_lsn >= u)
            }
            StreamItem::Idle(lsn) => {
                if args.confirm {
                    out.flush().context("cannot write to standard output")?;
                    // Everything printed counts as acknowledged once flushed.
                    if printed_up_to > stream.confirmed_lsn() {
                        ledger.acknowledge(printed_up_to, &control).await?;
                        stream.apply_confirmed();
                    }
                    if let Some(idle) = stream.idle_lsn() {
                        ledger.acknowledge(idle, &control).await?;
                        stream.apply_confirmed();
                    }
                }
                until.is_some_and(|u| lsn >= u)
            }
            StreamItem::Interrupted => false,
            StreamItem::End => break,
        };
        let quiet = !stream.has_buffered();
        if quiet || reached {
            out.flush().context("cannot write to standard output")?;
        }
        if args.confirm
            && printed_up_to > stream.confirmed_lsn()
            && (quiet || reached || last_confirm.elapsed() >= CONFIRM_EVERY)
        {
            out.flush().context("cannot write to standard output")?;
            ledger.acknowledge(printed_up_to, &control).await?;
            stream.apply_confirmed();
            last_confirm = Instant::now();
        }
        if reached {
            tracing::info!(lsn = %format_lsn(until.unwrap_or_default()), "reached --until-lsn");
            break;
        }
    }
    out.flush().context("cannot write to standard output")?;
    drop(out);
    stream.stop().await?;
    Ok(())
}

/// The source from `-c` and the flags (flags win), and the state dir.
fn resolve(args: &TailOptions) -> anyhow::Result<(SourceConfig, PathBuf)> {
    let (mut source, state_dir) = match &args.config {
        Some(path) => {
            let config = Config::load(path)?;
            (config.source, config.state.dir)
        }
        None => (
            // Through serde, so the defaults are the config file's (slot, publication, …).
            toml::from_str::<SourceConfig>("url = \"\"").context("default source settings")?,
            PathBuf::from(".walflow"),
        ),
    };
    if let Some(url) = &args.url {
        source.url = url.clone();
    }
    if source.url.is_empty() {
        bail!("no source given; pass --url postgres://user@host:5432/db or -c walflow.toml");
    }
    if let Some(v) = &args.password_env {
        source.password_env = Some(v.clone());
    }
    if let Some(mode) = &args.sslmode {
        source.sslmode = parse_sslmode(mode)?;
    }
    if let Some(cert) = &args.sslrootcert {
        source.sslrootcert = Some(cert.clone());
    }
    if let Some(slot) = &args.slot {
        source.slot = slot.clone();
    }
    if let Some(publication) = &args.publication {
        source.publication = publication.clone();
    }
    if args.accept_gap {
        source.accept_gap = true;
    }
    Ok((source, state_dir))
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
