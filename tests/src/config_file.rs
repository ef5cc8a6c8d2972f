//! `walflow.toml` files for a test database, written into a temporary directory.
//!
//! Tests describe only what differs from a working default (superuser over plain TCP, a slot
//! and publication named after the database, state in the temp dir), so each test reads as the
//! configuration it is about.

use std::path::{Path, PathBuf};

use crate::cluster::{PASSWORD_ENV, TestDb, TestUser};

/// Builds a `walflow.toml`.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    host: String,
    port: u16,
    database: String,
    user: TestUser,
    login: Option<String>,
    sslmode: String,
    sslrootcert: Option<PathBuf>,
    slot: String,
    publication: String,
    source_lines: Vec<String>,
    root_lines: Vec<String>,
    tail: String,
    /// More `host:port`s of a multi-host URL, and its query string.
    more_hosts: Vec<(String, u16)>,
    url_query: Option<String>,
}

/// A TOML basic string literal for `s`.
pub fn toml_string(s: &str) -> String {
    // A JSON string literal is a valid TOML basic string.
    serde_json::to_string(s).expect("strings serialize")
}

impl ConfigBuilder {
    pub(crate) fn new(db: &TestDb) -> ConfigBuilder {
        ConfigBuilder {
            host: db.cluster().host().to_string(),
            port: db.cluster().port(),
            database: db.name().to_string(),
            user: TestUser::Superuser,
            login: None,
            sslmode: "disable".into(),
            sslrootcert: None,
            slot: format!("{}_slot", db.name()),
            publication: format!("{}_pub", db.name()),
            source_lines: Vec::new(),
            root_lines: Vec::new(),
            tail: String::new(),
            more_hosts: Vec::new(),
            url_query: None,
        }
    }

    /// Lists `host:port` after the database's own in a multi-host URL (a standby to fail
    /// over to).
    pub fn also_host(mut self, host: &str, port: u16) -> Self {
        self.more_hosts.push((host.to_string(), port));
        self
    }

    /// Adds `query` (e.g. `target_session_attrs=read-write`) to the URL.
    pub fn url_query(mut self, query: &str) -> Self {
        self.url_query = Some(query.to_string());
        self
    }

    /// Connects as `user` (its password comes from [`PASSWORD_ENV`]).
    pub fn user(mut self, user: TestUser) -> Self {
        self.user = user;
        self
    }

    /// Connects as a role the test created itself, with [`crate::TEST_PASSWORD`] as its
    /// password (pg_hba lets any role in by md5 from loopback).
    pub fn login(mut self, role: &str) -> Self {
        self.login = Some(role.to_string());
        self
    }

    /// Connects to `host` instead of 127.0.0.1 (e.g. `localhost`, or
    /// [`crate::cluster::WRONG_HOST`]).
    pub fn host(mut self, host: &str) -> Self {
        self.host = host.to_string();
        self
    }

    /// Connects to `port` instead of the database's server's (e.g. its standby).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Connects to database `name` instead of the test's own (e.g. one that does not exist).
    pub fn database(mut self, name: &str) -> Self {
        self.database = name.to_string();
        self
    }

    /// `sslmode`, e.g. `verify-full`.
    pub fn sslmode(mut self, mode: &str) -> Self {
        self.sslmode = mode.to_string();
        self
    }

    /// `sslrootcert`.
    pub fn sslrootcert(mut self, path: &Path) -> Self {
        self.sslrootcert = Some(path.to_owned());
        self
    }

    /// The slot name.
    pub fn slot(mut self, slot: &str) -> Self {
        self.slot = slot.to_string();
        self
    }

    /// The publication name.
    pub fn publication(mut self, publication: &str) -> Self {
        self.publication = publication.to_string();
        self
    }

    /// Adds a raw `key = value` line to `[source]`.
    pub fn source(mut self, line: &str) -> Self {
        self.source_lines.push(line.to_string());
        self
    }

    /// Adds a raw top-level `key = value` line (before `[source]`), e.g. `envelope = "debezium"`.
    pub fn root(mut self, line: &str) -> Self {
        self.root_lines.push(line.to_string());
        self
    }

    /// Appends raw TOML after `[source]` and `[state]` (sinks, plugins, …).
    pub fn append(mut self, toml: &str) -> Self {
        self.tail.push_str(toml);
        self.tail.push('\n');
        self
    }

    /// The slot name this config uses.
    pub fn slot_name(&self) -> &str {
        &self.slot
    }

    /// The publication name this config uses.
    pub fn publication_name(&self) -> &str {
        &self.publication
    }

    /// The config text, with `[state] dir` = `state_dir`.
    pub fn to_toml(&self, state_dir: &Path) -> String {
        let user = self.login.as_deref().unwrap_or(self.user.name());
        let mut hosts = format!("{}:{}", self.host, self.port);
        for (host, port) in &self.more_hosts {
            hosts.push_str(&format!(",{host}:{port}"));
        }
        let mut url = format!("postgres://{user}@{hosts}/{}", self.database);
        if let Some(query) = &self.url_query {
            url.push('?');
            url.push_str(query);
        }
        let mut text = String::new();
        for line in &self.root_lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str("[source]\n");
        text.push_str(&format!("url = {}\n", toml_string(&url)));
        if self.login.is_some() || self.user.password().is_some() {
            text.push_str(&format!("password_env = {}\n", toml_string(PASSWORD_ENV)));
        }
        text.push_str(&format!("sslmode = {}\n", toml_string(&self.sslmode)));
        if let Some(cert) = &self.sslrootcert {
            text.push_str(&format!(
                "sslrootcert = {}\n",
                toml_string(&cert.to_string_lossy())
            ));
        }
        text.push_str(&format!("slot = {}\n", toml_string(&self.slot)));
        text.push_str(&format!(
            "publication = {}\n",
            toml_string(&self.publication)
        ));
        for line in &self.source_lines {
            text.push_str(line);
            text.push('\n');
        }
        text.push_str(&format!(
            "\n[state]\ndir = {}\n\n",
            toml_string(&state_dir.to_string_lossy())
        ));
        text.push_str(&self.tail);
        text
    }

    /// Writes `walflow.toml` into a new temporary directory (state in `state/` beside it).
    pub fn write(&self) -> anyhow::Result<ConfigFile> {
        self.write_as("walflow.toml", |toml| Ok(toml.to_owned()))
    }

    /// The same configuration as `walflow.json` (the same keys, in JSON).
    pub fn write_json(&self) -> anyhow::Result<ConfigFile> {
        self.write_as("walflow.json", |text| {
            let value: toml::Value = toml::from_str(text)?;
            Ok(serde_json::to_string_pretty(&value)?)
        })
    }

    fn write_as(
        &self,
        name: &str,
        render: impl FnOnce(&str) -> anyhow::Result<String>,
    ) -> anyhow::Result<ConfigFile> {
        let dir = tempfile::Builder::new()
            .prefix("walflow-config-")
            .tempdir()?;
        let path = dir.path().join(name);
        std::fs::write(&path, render(&self.to_toml(&dir.path().join("state")))?)?;
        Ok(ConfigFile { dir, path })
    }
}

/// A written config; the directory is removed when this is dropped.
#[derive(Debug)]
pub struct ConfigFile {
    dir: tempfile::TempDir,
    /// The `walflow.toml` (or `walflow.json`).
    pub path: PathBuf,
}

impl ConfigFile {
    /// The directory holding the config (and `state/`); put other test files here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file's text.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }
}
