//! Typed plugin errors, split by what the caller should do: a [`LoadError`] means the plugin
//! cannot be used at all (fix the file or its config), a [`PluginError`] is one failed call that
//! the chain's `on_error` policy decides about.

use std::path::PathBuf;

/// Why a plugin file could not be loaded. Each message names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file cannot be read (unknown path, permissions).
    #[error("plugin {path}: cannot read the file ({source}); check the path")]
    Read {
        /// The plugin file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a WebAssembly component.
    #[error(
        "plugin {path} is not a WebAssembly component ({detail}); build it for wasm32-wasip2 (see scripts/build-plugins)"
    )]
    NotAComponent {
        /// The plugin file.
        path: PathBuf,
        /// What the compiler said.
        detail: String,
    },
    /// The component exports none of walflow's role interfaces.
    #[error(
        "plugin {path} targets none of walflow's worlds (filter, transform, topic-namer, sink); it exports {exports}"
    )]
    WrongWorld {
        /// The plugin file.
        path: PathBuf,
        /// What it does export.
        exports: String,
    },
    /// The component targets another version of the plugin ABI.
    #[error(
        "plugin {path} was built for {found} but this walflow speaks walflow:plugin@{expected}; rebuild it against wit/walflow-plugin.wit"
    )]
    WrongVersion {
        /// The plugin file.
        path: PathBuf,
        /// The interface it exports.
        found: String,
        /// The versions this host implements.
        expected: &'static str,
    },
    /// The component has a role's export but with the wrong shape, or imports something the
    /// sandbox does not provide.
    #[error("plugin {path} cannot be linked: {detail}")]
    Link {
        /// The plugin file.
        path: PathBuf,
        /// The linker's message.
        detail: String,
    },
    /// The configuration given to the plugin is not valid JSON.
    #[error("plugin {path}: its config is not valid JSON ({detail})")]
    BadConfig {
        /// The plugin file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// The plugin's `init` rejected its configuration or failed.
    #[error("plugin {path}: init failed: {error}")]
    Init {
        /// The plugin file.
        path: PathBuf,
        /// The failure.
        error: PluginError,
    },
    /// The new version failed a call on an empty batch.
    #[error("plugin {path}: a trial call on an empty batch failed: {error}")]
    Smoke {
        /// The plugin file.
        path: PathBuf,
        /// The failure.
        error: PluginError,
    },
    /// The plugin was loaded for one role but the file now has another.
    #[error("plugin {path} is now a {found} but it was configured as a {expected}")]
    RoleChanged {
        /// The plugin file.
        path: PathBuf,
        /// The role it had.
        expected: &'static str,
        /// The role it has now.
        found: &'static str,
    },
    /// The engine could not be set up (not the plugin's fault).
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
}

/// One failed call into a plugin. `Trap`, `Timeout`, `OutOfMemory` and `OutOfFuel` poison the
/// instance (the host rebuilds it); `Failed` and `BadOutput` leave it usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    /// The guest trapped (a panic, `unreachable`, an out-of-bounds access, …).
    #[error("plugin {plugin} trapped: {message}")]
    Trap {
        /// Plugin name.
        plugin: String,
        /// The trap and its backtrace, in one line.
        message: String,
    },
    /// The call ran past its deadline.
    #[error("plugin {plugin} ran past its {timeout_ms} ms deadline")]
    Timeout {
        /// Plugin name.
        plugin: String,
        /// The deadline.
        timeout_ms: u64,
    },
    /// The guest tried to grow its memory past the cap.
    #[error("plugin {plugin} hit its memory cap of {limit_mb} MiB")]
    OutOfMemory {
        /// Plugin name.
        plugin: String,
        /// The cap.
        limit_mb: u64,
    },
    /// The call used up its fuel.
    #[error("plugin {plugin} ran out of fuel ({fuel} per call)")]
    OutOfFuel {
        /// Plugin name.
        plugin: String,
        /// Fuel per call.
        fuel: u64,
    },
    /// The plugin returned an error.
    #[error("plugin {plugin} failed: {message}")]
    Failed {
        /// Plugin name.
        plugin: String,
        /// The plugin's message.
        message: String,
    },
    /// The plugin answered with something that does not fit its batch (wrong length, an index
    /// out of range).
    #[error("plugin {plugin} returned a malformed answer: {message}")]
    BadOutput {
        /// Plugin name.
        plugin: String,
        /// What was wrong.
        message: String,
    },
}

impl PluginError {
    /// Whether the instance must be thrown away and rebuilt before the next call.
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            PluginError::Trap { .. }
                | PluginError::Timeout { .. }
                | PluginError::OutOfMemory { .. }
                | PluginError::OutOfFuel { .. }
        )
    }

    /// The plugin this error came from.
    pub fn plugin(&self) -> &str {
        match self {
            PluginError::Trap { plugin, .. }
            | PluginError::Timeout { plugin, .. }
            | PluginError::OutOfMemory { plugin, .. }
            | PluginError::OutOfFuel { plugin, .. }
            | PluginError::Failed { plugin, .. }
            | PluginError::BadOutput { plugin, .. } => plugin,
        }
    }
}
