//! `walflow setup-sql`: the seed's manual setup (user and role, grants, publication, slot,
//! signal and heartbeat tables) as one psql script tailored to a `walflow.toml`.
//!
//! The script is meant to be read, then run once by an administrator:
//! `psql -v ON_ERROR_STOP=1 -v walflow_password=… -f setup.sql`. The only placeholder is the
//! password, a psql variable, so a forgotten substitution fails loudly instead of creating a
//! user with a literal placeholder password. Everything else comes from the config, with every
//! identifier quoted. Table patterns with wildcards cannot be expanded offline, so they become a
//! `DO` block that expands them in the database when the script runs.

use std::fmt::Write as _;

use crate::options::ConnectOptions;
use crate::sql::{ident, literal, qualified};
use walflow_config::tables::TableSelector;
use walflow_config::{Config, PublicationAutocreate};

/// Why no script can be made from the config.
#[derive(Debug, thiserror::Error)]
pub enum SetupSqlError {
    /// `[source] url` does not parse.
    #[error("{0}")]
    Url(String),
    /// A table pattern or the signal table is not `schema.table`.
    #[error("{0}")]
    TableName(String),
    /// `tables_csv` cannot be read.
    #[error("{0}")]
    TablesCsv(#[from] walflow_config::tables::TablesCsvError),
}

/// Which platform the script is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Self-managed PostgreSQL: the REPLICATION attribute.
    SelfManaged,
    /// Amazon RDS / Aurora: the `rds_replication` role.
    Rds,
}

/// The name of the psql variable holding the new user's password.
pub const PASSWORD_VARIABLE: &str = "walflow_password";

/// A word for a POSIX shell, single-quoted (for the psql command line in the header).
fn shell_word(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

/// A configured table pattern, by how the script can handle it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `schema.table`, no wildcards.
    Table(String, String),
    /// `schema.*`: the whole schema.
    Schema(String),
    /// Anything else with `*`/`?`, kept as the SQL LIKE pattern for `schema.table`.
    Like(String),
}

fn has_wildcard(s: &str) -> bool {
    s.contains('*') || s.contains('?')
}

fn parse_pattern(pattern: &str) -> Result<Pattern, SetupSqlError> {
    match pattern.split_once('.') {
        Some((schema, "*")) if !has_wildcard(schema) && !schema.is_empty() => {
            Ok(Pattern::Schema(schema.to_string()))
        }
        Some((schema, table))
            if !has_wildcard(pattern) && !schema.is_empty() && !table.is_empty() =>
        {
            Ok(Pattern::Table(schema.to_string(), table.to_string()))
        }
        _ if has_wildcard(pattern) => Ok(Pattern::Like(glob_to_like(pattern))),
        _ => Err(SetupSqlError::TableName(format!(
            "table `{pattern}` in [source] tables has no schema; write it as schema.table (e.g. public.{pattern})"
        ))),
    }
}

/// `public.order_*` → `public.order\_%` (LIKE's default escape is the backslash).
fn glob_to_like(glob: &str) -> String {
    let mut out = String::new();
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

/// `schema.table` of the signal table.
fn split_table(name: &str, key: &str) -> Result<(String, String), SetupSqlError> {
    match name.split_once('.') {
        Some((s, t)) if !s.is_empty() && !t.is_empty() && !has_wildcard(name) => {
            Ok((s.to_string(), t.to_string()))
        }
        _ => Err(SetupSqlError::TableName(format!(
            "[source] {key} = \"{name}\" must be schema.table (e.g. walflow.walflow_signal)"
        ))),
    }
}

/// The role the grants go to: `walflow_user` → `walflow_role`, `app` → `app_role`.
pub fn role_name(user: &str) -> String {
    match user.strip_suffix("_user") {
        Some(stem) if !stem.is_empty() => format!("{stem}_role"),
        _ => format!("{user}_role"),
    }
}

/// What the script is made from, resolved from the config.
struct Plan {
    user: String,
    role: String,
    database: String,
    addr: String,
    patterns: Vec<Pattern>,
    publication: String,
    slot: String,
    signal: Option<(String, String)>,
    heartbeat: Option<(String, String)>,
    read_only: bool,
    autocreate: PublicationAutocreate,
    password_env: Option<String>,
    platform: Platform,
}

/// Renders the setup script for `config`.
pub fn render(config: &Config, platform: Platform) -> Result<String, SetupSqlError> {
    let plan = plan(config, platform)?;
    let mut out = String::new();
    header(&mut out, &plan);
    out.push_str("BEGIN;\n\n");
    user_and_role(&mut out, &plan);
    table_grants(&mut out, &plan);
    signal_and_heartbeat(&mut out, &plan);
    publication(&mut out, &plan);
    out.push_str("COMMIT;\n\n");
    slot(&mut out, &plan);
    replica_identity(&mut out, &plan);
    Ok(out)
}

fn plan(config: &Config, platform: Platform) -> Result<Plan, SetupSqlError> {
    let source = &config.source;
    // Parse the URL without reading the password (setup-sql never needs it).
    let mut url_only = source.clone();
    url_only.password_env = None;
    let opts =
        ConnectOptions::from_source(&url_only).map_err(|e| SetupSqlError::Url(e.to_string()))?;
    let selector = TableSelector::from_source(source)?;
    let patterns = selector
        .patterns()
        .iter()
        .map(|p| parse_pattern(p))
        .collect::<Result<Vec<_>, _>>()?;
    let signal = source
        .signal_table
        .as_deref()
        .map(|t| split_table(t, "signal_table"))
        .transpose()?;
    let writes_table = source.heartbeat == walflow_config::HeartbeatKind::Table
        && (!source.read_only || source.heartbeat_url.is_some());
    let heartbeat = (source.heartbeat_interval.is_some() && writes_table).then(|| {
        let schema = signal.as_ref().map_or("walflow", |(s, _)| s.as_str());
        (schema.to_string(), "walflow_heartbeat".to_string())
    });
    Ok(Plan {
        role: role_name(&opts.user),
        user: opts.user.clone(),
        database: opts.dbname.clone(),
        addr: opts.addr(),
        patterns,
        publication: source.publication.clone(),
        slot: source.slot.clone(),
        signal,
        heartbeat,
        read_only: source.read_only,
        autocreate: source.publication_autocreate,
        password_env: source.password_env.clone(),
        platform,
    })
}

fn header(out: &mut String, p: &Plan) {
    let platform = match p.platform {
        Platform::SelfManaged => "self-managed PostgreSQL",
        Platform::Rds => "Amazon RDS / Aurora PostgreSQL",
    };
    let _ = writeln!(
        out,
        "-- walflow setup for database {} on {} ({platform}), generated by `walflow setup-sql`.",
        ident(&p.database),
        p.addr
    );
    let _ = writeln!(
        out,
        "-- Run it once as an administrator (superuser; on RDS/Aurora the master user), connected to\n\
         -- that database, with the new user's password in a psql variable:\n\
         --   psql -v ON_ERROR_STOP=1 -v {PASSWORD_VARIABLE}='…' -d {} -f setup.sql",
        shell_word(&p.database)
    );
    if let Some(env) = &p.password_env {
        let _ = writeln!(
            out,
            "-- walflow then reads that password from ${env} (password_env)."
        );
    }
    out.push_str("--\n-- Server parameters (not set by this script; they need a restart):\n");
    match p.platform {
        Platform::SelfManaged => out.push_str(
            "--   ALTER SYSTEM SET wal_level = 'logical';\n\
             --   ALTER SYSTEM SET wal_sender_timeout = 0;  -- or keep it and set heartbeat_interval\n\
             --   max_replication_slots and max_wal_senders need one free slot/sender for walflow.\n",
        ),
        Platform::Rds => out.push_str(
            "--   In a custom DB cluster parameter group: rds.logical_replication = 1 and\n\
             --   wal_sender_timeout = 0 (or enable heartbeat_interval); then reboot the writer.\n\
             --   Connect walflow to the writer (primary): read replicas cannot replicate logically.\n",
        ),
    }
    out.push_str("-- Check the result with `walflow check -c walflow.toml`.\n\n");
}

fn user_and_role(out: &mut String, p: &Plan) {
    let (user, role) = (ident(&p.user), ident(&p.role));
    out.push_str("-- 1. The user walflow logs in as, and a role that holds its privileges.\n");
    let _ = writeln!(out, "CREATE USER {user} PASSWORD :'{PASSWORD_VARIABLE}';");
    let _ = writeln!(out, "CREATE ROLE {role};");
    let _ = writeln!(out, "GRANT {role} TO {user};");
    match p.platform {
        // REPLICATION is an attribute, not inherited through role membership.
        Platform::SelfManaged => {
            let _ = writeln!(out, "ALTER ROLE {user} WITH REPLICATION;");
        }
        Platform::Rds => {
            let _ = writeln!(out, "GRANT rds_replication TO {role};");
        }
    }
    let _ = writeln!(
        out,
        "GRANT CONNECT ON DATABASE {} TO {role};\n",
        ident(&p.database)
    );
}

/// A DO block looping over the tables whose `schema.table` is LIKE any of `likes`.
/// `unless` is an extra SQL condition on `n.nspname`/`c.relname` that skips a table.
fn for_each_matching_table(
    out: &mut String,
    likes: &[String],
    unless: Option<&str>,
    body: &[String],
) {
    let array = likes
        .iter()
        .map(|l| literal(l))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "DO $walflow$\nDECLARE t record;\nBEGIN\n  FOR t IN\n    SELECT n.nspname, c.relname FROM pg_catalog.pg_class c\n      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n     WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition\n       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'\n       AND n.nspname || '.' || c.relname LIKE ANY (ARRAY[{array}])"
    );
    if let Some(condition) = unless {
        let _ = writeln!(out, "       AND NOT ({condition})");
    }
    out.push_str("  LOOP\n");
    for statement in body {
        let _ = writeln!(out, "    EXECUTE {statement};");
    }
    out.push_str("  END LOOP;\nEND\n$walflow$;\n");
}

fn table_grants(out: &mut String, p: &Plan) {
    let role = ident(&p.role);
    out.push_str("-- 2. Read access to the captured tables (for snapshots).\n");
    if p.patterns.is_empty() {
        out.push_str("-- Every table is captured: every non-system schema.\n");
        let _ = writeln!(
            out,
            "DO $walflow$\nDECLARE s name;\nBEGIN\n  FOR s IN SELECT nspname FROM pg_catalog.pg_namespace\n            WHERE nspname NOT IN ('pg_catalog', 'information_schema') AND nspname NOT LIKE 'pg\\_%'\n  LOOP\n    EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', s, {r});\n    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', s, {r});\n    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO %I', s, {r});\n  END LOOP;\nEND\n$walflow$;\n",
            r = literal(&p.role)
        );
        return;
    }
    let mut schemas: Vec<&str> = Vec::new();
    for pattern in &p.patterns {
        let schema = match pattern {
            Pattern::Table(s, _) | Pattern::Schema(s) => s.as_str(),
            Pattern::Like(_) => continue,
        };
        if !schemas.contains(&schema) {
            schemas.push(schema);
        }
    }
    for schema in &schemas {
        let _ = writeln!(out, "GRANT USAGE ON SCHEMA {} TO {role};", ident(schema));
    }
    for pattern in &p.patterns {
        match pattern {
            Pattern::Table(s, t) => {
                let _ = writeln!(out, "GRANT SELECT ON TABLE {} TO {role};", qualified(s, t));
            }
            Pattern::Schema(s) => {
                let _ = writeln!(
                    out,
                    "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {role};\n\
                     -- Tables created later in {s} (by the user running this script):\n\
                     ALTER DEFAULT PRIVILEGES IN SCHEMA {s} GRANT SELECT ON TABLES TO {role};",
                    s = ident(s)
                );
            }
            Pattern::Like(_) => {}
        }
    }
    let likes: Vec<String> = p
        .patterns
        .iter()
        .filter_map(|pat| match pat {
            Pattern::Like(l) => Some(l.clone()),
            _ => None,
        })
        .collect();
    if !likes.is_empty() {
        out.push_str("-- Wildcard patterns, expanded to the tables that exist now:\n");
        let r = literal(&p.role);
        for_each_matching_table(
            out,
            &likes,
            None,
            &[
                format!("format('GRANT USAGE ON SCHEMA %I TO %I', t.nspname, {r})"),
                format!("format('GRANT SELECT ON TABLE %I.%I TO %I', t.nspname, t.relname, {r})"),
            ],
        );
    }
    out.push('\n');
}

fn signal_and_heartbeat(out: &mut String, p: &Plan) {
    let role = ident(&p.role);
    if p.read_only {
        out.push_str(
            "-- 3. read_only = true: walflow writes nothing to this database, so there is no\n\
             --    signal or heartbeat table.\n\n",
        );
        return;
    }
    let Some((schema, table)) = &p.signal else {
        out.push_str(
            "-- 3. No signal_table is configured, so incremental snapshots are requested only with\n\
             --    `walflow snapshot`; set signal_table = \"walflow.walflow_signal\" to create one.\n",
        );
        heartbeat_table(out, p);
        return;
    };
    out.push_str("-- 3. The signal table walflow reads snapshot requests from (id, type, data).\n");
    let _ = writeln!(
        out,
        "CREATE SCHEMA IF NOT EXISTS {s};\n\
         CREATE TABLE IF NOT EXISTS {st} (\n  id VARCHAR(255) PRIMARY KEY,\n  type VARCHAR(32) NOT NULL,\n  data VARCHAR(2000) NULL\n);\n\
         GRANT USAGE ON SCHEMA {s} TO {role};\n\
         GRANT SELECT, INSERT, UPDATE ON TABLE {st} TO {role};",
        s = ident(schema),
        st = qualified(schema, table)
    );
    heartbeat_table(out, p);
}

fn heartbeat_table(out: &mut String, p: &Plan) {
    let Some((schema, table)) = &p.heartbeat else {
        out.push('\n');
        return;
    };
    let role = ident(&p.role);
    out.push_str(
        "-- The heartbeat table: walflow updates its row every heartbeat_interval, so a quiet\n\
         -- database still writes WAL and the slot keeps advancing (the seed's WAL-growth warning).\n",
    );
    let _ = writeln!(
        out,
        "CREATE SCHEMA IF NOT EXISTS {s};\n\
         CREATE TABLE IF NOT EXISTS {ht} (\n  id INT PRIMARY KEY,\n  ts TIMESTAMPTZ NOT NULL DEFAULT now()\n);\n\
         GRANT USAGE ON SCHEMA {s} TO {role};\n\
         GRANT SELECT, INSERT, UPDATE ON TABLE {ht} TO {role};\n",
        s = ident(schema),
        ht = qualified(schema, table)
    );
}

fn publication(out: &mut String, p: &Plan) {
    let name = ident(&p.publication);
    out.push_str("-- 4. The publication: the tables whose changes walflow receives.\n");
    if p.patterns.is_empty() {
        let _ = writeln!(out, "CREATE PUBLICATION {name} FOR ALL TABLES;");
    } else {
        let mut listed: Vec<String> = p
            .patterns
            .iter()
            .filter_map(|pat| match pat {
                Pattern::Table(s, t) => Some(qualified(s, t)),
                _ => None,
            })
            .collect();
        if let Some((s, t)) = &p.signal
            && !p.read_only
        {
            out.push_str("-- The signal table must be in it too.\n");
            listed.push(qualified(s, t));
        }
        listed.dedup();
        if listed.is_empty() {
            let _ = writeln!(out, "CREATE PUBLICATION {name};");
        } else {
            let _ = writeln!(
                out,
                "CREATE PUBLICATION {name} FOR TABLE {};",
                listed.join(", ")
            );
        }
        let likes: Vec<String> = p
            .patterns
            .iter()
            .filter_map(|pat| match pat {
                Pattern::Schema(s) => Some(format!("{}.%", glob_to_like(s))),
                Pattern::Like(l) => Some(l.clone()),
                Pattern::Table(..) => None,
            })
            .collect();
        if !likes.is_empty() {
            out.push_str("-- Wildcard patterns, expanded to the tables that exist now:\n");
            for_each_matching_table(
                out,
                &likes,
                Some(&format!(
                    "EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p WHERE p.pubname = {} AND p.schemaname = n.nspname AND p.tablename = c.relname)",
                    literal(&p.publication)
                )),
                &[format!(
                    "format('ALTER PUBLICATION %I ADD TABLE %I.%I', {}, t.nspname, t.relname)",
                    literal(&p.publication)
                )],
            );
        }
    }
    if p.autocreate != PublicationAutocreate::Disabled {
        out.push_str(
            "-- This publication belongs to the administrator, so walflow cannot alter it: set\n\
             -- publication_autocreate = \"disabled\" in [source], and re-run this publication\n\
             -- section as an administrator when the table list changes.\n",
        );
    }
    let _ = writeln!(
        out,
        "-- Verify: SELECT * FROM pg_publication_tables WHERE pubname = {};\n",
        literal(&p.publication)
    );
}

fn slot(out: &mut String, p: &Plan) {
    let _ = writeln!(
        out,
        "-- 5. The replication slot (outside the transaction: a slot cannot be created after writes in\n\
         --    the same transaction). From now on the server keeps WAL until walflow consumes it, so\n\
         --    run walflow soon, or skip this and let walflow create the slot at its first start.\n\
         SELECT pg_create_logical_replication_slot({}, 'pgoutput');\n\
         -- Verify (may take a moment): SELECT count(*) FROM pg_logical_slot_peek_binary_changes({}, NULL, NULL, 'proto_version', '1', 'publication_names', {});\n",
        literal(&p.slot),
        literal(&p.slot),
        literal(&p.publication)
    );
}

fn replica_identity(out: &mut String, p: &Plan) {
    out.push_str(
        "-- 6. Optional: REPLICA IDENTITY FULL makes updates and deletes carry the whole old row\n\
         --    instead of only the primary key (needed for soft deletes and audit trails; costs WAL).\n",
    );
    for pattern in &p.patterns {
        if let Pattern::Table(s, t) = pattern {
            let _ = writeln!(
                out,
                "-- ALTER TABLE {} REPLICA IDENTITY FULL;",
                qualified(s, t)
            );
        }
    }
    let _ = writeln!(
        out,
        "-- For every table in the publication at once (psql):\n\
         -- SELECT format('ALTER TABLE %I.%I REPLICA IDENTITY FULL', schemaname, tablename)\n\
         --   FROM pg_publication_tables WHERE pubname = {} \\gexec",
        literal(&p.publication)
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(source_extra: &str) -> Config {
        let text = format!(
            "[source]\nurl = \"postgres://walflow_user@db.example.com:5432/app\"\npassword_env = \"WALFLOW_PASSWORD\"\n{source_extra}\n"
        );
        Config::parse(&text, Path::new("walflow.toml")).unwrap()
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(glob_to_like("public.order_*"), "public.order\\_%");
        assert_eq!(glob_to_like("x.t?"), "x.t_");
        assert_eq!(role_name("walflow_user"), "walflow_role");
        assert_eq!(role_name("app"), "app_role");
    }

    #[test]
    fn patterns_are_classified() {
        assert_eq!(
            parse_pattern("public.orders").unwrap(),
            Pattern::Table("public".into(), "orders".into())
        );
        assert_eq!(
            parse_pattern("inventory.*").unwrap(),
            Pattern::Schema("inventory".into())
        );
        assert_eq!(
            parse_pattern("*.orders").unwrap(),
            Pattern::Like("%.orders".into())
        );
        let err = parse_pattern("orders").unwrap_err().to_string();
        assert!(err.contains("public.orders"), "{err}");
    }

    #[test]
    fn self_managed_script_uses_replication_attribute_and_lists_tables() {
        let sql = render(
            &config("tables = [\"public.orders\", \"inventory.*\"]\nsignal_table = \"walflow.walflow_signal\"\nheartbeat_interval = \"10s\"\nheartbeat = \"table\""),
            Platform::SelfManaged,
        )
        .unwrap();
        assert!(
            sql.contains("CREATE USER \"walflow_user\" PASSWORD :'walflow_password';"),
            "{sql}"
        );
        assert!(sql.contains("ALTER ROLE \"walflow_user\" WITH REPLICATION;"));
        assert!(!sql.contains("rds_replication TO"));
        assert!(sql.contains("GRANT CONNECT ON DATABASE \"app\" TO \"walflow_role\";"));
        assert!(sql.contains("GRANT SELECT ON TABLE \"public\".\"orders\" TO \"walflow_role\";"));
        assert!(
            sql.contains("GRANT SELECT ON ALL TABLES IN SCHEMA \"inventory\" TO \"walflow_role\";")
        );
        assert!(sql.contains("ALTER DEFAULT PRIVILEGES IN SCHEMA \"inventory\""));
        assert!(sql.contains(
            "CREATE PUBLICATION \"walflow_pub\" FOR TABLE \"public\".\"orders\", \"walflow\".\"walflow_signal\";"
        ));
        assert!(sql.contains("LIKE ANY (ARRAY['inventory.%'])"));
        assert!(
            sql.contains("SELECT pg_create_logical_replication_slot('walflow_slot', 'pgoutput');")
        );
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"walflow\".\"walflow_heartbeat\""));
        let messages = render(
            &config("heartbeat_interval = \"10s\""),
            Platform::SelfManaged,
        )
        .unwrap();
        assert!(
            !messages.contains("walflow_heartbeat"),
            "message heartbeats need no table: {messages}"
        );
        assert!(sql.contains("-- ALTER TABLE \"public\".\"orders\" REPLICA IDENTITY FULL;"));
        // The slot comes after COMMIT.
        assert!(
            sql.find("COMMIT;").unwrap() < sql.find("pg_create_logical_replication_slot(").unwrap()
        );
        assert!(sql.contains("$WALFLOW_PASSWORD"));
    }

    #[test]
    fn wildcards_skip_tables_already_published() {
        let sql = render(
            &config("tables = [\"public.orders\", \"public.*\"]"),
            Platform::SelfManaged,
        )
        .unwrap();
        assert!(sql.contains("AND NOT (EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables p WHERE p.pubname = 'walflow_pub'"), "{sql}");
    }

    #[test]
    fn rds_script_grants_rds_replication() {
        let sql = render(&config(""), Platform::Rds).unwrap();
        assert!(
            sql.contains("GRANT rds_replication TO \"walflow_role\";"),
            "{sql}"
        );
        assert!(!sql.contains("WITH REPLICATION"));
        assert!(sql.contains("CREATE PUBLICATION \"walflow_pub\" FOR ALL TABLES;"));
        assert!(sql.contains("rds.logical_replication = 1"));
    }

    #[test]
    fn read_only_has_no_signal_table() {
        let sql = render(
            &config("read_only = true\nsignal_table = \"walflow.walflow_signal\"\ntables = [\"public.t\"]"),
            Platform::SelfManaged,
        )
        .unwrap();
        assert!(!sql.contains("CREATE TABLE IF NOT EXISTS"), "{sql}");
        assert!(sql.contains("CREATE PUBLICATION \"walflow_pub\" FOR TABLE \"public\".\"t\";"));
    }

    #[test]
    fn identifiers_with_quotes_are_escaped() {
        let text = "[source]\nurl = \"postgres://odd@h/db\"\nslot = \"s'1\"\npublication = \"p\\\"x\"\ntables = [\"My Schema.Order\\\"s\"]\n";
        let sql = render(
            &Config::parse(text, Path::new("w.toml")).unwrap(),
            Platform::SelfManaged,
        )
        .unwrap();
        assert!(
            sql.contains("CREATE PUBLICATION \"p\"\"x\" FOR TABLE \"My Schema\".\"Order\"\"s\";"),
            "{sql}"
        );
        assert!(sql.contains("pg_create_logical_replication_slot('s''1', 'pgoutput')"));
    }

    #[test]
    fn schemaless_pattern_is_a_clear_error() {
        let err = render(&config("tables = [\"orders\"]"), Platform::SelfManaged).unwrap_err();
        assert!(err.to_string().contains("schema.table"), "{err}");
    }
}
