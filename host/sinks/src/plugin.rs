//! The `plugin` sink: a WebAssembly component of the `sink` world writes the events, so a team
//! can ship a sink for its own API without forking the host — sandboxed like every plugin, and
//! able to reach only the hosts its `allow_hosts` lists (through `outbound-http`).
//!
//! The plugin's `write` is the acknowledgement: it is called at flush with every event written
//! since the last flush, and `ok` means the destination has them. Its `err` is retried with
//! backoff (a webhook answering 503, a timeout); an error string starting with `rejected:` says
//! the destination refused the data, which the pipeline stops on or dead-letters per
//! `on_error`. A trap, a timeout or running out of memory is fatal: the instance is gone.
//!
//! The call deadline covers the HTTP requests the plugin makes: by default four times the
//! request `timeout` (at least 30 s), or `deadline` when set.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use walflow_config::StringList;
use walflow_config::sinks::PluginSinkConfig;

use super::settings::invalid;
use super::{Sink, SinkBatch, SinkError};
use walflow_core::event::Event;
use walflow_plugin_host::{
    HttpGrant, LoadedPlugin, PluginEngine, PluginError, PluginInstance, PluginSpec, Role,
};

/// A sink written as a WebAssembly component.
pub struct PluginSink {
    name: String,
    instance: Option<PluginInstance>,
    pending: Vec<Event>,
    topics: Vec<String>,
}

impl PluginSink {
    /// The sink a `[[sinks]] type = "plugin"` entry describes; loads the component and calls
    /// its `init`.
    pub async fn from_config(
        settings: &PluginSinkConfig,
        base: &Path,
    ) -> Result<PluginSink, SinkError> {
        let path = base.join(&settings.path);
        let config = match &settings.config {
            None => "{}".to_string(),
            Some(v) => serde_json::to_string(v)
                .map_err(|e| invalid("plugin", "config", &format!("a table ({e})")))?,
        };
        let timeout = settings.timeout.map_or(Duration::from_secs(10), |d| d.0);
        let allow = settings
            .allow_hosts
            .as_ref()
            .map(StringList::to_vec)
            .unwrap_or_default();
        let grant = HttpGrant::new(&allow, timeout)
            .map_err(|e| SinkError::Fatal(format!("plugin sink {}: {e}", path.display())))?;
        let deadline = settings
            .deadline
            .map_or_else(|| (timeout * 4).max(Duration::from_secs(30)), |d| d.0);
        let mut spec = PluginSpec::new(&path, config);
        spec.http = Some(grant);
        spec.limits.timeout_ms = deadline.as_millis() as u64;
        if let Some(mb) = settings.memory_mb {
            spec.limits.memory_mb = mb;
        }
        let instance = tokio::task::spawn_blocking(move || load(spec))
            .await
            .map_err(|e| SinkError::Fatal(format!("loading the sink plugin panicked: {e}")))??;
        Ok(PluginSink {
            name: format!("plugin:{}", path.display()),
            instance: Some(instance),
            pending: Vec::new(),
            topics: Vec::new(),
        })
    }
}

fn load(spec: PluginSpec) -> Result<PluginInstance, SinkError> {
    let fatal = |e: &dyn std::fmt::Display| SinkError::Fatal(e.to_string());
    let engine = PluginEngine::shared().map_err(|e| fatal(&e))?;
    let loaded = LoadedPlugin::load(&engine, &spec).map_err(|e| fatal(&e))?;
    if loaded.role() != Role::Sink {
        return Err(SinkError::Fatal(format!(
            "{} is a {} plugin, not a sink; build it for the `sink` world (list it under [[plugins]] instead?)",
            spec.path.display(),
            loaded.role().world()
        )));
    }
    PluginInstance::new(Arc::new(loaded)).map_err(|e| fatal(&e))
}

fn classify(e: PluginError) -> SinkError {
    match &e {
        PluginError::Failed { plugin, message } => match message.strip_prefix("rejected:") {
            Some(why) => SinkError::Rejected(format!(
                "sink plugin {plugin} rejected the batch: {}",
                why.trim()
            )),
            None => SinkError::Retryable(e.to_string()),
        },
        _ => SinkError::Fatal(e.to_string()),
    }
}

#[async_trait]
impl Sink for PluginSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        self.pending.extend(batch.events.iter().cloned());
        self.topics
            .extend(batch.records.iter().map(|r| r.topic.to_string()));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let mut instance = self.instance.take().ok_or_else(|| {
            SinkError::Fatal(format!("{} failed earlier and is closed", self.name))
        })?;
        let events = std::mem::take(&mut self.pending);
        let topics = std::mem::take(&mut self.topics);
        let (instance, events, topics, result) = tokio::task::spawn_blocking(move || {
            let result = instance.write_events(&events, &topics);
            (instance, events, topics, result)
        })
        .await
        .map_err(|e| SinkError::Fatal(format!("the sink plugin's call panicked: {e}")))?;
        match result {
            Ok(()) => {
                self.instance = Some(instance);
                Ok(())
            }
            Err(e) => {
                let error = classify(e);
                match &error {
                    SinkError::Retryable(_) => {
                        self.pending = events;
                        self.topics = topics;
                        self.instance = Some(instance);
                    }
                    SinkError::Rejected(_) => self.instance = Some(instance),
                    SinkError::Fatal(_) => {}
                }
                Err(error)
            }
        }
    }
}
