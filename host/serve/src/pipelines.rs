//! The pipelines a service runs: each one's config, supervisor and status, and the changes
//! that can be made to them while the others stream.
//!
//! A change is checked in full before anything is touched — the config parses, it belongs to a
//! tenant with room, no other pipeline uses its slot — so a refused change leaves the running
//! pipeline as it was. Changes are made one at a time; reading the list never waits for one
//! (a replaced pipeline's final checkpoint can take seconds).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use walflow_config::{Config, SinkKind};
use walflow_core::metrics::{Metrics, Summary};
use walflow_core::pipeline::Components;

use crate::budget::{CpuBudget, TenantParts};
use crate::config::{ServeConfig, check_name};
use crate::cores::Cores;
use crate::supervisor::{State, Status, Supervisor, set};

/// A pipeline's name within its tenant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PipelineId {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for PipelineId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.name)
    }
}

/// Where a pipeline's config comes from; each is changed only from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A file in the pipelines directory.
    File,
    /// The control API.
    Api,
}

/// How a pipeline config is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// TOML, as `walflow run` reads it.
    Toml,
    /// The same keys in JSON.
    Json,
}

/// Why a change was refused; nothing was touched.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The config or the request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// It collides with another pipeline, or with how the pipeline is managed.
    #[error("{0}")]
    Conflict(String),
    /// No such pipeline (for this caller).
    #[error("{0}")]
    NotFound(String),
}

/// What a status page shows of a pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    /// Its tenant and name.
    #[serde(flatten)]
    pub id: PipelineId,
    /// Where its config comes from.
    pub origin: Origin,
    /// Its state and last error.
    #[serde(flatten)]
    pub status: Status,
    /// Events written, acknowledged position, lag.
    #[serde(flatten)]
    pub numbers: Numbers,
}

/// A pipeline's numbers, with the position as PostgreSQL prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Numbers {
    /// Events written to the sinks since the service started it (across config changes).
    pub events_out: u64,
    /// The position every sink has acknowledged.
    pub acked_lsn: String,
    /// WAL the server wrote past it.
    pub lag_bytes: u64,
    /// Age of the oldest commit read and not yet acknowledged, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Streaming, with the replication connection up.
    pub healthy: bool,
    /// Its tenant is out of plugin CPU budget right now (its pipelines wait).
    pub throttled: bool,
    /// How long its tenant's pipelines have waited for plugin CPU budget, in seconds.
    pub tenant_throttled_seconds: f64,
    /// Plugin time its tenant's pipelines have been charged, in seconds.
    pub tenant_plugin_seconds: f64,
    /// Events per second written, one value per [`SAMPLE_EVERY`], oldest first (up to
    /// [`HISTORY`] of them: the last minutes).
    pub throughput: Vec<f64>,
}

impl Numbers {
    fn of(s: Summary, history: &VecDeque<u64>, budget: Option<&CpuBudget>) -> Numbers {
        let per_second = SAMPLE_EVERY.as_secs_f64();
        let throughput = history
            .iter()
            .zip(history.iter().skip(1))
            .map(|(a, b)| b.saturating_sub(*a) as f64 / per_second)
            .collect();
        Numbers {
            events_out: s.events_out,
            acked_lsn: s.acked_lsn.to_string(),
            lag_bytes: s.lag_bytes,
            lag_seconds: s.lag_seconds,
            healthy: s.healthy,
            throttled: budget.is_some_and(CpuBudget::exhausted),
            tenant_throttled_seconds: budget.map_or(0.0, |b| b.throttled().as_secs_f64()),
            tenant_plugin_seconds: budget.map_or(0.0, |b| b.spent().as_secs_f64()),
            throughput,
        }
    }
}

/// How often each pipeline's count of written events is sampled for its throughput chart.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Samples kept: ten minutes.
const HISTORY: usize = 121;

/// A pipeline the service knows.
struct Entry {
    origin: Origin,
    /// The config text it was last given (an unchanged file is not restarted).
    text: String,
    config: Config,
    metrics: Arc<Metrics>,
    /// `events_out` every [`SAMPLE_EVERY`], oldest first.
    history: VecDeque<u64>,
    status: Arc<Mutex<Status>>,
    supervisor: Option<Supervisor>,
}

impl Entry {
    fn status(&self, id: &PipelineId, budget: Option<&CpuBudget>) -> PipelineStatus {
        PipelineStatus {
            id: id.clone(),
            origin: self.origin,
            status: self
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            numbers: Numbers::of(self.metrics.summary(), &self.history, budget),
        }
    }
}

/// What a `put` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new pipeline was started.
    Created,
    /// A running pipeline was restarted with the new config.
    Replaced,
    /// The config was the same: nothing was restarted.
    Unchanged,
}

/// The service's pipelines.
pub struct Pipelines {
    config: ServeConfig,
    parts: Arc<dyn Components>,
    /// Each tenant's sinks and plugin host, held to its CPU budget.
    tenant_parts: BTreeMap<String, Arc<dyn Components>>,
    /// Each tenant's CPU budget, when it has one.
    budgets: BTreeMap<String, Arc<CpuBudget>>,
    /// Held while a change is made, so changes happen one at a time.
    changing: tokio::sync::Mutex<()>,
    entries: Mutex<BTreeMap<PipelineId, Entry>>,
}

impl Pipelines {
    /// No pipelines yet; sinks and plugins come from `parts`.
    pub fn new(config: ServeConfig, parts: Arc<dyn Components>) -> Pipelines {
        let budgets: BTreeMap<String, Arc<CpuBudget>> = config
            .tenants
            .iter()
            .filter_map(|t| {
                Some((
                    t.name.clone(),
                    Arc::new(CpuBudget::new(t.plugin_cpu_ms_per_s?)),
                ))
            })
            .collect();
        let cores = Cores::of_this_machine();
        let tenant_parts = config
            .tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let budget = budgets.get(&t.name).cloned();
                let held: Arc<dyn Components> =
                    Arc::new(TenantParts::new(parts.clone(), budget, cores.seat(i)));
                (t.name.clone(), held)
            })
            .collect();
        Pipelines {
            config,
            parts,
            tenant_parts,
            budgets,
            changing: tokio::sync::Mutex::new(()),
            entries: Mutex::new(BTreeMap::new()),
        }
    }

    /// The service's configuration.
    pub fn config(&self) -> &ServeConfig {
        &self.config
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, BTreeMap<PipelineId, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or replaces pipeline `id` with the config `text`, coming from `origin`.
    pub async fn put(
        &self,
        id: &PipelineId,
        origin: Origin,
        text: String,
        format: Format,
    ) -> Result<Applied, Refusal> {
        let _one_at_a_time = self.changing.lock().await;
        let config = self.check(id, origin, &text, format)?;
        let replaced = {
            let mut entries = self.entries();
            if entries.get(id).is_some_and(|e| e.text == text) {
                return Ok(Applied::Unchanged);
            }
            entries.remove(id)
        };
        // A replaced pipeline keeps counting where it was.
        let (applied, metrics) = match replaced {
            Some(old) => {
                if let Some(s) = old.supervisor {
                    s.stop().await;
                }
                tracing::info!(pipeline = %id, "pipeline config changed; restarted");
                (Applied::Replaced, old.metrics)
            }
            None => {
                tracing::info!(pipeline = %id, "pipeline added");
                let labels = [
                    ("tenant", id.tenant.as_str()),
                    ("pipeline", id.name.as_str()),
                ];
                (Applied::Created, Arc::new(Metrics::labelled(&labels)))
            }
        };
        let entry = self.start(id, origin, text, config, metrics);
        self.entries().insert(id.clone(), entry);
        Ok(applied)
    }

    /// Checks everything about a change to `id` before anything is touched; the config to run.
    fn check(
        &self,
        id: &PipelineId,
        origin: Origin,
        text: &str,
        format: Format,
    ) -> Result<Config, Refusal> {
        let invalid = |e: anyhow::Error| Refusal::Invalid(format!("{e:#}"));
        let tenant = self.config.tenant(&id.tenant).ok_or_else(|| {
            Refusal::Invalid(format!("there is no tenant `{}` in serve.toml", id.tenant))
        })?;
        check_name("pipeline", &id.name).map_err(invalid)?;
        let config = self.parse(id, origin, text, format)?;
        let entries = self.entries();
        if let Some(existing) = entries.get(id)
            && existing.origin != origin
        {
            return Err(Refusal::Conflict(match existing.origin {
                Origin::File => format!(
                    "pipeline `{id}` comes from a file in the pipelines directory; change or remove the file"
                ),
                Origin::Api => format!(
                    "pipeline `{id}` was created through the API; change or delete it there"
                ),
            }));
        }
        let others = entries.iter().filter(|(other, _)| *other != id);
        for (other, entry) in others.clone() {
            if same_slot(&entry.config, &config) {
                return Err(Refusal::Conflict(if other.tenant == id.tenant {
                    format!(
                        "pipeline `{other}` already uses slot `{}` on that database; give this one a slot of its own",
                        config.source.slot
                    )
                } else {
                    format!(
                        "another tenant's pipeline uses slot `{}` on that database; give this one a slot of its own",
                        config.source.slot
                    )
                }));
            }
        }
        let siblings: Vec<&Config> = others
            .filter(|(other, _)| other.tenant == id.tenant)
            .map(|(_, e)| &e.config)
            .collect();
        self.within_budget(tenant, &siblings, &config)?;
        Ok(config)
    }

    /// Whether `config`, beside the tenant's other pipelines `siblings`, stays within the
    /// tenant's limits: admission control, so a tenant can never hold more than it was given.
    fn within_budget(
        &self,
        tenant: &crate::config::Tenant,
        siblings: &[&Config],
        config: &Config,
    ) -> Result<(), Refusal> {
        let over = |what: &str, would: u64, max: u64, fix: &str| {
            Refusal::Conflict(format!(
                "tenant `{}` would have {would} {what}, over its {max}; {fix}",
                tenant.name
            ))
        };
        if let Some(max) = tenant.max_pipelines
            && siblings.len() >= max
        {
            let would = siblings.len() as u64 + 1;
            return Err(over("pipelines", would, max as u64, "remove one first"));
        }
        let plugin_mb = |c: &Config| self.parts.plugin_memory_ceiling_mb(c);
        if let Some(max) = tenant.plugin_memory_mb {
            let would = siblings.iter().map(|c| plugin_mb(c)).sum::<u64>() + plugin_mb(config);
            if would > max {
                return Err(over(
                    "MiB of plugin memory (every plugin instance's memory_mb)",
                    would,
                    max,
                    "lower memory_mb in [[plugins]], or remove a pipeline",
                ));
            }
        }
        if let Some(max) = tenant.memory_mb {
            let would =
                siblings.iter().map(|c| c.memory.budget_mb).sum::<u64>() + config.memory.budget_mb;
            if would > max {
                return Err(over(
                    "MiB of event memory ([memory] budget_mb summed)",
                    would,
                    max,
                    "lower [memory] budget_mb, or remove a pipeline",
                ));
            }
        }
        Ok(())
    }

    /// Parses a pipeline config and makes it the service's: state under `state_dir`, relative
    /// paths there too, no metrics listener of its own.
    fn parse(
        &self,
        id: &PipelineId,
        origin: Origin,
        text: &str,
        format: Format,
    ) -> Result<Config, Refusal> {
        let state = self.state_dir(id);
        let label = PathBuf::from(format!(
            "{id}.{}",
            match format {
                Format::Toml => "toml",
                Format::Json => "json",
            }
        ));
        let parsed = match format {
            Format::Toml => Config::parse(text, &label),
            Format::Json => Config::parse_json(text, &label),
        };
        let mut config = parsed.map_err(|e| Refusal::Invalid(e.to_string()))?;
        if config.metrics.is_some() {
            return Err(Refusal::Invalid(format!(
                "{}: remove [metrics]; walflow serve reports every pipeline's metrics itself",
                label.display()
            )));
        }
        if origin == Origin::Api && config.source.password_env.is_some() {
            return Err(Refusal::Invalid(format!(
                "{}: source.password_env reads the service's environment, which tenants may not; put the password in source.url",
                label.display()
            )));
        }
        if config.sinks.is_empty() {
            return Err(Refusal::Invalid(format!(
                "{}: the pipeline has no [[sinks]]; add one",
                label.display()
            )));
        }
        walflow_config::tables::TableSelector::from_source(&config.source)
            .map_err(|e| Refusal::Invalid(format!("{}: {e:#}", label.display())))?;
        self.resolve_plugins(id, origin, &mut config, &label)?;
        self.check_sink_plugins(id, origin, &mut config, &label)?;
        if origin == Origin::Api {
            confine(&config, &label)?;
        }
        config.state.dir = state.clone();
        if origin == Origin::Api {
            config.base_dir = state;
        }
        Ok(config)
    }

    /// Points `sha256:` plugin references at the tenant's uploads. A config from the API may
    /// name plugins only that way: a path would let a tenant run any file of the host.
    fn resolve_plugins(
        &self,
        id: &PipelineId,
        origin: Origin,
        config: &mut Config,
        label: &Path,
    ) -> Result<(), Refusal> {
        for plugin in &mut config.plugins {
            plugin.path = self.stored_plugin(id, origin, &plugin.path, label)?;
        }
        Ok(())
    }

    /// Where the plugin `path` names is: the tenant's upload for a `sha256:` reference (which
    /// must exist), else `path` itself — refused for a pipeline from the API, where a path
    /// would let a tenant run any file of the host.
    fn stored_plugin(
        &self,
        id: &PipelineId,
        origin: Origin,
        path: &Path,
        label: &Path,
    ) -> Result<PathBuf, Refusal> {
        match crate::store::digest_in(path) {
            Some(hex) => {
                let stored = crate::store::path_of(&self.config.state_dir, &id.tenant, hex);
                if !stored.exists() {
                    return Err(Refusal::Invalid(format!(
                        "{}: tenant `{}` has no uploaded plugin sha256:{hex}; upload it with POST /api/tenants/{}/plugins",
                        label.display(),
                        id.tenant,
                        id.tenant
                    )));
                }
                Ok(stored)
            }
            None if origin == Origin::Api => Err(Refusal::Invalid(format!(
                "{}: plugins of a pipeline from the API are named by the digest their upload returned (path = \"sha256:…\"), not by a path on the host",
                label.display()
            ))),
            None => Ok(path.to_path_buf()),
        }
    }

    /// Points each sink plugin's `sha256:` path at the tenant's uploads (a pipeline from the
    /// API may name it no other way) and holds its `allow_hosts` to the tenant's.
    fn check_sink_plugins(
        &self,
        id: &PipelineId,
        origin: Origin,
        config: &mut Config,
        label: &Path,
    ) -> Result<(), Refusal> {
        let allowed = self
            .config
            .tenant(&id.tenant)
            .map(|t| t.allow_hosts.clone())
            .unwrap_or_default();
        for sink in config.sinks.iter_mut().chain(config.dead_letter.iter_mut()) {
            let SinkKind::Plugin(plugin) = &mut sink.kind else {
                continue;
            };
            plugin.path = self.stored_plugin(id, origin, &plugin.path, label)?;
            let asked = plugin
                .allow_hosts
                .as_ref()
                .map(|h| h.to_vec())
                .unwrap_or_default();
            if let Some(host) = asked
                .iter()
                .find(|h| !allowed.contains(&h.to_ascii_lowercase()))
            {
                return Err(Refusal::Invalid(format!(
                    "{}: tenant `{}` may not reach {host} from a sink plugin; add it to the tenant's allow_hosts in serve.toml",
                    label.display(),
                    id.tenant
                )));
            }
        }
        Ok(())
    }

    /// Uploads `bytes` as one of `tenant`'s plugins once the plugin host accepts it; its
    /// digest, or why it was refused.
    pub async fn upload_plugin(&self, tenant: &str, bytes: Vec<u8>) -> Result<String, Refusal> {
        let state_dir = self.config.state_dir.clone();
        let tenant = tenant.to_string();
        let parts = self.parts.clone();
        let stored = tokio::task::spawn_blocking(move || {
            crate::store::put(&state_dir, &tenant, &bytes, |path| parts.check_plugin(path))
        })
        .await
        .map_err(|e| Refusal::Invalid(format!("checking the plugin panicked: {e}")))?
        .map_err(|e| Refusal::Invalid(format!("cannot store the plugin: {e}")))?;
        stored.map_err(|why| Refusal::Invalid(format!("not a plugin walflow can run: {why}")))
    }

    fn budget_of(&self, tenant: &str) -> Option<&CpuBudget> {
        self.budgets.get(tenant).map(|b| &**b)
    }

    /// Tenant `tenant`'s sinks and plugin host.
    fn parts_of(&self, tenant: &str) -> Arc<dyn Components> {
        self.tenant_parts
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| self.parts.clone())
    }

    /// Where pipeline `id` keeps its checkpoint.
    pub fn state_dir(&self, id: &PipelineId) -> PathBuf {
        self.config.state_dir.join(&id.tenant).join(&id.name)
    }

    fn start(
        &self,
        id: &PipelineId,
        origin: Origin,
        text: String,
        config: Config,
        metrics: Arc<Metrics>,
    ) -> Entry {
        let status = Arc::new(Mutex::new(Status::default()));
        let supervisor = Supervisor::start(
            id.to_string(),
            config.clone(),
            self.parts_of(&id.tenant),
            metrics.clone(),
            status.clone(),
        );
        Entry {
            origin,
            text,
            config,
            metrics,
            history: VecDeque::new(),
            status,
            supervisor: Some(supervisor),
        }
    }

    /// Stops pipeline `id` with a final checkpoint and forgets it (its slot stays).
    pub async fn remove(&self, id: &PipelineId, origin: Origin) -> Result<(), Refusal> {
        let _one_at_a_time = self.changing.lock().await;
        let entry = {
            let mut entries = self.entries();
            match entries.get(id) {
                None => return Err(not_found(id)),
                Some(e) if e.origin != origin => {
                    return Err(Refusal::Conflict(format!(
                        "pipeline `{id}` comes from a file in the pipelines directory; remove the file"
                    )));
                }
                Some(_) => entries.remove(id),
            }
        };
        if let Some(s) = entry.and_then(|e| e.supervisor) {
            s.stop().await;
        }
        tracing::info!(pipeline = %id, "pipeline removed");
        Ok(())
    }

    /// Pauses (`true`) or resumes pipeline `id`: a paused pipeline is stopped with a final
    /// checkpoint and keeps its slot.
    pub async fn set_paused(&self, id: &PipelineId, paused: bool) -> Result<(), Refusal> {
        let _one_at_a_time = self.changing.lock().await;
        let (running, config, metrics, status) = {
            let mut entries = self.entries();
            let entry = entries.get_mut(id).ok_or_else(|| not_found(id))?;
            (
                entry.supervisor.take(),
                entry.config.clone(),
                entry.metrics.clone(),
                entry.status.clone(),
            )
        };
        if paused {
            if let Some(s) = running {
                s.stop().await;
            }
            set(&status, |s| s.state = State::Paused);
            tracing::info!(pipeline = %id, "pipeline paused");
            return Ok(());
        }
        let supervisor = running.unwrap_or_else(|| {
            tracing::info!(pipeline = %id, "pipeline resumed");
            Supervisor::start(
                id.to_string(),
                config,
                self.parts_of(&id.tenant),
                metrics,
                status,
            )
        });
        if let Some(entry) = self.entries().get_mut(id) {
            entry.supervisor = Some(supervisor);
        }
        Ok(())
    }

    /// Every pipeline of `tenant` (of every tenant for `None`), by tenant and name.
    pub fn list(&self, tenant: Option<&str>) -> Vec<PipelineStatus> {
        self.entries()
            .iter()
            .filter(|(id, _)| tenant.is_none_or(|t| id.tenant == t))
            .map(|(id, e)| e.status(id, self.budget_of(&id.tenant)))
            .collect()
    }

    /// The config pipeline `id` runs with.
    pub fn config_of(&self, id: &PipelineId) -> Result<Config, Refusal> {
        self.entries()
            .get(id)
            .map(|e| e.config.clone())
            .ok_or_else(|| not_found(id))
    }

    /// Pipeline `id`'s status.
    pub fn get(&self, id: &PipelineId) -> Result<PipelineStatus, Refusal> {
        self.entries()
            .get(id)
            .map(|e| e.status(id, self.budget_of(&id.tenant)))
            .ok_or_else(|| not_found(id))
    }

    /// Samples every pipeline's count of written events (call every [`SAMPLE_EVERY`]).
    pub fn sample(&self) {
        for entry in self.entries().values_mut() {
            if entry.history.len() == HISTORY {
                entry.history.pop_front();
            }
            entry.history.push_back(entry.metrics.summary().events_out);
        }
    }

    /// The metrics expositions of every pipeline of `tenant` (of every tenant for `None`).
    pub fn expositions(&self, tenant: Option<&str>) -> Vec<String> {
        self.entries()
            .iter()
            .filter(|(id, _)| tenant.is_none_or(|t| id.tenant == t))
            .filter_map(|(_, e)| e.metrics.render().ok())
            .collect()
    }

    /// The pipelines that came from files, with the text each was given.
    pub fn from_files(&self) -> BTreeMap<PipelineId, String> {
        self.entries()
            .iter()
            .filter(|(_, e)| e.origin == Origin::File)
            .map(|(id, e)| (id.clone(), e.text.clone()))
            .collect()
    }

    /// Stops every pipeline, each with its final checkpoint.
    pub async fn stop_all(&self) {
        let _one_at_a_time = self.changing.lock().await;
        let running: Vec<Supervisor> = self
            .entries()
            .values_mut()
            .filter_map(|e| e.supervisor.take())
            .collect();
        let mut stopping = tokio::task::JoinSet::new();
        for supervisor in running {
            stopping.spawn(supervisor.stop());
        }
        while stopping.join_next().await.is_some() {}
    }
}

/// The same answer for a pipeline that does not exist and for one the caller may not see.
pub fn not_found(id: &PipelineId) -> Refusal {
    Refusal::NotFound(format!(
        "there is no pipeline `{}` in tenant `{}`",
        id.name, id.tenant
    ))
}

/// Keeps a pipeline from the API inside its state directory: its file sinks write there
/// (relative paths, no `..`), and it reads no file of the host.
fn confine(config: &Config, label: &Path) -> Result<(), Refusal> {
    let refuse = |what: String| {
        Refusal::Invalid(format!(
            "{}: {what}; a pipeline from the API keeps its files inside its state directory",
            label.display()
        ))
    };
    let inside = |p: &Path| {
        p.is_relative()
            && p.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::CurDir
                )
            })
    };
    for sink in config.sinks.iter().chain(&config.dead_letter) {
        match &sink.kind {
            SinkKind::File(f) if !inside(&f.path) => {
                return Err(refuse(format!(
                    "the file sink's path {} is not a relative path inside it",
                    f.path.display()
                )));
            }
            _ => {}
        }
    }
    if config.source.tables_csv.is_some() || config.source.sslrootcert.is_some() {
        return Err(refuse(
            "tables_csv and sslrootcert name files of the host; list tables in source.tables and give root certificates inline as source.sslrootcert_pem"
                .into(),
        ));
    }
    if config.source.ssh.is_some() {
        return Err(refuse(
            "source.ssh reads a key, a known_hosts file or the SSH agent of the host; give SSH-tunnelled pipelines as files in the pipelines directory"
                .into(),
        ));
    }
    Ok(())
}

/// Whether two configs stream from the same slot of the same database.
fn same_slot(a: &Config, b: &Config) -> bool {
    let place = |c: &Config| {
        walflow_pg::ConnectOptions::from_source(&c.source)
            .map(|o| (o.host, o.port, o.dbname))
            .ok()
    };
    a.source.slot == b.source.slot && place(a) == place(b)
}

/// The pipeline a file in the pipelines directory describes: `<tenant>/<name>.toml|json`.
pub fn id_of_file(root: &Path, path: &Path) -> Option<(PipelineId, Format)> {
    let relative = path.strip_prefix(root).ok()?;
    let mut parts = relative.components();
    let tenant = parts.next()?.as_os_str().to_str()?.to_string();
    let file = parts.next()?.as_os_str().to_str()?;
    if parts.next().is_some() {
        return None;
    }
    let (name, ext) = file.rsplit_once('.')?;
    let format = match ext {
        "toml" => Format::Toml,
        "json" => Format::Json,
        _ => return None,
    };
    Some((
        PipelineId {
            tenant,
            name: name.to_string(),
        },
        format,
    ))
}
