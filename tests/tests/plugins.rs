//! The plugin platform end to end: the built-in plugins (Rust and Python) on real events,
//! misbehaving guests (endless loop, huge allocation, panic) against the limits and the
//! `on_error` policy, the sandbox, hot reload under a steady stream, and bad input.
//!
//! Plugins are real components built by `scripts/build-plugins` (once per test binary).

#[path = "plugins/support.rs"]
mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::*;
use walflow::config::OnError;
use walflow::event::{Array, Op, SnapshotMarker, Source, TemporalKind, Value};
use walflow::plugin::{
    AbiVersion, Chain, ChainError, LoadError, LoadedPlugin, PluginError, PluginSpec,
    reload::Reloader,
};

fn orders() -> std::sync::Arc<walflow::event::Relation> {
    relation(
        "public",
        "orders",
        &[
            ("id", "int4", true),
            ("status", "text", false),
            ("payload", "bytea", false),
        ],
    )
}

fn order(id: i64, status: &str) -> walflow::event::Event {
    event(
        &orders(),
        Op::Create,
        vec![
            Value::Int(id),
            text(status),
            Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
        ],
    )
}

/// `public.blobs (id int4, data bytea)`.
fn blobs() -> std::sync::Arc<walflow::event::Relation> {
    relation(
        "public",
        "blobs",
        &[("id", "int4", true), ("data", "bytea", false)],
    )
}

#[test]
fn table_filter_keeps_included_tables_and_matching_rows() {
    let audit = relation(
        "public",
        "audit_log",
        &[("id", "int4", true), ("status", "text", false)],
    );
    let other = relation(
        "inventory",
        "items",
        &[("id", "int4", true), ("status", "text", false)],
    );
    let events = vec![
        order(1, "shipped"),
        order(2, "pending"),
        event(&audit, Op::Create, vec![Value::Int(3), text("shipped")]),
        event(&other, Op::Create, vec![Value::Int(4), text("shipped")]),
        event(
            &orders(),
            Op::Delete,
            vec![Value::Int(5), text("shipped"), Value::Null],
        ),
    ];
    let mut globs = chain(vec![spec(
        "table_filter",
        r#"{"include": ["public.*"], "exclude": ["public.audit_*"]}"#,
        OnError::Stop,
    )]);
    let out = globs.run(events.clone()).expect("filter runs");
    let ids: Vec<_> = out
        .events
        .iter()
        .map(|e| e.relation.qualified_name())
        .collect();
    assert_eq!(ids, ["public.orders", "public.orders", "public.orders"]);
    // A later batch whose first table is another one: the filter's per-table memory must
    // not carry over by position.
    let later = vec![events[2].clone(), events[0].clone(), events[3].clone()];
    let out = globs.run(later).expect("filter runs");
    let ids: Vec<_> = out
        .events
        .iter()
        .map(|e| e.relation.qualified_name())
        .collect();
    assert_eq!(ids, ["public.orders"]);

    let mut predicate = chain(vec![spec(
        "table_filter",
        r#"{"include": ["public.orders"], "where": {"column": "status", "equals": "shipped"}}"#,
        OnError::Stop,
    )]);
    let out = predicate.run(events).expect("filter runs");
    let kept: Vec<_> = out
        .events
        .iter()
        .map(|e| {
            let row = e.after.as_ref().or(e.before.as_ref()).unwrap();
            row[0].clone()
        })
        .collect();
    assert_eq!(
        kept,
        [Value::Int(1), Value::Int(5)],
        "the delete matches on its before row"
    );
}

#[test]
fn binary_repr_re_represents_every_bytea_value() {
    let rel = relation(
        "public",
        "blobs",
        &[
            ("id", "int4", true),
            ("data", "bytea", false),
            ("many", "_bytea", false),
        ],
    );
    let row = vec![
        Value::Int(1),
        Value::Bytes(vec![0xfb, 0xff, 0x00]),
        Value::Array(Array {
            dims: vec![2],
            lower_bounds: Vec::new(),
            elements: vec![Value::Bytes(vec![1, 2]), Value::Null],
        }),
    ];
    let cases = [
        ("hex", "fbff00", "0102"),
        ("base64", "+/8A", "AQI="),
        ("base64url", "-_8A", "AQI="),
    ];
    for (mode, data, element) in cases {
        let mut c = chain(vec![spec(
            "binary_repr",
            &format!(r#"{{"mode": "{mode}"}}"#),
            OnError::Stop,
        )]);
        let out = c
            .run(vec![event(&rel, Op::Create, row.clone())])
            .expect("transform runs");
        let e = &out.events[0];
        assert_eq!(after(e, "data"), &text(data), "mode {mode}");
        assert_eq!(
            after(e, "many"),
            &Value::Array(Array {
                dims: vec![2],
                lower_bounds: Vec::new(),
                elements: vec![text(element), Value::Null]
            }),
            "mode {mode}"
        );
        assert_eq!(after(e, "id"), &Value::Int(1));
    }
    let mut raw = chain(vec![spec(
        "binary_repr",
        r#"{"mode": "bytes"}"#,
        OnError::Stop,
    )]);
    let out = raw.run(vec![event(&rel, Op::Create, row.clone())]).unwrap();
    assert_eq!(
        out.events[0].after.as_ref().unwrap(),
        &row,
        "bytes mode leaves values binary"
    );
}

/// Hex of every byte value, and of every length from none to past an eight-byte word.
#[test]
fn binary_repr_hex_matches_formatting_for_every_byte_and_length() {
    let rel = blobs();
    let mut inputs: Vec<Vec<u8>> = (0..=9u8)
        .map(|n| (0..n).map(|i| 0xf0 ^ i).collect())
        .collect();
    inputs.push((0..=255).collect());
    inputs.push((0..=255).rev().collect());
    let events = inputs
        .iter()
        .map(|b| {
            event(
                &rel,
                Op::Create,
                vec![Value::Int(1), Value::Bytes(b.clone())],
            )
        })
        .collect();
    let mut c = chain(vec![spec(
        "binary_repr",
        r#"{"mode": "hex"}"#,
        OnError::Stop,
    )]);
    let out = c.run(events).expect("transform runs");
    for (e, bytes) in out.events.iter().zip(&inputs) {
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(after(e, "data"), &text(&expected), "{bytes:?}");
    }
    assert_eq!(out.events.len(), inputs.len());
}

/// binary-repr looks a table's column types up once per table and batch: tables whose bytes
/// sit in different columns, interleaved and across batches, each get their own columns
/// converted, in both rows of an update.
#[test]
fn binary_repr_converts_the_right_columns_of_each_table_of_a_batch() {
    let blobs = blobs();
    let blob = |id: i64, byte: u8| {
        let mut e = event(
            &blobs,
            Op::Update,
            vec![Value::Int(id), Value::Bytes(vec![byte])],
        );
        e.before = Some(vec![Value::Int(id), Value::Bytes(vec![byte, byte])]);
        e
    };
    let mut c = chain(vec![spec(
        "binary_repr",
        r#"{"mode": "hex"}"#,
        OnError::Stop,
    )]);
    let check = |out: walflow::plugin::ChainOutput| -> Vec<String> {
        out.events
            .iter()
            .map(|e| {
                let bytes = |row: &[Value]| -> Vec<String> {
                    row.iter()
                        .filter_map(|v| match v {
                            Value::Text(t) => Some(t.to_string()),
                            Value::Bytes(_) => Some("unconverted".to_string()),
                            _ => None,
                        })
                        .collect()
                };
                let mut seen = bytes(e.after.as_deref().unwrap());
                if let Some(before) = e.before.as_deref() {
                    seen.extend(bytes(before).into_iter().map(|b| format!("before {b}")));
                }
                seen.join(",")
            })
            .collect()
    };
    let first = c
        .run(vec![blob(1, 0x0f), order(2, "new"), blob(3, 0xa0)])
        .expect("transform runs");
    assert_eq!(
        check(first),
        ["0f,before 0f0f", "new,deadbeef", "a0,before a0a0"]
    );
    let second = c
        .run(vec![order(4, "paid"), blob(5, 0xff)])
        .expect("transform runs");
    assert_eq!(check(second), ["paid,deadbeef", "ff,before ffff"]);
}

/// Every kind of value, set by a guest to a copy of itself in both rows of an update, comes
/// back exactly as it went in (the host reads the common edits straight from their bytes).
#[test]
fn every_kind_of_value_crosses_the_abi_both_ways_unchanged() {
    let values = vec![
        Value::Null,
        Value::Bool(true),
        Value::Bool(false),
        Value::Int(-9_007_199_254_740_993),
        Value::Float(-2.5e-300),
        text("grüße \"quoted\""),
        Value::Bytes(vec![0, 0xff, 0x7f]),
        Value::Numeric("-12345678901234567890.000001".into()),
        Value::Temporal(
            TemporalKind::TimestampTz,
            "2024-01-02T03:04:05+00:00".into(),
        ),
        Value::Temporal(TemporalKind::Interval, "1 day 02:00:00".into()),
        Value::Json(r#"{"a": [1, "x"]}"#.into()),
        Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        Value::Array(Array {
            dims: vec![2],
            lower_bounds: Vec::new(),
            elements: vec![Value::Int(1), Value::Null],
        }),
        Value::UnchangedToast,
        Value::Raw {
            type_name: "point".into(),
            text: "(1,2)".into(),
        },
    ];
    let names: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
    let columns: Vec<(&str, &str, bool)> =
        names.iter().map(|n| (n.as_str(), "text", false)).collect();
    let rel = relation("public", "kinds", &columns);
    let mut input = event(&rel, Op::Update, values.clone());
    let mut before = values;
    before.reverse();
    input.before = Some(before);
    let mut c = chain(vec![spec("echo_values", "{}", OnError::Stop)]);
    let out = c.run(vec![input.clone()]).expect("transform runs");
    assert_eq!(out.events, [input]);
}

#[test]
fn topic_name_follows_prefix_database_prefix_and_template() {
    let cases = [
        ("{}", "public.orders"),
        (r#"{"prefix": "app"}"#, "app.public.orders"),
        (
            r#"{"prefix": "app", "database_prefix": true}"#,
            "app_app.public.orders",
        ),
        (
            r#"{"template": "cdc-{database}-{table}-{op}"}"#,
            "cdc-app-orders-c",
        ),
    ];
    for (config, topic) in cases {
        let mut c = chain(vec![spec("topic_name", config, OnError::Stop)]);
        let out = c.run(vec![order(1, "new")]).expect("namer runs");
        assert_eq!(
            out.events[0].topic.as_deref(),
            Some(topic),
            "config {config}"
        );
    }
}

#[test]
fn topic_name_names_each_table_of_a_batch_and_of_later_batches() {
    let audit = relation("public", "audit_log", &[("id", "int4", true)]);
    let audit_event = || event(&audit, Op::Create, vec![Value::Int(9)]);
    let mut c = chain(vec![spec("topic_name", "{}", OnError::Stop)]);
    let topics = |out: walflow::plugin::ChainOutput| -> Vec<String> {
        out.events
            .iter()
            .map(|e| e.topic.as_deref().unwrap_or("").to_string())
            .collect()
    };
    let first = c
        .run(vec![order(1, "new"), audit_event(), order(2, "new")])
        .expect("namer runs");
    assert_eq!(
        topics(first),
        ["public.orders", "public.audit_log", "public.orders"]
    );
    let second = c
        .run(vec![audit_event(), order(3, "new")])
        .expect("namer runs");
    assert_eq!(topics(second), ["public.audit_log", "public.orders"]);
}

#[test]
fn topic_name_sends_logical_messages_to_the_message_topic() {
    let mut message = event(&relation("", "", &[]), Op::Message, vec![]);
    message.after = None;
    message.message = Some(Box::new(walflow::event::LogicalMessage {
        transactional: true,
        prefix: "audit".into(),
        content: b"hello".to_vec(),
    }));
    for (config, topic) in [
        ("{}", "message"),
        (
            r#"{"prefix": "app", "database_prefix": true}"#,
            "app_app.message",
        ),
    ] {
        let mut c = chain(vec![spec("topic_name", config, OnError::Stop)]);
        let out = c.run(vec![message.clone()]).expect("namer runs");
        assert_eq!(
            out.events[0].topic.as_deref(),
            Some(topic),
            "config {config}"
        );
    }
}

#[test]
fn mask_columns_hashes_or_redacts_configured_columns_in_both_rows() {
    let users = relation(
        "public",
        "users",
        &[
            ("id", "int4", true),
            ("email", "text", false),
            ("name", "text", false),
        ],
    );
    let mut update = event(
        &users,
        Op::Update,
        vec![Value::Int(1), text("new@example.com"), text("Ann")],
    );
    update.before = Some(vec![Value::Int(1), text("old@example.com"), text("Ann")]);
    let mut sha = chain(vec![spec(
        "mask_columns",
        r#"{"columns": ["public.users.email"], "with": "sha256"}"#,
        OnError::Stop,
    )]);
    let out = sha.run(vec![update.clone()]).expect("mask runs");
    let e = &out.events[0];
    // sha256("new@example.com"), computed independently.
    assert_eq!(
        after(e, "email"),
        &text("f0030501023327437b06e5c6f87df7871b8e704ae608d1d0b7b24fdd2a06c716")
    );
    let Value::Text(hash) = after(e, "email") else {
        panic!("hash is text")
    };
    assert_eq!(hash.len(), 64);
    assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    assert_ne!(
        e.before.as_ref().unwrap()[1],
        update.before.as_ref().unwrap()[1],
        "before row masked too"
    );
    assert_eq!(after(e, "name"), &text("Ann"), "other columns untouched");

    let mut redact = chain(vec![spec(
        "mask_columns",
        r#"{"columns": ["public.users.email"], "with": "redact"}"#,
        OnError::Stop,
    )]);
    let out = redact.run(vec![update]).expect("mask runs");
    assert_eq!(after(&out.events[0], "email"), &text("***"));
    assert_eq!(out.events[0].before.as_ref().unwrap()[1], text("***"));
}

/// A table with a key and three text columns, for what a projecting plugin sees.
fn notes() -> std::sync::Arc<walflow::event::Relation> {
    relation(
        "public",
        "notes",
        &[
            ("id", "int4", true),
            ("title", "text", false),
            ("body", "text", false),
            ("tag", "text", false),
        ],
    )
}

fn note(id: i64) -> walflow::event::Event {
    let mut e = event(
        &notes(),
        Op::Update,
        vec![Value::Int(id), text("t"), text("b"), text("g")],
    );
    e.before = Some(vec![Value::Int(id), text("t0"), text("b0"), text("g0")]);
    e
}

/// A 0.2.1 plugin that asks for some columns is sent only those, in table order whatever
/// order it named them in, and its edits land on the right columns of the whole table (in
/// both rows); the columns it did not ask for come out as they went in.
#[test]
fn a_projecting_plugin_sees_only_its_columns_and_edits_land_right() {
    let loaded = LoadedPlugin::load(&engine(), &PluginSpec::new(plugin("column_census"), "{}"))
        .expect("census loads");
    assert_eq!(loaded.abi(), AbiVersion::V0_2_1);
    let mut c = chain(vec![spec(
        "column_census",
        r#"{"only": ["tag", "id"]}"#,
        OnError::Stop,
    )]);
    let out = c.run(vec![note(1), note(2)]).expect("census runs");
    for e in &out.events {
        assert_eq!(
            after(e, "tag"),
            &text("id,tag"),
            "sent id and tag, in table order"
        );
        assert_eq!(after(e, "title"), &text("t"), "unsent columns untouched");
        assert_eq!(after(e, "body"), &text("b"));
        let before = e.before.as_deref().expect("before row");
        assert_eq!(
            before,
            [Value::Int(e_id(e)), text("t0"), text("b0"), text("id,tag")]
        );
    }
    // Without `only_columns` the same plugin is sent every column.
    let mut all = chain(vec![spec("column_census", "{}", OnError::Stop)]);
    let out = all.run(vec![note(3)]).expect("census runs");
    assert_eq!(after(&out.events[0], "title"), &text("id,title,body,tag"));
}

fn e_id(e: &walflow::event::Event) -> i64 {
    match after(e, "id") {
        Value::Int(i) => *i,
        other => panic!("id is {other:?}"),
    }
}

/// Replacing an event the plugin was sent only part of would lose the other columns: the
/// host refuses it as the plugin's bad output, and nothing of the batch comes out.
#[test]
fn a_projecting_plugin_cannot_replace_events() {
    let mut c = chain(vec![spec(
        "column_census",
        r#"{"only": ["title"], "replace": true}"#,
        OnError::Stop,
    )]);
    match c.run(vec![note(1)]) {
        Err(ChainError::Plugin(e @ PluginError::BadOutput { .. })) => {
            let message = e.to_string();
            assert!(
                message.contains("must answer `none` from `columns`"),
                "{message}"
            );
        }
        other => panic!("expected bad output, got {other:?}"),
    }
}

/// A filter built against 0.2.0 (before `columns`) still loads as 0.2.0 and is sent every
/// column of every row (it fails the batch otherwise), next to 0.2.1 plugins that project.
#[test]
fn a_plugin_built_against_0_2_0_still_runs_and_gets_every_column() {
    let loaded = LoadedPlugin::load(&engine(), &PluginSpec::new(plugin("keep_even_v0_2"), "{}"))
        .expect("0.2.0 filter loads");
    assert_eq!(loaded.abi(), AbiVersion::V0_2);
    let mut c = chain(vec![
        spec("column_census", r#"{"only": ["tag"]}"#, OnError::Stop),
        spec("keep_even_v0_2", "{}", OnError::Stop),
    ]);
    let out = c
        .run((1..=6).map(note).collect())
        .expect("both versions run in one chain");
    let ids: Vec<i64> = out.events.iter().map(e_id).collect();
    assert_eq!(ids, [2, 4, 6]);
    assert!(out.events.iter().all(|e| after(e, "tag") == &text("tag")));
}

/// A change of `table` (one key column), for the by-table tests.
fn change_of(table: &str, id: i64) -> walflow::event::Event {
    let rel = relation("public", table, &[("id", "int4", true)]);
    event(&rel, Op::Create, vec![Value::Int(id)])
}

/// A logical decoding message.
fn logical_message() -> walflow::event::Event {
    let mut message = event(&relation("", "", &[]), Op::Message, vec![]);
    message.after = None;
    message.message = Some(Box::new(walflow::event::LogicalMessage {
        transactional: true,
        prefix: "audit".into(),
        content: b"hello".to_vec(),
    }));
    message
}

/// A filter's per-table answers settle a batch only when every event has one: then the
/// filter function is not called (it would answer the opposite); a table answered `none`,
/// or a logical message, sends the whole batch to it.
#[test]
fn a_filter_decides_by_table_until_an_event_needs_a_look() {
    let mut c = chain(vec![spec("keep_by_table", "{}", OnError::Stop)]);
    let tables = |out: walflow::plugin::ChainOutput| -> Vec<String> {
        out.events
            .iter()
            .map(|e| e.relation.table.clone())
            .collect()
    };
    let by_table = c
        .run(vec![
            change_of("kept", 1),
            change_of("gone", 2),
            change_of("kept", 3),
        ])
        .expect("filter runs");
    assert_eq!(
        tables(by_table),
        ["kept", "kept"],
        "decided by table, no call"
    );
    let mixed = c
        .run(vec![change_of("kept", 1), change_of("other", 2)])
        .expect("filter runs");
    assert_eq!(
        tables(mixed),
        ["other"],
        "the filter function saw the batch"
    );
    let with_message = c
        .run(vec![change_of("kept", 1), logical_message()])
        .expect("filter runs");
    assert_eq!(with_message.events.len(), 1);
    assert_eq!(with_message.events[0].op, Op::Message);
}

/// A topic namer's per-table topics (asked per table and database) name a batch without a
/// call while every event has one; otherwise the namer function names the whole batch.
#[test]
fn a_topic_namer_names_by_table_until_an_event_needs_a_look() {
    let mut c = chain(vec![spec("topic_by_table", "{}", OnError::Stop)]);
    let mut topics = |events: Vec<walflow::event::Event>| -> Vec<String> {
        let out = c.run(events).expect("namer runs");
        out.events
            .iter()
            .map(|e| e.topic.as_deref().unwrap().to_string())
            .collect()
    };
    let mut elsewhere = change_of("b", 3);
    elsewhere.source.db = "shop".into();
    assert_eq!(
        topics(vec![change_of("a", 1), change_of("b", 2), elsewhere]),
        ["app.table.a", "app.table.b", "shop.table.b"]
    );
    assert_eq!(
        topics(vec![change_of("a", 1), change_of("dynamic", 2)]),
        ["event.a", "event.dynamic"]
    );
    assert_eq!(
        topics(vec![change_of("a", 1), logical_message()]),
        ["event.a", "event.message"]
    );
}

#[test]
fn python_filter_drops_configured_ops_and_tables() {
    example_filter_drops_configured_ops_and_tables("python_filter");
}

#[test]
fn javascript_filter_drops_configured_ops_and_tables() {
    example_filter_drops_configured_ops_and_tables("js_filter");
}

#[test]
fn javascript_filter_refuses_a_bad_config_by_throwing() {
    let spec = spec("js_filter", r#"{"drop_everything": true}"#, OnError::Stop);
    let Err(err) = Chain::from_specs(&engine(), vec![spec]) else {
        panic!("the config was accepted");
    };
    assert!(
        err.to_string().contains("unknown keys drop_everything"),
        "{err}"
    );
}

/// The Python and JavaScript examples implement the same filter.
fn example_filter_drops_configured_ops_and_tables(plugin: &str) {
    let audit = relation(
        "public",
        "audit_log",
        &[
            ("id", "int4", true),
            ("status", "text", false),
            ("payload", "bytea", false),
        ],
    );
    let events = vec![
        order(1, "a"),
        event(
            &orders(),
            Op::Delete,
            vec![Value::Int(2), text("b"), Value::Null],
        ),
        event(
            &audit,
            Op::Create,
            vec![Value::Int(3), text("c"), Value::Null],
        ),
        order(4, "d"),
    ];
    let mut c = chain(vec![spec(
        plugin,
        r#"{"drop_ops": ["d"], "drop_tables": ["public.audit_log"]}"#,
        OnError::Stop,
    )]);
    let out = c.run(events).expect("the example filter runs");
    let ids: Vec<_> = out.events.iter().map(|e| after(e, "id").clone()).collect();
    assert_eq!(ids, [Value::Int(1), Value::Int(4)]);
}

#[test]
fn three_plugin_chain_filters_re_represents_and_names() {
    let audit = relation(
        "public",
        "audit_log",
        &[
            ("id", "int4", true),
            ("status", "text", false),
            ("payload", "bytea", false),
        ],
    );
    let mut c = chain(vec![
        spec(
            "table_filter",
            r#"{"exclude": ["public.audit_*"]}"#,
            OnError::Stop,
        ),
        spec("binary_repr", r#"{"mode": "hex"}"#, OnError::Stop),
        spec("topic_name", r#"{"prefix": "shop"}"#, OnError::Stop),
    ]);
    let events = vec![
        order(1, "new"),
        event(
            &audit,
            Op::Create,
            vec![Value::Int(2), text("x"), Value::Null],
        ),
        order(3, "paid"),
    ];
    let out = c.run(events).expect("chain runs");
    assert_eq!(out.events.len(), 2);
    for e in &out.events {
        assert_eq!(e.topic.as_deref(), Some("shop.public.orders"));
        assert_eq!(after(e, "payload"), &text("deadbeef"));
    }
    assert!(out.dead_letters.is_empty());
    assert_eq!(out.skipped, 0);
}

fn action_rel() -> std::sync::Arc<walflow::event::Relation> {
    relation(
        "public",
        "jobs",
        &[("id", "int4", true), ("action", "text", false)],
    )
}

fn jobs(actions: &[&str]) -> Vec<walflow::event::Event> {
    let rel = action_rel();
    actions
        .iter()
        .enumerate()
        .map(|(i, a)| event(&rel, Op::Create, vec![Value::Int(i as i64), text(a)]))
        .collect()
}

fn ids(events: &[walflow::event::Event]) -> Vec<i64> {
    events
        .iter()
        .map(|e| match after(e, "id") {
            Value::Int(i) => *i,
            other => panic!("id is {other:?}"),
        })
        .collect()
}

/// The same transform built with the SDK (ABI 0.2.0) and against 0.1.0 with wit-bindgen alone:
/// the host runs both, and every kind of edit (set with non-ASCII text, remove, drop, replace,
/// fail) comes out the same through either version's lowering and lifting.
#[test]
fn plugins_of_both_abi_versions_edit_alike() {
    let actions = ["grüße", "drop", "delete", "strip", "fail", "keep"];
    // The replaced event carries every source field and a topic back out of the guest.
    let source = Source {
        db: "shop".into(),
        lsn: walflow::event::Lsn(0x16_B374_D848),
        xid: Some(4242),
        commit_time_us: 1_700_000_000_123_456,
        snapshot: SnapshotMarker::Last,
        last_commit_lsn: None,
    };
    let input = || {
        let mut events = jobs(&actions);
        events[2].source = source.clone();
        events[2].topic = Some("app.public.jobs".into());
        events
    };
    let mut outputs = Vec::new();
    for (name, abi) in [
        ("reshape", AbiVersion::V0_2_1),
        ("reshape_v0_1", AbiVersion::V0_1),
    ] {
        let loaded = LoadedPlugin::load(&engine(), &PluginSpec::new(plugin(name), "{}"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.abi(), abi, "{name}");
        let mut c = chain(vec![spec(name, "{}", OnError::Skip)]);
        let out = c.run(input()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(out.skipped, 1, "{name}: the failing event is skipped");
        outputs.push(out.events);
    }
    assert_eq!(outputs[0], outputs[1], "both versions give the same events");
    let out = &outputs[0];
    assert_eq!(
        ids(out),
        [0, 2, 3, 5],
        "drop and fail take events 1 and 4 out"
    );
    assert_eq!(after(&out[0], "action"), &text("GRÜSSE"));
    assert_eq!(out[1].op, Op::Delete, "replaced wholesale");
    assert_eq!(out[1].source, source);
    assert_eq!(out[1].topic.as_deref(), Some("app.public.jobs"));
    assert_eq!(after(&out[1], "action"), &text("delete"));
    let columns: Vec<_> = out[2].relation.columns.iter().map(|c| &c.name).collect();
    assert_eq!(columns, ["id"], "the action column is removed");
    assert_eq!(out[2].after.as_deref(), Some(&[Value::Int(3)][..]));
    assert_eq!(after(&out[3], "action"), &text("KEEP"));
}

/// With `stop`, a failing batch is an error and nothing of it comes out; the host keeps
/// running and the next (good) batch goes through on a rebuilt instance.
fn assert_stops_and_recovers(action: &str, expected: fn(&PluginError) -> bool) {
    let mut c = chain(vec![tight("misbehave", OnError::Stop)]);
    let started = Instant::now();
    let result = c.run(jobs(&["ok", action, "ok"]));
    match result {
        Err(ChainError::Plugin(e)) => assert!(expected(&e), "{action}: unexpected error {e}"),
        other => panic!("{action}: expected a plugin error, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{action}: the failure took too long"
    );
    let out = c
        .run(jobs(&["ok", "ok"]))
        .expect("the chain recovers on a fresh instance");
    assert_eq!(ids(&out.events), [0, 1]);
}

#[test]
fn endless_loop_ends_by_the_deadline() {
    assert_stops_and_recovers("loop", |e| {
        matches!(
            e,
            PluginError::Timeout {
                timeout_ms: 200,
                ..
            }
        )
    });
}

#[test]
fn huge_allocation_hits_the_memory_cap() {
    assert_stops_and_recovers("alloc", |e| {
        matches!(e, PluginError::OutOfMemory { limit_mb: 64, .. })
    });
}

#[test]
fn panic_traps() {
    assert_stops_and_recovers(
        "panic",
        |e| matches!(e, PluginError::Trap { message, .. } if message.contains("unreachable") || message.contains("panic")),
    );
}

#[test]
fn plugin_error_on_one_event_stops_the_batch() {
    assert_stops_and_recovers(
        "fail",
        |e| matches!(e, PluginError::Failed { message, .. } if message == "asked to fail"),
    );
}

#[test]
fn fuel_limit_stops_a_loop() {
    let mut spec = tight("misbehave", OnError::Stop);
    spec.limits.fuel = Some(5_000_000);
    spec.limits.timeout_ms = 60_000;
    let mut c = chain(vec![spec]);
    match c.run(jobs(&["loop"])) {
        Err(ChainError::Plugin(PluginError::OutOfFuel {
            fuel: 5_000_000, ..
        })) => {}
        other => panic!("expected out of fuel, got {other:?}"),
    }
}

#[test]
fn skip_drops_only_the_events_that_fail() {
    let mut c = chain(vec![tight("misbehave", OnError::Skip)]);
    let out = c
        .run(jobs(&[
            "ok", "panic", "ok", "loop", "ok", "alloc", "fail", "ok",
        ]))
        .expect("skip never fails the batch");
    assert_eq!(ids(&out.events), [0, 2, 4, 7]);
    assert_eq!(out.skipped, 4);
    assert!(out.dead_letters.is_empty());
}

#[test]
fn dead_letter_hands_back_the_failing_events_with_their_errors() {
    let mut c = chain(vec![
        tight("misbehave", OnError::DeadLetter),
        spec("topic_name", r#"{"prefix": "app"}"#, OnError::Stop),
    ]);
    let out = c
        .run(jobs(&["ok", "panic", "ok", "fail", "loop"]))
        .expect("dead-letter never fails the batch");
    assert_eq!(ids(&out.events), [0, 2]);
    assert!(
        out.events
            .iter()
            .all(|e| e.topic.as_deref() == Some("app.public.jobs"))
    );
    let mut letters: Vec<_> = out
        .dead_letters
        .iter()
        .map(|d| {
            (
                ids(std::slice::from_ref(&d.event))[0],
                d.plugin.clone(),
                d.error.clone(),
            )
        })
        .collect();
    letters.sort();
    assert_eq!(letters.len(), 3);
    assert!(letters[0].2.contains("trapped"), "{:?}", letters[0]);
    assert!(letters[1].2.contains("asked to fail"), "{:?}", letters[1]);
    assert!(letters[2].2.contains("deadline"), "{:?}", letters[2]);
    assert!(letters.iter().all(|l| l.1 == "misbehave"));
    assert_eq!(out.skipped, 0);
}

#[test]
fn sandbox_gives_no_files_env_args_or_sockets() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    // SAFETY: set before any plugin runs; the variable must not reach the plugin.
    unsafe { std::env::set_var("WALFLOW_SECRET_FOR_SANDBOX_TEST", "leak") };
    let rel = relation(
        "public",
        "probe",
        &[
            ("id", "int4", true),
            ("file", "text", false),
            ("env", "text", false),
            ("args", "text", false),
            ("socket", "text", false),
        ],
    );
    let mut c = chain(vec![spec(
        "sandbox_probe",
        &format!(r#"{{"port": {port}}}"#),
        OnError::Stop,
    )]);
    let out = c
        .run(vec![event(
            &rel,
            Op::Create,
            vec![
                Value::Int(1),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ],
        )])
        .expect("probe runs");
    let e = &out.events[0];
    let Value::Text(file) = after(e, "file") else {
        panic!("file report")
    };
    assert_eq!(
        file.matches("error:").count(),
        3,
        "every file access fails: {file}"
    );
    assert_eq!(after(e, "env"), &text("0 variables"));
    assert_eq!(after(e, "args"), &text("0 arguments"));
    let Value::Text(socket) = after(e, "socket") else {
        panic!("socket report")
    };
    assert!(
        socket.starts_with("error:"),
        "the socket must not connect: {socket}"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing connected to the host"
    );
}

/// Replaces `path` atomically (write beside it, rename over it), as a deploy would.
fn replace_file(path: &std::path::Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn hot_reload_swaps_versions_at_batch_boundaries_under_a_steady_stream() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tag.wasm");
    std::fs::copy(plugin("tag_v1"), &path).unwrap();
    let rel = relation(
        "public",
        "ticks",
        &[("id", "int4", true), ("version", "text", false)],
    );
    let mut c = Chain::from_specs(&engine(), vec![PluginSpec::new(&path, "{}")]).expect("chain");
    let slot = c.slots()[0].clone();
    let _reloader = Reloader::watch(engine(), c.slots()).expect("watch");

    let next_id = std::cell::Cell::new(0i64);
    let mut batches: Vec<Vec<(i64, String)>> = Vec::new();
    let run_batch = |c: &mut Chain, batches: &mut Vec<Vec<(i64, String)>>| {
        let events: Vec<_> = (0..10)
            .map(|_| {
                next_id.set(next_id.get() + 1);
                event(
                    &rel,
                    Op::Create,
                    vec![Value::Int(next_id.get()), Value::Null],
                )
            })
            .collect();
        let out = c.run(events).expect("batch runs");
        batches.push(
            out.events
                .iter()
                .map(|e| {
                    let Value::Int(id) = after(e, "id") else {
                        panic!()
                    };
                    let Value::Text(v) = after(e, "version") else {
                        panic!("stamped")
                    };
                    (*id, v.clone())
                })
                .collect(),
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    for _ in 0..20 {
        run_batch(&mut c, &mut batches);
    }
    replace_file(&path, &std::fs::read(plugin("tag_v2")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot.reloads() == 0 {
        assert!(
            Instant::now() < deadline,
            "the new version was not loaded in time"
        );
        run_batch(&mut c, &mut batches);
    }
    for _ in 0..20 {
        run_batch(&mut c, &mut batches);
    }

    // Every event exactly once.
    let seen: Vec<i64> = batches.iter().flatten().map(|(id, _)| *id).collect();
    assert_eq!(seen, (1..=next_id.get()).collect::<Vec<_>>());
    // Each batch by exactly one version; v1 first, then v2 for good.
    let versions: Vec<&str> = batches
        .iter()
        .map(|b| {
            let set: HashSet<&str> = b.iter().map(|(_, v)| v.as_str()).collect();
            assert_eq!(set.len(), 1, "a batch ran on two versions: {b:?}");
            *set.iter().next().unwrap()
        })
        .collect();
    let first_v2 = versions.iter().position(|v| *v == "v2").expect("v2 served");
    assert!(first_v2 >= 20, "v2 cannot serve before the file changed");
    assert!(versions[..first_v2].iter().all(|v| *v == "v1"));
    assert!(
        versions[first_v2..].iter().all(|v| *v == "v2"),
        "{versions:?}"
    );
    assert_eq!(slot.version(), 2);

    // A corrupt replacement leaves v2 serving, and is counted.
    replace_file(&path, b"this is not a component");
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot.reload_failures() == 0 {
        assert!(
            Instant::now() < deadline,
            "the corrupt file was not noticed in time"
        );
        run_batch(&mut c, &mut batches);
    }
    for _ in 0..5 {
        run_batch(&mut c, &mut batches);
    }
    assert!(
        batches
            .iter()
            .rev()
            .take(5)
            .flatten()
            .all(|(_, v)| v == "v2")
    );
    assert_eq!(slot.version(), 2);
    assert_eq!(slot.reloads(), 1);

    // A plugin of another role is refused too.
    replace_file(&path, &std::fs::read(plugin("passthrough")).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while slot.reload_failures() < 2 {
        assert!(
            Instant::now() < deadline,
            "the role change was not noticed in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(slot.version(), 2);
}

#[test]
fn bad_plugins_are_refused_with_one_clear_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let load = |spec: PluginSpec| Chain::from_specs(&engine(), vec![spec]).map(drop);

    let missing = dir.path().join("missing.wasm");
    let err = load(PluginSpec::new(&missing, "{}")).unwrap_err();
    assert!(matches!(err, LoadError::Read { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    assert!(err.to_string().contains("missing.wasm"), "{err}");

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm but not really").unwrap();
    let err = load(PluginSpec::new(&junk, "{}")).unwrap_err();
    assert!(matches!(err, LoadError::NotAComponent { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    assert!(err.to_string().contains("junk.wasm"), "{err}");

    let err = load(PluginSpec::new(plugin("not-a-plugin"), "{}")).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    assert!(err.to_string().contains("wasi:cli/run"), "{err}");

    let err = load(PluginSpec::new(plugin("wrong_version"), "{}")).unwrap_err();
    assert!(matches!(err, LoadError::WrongVersion { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    assert!(err.to_string().contains("0.9.0"), "{err}");

    let err = load(PluginSpec::new(plugin("table_filter"), "{not json")).unwrap_err();
    assert!(matches!(err, LoadError::BadConfig { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");

    let err = load(PluginSpec::new(plugin("table_filter"), r#"{"include": 5}"#)).unwrap_err();
    assert!(matches!(err, LoadError::Init { .. }), "{err}");
    assert!(!err.to_string().contains('\n'), "one line: {err}");
    assert!(err.to_string().contains("table-filter config"), "{err}");
}

#[test]
fn plugin_run_command_round_trips_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let events = [order(1, "new"), order(2, "paid")];
    let lines: Vec<String> = events
        .iter()
        .map(|e| {
            let options = walflow::encode::EncodeOptions {
                include_types: true,
                ..Default::default()
            };
            walflow::encode::json::record_with(e, &options).to_string()
        })
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_walflow-under-test"))
        .args(["plugin", "run"])
        .arg("--plugin")
        .arg(format!(
            "{}={}",
            plugin("binary_repr").display(),
            r#"{"mode":"hex"}"#
        ))
        .arg("--plugin")
        .arg(format!(
            "{}={}",
            plugin("topic_name").display(),
            r#"{"prefix":"shop"}"#
        ))
        .arg("--input")
        .arg(&input)
        .output()
        .expect("run walflow");
    assert!(
        output.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["topic"], "shop.public.orders");
        assert_eq!(r["value"]["after"]["payload"], "deadbeef");
        assert_eq!(r["value"]["after"]["id"], i as i64 + 1);
    }

    // Bad input: one line on stderr naming the problem, non-zero exit.
    let bad_cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--plugin".into(), "/nonexistent/p.wasm".into()],
            "/nonexistent/p.wasm",
        ),
        (
            vec![
                "--plugin".into(),
                format!("{}={{oops", plugin("table_filter").display()),
            ],
            "not valid JSON",
        ),
        (
            vec![
                "--plugin".into(),
                plugin("not-a-plugin").display().to_string(),
            ],
            "none of walflow's worlds",
        ),
    ];
    for (args, needle) in bad_cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_walflow-under-test"))
            .args(["plugin", "run"])
            .args(&args)
            .arg("--input")
            .arg(&input)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} must fail");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let garbage = dir.path().join("garbage.jsonl");
    std::fs::write(&garbage, "{\"value\": 1}\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_walflow-under-test"))
        .args(["plugin", "run", "--plugin"])
        .arg(plugin("passthrough"))
        .arg("--input")
        .arg(&garbage)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("garbage.jsonl") && stderr.contains("line 1"),
        "{stderr}"
    );
}

#[test]
fn compiled_components_are_cached_by_content_hash() {
    let cache = tempfile::tempdir().unwrap();
    let engine = walflow::plugin::PluginEngine::new(Some(cache.path().to_path_buf())).unwrap();
    let cached = || -> Vec<_> {
        std::fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
            .collect()
    };
    let spec = || spec("topic_name", r#"{"prefix": "app"}"#, OnError::Stop);
    let mut first = Chain::from_specs(&engine, vec![spec()]).unwrap();
    assert_eq!(cached().len(), 1, "one compiled component in the cache");
    let stamp = std::fs::metadata(&cached()[0]).unwrap().modified().unwrap();
    let mut second = Chain::from_specs(&engine, vec![spec()]).unwrap();
    assert_eq!(
        cached().len(),
        1,
        "the same bytes reuse the cached compilation"
    );
    assert_eq!(
        std::fs::metadata(&cached()[0]).unwrap().modified().unwrap(),
        stamp
    );
    for c in [&mut first, &mut second] {
        let out = c.run(vec![order(1, "new")]).unwrap();
        assert_eq!(out.events[0].topic.as_deref(), Some("app.public.orders"));
    }
    Chain::from_specs(&engine, vec![PluginSpec::new(plugin("passthrough"), "{}")]).unwrap();
    assert_eq!(cached().len(), 2, "different bytes, another entry");
}

#[test]
fn guest_output_becomes_log_lines_tagged_with_the_plugin() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut c = chain(vec![tight("misbehave", OnError::Skip)]);
        let out = c.run(jobs(&["panic"])).expect("skip");
        assert_eq!(out.skipped, 1);
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("asked to panic"))
        .unwrap_or_else(|| panic!("the guest's panic message reached the log: {log}"));
    assert!(line.contains("plugin=misbehave"), "{line}");
    assert!(
        line.contains("stream=\"stderr\"") || line.contains("stream=stderr"),
        "{line}"
    );
}
