//! The shared wasmtime engine: component model on, epoch interruption driven by one ticker
//! thread, and an on-disk cache of compiled components keyed by content hash.
//!
//! Fuel metering slows every instruction, so it lives in a second engine created only when some
//! plugin asks for fuel; both engines share the ticker.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, EngineWeak};

use super::error::LoadError;

/// How often the epoch advances; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engines plugins run on, plus where compiled components are cached. Cheap to clone.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    plain: Engine,
    fueled: OnceLock<Engine>,
    cache_dir: Option<PathBuf>,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine")
            .field("cache_dir", &self.inner.cache_dir)
            .finish_non_exhaustive()
    }
}

impl PluginEngine {
    /// The process-wide engine, caching compiled components under [`default_cache_dir`].
    pub fn shared() -> Result<PluginEngine, LoadError> {
        static SHARED: OnceLock<PluginEngine> = OnceLock::new();
        if let Some(engine) = SHARED.get() {
            return Ok(engine.clone());
        }
        let engine = PluginEngine::new(default_cache_dir())?;
        Ok(SHARED.get_or_init(|| engine).clone())
    }

    /// A new engine; compiled components are cached in `cache_dir` when given.
    pub fn new(cache_dir: Option<PathBuf>) -> Result<PluginEngine, LoadError> {
        let plain = build_engine(false)?;
        start_ticker(plain.weak());
        Ok(PluginEngine {
            inner: Arc::new(EngineInner {
                plain,
                fueled: OnceLock::new(),
                cache_dir,
            }),
        })
    }

    /// The engine for plugins with (`true`) or without fuel metering.
    pub fn engine(&self, fuel: bool) -> Result<&Engine, LoadError> {
        if !fuel {
            return Ok(&self.inner.plain);
        }
        if let Some(engine) = self.inner.fueled.get() {
            return Ok(engine);
        }
        let engine = build_engine(true)?;
        let engine = self.inner.fueled.get_or_init(|| engine);
        start_ticker(engine.weak());
        Ok(engine)
    }

    /// Compiles `bytes` (read from `path`, SHA-256 `digest`) into a component, reusing a cached
    /// compilation when one exists for the same bytes and engine settings.
    pub fn compile(
        &self,
        path: &Path,
        bytes: &[u8],
        digest: &[u8; 32],
        fuel: bool,
    ) -> Result<Component, LoadError> {
        let engine = self.engine(fuel)?;
        let cached = self.cache_path(engine, digest);
        if let Some(file) = &cached
            && file.exists()
        {
            // SAFETY: the file was written by `Component::serialize` of an engine with the same
            // compatibility hash (part of the file name), into a cache directory we own.
            match unsafe { Component::deserialize_file(engine, file) } {
                Ok(component) => return Ok(component),
                Err(e) => {
                    tracing::debug!(file = %file.display(), error = %e, "ignoring unusable cached component")
                }
            }
        }
        let component = Component::new(engine, bytes).map_err(|e| LoadError::NotAComponent {
            path: path.to_owned(),
            detail: one_line(&e),
        })?;
        if let Some(file) = cached {
            store_in_cache(&component, &file);
        }
        Ok(component)
    }

    fn cache_path(&self, engine: &Engine, digest: &[u8; 32]) -> Option<PathBuf> {
        let dir = self.inner.cache_dir.as_ref()?;
        let mut settings = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut settings);
        Some(dir.join(format!(
            "{}-{:016x}.cwasm",
            hex::encode(&digest[..16]),
            settings.finish()
        )))
    }
}

/// `$WALFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/walflow/components`, else
/// `$HOME/.cache/walflow/components`; `None` when none of them is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WALFLOW_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("walflow").join("components"))
}

fn build_engine(fuel: bool) -> Result<Engine, LoadError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    config.consume_fuel(fuel);
    // For `perf`: name guest functions in /tmp/perf-PID.map (plugins built without `strip`).
    if std::env::var_os("WALFLOW_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&config).map_err(|e| LoadError::Engine(one_line(&e)))
}

/// Advances the epoch every [`EPOCH_TICK`] for as long as the engine lives; holds only a weak
/// handle so it never keeps an engine alive.
fn start_ticker(engine: EngineWeak) {
    let spawned = std::thread::Builder::new()
        .name("walflow-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match engine.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the epoch ticker; plugin deadlines will not fire");
    }
}

/// Writes the compiled component next to its final name and renames it, so a reader never sees
/// half a file. A failure only costs the next start a recompile.
fn store_in_cache(component: &Component, file: &Path) {
    let write = || -> std::io::Result<()> {
        let dir = file.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let bytes = component.serialize().map_err(std::io::Error::other)?;
        let tmp = tempfile_in(dir);
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        tracing::debug!(file = %file.display(), error = %e, "cannot cache compiled component");
    }
}

fn tempfile_in(dir: &Path) -> PathBuf {
    dir.join(format!(
        ".tmp-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ))
}

/// Folds an error chain into one line.
pub(crate) fn one_line(e: &wasmtime::Error) -> String {
    let text = format!("{e:#}");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
