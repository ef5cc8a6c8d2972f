//! Loading a plugin file (compile, recognise the role, link against the empty sandbox) and
//! running calls on an instance of it under its limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};
use wasmtime::component::{
    Component, ComponentExportIndex, ComponentNamedList, ComponentType, Func, InstancePre, Lift,
    Linker, Lower, TypedFunc,
};
use wasmtime::{Store, Trap};

use super::abi::{AbiVersion, RelationView, relations_of, v0_1, v0_2};
use super::bindings::{types as wit, v0_1::types as wit_v0_1};
use super::convert::Edit;
use super::engine::{EPOCH_TICK, PluginEngine, one_line};
use super::error::{LoadError, PluginError};
use super::sandbox::{MemoryCapExceeded, StoreState};
use walflow_config::{OnError, PluginConfig};
use walflow_core::event::{Event, Op, Relation};

/// The ABI version this host implements and the guest SDK targets; plugins built against
/// older versions still run (see [`AbiVersion`]).
pub const ABI_VERSION: &str = "0.2.1";

/// The versions a plugin may be built against, for messages.
const ABI_VERSIONS: &str = "0.2.1 (or 0.2.0, 0.1.0)";

/// What a plugin does, recognised from the interface its component exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Exports `filter-api`: keeps or drops events.
    Filter,
    /// Exports `transform-api`: edits events.
    Transform,
    /// Exports `topic-namer-api`: names each event's topic.
    TopicNamer,
    /// Exports `sink-api`: writes events out.
    Sink,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Filter, Role::Transform, Role::TopicNamer, Role::Sink];

    /// The world's name in the WIT package.
    pub fn world(self) -> &'static str {
        match self {
            Role::Filter => "filter",
            Role::Transform => "transform",
            Role::TopicNamer => "topic-namer",
            Role::Sink => "sink",
        }
    }

    /// The interface's batch function.
    fn batch_function(self) -> &'static str {
        match self {
            Role::Filter => "filter",
            Role::Transform => "transform",
            Role::TopicNamer => "name-topics",
            Role::Sink => "write",
        }
    }

    fn interface(self) -> &'static str {
        match self {
            Role::Filter => "filter-api",
            Role::Transform => "transform-api",
            Role::TopicNamer => "topic-namer-api",
            Role::Sink => "sink-api",
        }
    }

    /// The fully qualified name of the interface a component of this role exports.
    pub fn export_name(self, abi: AbiVersion) -> String {
        format!("walflow:plugin/{}@{}", self.interface(), abi.as_str())
    }
}

/// Per-call limits of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory cap in MiB.
    pub memory_mb: u64,
    /// Deadline of one call in milliseconds.
    pub timeout_ms: u64,
    /// Fuel per call; `None` runs unmetered.
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 256,
            timeout_ms: 2000,
            fuel: None,
        }
    }
}

/// Everything needed to (re)load one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// The component file.
    pub path: PathBuf,
    /// Name in logs and metrics.
    pub name: Arc<str>,
    /// The configuration passed to `init`, as JSON text.
    pub config_json: String,
    /// Limits.
    pub limits: Limits,
    /// Failure policy.
    pub on_error: OnError,
    /// Outbound HTTP this plugin may use (sink plugins only).
    pub http: Option<Arc<super::outbound_http::HttpGrant>>,
}

impl PluginSpec {
    /// A spec with default limits and `on_error = stop`; the name is the file stem.
    pub fn new(path: impl Into<PathBuf>, config_json: impl Into<String>) -> PluginSpec {
        let path = path.into();
        PluginSpec {
            name: default_name(&path),
            path,
            config_json: config_json.into(),
            limits: Limits::default(),
            on_error: OnError::Stop,
            http: None,
        }
    }

    /// The spec a `[[plugins]]` entry describes.
    pub fn from_config(config: &PluginConfig) -> Result<PluginSpec, LoadError> {
        let config_json = match &config.config {
            None => "{}".to_string(),
            Some(value) => serde_json::to_string(value).map_err(|e| LoadError::BadConfig {
                path: config.path.clone(),
                detail: e.to_string(),
            })?,
        };
        let defaults = Limits::default();
        Ok(PluginSpec {
            name: match &config.name {
                Some(n) => Arc::from(n.as_str()),
                None => default_name(&config.path),
            },
            path: config.path.clone(),
            config_json,
            limits: Limits {
                memory_mb: config.memory_mb.unwrap_or(defaults.memory_mb),
                timeout_ms: config.timeout_ms.unwrap_or(defaults.timeout_ms),
                fuel: config.fuel,
            },
            on_error: config.on_error,
            http: None,
        })
    }
}

fn default_name(path: &Path) -> Arc<str> {
    Arc::from(
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string())
            .as_str(),
    )
}

/// Where the role interface's functions are in the component.
struct Exports {
    init: ComponentExportIndex,
    batch: ComponentExportIndex,
    /// `columns` (0.2.1, every role but sink).
    columns: Option<ComponentExportIndex>,
    /// `keep-table` of a filter or `table-topic` of a topic namer (0.2.1).
    by_table: Option<ComponentExportIndex>,
}

impl Exports {
    fn find(component: &Component, role: Role, abi: AbiVersion) -> wasmtime::Result<Exports> {
        let interface = role.export_name(abi);
        let iface = component
            .get_export_index(None, &interface)
            .ok_or_else(|| wasmtime::format_err!("no exported instance named `{interface}`"))?;
        let lookup = |name: &str| {
            component
                .get_export_index(Some(&iface), name)
                .ok_or_else(|| wasmtime::format_err!("`{interface}` does not export `{name}`"))
        };
        let projects = abi == AbiVersion::V0_2_1 && role != Role::Sink;
        let by_table = match role {
            Role::Filter => Some("keep-table"),
            Role::TopicNamer => Some("table-topic"),
            Role::Transform | Role::Sink => None,
        };
        Ok(Exports {
            init: lookup("init")?,
            batch: lookup(role.batch_function())?,
            columns: projects.then(|| lookup("columns")).transpose()?,
            by_table: by_table.filter(|_| projects).map(lookup).transpose()?,
        })
    }
}

/// One compiled, linked and role-checked version of a plugin file. Immutable: hot reload
/// replaces the whole `Arc`.
pub struct LoadedPlugin {
    spec: PluginSpec,
    role: Role,
    abi: AbiVersion,
    digest: [u8; 32],
    engine: wasmtime::Engine,
    pre: InstancePre<StoreState>,
    exports: Exports,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.spec.name)
            .field("path", &self.spec.path)
            .field("role", &self.role)
            .field("abi", &self.abi)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Reads, compiles (or takes from the cache), recognises and links the plugin file. Does
    /// not instantiate it; [`PluginInstance::new`] does, and calls `init`.
    pub fn load(engine: &PluginEngine, spec: &PluginSpec) -> Result<LoadedPlugin, LoadError> {
        let path = &spec.path;
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&spec.config_json) {
            return Err(LoadError::BadConfig {
                path: path.clone(),
                detail: e.to_string(),
            });
        }
        let bytes = std::fs::read(path).map_err(|source| LoadError::Read {
            path: path.clone(),
            source,
        })?;
        let fuel = spec.limits.fuel.is_some();
        let digest: [u8; 32] = Sha256::digest(&bytes).into();
        let component = engine.compile(path, &bytes, &digest, fuel)?;
        let wasm_engine = engine.engine(fuel)?.clone();
        let (role, abi) = recognise_role(&wasm_engine, &component, path)?;
        let mut linker: Linker<StoreState> = Linker::new(&wasm_engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| LoadError::Engine(one_line(&e)))?;
        super::sandbox::add_http_to_linker(&mut linker)
            .map_err(|e| LoadError::Engine(one_line(&e)))?;
        let link = |e: wasmtime::Error| LoadError::Link {
            path: path.clone(),
            detail: one_line(&e),
        };
        let pre = linker.instantiate_pre(&component).map_err(link)?;
        let exports = Exports::find(&component, role, abi).map_err(link)?;
        Ok(LoadedPlugin {
            spec: spec.clone(),
            role,
            abi,
            digest,
            engine: wasm_engine,
            pre,
            exports,
        })
    }

    /// The plugin's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The ABI version it was built against.
    pub fn abi(&self) -> AbiVersion {
        self.abi
    }

    /// The spec it was loaded from.
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// SHA-256 of the component file.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }
}

/// Finds the role interface the component exports and its version, or says precisely why none
/// fits.
fn recognise_role(
    engine: &wasmtime::Engine,
    component: &Component,
    path: &Path,
) -> Result<(Role, AbiVersion), LoadError> {
    let ty = component.component_type();
    let exports: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    let found: Vec<(Role, AbiVersion)> = Role::ALL
        .into_iter()
        .flat_map(|role| AbiVersion::ALL.map(|abi| (role, abi)))
        .filter(|(role, abi)| exports.iter().any(|e| *e == role.export_name(*abi)))
        .collect();
    match found.as_slice() {
        [role] => return Ok(*role),
        [] => {}
        _ => {
            return Err(LoadError::WrongWorld {
                path: path.to_owned(),
                exports: format!(
                    "{} (more than one role; a plugin has exactly one)",
                    exports.join(", ")
                ),
            });
        }
    }
    if let Some(other) = exports.iter().find(|e| e.starts_with("walflow:plugin/")) {
        return Err(LoadError::WrongVersion {
            path: path.to_owned(),
            found: other.clone(),
            expected: ABI_VERSIONS,
        });
    }
    Err(LoadError::WrongWorld {
        path: path.to_owned(),
        exports: if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        },
    })
}

/// What `init` answers (`needs` has the same shape in every version).
type Init = (Result<wit::Needs, String>,);

/// What `columns` answers (0.2.1).
type Columns = (Option<Vec<u32>>,);

/// A live instance of a plugin: its own store, memory cap, deadline and fuel. After a call
/// fails with an error that [poisons](PluginError::poisons_instance) it, throw it away.
pub struct PluginInstance {
    plugin: Arc<LoadedPlugin>,
    store: Store<StoreState>,
    /// `init`, checked against its signature.
    init: Func,
    /// The role's batch function, checked against the signature of [`Role`]'s call.
    batch: Func,
    /// Whether the plugin asked for rows (its `init` answer).
    needs_rows: bool,
    /// `columns`, checked against its signature (0.2.1 plugins that read rows).
    columns: Option<Func>,
    /// What `columns` answered, per table.
    projections: v0_2::Projections,
    /// `keep-table` or `table-topic`, checked against its signature (0.2.1).
    by_table: Option<Func>,
    /// What `keep-table` answered, per table and database.
    kept_tables: v0_2::TableAnswers<bool>,
    /// What `table-topic` answered, per table and database.
    table_topics: v0_2::TableAnswers<Arc<str>>,
    /// The buffers a 0.2 batch is laid out in, kept between calls.
    flat: v0_2::FlatBatch,
}

impl PluginInstance {
    /// Instantiates `plugin` and calls its `init` with its configuration.
    pub fn new(plugin: Arc<LoadedPlugin>) -> Result<PluginInstance, LoadError> {
        let spec = &plugin.spec;
        let memory = usize::try_from(spec.limits.memory_mb.saturating_mul(1024 * 1024))
            .unwrap_or(usize::MAX);
        let mut store = Store::new(
            &plugin.engine,
            StoreState::new(&spec.name, memory, spec.http.clone()),
        );
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        let init_error = |error: PluginError| LoadError::Init {
            path: spec.path.clone(),
            error,
        };
        prepare_call(&mut store, &spec.limits);
        let instance = match plugin.pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => return Err(init_error(classify(&store, spec, e))),
        };
        let link = |e: wasmtime::Error| LoadError::Link {
            path: spec.path.clone(),
            detail: one_line(&e),
        };
        let init = *instance
            .get_typed_func::<(&str,), Init>(&mut store, plugin.exports.init)
            .map_err(link)?
            .func();
        let batch = instance
            .get_func(&mut store, plugin.exports.batch)
            .ok_or_else(|| link(wasmtime::format_err!("the batch function is missing")))?;
        check_batch_signature(&store, &batch, plugin.role, plugin.abi).map_err(link)?;
        let (columns, by_table) =
            per_table_functions(&instance, &mut store, &plugin).map_err(link)?;
        let mut this = PluginInstance {
            plugin: plugin.clone(),
            store,
            init,
            batch,
            needs_rows: true,
            columns,
            projections: v0_2::Projections::default(),
            by_table,
            kept_tables: v0_2::TableAnswers::default(),
            table_topics: v0_2::TableAnswers::default(),
            flat: v0_2::FlatBatch::default(),
        };
        let needs = this.call_init().map_err(init_error)?;
        // Sinks always get whole events.
        this.needs_rows = needs.rows || this.plugin.role == Role::Sink;
        if !this.needs_rows {
            this.columns = None;
        }
        Ok(this)
    }

    /// The version this instance runs.
    pub fn plugin(&self) -> &Arc<LoadedPlugin> {
        &self.plugin
    }

    /// Whether calls must carry the events' rows (the plugin's `init` said so).
    pub fn needs_rows(&self) -> bool {
        self.needs_rows
    }

    fn call_init(&mut self) -> Result<wit::Needs, PluginError> {
        let config = self.plugin.spec.config_json.clone();
        // SAFETY: the signature was checked when `init` was looked up.
        let init = unsafe { TypedFunc::<(&str,), Init>::new_unchecked(self.init) };
        self.call(|store| init.call(store, (&config,)).map(|(r,)| r))
    }

    /// Asks the plugin which columns it reads of each of `relations` it has not been asked
    /// about; for each, what to send of it (`None`: every column). Empty when the plugin
    /// reads every column of every table (0.2.0 and older, or no `columns` export).
    fn project(
        &mut self,
        relations: &[Arc<Relation>],
    ) -> Result<Vec<Option<Arc<v0_2::Projection>>>, PluginError> {
        let Some(columns) = self.columns else {
            return Ok(Vec::new());
        };
        // SAFETY: the signature was checked when `columns` was looked up.
        let columns = unsafe { TypedFunc::<(&RelationView<'_>,), Columns>::new_unchecked(columns) };
        let mut projected = Vec::with_capacity(relations.len());
        for relation in relations {
            let projection = match self.projections.get(relation, None) {
                Some(known) => known,
                None => {
                    let view = RelationView::new(relation);
                    let answer =
                        self.call(|store| columns.call(store, (&view,)).map(|(a,)| Ok(a)))?;
                    let projection = v0_2::Projection::new(relation, answer)
                        .map_err(|m| self.bad_output(m))?
                        .map(Arc::new);
                    self.projections
                        .insert(relation.clone(), None, projection.clone());
                    projection
                }
            };
            projected.push(projection);
        }
        if projected.iter().all(Option::is_none) {
            projected.clear();
        }
        Ok(projected)
    }

    /// Maps a transform's edits from the columns it was sent to the table's. A projected
    /// event cannot be replaced: the plugin never saw all of it.
    fn unproject(&self, mut edits: Vec<Edit>, events: &[Event]) -> Result<Vec<Edit>, PluginError> {
        if !self.projections.any() {
            return Ok(edits);
        }
        let projection = |event: u32| {
            let event = events.get(event as usize)?;
            self.projections.get(&event.relation, None).flatten()
        };
        // The batch's relations, which a replacement's `relation` indexes (once, if needed).
        let mut sent = None;
        for edit in &mut edits {
            match edit {
                Edit::Set { event, column, .. } | Edit::Remove { event, column } => {
                    let Some(p) = projection(*event) else {
                        continue;
                    };
                    *column = p.table_column(*column).ok_or_else(|| {
                        self.bad_output(format!(
                            "an edit names column {column} of event {event}, which was sent with {} columns",
                            p.columns().len()
                        ))
                    })?;
                }
                Edit::Replace { event, replacement } => {
                    let sent = sent.get_or_insert_with(|| relations_of(events));
                    let into = sent.get(replacement.relation as usize);
                    let partial = projection(*event).is_some()
                        || into.is_some_and(|r| self.projections.get(r, None).flatten().is_some());
                    if partial {
                        return Err(self.bad_output(format!(
                            "event {event} was replaced, but the plugin reads only some columns of its table; a transform that replaces events must answer `none` from `columns`"
                        )));
                    }
                }
                Edit::Drop(_) | Edit::Fail { .. } => {}
            }
        }
        Ok(edits)
    }

    /// Each event's answer from its table's (`keep-table`, `table-topic`), asking the plugin
    /// about tables it has not been asked about; `None` when some event needs the batch call
    /// (its table's answer is `none`, or it is a logical message). Each run of events of one
    /// table shares one `local` copy of the answer: a topic's `Arc` is cloned and dropped once
    /// per event on several threads, and the cached one, shared by every batch, would be
    /// contended.
    fn answers_by_table<T: Clone, U: Clone>(
        &mut self,
        events: &[Event],
        known: fn(&mut Self) -> &mut v0_2::TableAnswers<T>,
        ask: impl Fn(&mut Self, &str, &Relation) -> Result<Option<T>, PluginError>,
        local: impl Fn(&T) -> U,
    ) -> Result<Option<Vec<U>>, PluginError> {
        if self.by_table.is_none() || events.iter().any(|e| e.op == Op::Message) {
            return Ok(None);
        }
        // Out of `self` while the plugin is asked (which needs `self`), and back after.
        let mut answers = std::mem::take(known(self));
        let result = self.answer_each(events, &mut answers, ask, local);
        *known(self) = answers;
        result
    }

    /// [`answers_by_table`](Self::answers_by_table), with the answers known so far in `known`.
    fn answer_each<T: Clone, U: Clone>(
        &mut self,
        events: &[Event],
        known: &mut v0_2::TableAnswers<T>,
        ask: impl Fn(&mut Self, &str, &Relation) -> Result<Option<T>, PluginError>,
        local: impl Fn(&T) -> U,
    ) -> Result<Option<Vec<U>>, PluginError> {
        let mut answers = Vec::with_capacity(events.len());
        let mut run: Option<(&Arc<Relation>, &Arc<str>, U)> = None;
        for event in events {
            let (relation, db) = (&event.relation, &event.source.db);
            if let Some((r, d, answer)) = &run
                && Arc::ptr_eq(r, relation)
                && Arc::ptr_eq(d, db)
            {
                answers.push(answer.clone());
                continue;
            }
            let answer = match known.get(relation, Some(db)) {
                Some(answer) => answer,
                None => {
                    let answer = ask(self, db, relation)?;
                    known.insert(relation.clone(), Some(db.clone()), answer.clone());
                    answer
                }
            };
            let Some(answer) = answer else {
                return Ok(None);
            };
            let answer = local(&answer);
            answers.push(answer.clone());
            run = Some((relation, db, answer));
        }
        Ok(Some(answers))
    }

    /// Calls `keep-table` or `table-topic` (whichever `R` says) about one table.
    fn ask_by_table<R>(&mut self, db: &str, table: &Relation) -> Result<Option<R>, PluginError>
    where
        R: ComponentType + Lift + Send + Sync + 'static,
    {
        let Some(func) = self.by_table else {
            return Ok(None);
        };
        // SAFETY: the signature was checked (`check_by_table_signature`) for this role, whose
        // callers pick `R` to match.
        let func =
            unsafe { TypedFunc::<(&str, &RelationView<'_>), (Option<R>,)>::new_unchecked(func) };
        let view = RelationView::new(table);
        self.call(|store| func.call(store, (db, &view)).map(|(a,)| Ok(a)))
    }

    /// Runs a filter over `events`: one flag per event, `true` keeps it.
    pub fn filter(&mut self, events: &[Event]) -> Result<Vec<bool>, PluginError> {
        self.expect(Role::Filter)?;
        let keep = self.answers_by_table(
            events,
            |this| &mut this.kept_tables,
            |this, db, table| this.ask_by_table::<bool>(db, table),
            |keep| *keep,
        )?;
        if let Some(keep) = keep {
            return Ok(keep);
        }
        match self.plugin.abi {
            // SAFETY (both): a filter's batch function was checked to take `(batch)` and answer
            // `result<list<bool>, string>` (`check_batch_signature`).
            AbiVersion::V0_2 | AbiVersion::V0_2_1 => {
                self.with_flat(events, |this, batch| unsafe { this.call_batch((batch,)) })
            }
            AbiVersion::V0_1 => v0_1::with_batch(events, self.needs_rows, |batch| unsafe {
                self.call_batch((batch,))
            }),
        }
    }

    /// Runs a transform over `events`: the edits it made.
    pub(crate) fn transform(&mut self, events: &[Event]) -> Result<Vec<Edit>, PluginError> {
        self.expect(Role::Transform)?;
        match self.plugin.abi {
            AbiVersion::V0_2 | AbiVersion::V0_2_1 => {
                // SAFETY: checked to take `(batch)` and answer `result<edits, string>`.
                let answer: v0_2::LiftedEdits =
                    self.with_flat(events, |this, batch| unsafe { this.call_batch((batch,)) })?;
                let edits = v0_2::edits_from_wit(answer).map_err(|m| self.bad_output(m))?;
                self.unproject(edits, events)
            }
            AbiVersion::V0_1 => {
                // SAFETY: checked to take `(batch)` and answer `result<list<edit>, string>`.
                let edits: Vec<wit_v0_1::Edit> =
                    v0_1::with_batch(events, self.needs_rows, |batch| unsafe {
                        self.call_batch((batch,))
                    })?;
                Ok(v0_1::edits_from_wit(edits))
            }
        }
    }

    /// Runs a topic namer over `events`: one topic per event.
    pub fn name_topics(&mut self, events: &[Event]) -> Result<Vec<Arc<str>>, PluginError> {
        self.expect(Role::TopicNamer)?;
        let topics = self.answers_by_table(
            events,
            |this| &mut this.table_topics,
            |this, db, table| Ok(this.ask_by_table::<String>(db, table)?.map(Arc::from)),
            |topic: &Arc<str>| Arc::<str>::from(&**topic),
        )?;
        if let Some(topics) = topics {
            return Ok(topics);
        }
        match self.plugin.abi {
            AbiVersion::V0_2 | AbiVersion::V0_2_1 => {
                // SAFETY: checked to take `(batch)` and answer `result<topics, string>`.
                let topics: wit::Topics =
                    self.with_flat(events, |this, batch| unsafe { this.call_batch((batch,)) })?;
                v0_2::topics_from_wit(topics, events.len()).map_err(|m| self.bad_output(m))
            }
            // SAFETY: checked to take `(batch)` and answer `result<list<string>, string>`.
            AbiVersion::V0_1 => v0_1::with_batch(events, self.needs_rows, |batch| unsafe {
                self.call_batch((batch,))
            }),
        }
    }

    /// Hands events to a sink plugin; `topics` holds one topic per event.
    pub fn write_events(&mut self, events: &[Event], topics: &[String]) -> Result<(), PluginError> {
        self.expect(Role::Sink)?;
        if topics.len() != events.len() {
            return Err(self.bad_output(format!(
                "{} topics for {} events",
                topics.len(),
                events.len()
            )));
        }
        match self.plugin.abi {
            AbiVersion::V0_2 | AbiVersion::V0_2_1 => {
                let topics = v0_2::TopicsView::new(topics);
                // SAFETY: checked to take `(batch, topics)` and answer `result<_, string>`.
                self.with_flat(events, |this, batch| unsafe {
                    this.call_batch((batch, &topics))
                })
            }
            // SAFETY: checked to take `(batch, list<string>)` and answer `result<_, string>`.
            AbiVersion::V0_1 => v0_1::with_batch(events, true, |batch| unsafe {
                self.call_batch((batch, topics))
            }),
        }
    }

    /// Lays `events` out in this instance's buffers (only the columns the plugin reads) and
    /// calls `f` with them as a 0.2 batch.
    fn with_flat<R>(
        &mut self,
        events: &[Event],
        f: impl FnOnce(&mut Self, &v0_2::BatchView<'_>) -> Result<R, PluginError>,
    ) -> Result<R, PluginError> {
        let relations = relations_of(events);
        let projected = self.project(&relations)?;
        let mut flat = std::mem::take(&mut self.flat);
        let result = match flat.fill(events, relations, projected, self.needs_rows) {
            Ok(()) => f(self, &flat.view()),
            Err(message) => Err(PluginError::Failed {
                plugin: self.plugin.spec.name.to_string(),
                message,
            }),
        };
        flat.trim();
        self.flat = flat;
        result
    }

    fn bad_output(&self, message: String) -> PluginError {
        PluginError::BadOutput {
            plugin: self.plugin.spec.name.to_string(),
            message,
        }
    }

    fn expect(&self, role: Role) -> Result<(), PluginError> {
        if self.plugin.role == role {
            return Ok(());
        }
        Err(PluginError::Failed {
            plugin: self.plugin.spec.name.to_string(),
            message: format!(
                "this plugin is a {}, not a {}",
                self.plugin.role.world(),
                role.world()
            ),
        })
    }

    /// Calls the batch function with `params`.
    ///
    /// # Safety
    /// `P` and `R` must be the types `check_batch_signature` checked for this plugin's role,
    /// up to lifetimes (which the canonical ABI does not see).
    unsafe fn call_batch<P, R>(&mut self, params: P) -> Result<R, PluginError>
    where
        P: ComponentNamedList + Lower,
        R: ComponentType + Lift + Send + Sync + 'static,
    {
        // SAFETY: the caller guarantees the signature.
        let func = unsafe { TypedFunc::<P, (Result<R, String>,)>::new_unchecked(self.batch) };
        self.call(|store| func.call(store, params).map(|(r,)| r))
    }

    /// Runs one call under the plugin's limits and sorts its failure into a [`PluginError`].
    fn call<R>(
        &mut self,
        f: impl FnOnce(&mut Store<StoreState>) -> wasmtime::Result<Result<R, String>>,
    ) -> Result<R, PluginError> {
        let spec = &self.plugin.spec;
        prepare_call(&mut self.store, &spec.limits);
        match f(&mut self.store) {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(message)) => Err(PluginError::Failed {
                plugin: spec.name.to_string(),
                message,
            }),
            Err(e) => Err(classify(&self.store, spec, e)),
        }
    }
}

/// Checks that the batch function has the signature of `role`'s call, with the exact types
/// the calls lower and lift.
fn check_batch_signature(
    store: &Store<StoreState>,
    func: &Func,
    role: Role,
    abi: AbiVersion,
) -> wasmtime::Result<()> {
    type Answer<T> = (Result<T, String>,);
    type Batch = v0_2::BatchView<'static>;
    type BatchV0_1 = v0_1::BatchView<'static>;
    match (abi, role) {
        (AbiVersion::V0_2 | AbiVersion::V0_2_1, Role::Filter) => {
            func.typed::<(&Batch,), Answer<Vec<bool>>>(store).map(drop)
        }
        (AbiVersion::V0_2 | AbiVersion::V0_2_1, Role::Transform) => {
            func.typed::<(&Batch,), Answer<wit::Edits>>(store).map(drop)
        }
        (AbiVersion::V0_2 | AbiVersion::V0_2_1, Role::TopicNamer) => func
            .typed::<(&Batch,), Answer<wit::Topics>>(store)
            .map(drop),
        (AbiVersion::V0_2 | AbiVersion::V0_2_1, Role::Sink) => func
            .typed::<(&Batch, &v0_2::TopicsView<'static>), Answer<()>>(store)
            .map(drop),
        (AbiVersion::V0_1, Role::Filter) => func
            .typed::<(&BatchV0_1,), Answer<Vec<bool>>>(store)
            .map(drop),
        (AbiVersion::V0_1, Role::Transform) => func
            .typed::<(&BatchV0_1,), Answer<Vec<wit_v0_1::Edit>>>(store)
            .map(drop),
        (AbiVersion::V0_1, Role::TopicNamer) => func
            .typed::<(&BatchV0_1,), Answer<Vec<String>>>(store)
            .map(drop),
        (AbiVersion::V0_1, Role::Sink) => func
            .typed::<(&BatchV0_1, &[String]), Answer<()>>(store)
            .map(drop),
    }
}

/// A 0.2.1 plugin's `columns` and its `keep-table` (filter) or `table-topic` (topic namer),
/// checked against their signatures.
fn per_table_functions(
    instance: &wasmtime::component::Instance,
    store: &mut Store<StoreState>,
    plugin: &LoadedPlugin,
) -> wasmtime::Result<(Option<Func>, Option<Func>)> {
    let columns = match plugin.exports.columns {
        None => None,
        Some(index) => Some(
            *instance
                .get_typed_func::<(&RelationView<'static>,), Columns>(&mut *store, index)?
                .func(),
        ),
    };
    let by_table = match plugin.exports.by_table {
        None => None,
        Some(index) => {
            let func = instance
                .get_func(&mut *store, index)
                .ok_or_else(|| wasmtime::format_err!("`keep-table`/`table-topic` is missing"))?;
            check_by_table_signature(store, &func, plugin.role)?;
            Some(func)
        }
    };
    Ok((columns, by_table))
}

/// Checks `keep-table` (a filter's) or `table-topic` (a topic namer's) against its signature.
fn check_by_table_signature(
    store: &Store<StoreState>,
    func: &Func,
    role: Role,
) -> wasmtime::Result<()> {
    type Table = (&'static str, &'static RelationView<'static>);
    match role {
        Role::Filter => func.typed::<Table, (Option<bool>,)>(store).map(drop),
        _ => func.typed::<Table, (Option<String>,)>(store).map(drop),
    }
}

/// Arms the deadline (and fuel) for the next call.
fn prepare_call(store: &mut Store<StoreState>, limits: &Limits) {
    let ticks = limits
        .timeout_ms
        .div_ceil(EPOCH_TICK.as_millis() as u64)
        .max(1)
        + 1;
    store.set_epoch_deadline(ticks);
    store.data_mut().limiter.hit = false;
    if let Some(fuel) = limits.fuel
        && let Err(e) = store.set_fuel(fuel)
    {
        tracing::error!(error = %e, "cannot set plugin fuel");
    }
}

/// Turns a wasmtime error from a call into the typed error the chain acts on.
fn classify(store: &Store<StoreState>, spec: &PluginSpec, e: wasmtime::Error) -> PluginError {
    let plugin = spec.name.to_string();
    if store.data().limiter.hit || e.downcast_ref::<MemoryCapExceeded>().is_some() {
        return PluginError::OutOfMemory {
            plugin,
            limit_mb: spec.limits.memory_mb,
        };
    }
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => PluginError::Timeout {
            plugin,
            timeout_ms: spec.limits.timeout_ms,
        },
        Some(Trap::OutOfFuel) => PluginError::OutOfFuel {
            plugin,
            fuel: spec.limits.fuel.unwrap_or(0),
        },
        _ => {
            // The trap itself first (e.g. "wasm `unreachable` instruction executed"), then the
            // guest backtrace, cut to a readable length.
            let mut message = e.root_cause().to_string();
            if let Some(trace) = e.downcast_ref::<wasmtime::WasmBacktrace>() {
                let trace = trace.to_string();
                message.push_str(" (");
                message.push_str(&trace.split_whitespace().collect::<Vec<_>>().join(" "));
                message.push(')');
            }
            if message.len() > 600 {
                let mut cut = 600;
                while !message.is_char_boundary(cut) {
                    cut -= 1;
                }
                message.truncate(cut);
                message.push('…');
            }
            PluginError::Trap { plugin, message }
        }
    }
}
