//! Write walflow plugins in Rust.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2` that targets one world of
//! `wit/walflow-plugin.wit`. This crate hides the ABI: write one function per event and mark it
//! with the attribute of its role, and the macro generates the batch loop and the export.
//!
//! ```ignore
//! use walflow_sdk::{Event, Value};
//!
//! #[walflow_sdk::filter]
//! fn keep(event: &Event) -> bool {
//!     event.after().get("status") == Some(Value::from("shipped"))
//! }
//! ```
//!
//! ```ignore
//! #[walflow_sdk::transform]
//! fn shout(event: &mut walflow_sdk::Event) -> Result<(), String> {
//!     if let Some(name) = event.after().get("name").as_ref().and_then(|v| v.as_str()) {
//!         event.after_mut().set("name", name.to_uppercase())?;
//!     }
//!     Ok(())
//! }
//! ```
//!
//! A topic namer is `#[walflow_sdk::topic_namer] fn name(event: &Event) -> String` (or any
//! `AsRef<str>`). A sink is `#[walflow_sdk::sink] fn write(events: &[Event], topics: &[&str])
//! -> Result<(), String>`. An optional `#[walflow_sdk::init] fn setup(config: &str) ->
//! Result<(), String>` in the same module receives the plugin's JSON configuration once, before
//! the first batch.
//!
//! Under the hood (ABI `walflow:plugin@0.2.1`) values are read straight out of the batch's
//! buffers when asked for ([`Value`] borrows them), and a transform answers with edits (the
//! values it set, the columns it removed, the events it dropped), never a copy of the batch,
//! which keeps the per-event cost low. A plugin that reads only some columns says which with
//! [`only_columns`], and the host sends no others.

#![deny(missing_docs)]

mod event;
mod value;

pub use event::{Event, Message, RelationId, Row, RowMut};
pub use value::{Array, Value};
pub use walflow_sdk_macros::{filter, init, sink, topic_namer, transform};

/// The generated bindings of each world. Plugin crates use these only through the macros; the
/// data types are re-exported at the crate root.
#[allow(missing_docs)]
pub mod bindings {
    /// The `filter` world.
    pub mod filter {
        wit_bindgen::generate!({
            path: "../wit",
            world: "walflow:plugin/filter",
            pub_export_macro: true,
            default_bindings_module: "walflow_sdk::bindings::filter",
        });
    }

    /// The `transform` world.
    pub mod transform {
        wit_bindgen::generate!({
            path: "../wit",
            world: "walflow:plugin/transform",
            pub_export_macro: true,
            default_bindings_module: "walflow_sdk::bindings::transform",
            with: { "walflow:plugin/types@0.2.1": crate::bindings::filter::walflow::plugin::types },
        });
    }

    /// The `topic-namer` world.
    pub mod topic_namer {
        wit_bindgen::generate!({
            path: "../wit",
            world: "walflow:plugin/topic-namer",
            pub_export_macro: true,
            default_bindings_module: "walflow_sdk::bindings::topic_namer",
            with: { "walflow:plugin/types@0.2.1": crate::bindings::filter::walflow::plugin::types },
        });
    }

    /// The `sink` world.
    pub mod sink {
        wit_bindgen::generate!({
            path: "../wit",
            world: "walflow:plugin/sink",
            pub_export_macro: true,
            default_bindings_module: "walflow_sdk::bindings::sink",
            with: { "walflow:plugin/types@0.2.1": crate::bindings::filter::walflow::plugin::types },
        });
    }
}

/// The ABI's data types (`walflow:plugin/types@0.2.1`), as they travel; plugins read them
/// through [`Event`] and [`Value`].
pub use bindings::filter::walflow::plugin::types;
pub use types::{Column, Needs, Op, Relation, SnapshotMarker, TemporalKind};

impl Op {
    /// Debezium's one-letter code: `c`, `u`, `d`, `r`, `t`, or `m` for a logical message.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
            Op::Message => "m",
        }
    }
}

static ROWS_NOT_NEEDED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Declares that this plugin never reads the events' rows (only table, op, source metadata and
/// topic). Call it from `init`: the host then leaves `before`/`after` out of every call, which
/// makes each call cheaper; [`Event::after`] and [`Event::before`] are then empty views.
pub fn without_rows() {
    ROWS_NOT_NEEDED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Which columns a plugin reads, given the table and one of its columns (see [`only_columns`]).
pub type ColumnFilter = fn(&Relation, &Column) -> bool;

/// A filter's answer for every change of a table, given the database and the table (see
/// [`filter_by_table`]).
pub type TableVerdict = fn(&str, &Relation) -> Option<bool>;

/// A topic namer's topic for every change of a table, given the database and the table (see
/// [`name_by_table`]).
pub type TableTopic = fn(&str, &Relation) -> Option<String>;

/// A function the plugin registers in `init` for the host to ask about tables.
struct Hook<F>(std::sync::Mutex<Option<F>>);

impl<F: Copy> Hook<F> {
    const fn new() -> Self {
        Hook(std::sync::Mutex::new(None))
    }

    fn set(&self, f: F) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    fn get(&self) -> Option<F> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

static COLUMNS: Hook<ColumnFilter> = Hook::new();
static KEEP_TABLE: Hook<TableVerdict> = Hook::new();
static TABLE_TOPIC: Hook<TableTopic> = Hook::new();

/// Declares that this plugin reads (and writes) only the columns `reads` accepts (it gets the
/// table and one of its columns). Call it from `init`. The host then sends each table with
/// just those columns and each row with just their values, which makes every call cheaper the
/// more columns a table has; the plugin sees the others nowhere ([`Event::columns`],
/// [`Row::get`]), and cannot set or remove them. `reads` is asked once per table and column.
///
/// ```ignore
/// #[walflow_sdk::init]
/// fn setup(_config: &str) -> Result<(), String> {
///     walflow_sdk::only_columns(|_table, column| column.type_name == "bytea");
///     Ok(())
/// }
/// ```
///
/// Not for a transform that replaces whole events ([`Event::set_op`] and the like): the host
/// refuses a replacement of an event it sent only in part.
pub fn only_columns(reads: ColumnFilter) {
    COLUMNS.set(reads);
}

/// For a filter that decides by table: `verdict` answers, for a database and a table, whether
/// every change of that table is kept (`Some(true)`) or dropped (`Some(false)`), or `None`
/// when it depends on the event. Call it from `init`. The host asks once per table and
/// settles batches of tables with an answer itself, without calling the plugin; the filter
/// function still sees the events of the other tables and logical messages.
///
/// ```ignore
/// walflow_sdk::filter_by_table(|_db, table| Some(table.schema == "public"));
/// ```
pub fn filter_by_table(verdict: TableVerdict) {
    KEEP_TABLE.set(verdict);
}

/// For a topic namer that names by table: `topic` answers, for a database and a table, the
/// topic of every change of that table, or `None` when it depends on the event. Call it from
/// `init`. The host asks once per table and names batches of such tables itself, without
/// calling the plugin; the namer function still names logical messages and the events of
/// tables answered `None`.
pub fn name_by_table(topic: TableTopic) {
    TABLE_TOPIC.set(topic);
}

/// Outbound HTTP for sink plugins: the host sends the request only to the hosts the sink's
/// `allow_hosts` lists; anything else is an `Err`, never a connection.
pub mod http {
    pub use crate::bindings::sink::walflow::plugin::outbound_http::{Request, Response, send};

    /// POSTs `body` to `url` with `headers`; the response whatever its status.
    pub fn post(
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Response, String> {
        send(&Request {
            method: "POST".to_string(),
            url: url.to_string(),
            headers: headers.to_vec(),
            body,
        })
    }
}

/// A plugin's configuration hook; implemented by `#[walflow_sdk::init]`.
pub trait Init {
    /// Receives the plugin's JSON configuration (`{}` when none) once, before the first batch.
    fn init(config: &str) -> Result<(), String>;
}

/// Support code for the macros. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use std::marker::PhantomData;

    pub use crate::event::{run_filter, run_sink, run_topic_namer, run_transform};

    /// What `init` answers: rows unless the plugin called [`crate::without_rows`].
    pub fn needs() -> crate::Needs {
        crate::Needs {
            rows: !crate::ROWS_NOT_NEEDED.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// What `columns` answers for `table`: every column unless the plugin called
    /// [`crate::only_columns`].
    pub fn columns(table: crate::Relation) -> Option<Vec<u32>> {
        let reads = crate::COLUMNS.get()?;
        let positions = table.columns.iter().enumerate();
        Some(
            positions
                .filter(|(_, column)| reads(&table, column))
                .map(|(i, _)| i as u32)
                .collect(),
        )
    }

    /// What `keep-table` answers: `None` unless the plugin called [`crate::filter_by_table`].
    pub fn keep_table(db: String, table: crate::Relation) -> Option<bool> {
        crate::KEEP_TABLE.get()?(&db, &table)
    }

    /// What `table-topic` answers: `None` unless the plugin called [`crate::name_by_table`].
    pub fn table_topic(db: String, table: crate::Relation) -> Option<String> {
        crate::TABLE_TOPIC.get()?(&db, &table)
    }

    /// Picks the plugin's `Init` impl when there is one (autoref specialisation).
    pub struct InitProbe<T>(pub PhantomData<T>);

    /// Chosen when the plugin implements [`crate::Init`].
    pub trait ViaUserInit {
        fn walflow_init(&self, config: &str) -> Result<(), String>;
    }

    impl<T: crate::Init> ViaUserInit for &InitProbe<T> {
        fn walflow_init(&self, config: &str) -> Result<(), String> {
            T::init(config)
        }
    }

    /// Chosen otherwise: accept any configuration.
    pub trait ViaNoInit {
        fn walflow_init(&self, config: &str) -> Result<(), String>;
    }

    impl<T> ViaNoInit for InitProbe<T> {
        fn walflow_init(&self, _config: &str) -> Result<(), String> {
            Ok(())
        }
    }
}
