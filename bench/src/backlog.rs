//! The shared setup of the replication benchmarks: a throwaway PostgreSQL, one table written
//! as a backlog of large transactions, and two fresh pgoutput slots created before it, so
//! `pg_recvlogical` and walflow decode exactly the same WAL.

use std::process::Command;

use walflow_tests::{Cluster, ClusterOptions, TestDb};

/// Rows per inserting transaction.
pub const ROWS_PER_TXN: u64 = 5_000;

/// The slot `pg_recvlogical` reads.
pub const PEER_SLOT: &str = "bench_recvlogical";
/// The slot walflow reads.
pub const WALFLOW_SLOT: &str = "bench_walflow";
/// The publication both read.
pub const PUBLICATION: &str = "bench_pub";

/// A written backlog.
pub struct Backlog {
    /// The server (stopped when dropped).
    pub cluster: Cluster,
    /// The database holding table `bench`.
    pub db: TestDb,
    /// How many rows were inserted.
    pub changes: u64,
}

impl Backlog {
    /// Starts a server, creates `bench` with `columns`, and inserts `changes` rows, each
    /// `SELECT row_expression FROM generate_series(…) g`, in transactions of [`ROWS_PER_TXN`].
    pub async fn write(
        changes: u64,
        columns: &str,
        row_expression: &str,
    ) -> anyhow::Result<Backlog> {
        Backlog::write_after_slots(changes, columns, row_expression, &[PEER_SLOT, WALFLOW_SLOT])
            .await
    }

    /// Like [`write`](Self::write), with `slots` made before the backlog instead of the peer's
    /// and walflow's.
    pub async fn write_after_slots(
        changes: u64,
        columns: &str,
        row_expression: &str,
        slots: &[impl AsRef<str>],
    ) -> anyhow::Result<Backlog> {
        let cluster = tokio::task::spawn_blocking(|| {
            Cluster::start(
                ClusterOptions::default()
                    .without_tls()
                    // Same decoding memory for both readers (the harness's 64kB makes walflow,
                    // which asks for streaming, and pg_recvlogical, which cannot, diverge).
                    .setting("logical_decoding_work_mem", "'256MB'"),
            )
        })
        .await??;
        let db = cluster.new_database().await;
        let client = db.client().await;
        client
            .batch_execute(&format!(
                "CREATE TABLE bench ({columns}); CREATE PUBLICATION {PUBLICATION} FOR ALL TABLES;"
            ))
            .await?;
        for slot in slots {
            client
                .execute(
                    "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[&slot.as_ref()],
                )
                .await?;
        }
        eprintln!("writing a backlog of {changes} changes…");
        let mut start = 0;
        while start < changes {
            let end = (start + ROWS_PER_TXN).min(changes);
            client
                .batch_execute(&format!(
                    "INSERT INTO bench SELECT {row_expression} FROM generate_series({}, {end}) g",
                    start + 1
                ))
                .await?;
            start = end;
        }
        Ok(Backlog {
            cluster,
            db,
            changes,
        })
    }

    /// Emits a transactional logical message after the backlog; its LSN (as text) is where
    /// every reader of the backlog stops.
    pub async fn end_marker(&self) -> anyhow::Result<String> {
        let row = self
            .db
            .client()
            .await
            .query_one(
                "SELECT pg_logical_emit_message(true, 'bench', 'end')::text",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    /// The walflow URL of the database.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.cluster.port(),
            self.db.name()
        )
    }

    /// A walflow config streaming `slot` of this backlog from its start (the publication made
    /// with it, no snapshot), followed by `rest` ([[plugins]], [[sinks]]).
    pub fn walflow_config(&self, slot: &str, rest: &str) -> String {
        format!(
            "[source]\nurl = \"{}\"\nsslmode = \"disable\"\nslot = \"{slot}\"\n\
             publication = \"{PUBLICATION}\"\npublication_autocreate = \"disabled\"\n\
             snapshot = \"never\"\n{rest}",
            self.url()
        )
    }

    /// `pg_recvlogical` (the server's own, else the one on PATH) reading its slot up to `end`
    /// into /dev/null.
    pub fn recvlogical(&self, end: &str) -> Command {
        let conninfo = format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            self.cluster.port(),
            self.db.name()
        );
        let bundled = self.cluster.bin_dir().join("pg_recvlogical");
        let mut peer = Command::new(if bundled.exists() {
            bundled
        } else {
            "pg_recvlogical".into()
        });
        peer.args(["-d", &conninfo, "-S", PEER_SLOT, "--start"])
            .args(["-E", end, "--no-loop", "-f", "/dev/null"])
            .args(["-o", "proto_version=1", "-o"])
            .arg(format!("publication_names={PUBLICATION}"));
        peer
    }

    /// The headline of a report.
    pub fn describe(&self) -> String {
        format!(
            "{} changes in {} transactions, PostgreSQL {}",
            self.changes,
            self.changes.div_ceil(ROWS_PER_TXN),
            self.cluster.version()
        )
    }
}
