//! `walflow serve`: many pipelines, of many tenants, in one long-running process.
//!
//! Each pipeline is the pipeline `walflow run` runs — its own slot, checkpoint, plugins and
//! sinks — under a [`supervisor`] of its own that restarts it with backoff when it fails, so a
//! failing pipeline never stops another. Pipelines come from a watched directory of pipeline
//! files ([`watch`]) and from the control [`api`]; every pipeline belongs to a tenant, and a
//! tenant's token reaches only its own. See `docs/architecture.md` for where this sits.

pub mod api;
pub mod budget;
pub mod config;
pub mod cores;
pub mod exposition;
pub mod pipelines;
pub mod store;
pub mod supervisor;
pub mod watch;

use std::sync::Arc;

use anyhow::Context;
use walflow_core::pipeline::Components;

pub use config::ServeConfig;
pub use pipelines::Pipelines;

/// Serves `config` until SIGINT or SIGTERM, then stops every pipeline with its final
/// checkpoint. Sinks and plugins come from `parts`.
pub async fn serve(config: ServeConfig, parts: Arc<dyn Components>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; set listen in serve.toml to a free address",
                config.listen
            )
        })?;
    if let Some(dir) = &config.pipelines_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the pipelines directory {}", dir.display()))?;
    }
    tracing::info!(listen = %config.listen, tenants = config.tenants.len(), "serving");
    let pipelines = Arc::new(Pipelines::new(config.clone(), parts));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let watcher = config
        .pipelines_dir
        .clone()
        .map(|dir| tokio::spawn(watch::run(pipelines.clone(), dir, stop.clone())));
    let sampler = tokio::spawn(sample(pipelines.clone(), stop.clone()));
    let mut stopped = stop.clone();
    let served =
        axum::serve(listener, api::router(pipelines.clone())).with_graceful_shutdown(async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
    let server = tokio::spawn(async move { served.await });
    walflow_core::pipeline::wait_for_stop_signal().await;
    tracing::info!("stopping every pipeline with a final checkpoint");
    let _ = stop_tx.send(true);
    if let Some(w) = watcher {
        let _ = w.await;
    }
    let _ = sampler.await;
    pipelines.stop_all().await;
    server.await.context("the API server panicked")??;
    Ok(())
}

/// Samples the pipelines' throughput for the status page until `stop`.
async fn sample(pipelines: Arc<Pipelines>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(pipelines::SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => pipelines.sample(),
            _ = stop.changed() => return,
        }
    }
}
