//! Hot reload: when a plugin file changes, load the new version next to the old one and swap it
//! in at a batch boundary.
//!
//! A watcher thread (never the async runtime) collects file events, waits until they have been
//! quiet for [`DEBOUNCE`], then for each changed plugin: compiles the file, checks it still has
//! its role, instantiates it and calls `init`, runs a smoke call on an empty batch, and only then
//! replaces the slot's `Arc`. The chain picks the slot's version when a batch starts, so a batch
//! runs wholly on one version. Any failure leaves the old version serving, logs one line and is
//! counted in [`PluginSlot::reload_failures`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use super::chain::PluginSlot;
use super::engine::PluginEngine;
use super::error::LoadError;
use super::instance::{LoadedPlugin, PluginInstance, Role};

/// How long file events must be quiet before a reload starts.
pub const DEBOUNCE: Duration = Duration::from_millis(200);

/// Why the watcher could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch plugin directory {dir}: {message}")]
pub struct WatchError {
    /// The directory.
    pub dir: PathBuf,
    /// The watcher's message.
    pub message: String,
}

/// Watches plugin files while it lives.
pub struct Reloader {
    watcher: Option<RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader").finish_non_exhaustive()
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        // Dropping the watcher closes the channel, which ends the thread.
        self.watcher.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Reloader {
    /// Starts watching the files of `slots` (their directories, so that replacing a file by
    /// renaming a new one over it is seen).
    pub fn watch(
        engine: PluginEngine,
        slots: Vec<Arc<PluginSlot>>,
    ) -> Result<Reloader, WatchError> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                // Reading a file (ours included, when we load it) is not a change.
                let Ok(event) = event else { return };
                if !event.kind.is_access() && !event.kind.is_other() {
                    for path in event.paths {
                        let _ = tx.send(path);
                    }
                }
            })
            .map_err(|e| WatchError {
                dir: PathBuf::new(),
                message: e.to_string(),
            })?;
        let mut watched = HashSet::new();
        let mut targets = Vec::with_capacity(slots.len());
        for slot in slots {
            let file = identity(&slot.spec().path);
            let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
            if watched.insert(dir.clone()) {
                watcher
                    .watch(&dir, RecursiveMode::NonRecursive)
                    .map_err(|e| WatchError {
                        dir: dir.clone(),
                        message: e.to_string(),
                    })?;
            }
            targets.push((file, slot));
        }
        let thread = std::thread::Builder::new()
            .name("walflow-reload".into())
            .spawn(move || watch_loop(&engine, &rx, &targets))
            .map_err(|e| WatchError {
                dir: PathBuf::new(),
                message: e.to_string(),
            })?;
        Ok(Reloader {
            watcher: Some(watcher),
            thread: Some(thread),
        })
    }
}

/// A path with its directory resolved, so that events name files the same way the config does.
fn identity(path: &Path) -> PathBuf {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    match path.file_name() {
        Some(name) => dir.join(name),
        None => dir,
    }
}

fn watch_loop(
    engine: &PluginEngine,
    rx: &mpsc::Receiver<PathBuf>,
    targets: &[(PathBuf, Arc<PluginSlot>)],
) {
    let is_target = |path: &PathBuf| targets.iter().any(|(file, _)| file == path);
    while let Ok(first) = rx.recv() {
        let first = identity(&first);
        if !is_target(&first) {
            // Other files in the plugin's directory (a sink's output, the state directory)
            // change all the time; they must neither trigger nor delay a reload.
            continue;
        }
        let mut changed = HashSet::from([first]);
        let mut last_change = std::time::Instant::now();
        loop {
            let quiet_left = DEBOUNCE.saturating_sub(last_change.elapsed());
            if quiet_left.is_zero() {
                break;
            }
            match rx.recv_timeout(quiet_left) {
                Ok(path) => {
                    let path = identity(&path);
                    if is_target(&path) {
                        changed.insert(path);
                        last_change = std::time::Instant::now();
                    }
                }
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        for (file, slot) in targets {
            if changed.contains(file) {
                reload(engine, slot);
            }
        }
    }
}

/// Reloads one plugin now, logging and counting the outcome; `true` when a new version was
/// swapped in.
pub fn reload(engine: &PluginEngine, slot: &PluginSlot) -> bool {
    let name = &slot.spec().name;
    match prepare(engine, slot) {
        Ok(None) => {
            tracing::debug!(plugin = %name, "plugin file unchanged, nothing to reload");
            false
        }
        Ok(Some(loaded)) => {
            slot.swap(loaded);
            tracing::info!(plugin = %name, version = slot.version(), "reloaded plugin");
            true
        }
        Err(e) => {
            slot.count_failure();
            tracing::error!(plugin = %name, "reload failed, the previous version keeps serving: {e}");
            false
        }
    }
}

/// Loads, checks, initialises and smoke-tests the new version; `None` when the file's bytes
/// did not change.
fn prepare(
    engine: &PluginEngine,
    slot: &PluginSlot,
) -> Result<Option<Arc<LoadedPlugin>>, LoadError> {
    let current = slot.current();
    let spec = slot.spec();
    let loaded = LoadedPlugin::load(engine, spec)?;
    if loaded.digest() == current.digest() {
        return Ok(None);
    }
    if loaded.role() != current.role() {
        return Err(LoadError::RoleChanged {
            path: spec.path.clone(),
            expected: current.role().world(),
            found: loaded.role().world(),
        });
    }
    let loaded = Arc::new(loaded);
    let mut instance = PluginInstance::new(loaded.clone())?;
    let smoke = match loaded.role() {
        Role::Filter => instance.filter(&[]).map(drop),
        Role::Transform => instance.transform(&[]).map(drop),
        Role::TopicNamer => instance.name_topics(&[]).map(drop),
        Role::Sink => instance.write_events(&[], &[]),
    };
    smoke.map_err(|error| LoadError::Smoke {
        path: spec.path.clone(),
        error,
    })?;
    Ok(Some(loaded))
}
