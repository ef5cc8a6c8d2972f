//! `serve.toml`: where the service listens, where pipelines come from, and its tenants.
//!
//! ```toml
//! listen = "127.0.0.1:8080"
//! pipelines_dir = "pipelines"      # <tenant>/<pipeline>.toml (or .json), watched
//! state_dir = "state"              # <tenant>/<pipeline>/ per pipeline
//! admin_token_env = "WALFLOW_ADMIN_TOKEN"
//!
//! [[tenants]]
//! name = "acme"
//! token_env = "ACME_TOKEN"
//! max_pipelines = 10
//! ```
//!
//! Tokens are secrets: they come from the environment (`token_env`) or the file (`token`), are
//! kept only as SHA-256 digests once read, and never appear in a message.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use walflow_config::TextDuration;

/// The service's configuration, as read from `serve.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeFile {
    /// Address of the control API and status page.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A directory of `<tenant>/<pipeline>.toml` (or `.json`) files, watched for changes.
    #[serde(default)]
    pub pipelines_dir: Option<PathBuf>,
    /// Where each pipeline keeps its checkpoint: `<state_dir>/<tenant>/<pipeline>`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// How often the pipelines directory is looked at.
    #[serde(default = "default_scan_interval")]
    pub scan_interval: TextDuration,
    /// The admin token (sees and changes every tenant's pipelines), inline.
    #[serde(default)]
    pub admin_token: Option<String>,
    /// The environment variable holding the admin token.
    #[serde(default)]
    pub admin_token_env: Option<String>,
    /// The tenants.
    #[serde(default)]
    pub tenants: Vec<TenantFile>,
}

/// One `[[tenants]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantFile {
    /// The tenant's name: lowercase letters, digits, `-` and `_`.
    pub name: String,
    /// Its API token, inline.
    #[serde(default)]
    pub token: Option<String>,
    /// The environment variable holding its API token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Most pipelines it may run (unbounded when omitted).
    #[serde(default)]
    pub max_pipelines: Option<usize>,
    /// Most linear memory its plugins may hold, in MiB, summed over every plugin instance of
    /// every pipeline (each instance's `memory_mb` cap counts in full).
    #[serde(default)]
    pub plugin_memory_mb: Option<u64>,
    /// Most event data its pipelines may hold, in MiB: the sum of their `[memory] budget_mb`.
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Plugin time its pipelines may use, in milliseconds per second (1000 = one core); over
    /// it, they wait.
    #[serde(default)]
    pub plugin_cpu_ms_per_s: Option<u64>,
    /// The hosts (`host` or `host:port`) its sink plugins may be allowed to reach; none when
    /// omitted.
    #[serde(default)]
    pub allow_hosts: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

fn default_scan_interval() -> TextDuration {
    TextDuration(Duration::from_secs(2))
}

/// A token as the service keeps it: its digest, compared without early exit.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// The digest of `token`.
    pub fn of(token: &str) -> TokenDigest {
        TokenDigest(Sha256::digest(token.as_bytes()).into())
    }

    /// Whether `self` and `other` are the same token, in time independent of where they differ.
    pub fn matches(&self, other: &TokenDigest) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(***)")
    }
}

/// A tenant, ready to serve.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Its name.
    pub name: String,
    /// Its token's digest.
    pub token: TokenDigest,
    /// Most pipelines it may run.
    pub max_pipelines: Option<usize>,
    /// Most plugin memory over all its pipelines, MiB.
    pub plugin_memory_mb: Option<u64>,
    /// Most event memory over all its pipelines (`[memory] budget_mb` summed), MiB.
    pub memory_mb: Option<u64>,
    /// Plugin time over all its pipelines, milliseconds per second.
    pub plugin_cpu_ms_per_s: Option<u64>,
    /// The hosts its sink plugins may reach (lowercase).
    pub allow_hosts: Vec<String>,
}

/// The service's configuration, checked, with paths resolved and tokens read.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address of the control API.
    pub listen: String,
    /// The watched directory of pipeline files.
    pub pipelines_dir: Option<PathBuf>,
    /// The root of the pipelines' state directories.
    pub state_dir: PathBuf,
    /// How often the pipelines directory is looked at.
    pub scan_interval: Duration,
    /// The admin token's digest.
    pub admin: Option<TokenDigest>,
    /// The tenants, by name.
    pub tenants: Vec<Tenant>,
}

impl ServeConfig {
    /// Reads and checks `path`; relative paths in it start at its directory.
    pub fn load(path: &Path) -> anyhow::Result<ServeConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e}; pass the service's config with -c",
                path.display()
            )
        })?;
        let file: ServeFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        ServeConfig::from_file(file, base, |var| std::env::var(var).ok())
    }

    /// Checks `file`, resolving paths against `base` and reading `*_env` tokens with `env`.
    pub fn from_file(
        file: ServeFile,
        base: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<ServeConfig> {
        let admin = token("admin_token", file.admin_token, file.admin_token_env, &env)?;
        let mut names = BTreeSet::new();
        let mut tenants = Vec::with_capacity(file.tenants.len());
        for t in file.tenants {
            check_name("tenant", &t.name)?;
            if !names.insert(t.name.clone()) {
                anyhow::bail!("tenant `{}` is listed twice in [[tenants]]", t.name);
            }
            for (key, zero) in [
                ("max_pipelines", t.max_pipelines == Some(0)),
                ("plugin_memory_mb", t.plugin_memory_mb == Some(0)),
                ("memory_mb", t.memory_mb == Some(0)),
                ("plugin_cpu_ms_per_s", t.plugin_cpu_ms_per_s == Some(0)),
            ] {
                if zero {
                    anyhow::bail!(
                        "tenant `{}` has {key} = 0; give it more, or leave the key out for no limit",
                        t.name
                    );
                }
            }
            let what = format!("tenant `{}`", t.name);
            let Some(token) = token(&what, t.token, t.token_env, &env)? else {
                anyhow::bail!(
                    "{what} has no token; set token_env (or token) in its [[tenants]] entry"
                );
            };
            tenants.push(Tenant {
                name: t.name,
                token,
                max_pipelines: t.max_pipelines,
                plugin_memory_mb: t.plugin_memory_mb,
                memory_mb: t.memory_mb,
                plugin_cpu_ms_per_s: t.plugin_cpu_ms_per_s,
                allow_hosts: t
                    .allow_hosts
                    .iter()
                    .map(|h| h.to_ascii_lowercase())
                    .collect(),
            });
        }
        if tenants.is_empty() {
            anyhow::bail!(
                "serve.toml has no [[tenants]]; every pipeline belongs to one, so add one"
            );
        }
        Ok(ServeConfig {
            listen: file.listen,
            pipelines_dir: file.pipelines_dir.map(|d| base.join(d)),
            state_dir: base.join(file.state_dir),
            scan_interval: file.scan_interval.0.max(Duration::from_millis(100)),
            admin,
            tenants,
        })
    }

    /// The tenant called `name`.
    pub fn tenant(&self, name: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.name == name)
    }
}

/// A token given inline or through an environment variable (not both), as its digest.
fn token(
    what: &str,
    inline: Option<String>,
    var: Option<String>,
    env: &impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Option<TokenDigest>> {
    let value = match (inline, var) {
        (Some(_), Some(_)) => anyhow::bail!("{what}: give the token inline or by _env, not both"),
        (Some(t), None) => t,
        (None, Some(var)) => env(&var).ok_or_else(|| {
            anyhow::anyhow!("{what}: the environment variable {var} is not set; export it")
        })?,
        (None, None) => return Ok(None),
    };
    if value.len() < 16 {
        anyhow::bail!("{what}: the token is shorter than 16 characters; use a long random one");
    }
    Ok(Some(TokenDigest::of(&value)))
}

/// Tenant and pipeline names become directory names and URL segments.
pub fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok {
        anyhow::bail!(
            "{what} name `{name}` is not allowed; use 1 to 63 lowercase letters, digits, `-` or `_`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<ServeConfig> {
        let file: ServeFile = toml::from_str(text)?;
        ServeConfig::from_file(file, Path::new("/srv"), |v| {
            (v == "ACME").then(|| "acme-token-0123456789".to_string())
        })
    }

    #[test]
    fn tenants_read_their_tokens_and_paths_start_at_the_file() {
        let c = parse(
            "pipelines_dir = \"p\"\n[[tenants]]\nname = \"acme\"\ntoken_env = \"ACME\"\nmax_pipelines = 2\n",
        )
        .unwrap();
        assert_eq!(c.pipelines_dir.as_deref(), Some(Path::new("/srv/p")));
        assert_eq!(c.state_dir, Path::new("/srv/state"));
        let acme = c.tenant("acme").unwrap();
        assert!(
            acme.token
                .matches(&TokenDigest::of("acme-token-0123456789"))
        );
        assert!(!acme.token.matches(&TokenDigest::of("acme-token-012345678")));
        assert!(
            !format!("{c:?}").contains("acme-token"),
            "a token in Debug output"
        );
    }

    #[test]
    fn bad_tenants_are_refused_with_what_to_do() {
        let refused = |text: &str| parse(text).unwrap_err().to_string();
        assert!(refused("").contains("no [[tenants]]"));
        assert!(
            refused("[[tenants]]\nname = \"Acme\"\ntoken_env = \"ACME\"").contains("lowercase")
        );
        assert!(refused("[[tenants]]\nname = \"a\"\ntoken = \"short\"").contains("16 characters"));
        assert!(
            refused("[[tenants]]\nname = \"a\"\ntoken_env = \"NOPE\"").contains("NOPE is not set")
        );
        assert!(refused("[[tenants]]\nname = \"a\"").contains("has no token"));
        assert!(
            refused("[[tenants]]\nname = \"a\"\ntoken_env = \"ACME\"\nmax_pipelines = 0")
                .contains("max_pipelines = 0")
        );
        assert!(
            refused("[[tenants]]\nname = \"a\"\ntoken_env = \"ACME\"\nplugin_memory_mb = 0")
                .contains("plugin_memory_mb = 0")
        );
        assert!(
            refused("[[tenants]]\nname = \"a\"\ntoken_env = \"ACME\"\n[[tenants]]\nname = \"a\"\ntoken_env = \"ACME\"")
                .contains("listed twice")
        );
        assert!(refused("listen_on = 1").contains("listen_on"));
    }
}
