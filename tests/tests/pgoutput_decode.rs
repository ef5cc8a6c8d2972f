//! The pgoutput decoder, the typed values and the transaction assembler against what a real
//! PostgreSQL's pgoutput emits. `pg_logical_slot_get_binary_changes` returns one row per
//! pgoutput message with its LSN, exactly the payload the replication connection receives in
//! XLogData, so these tests exercise `walflow::pgoutput` and `walflow::value` on real bytes
//! without depending on the replication connection.

use walflow::assemble::{Assembler, Transaction};
use walflow::event::{Array, Event, Lsn, Op, TemporalKind, Value, parse_lsn};
use walflow::value::{TypeInfo, TypeRegistry};
use walflow_tests::{Cluster, TestDb};

/// The registry the replication connection builds: built-ins plus the database's own types.
async fn registry(client: &tokio_postgres::Client) -> TypeRegistry {
    let mut registry = TypeRegistry::new();
    let rows = client
        .query(
            "SELECT oid, typname::text, typtype::text, typbasetype, typelem, typcategory::text
               FROM pg_type WHERE oid >= 16384",
            &[],
        )
        .await
        .unwrap();
    for row in rows {
        let first = |i: usize| row.get::<_, String>(i).chars().next().unwrap_or(' ');
        registry.insert(TypeInfo::from_catalog(
            row.get(0),
            row.get::<_, String>(1),
            first(2),
            row.get(3),
            row.get(4),
            first(5),
        ));
    }
    registry
}

/// Consumes the slot's pending changes, one pgoutput message per row.
async fn messages(
    client: &tokio_postgres::Client,
    slot: &str,
    options: &[(&str, &str)],
) -> Vec<(u64, Vec<u8>)> {
    let options: String = options
        .iter()
        .map(|(k, v)| format!(", '{k}', '{v}'"))
        .collect();
    let sql = format!(
        "SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes('{slot}', NULL, NULL{options})"
    );
    client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let lsn: String = row.get(0);
            (parse_lsn(&lsn).unwrap(), row.get::<_, Vec<u8>>(1))
        })
        .collect()
}

/// Decodes and assembles the messages; every message must decode.
fn assemble(db: &TestDb, registry: TypeRegistry, msgs: &[(u64, Vec<u8>)]) -> Vec<Transaction> {
    let mut assembler = Assembler::new(db.name(), registry);
    msgs.iter()
        .filter_map(|(lsn, data)| {
            assembler
                .push_bytes(Lsn(*lsn), data)
                .unwrap_or_else(|e| panic!("message at {lsn:X} ({data:?}): {e}"))
        })
        .collect()
}

/// `B×3 C×3 I×2…`: which pgoutput messages arrived, for assertion messages.
fn tag_histogram(tags: &[u8]) -> String {
    let mut counts: Vec<(u8, usize)> = Vec::new();
    for &tag in tags {
        match counts.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, n)) => *n += 1,
            None => counts.push((tag, 1)),
        }
    }
    counts
        .iter()
        .map(|(t, n)| format!("{}×{n}", *t as char))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs each string as its own simple query.
async fn run(client: &tokio_postgres::Client, statements: &[&str]) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

fn slot_name(db: &TestDb) -> String {
    format!("s_{}", db.name())
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn temporal(kind: TemporalKind, s: &str) -> Value {
    Value::Temporal(kind, s.into())
}

fn array(dims: &[u32], elements: Vec<Value>) -> Value {
    Value::Array(Array {
        dims: dims.to_vec(),
        lower_bounds: Vec::new(),
        elements,
    })
}

fn raw(type_name: &str, text: &str) -> Value {
    Value::Raw {
        type_name: type_name.into(),
        text: text.into(),
    }
}

/// The value of `column` in the event's after row.
fn after<'a>(event: &'a Event, column: &str) -> &'a Value {
    let i = event
        .relation
        .column_index(column)
        .unwrap_or_else(|| panic!("no column {column}"));
    &event.after.as_ref().expect("an after row")[i]
}

const ALL_TYPES: &str = r#"
    CREATE EXTENSION citext;
    CREATE EXTENSION hstore;
    CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
    CREATE TYPE pair AS (a int, b text);
    CREATE TABLE all_types (
        id int PRIMARY KEY,
        c_bool bool, c_int2 int2, c_int4 int4, c_int8 int8,
        c_float4 float4, c_float8 float8, c_numeric numeric,
        c_text text, c_varchar varchar(10), c_bpchar char(5), c_name name, c_char "char",
        c_xml xml, c_bytea bytea, c_uuid uuid, c_json json, c_jsonb jsonb,
        c_date date, c_time time, c_timetz timetz, c_ts timestamp, c_tstz timestamptz,
        c_interval interval,
        c_inet inet, c_cidr cidr, c_macaddr macaddr, c_money money, c_bit bit(3), c_varbit varbit,
        c_oid oid, c_mood mood, c_posint posint,
        c_int_arr int4[], c_text_arr text[], c_2d int4[], c_mood_arr mood[], c_tstz_arr timestamptz[],
        c_range int4range, c_point point, c_pair pair,
        c_citext citext, c_citext_arr citext[], c_hstore hstore,
        c_pair_arr pair[], c_range_arr int4range[]
    );
    CREATE PUBLICATION pub FOR TABLE all_types;
"#;

const EDGE_ROW: &str = r#"
    INSERT INTO all_types VALUES (
        1, true, -32768, 2147483647, -9223372036854775808,
        'NaN', '-Infinity', '-123456789012345678901234567890.000000001',
        'héllo "w"', 'abc', 'ab', 'nm', 'x',
        '<a>1</a>', '\x00ff10', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '{"a": [1, 2]}', '{"b": 1, "a": 2}',
        '0044-03-15 BC', '24:00:00', '03:04:05.5-05:30', 'infinity', '2024-01-02 03:04:05.123+00',
        '-1 year -2 mons +3 days -04:05:06.5',
        '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 1234.56, B'101', B'10',
        4294967295, 'happy', 7,
        '{1,NULL,3}', ARRAY['a,b', 'NULL', NULL, 'q"uote', 'back\slash', '', ' sp '],
        '[0:1][1:2]={{1,2},{3,4}}', '{sad,happy}', ARRAY['2024-06-30 23:59:59.999999+00'::timestamptz, 'infinity'],
        '[1,5)', '(1,2)', '(1,x)',
        'MiXed', '{a,B}', 'a=>1',
        ARRAY[ROW(1, 'x'), ROW(2, 'y "z"'), NULL]::pair[], '[0:1]={"[1,5)",empty}'
    );
    INSERT INTO all_types (id) VALUES (2);
    INSERT INTO all_types (id, c_float4, c_float8, c_numeric, c_date, c_ts, c_tstz, c_interval, c_bytea)
        VALUES (3, 'Infinity', 1.5e300, 'NaN', '-infinity', '2024-02-29 12:00:00', '-infinity',
                '00:00:00', 'esc\\ape'::bytea);
"#;

#[tokio::test]
async fn every_type_decodes_from_real_pgoutput() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client.batch_execute(ALL_TYPES).await.unwrap();
    let slot = slot_name(&db);
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    client.batch_execute(EDGE_ROW).await.unwrap();
    // Output functions run in the decoding session: use a zone with a half-hour offset.
    client
        .batch_execute("SET TimeZone = 'Asia/Kolkata'")
        .await
        .unwrap();
    let msgs = messages(
        &client,
        &slot,
        &[("proto_version", "1"), ("publication_names", "pub")],
    )
    .await;
    let txns = assemble(&db, registry(&client).await, &msgs);
    let events: Vec<&Event> = txns.iter().flat_map(|t| &t.events).collect();
    assert_eq!(events.len(), 3, "three inserts");
    assert!(events.iter().all(|e| e.op == Op::Create));
    let (edge, nulls, specials) = (events[0], events[1], events[2]);

    let expect = [
        ("c_bool", Value::Bool(true)),
        ("c_int2", Value::Int(-32768)),
        ("c_int4", Value::Int(2_147_483_647)),
        ("c_int8", Value::Int(i64::MIN)),
        ("c_float8", Value::Float(f64::NEG_INFINITY)),
        (
            "c_numeric",
            Value::Numeric("-123456789012345678901234567890.000000001".into()),
        ),
        ("c_text", text("héllo \"w\"")),
        ("c_varchar", text("abc")),
        ("c_bpchar", text("ab   ")),
        ("c_name", text("nm")),
        ("c_char", text("x")),
        ("c_xml", text("<a>1</a>")),
        ("c_bytea", Value::Bytes(vec![0, 255, 16])),
        (
            "c_uuid",
            Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
        ),
        ("c_json", Value::Json(r#"{"a": [1, 2]}"#.into())),
        ("c_jsonb", Value::Json(r#"{"a": 2, "b": 1}"#.into())),
        ("c_date", temporal(TemporalKind::Date, "-0043-03-15")),
        ("c_time", temporal(TemporalKind::Time, "24:00:00")),
        (
            "c_timetz",
            temporal(TemporalKind::TimeTz, "03:04:05.5-05:30"),
        ),
        ("c_ts", temporal(TemporalKind::Timestamp, "infinity")),
        (
            "c_tstz",
            temporal(TemporalKind::TimestampTz, "2024-01-02T08:34:05.123+05:30"),
        ),
        (
            "c_interval",
            temporal(TemporalKind::Interval, "P-1Y-2M3DT-4H-5M-6.5S"),
        ),
        ("c_inet", text("192.168.0.1/24")),
        ("c_cidr", text("10.0.0.0/8")),
        ("c_macaddr", text("08:00:2b:01:02:03")),
        ("c_money", text("$1,234.56")),
        ("c_bit", text("101")),
        ("c_varbit", text("10")),
        ("c_oid", Value::Int(4_294_967_295)),
        ("c_mood", text("happy")),
        ("c_posint", Value::Int(7)),
        (
            "c_int_arr",
            array(&[3], vec![Value::Int(1), Value::Null, Value::Int(3)]),
        ),
        (
            "c_text_arr",
            array(
                &[7],
                vec![
                    text("a,b"),
                    text("NULL"),
                    Value::Null,
                    text("q\"uote"),
                    text("back\\slash"),
                    text(""),
                    text(" sp "),
                ],
            ),
        ),
        (
            "c_2d",
            Value::Array(Array {
                dims: vec![2, 2],
                lower_bounds: vec![0, 1],
                elements: (1..=4).map(Value::Int).collect(),
            }),
        ),
        ("c_mood_arr", array(&[2], vec![text("sad"), text("happy")])),
        (
            "c_tstz_arr",
            array(
                &[2],
                vec![
                    temporal(
                        TemporalKind::TimestampTz,
                        "2024-07-01T05:29:59.999999+05:30",
                    ),
                    temporal(TemporalKind::TimestampTz, "infinity"),
                ],
            ),
        ),
        ("c_range", raw("int4range", "[1,5)")),
        ("c_point", raw("point", "(1,2)")),
        ("c_pair", raw("pair", "(1,x)")),
        ("c_citext", text("MiXed")),
        ("c_citext_arr", array(&[2], vec![text("a"), text("B")])),
        ("c_hstore", raw("hstore", r#""a"=>"1""#)),
        // Arrays of composites and ranges hold what the elements are outside arrays.
        (
            "c_pair_arr",
            array(
                &[3],
                vec![
                    raw("pair", "(1,x)"),
                    raw("pair", r#"(2,"y ""z""")"#),
                    Value::Null,
                ],
            ),
        ),
        (
            "c_range_arr",
            Value::Array(Array {
                dims: vec![2],
                lower_bounds: vec![0],
                elements: vec![raw("int4range", "[1,5)"), raw("int4range", "empty")],
            }),
        ),
    ];
    for (column, want) in &expect {
        assert_eq!(after(edge, column), want, "{column}");
    }
    match after(edge, "c_float4") {
        Value::Float(f) => assert!(f.is_nan()),
        other => panic!("c_float4 is {other:?}"),
    }
    let types: Vec<&str> = edge
        .relation
        .columns
        .iter()
        .map(|c| c.type_name.as_str())
        .collect();
    assert_eq!(&types[..4], ["int4", "bool", "int2", "int4"]);
    let type_of = |column: &str| types[edge.relation.column_index(column).unwrap()];
    assert_eq!(type_of("c_mood"), "mood");
    assert_eq!(type_of("c_mood_arr"), "_mood");
    assert_eq!(type_of("c_2d"), "_int4");
    // pgoutput describes a domain column by its base type.
    assert_eq!(type_of("c_posint"), "int4");
    assert_eq!(edge.key(), vec![("id", &Value::Int(1))]);

    // Row 2: every column but the key is NULL.
    let row = nulls.after.as_ref().unwrap();
    assert_eq!(row[0], Value::Int(2));
    assert!(row[1..].iter().all(|v| *v == Value::Null));

    assert_eq!(after(specials, "c_float4"), &Value::Float(f64::INFINITY));
    assert_eq!(after(specials, "c_float8"), &Value::Float(1.5e300));
    assert_eq!(after(specials, "c_numeric"), &Value::Numeric("NaN".into()));
    assert_eq!(
        after(specials, "c_date"),
        &temporal(TemporalKind::Date, "-infinity")
    );
    assert_eq!(
        after(specials, "c_ts"),
        &temporal(TemporalKind::Timestamp, "2024-02-29T12:00:00")
    );
    assert_eq!(
        after(specials, "c_tstz"),
        &temporal(TemporalKind::TimestampTz, "-infinity")
    );
    assert_eq!(
        after(specials, "c_interval"),
        &temporal(TemporalKind::Interval, "PT0S")
    );
    assert_eq!(
        after(specials, "c_bytea"),
        &Value::Bytes(b"esc\\ape".to_vec())
    );

    // Cross-check the reshaped text against PostgreSQL's own ISO-8601 output.
    client
        .batch_execute("SET IntervalStyle = 'iso_8601'")
        .await
        .unwrap();
    let row = client
        .query_one(
            "SELECT c_interval::text, to_json(c_tstz)#>>'{}' FROM all_types WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        after(edge, "c_interval"),
        &temporal(TemporalKind::Interval, &row.get::<_, String>(0))
    );
    assert_eq!(
        after(edge, "c_tstz"),
        &temporal(TemporalKind::TimestampTz, &row.get::<_, String>(1))
    );
    // And the scalars against the binary protocol's values.
    let row = client
        .query_one(
            "SELECT c_int2, c_int4, c_int8, c_float8, c_text, c_bytea FROM all_types WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        after(edge, "c_int2"),
        &Value::Int(row.get::<_, i16>(0).into())
    );
    assert_eq!(
        after(edge, "c_int4"),
        &Value::Int(row.get::<_, i32>(1).into())
    );
    assert_eq!(after(edge, "c_int8"), &Value::Int(row.get::<_, i64>(2)));
    assert_eq!(after(edge, "c_float8"), &Value::Float(row.get::<_, f64>(3)));
    assert_eq!(after(edge, "c_text"), &Value::Text(row.get(4)));
    assert_eq!(after(edge, "c_bytea"), &Value::Bytes(row.get(5)));
}

#[tokio::test]
async fn every_change_kind_from_real_sql() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY, note text, big text);
             ALTER TABLE parent ALTER COLUMN big SET STORAGE EXTERNAL;
             CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent(id), v text);
             ALTER TABLE child REPLICA IDENTITY FULL;
             CREATE PUBLICATION pub FOR TABLE parent, child;",
        )
        .await
        .unwrap();
    let slot = slot_name(&db);
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    // One statement (or explicit transaction) per call: several statements in one simple
    // query would share an implicit transaction.
    run(
        &client,
        &[
            "BEGIN;
             INSERT INTO parent VALUES (1, 'one', repeat('x', 10000)), (2, 'two', 'small');
             INSERT INTO child VALUES (10, 1, 'a'), (11, NULL, 'b');
             COMMIT;",
            "UPDATE parent SET note = 'uno' WHERE id = 1",
            "UPDATE parent SET id = 3 WHERE id = 2",
            "UPDATE child SET v = 'bb' WHERE id = 11",
            "DELETE FROM child WHERE id = 10",
            "DELETE FROM parent WHERE id = 1",
            "SELECT pg_logical_emit_message(false, 'heartbeat', 'beat')",
            "BEGIN;
             SELECT pg_logical_emit_message(true, 'audit', 'in-txn');
             ALTER TABLE parent ADD COLUMN extra int DEFAULT 5;
             INSERT INTO parent (id, note) VALUES (4, 'four');
             COMMIT;",
            "TRUNCATE parent CASCADE",
            "TRUNCATE child RESTART IDENTITY",
        ],
    )
    .await;
    let msgs = messages(
        &client,
        &slot,
        &[
            ("proto_version", "1"),
            ("publication_names", "pub"),
            ("messages", "true"),
        ],
    )
    .await;
    let txns = assemble(&db, registry(&client).await, &msgs);
    let summary: Vec<Vec<(Op, String)>> = txns
        .iter()
        .map(|t| {
            t.events
                .iter()
                .map(|e| (e.op, e.relation.table.clone()))
                .collect()
        })
        .collect();
    let p = || "parent".to_string();
    let c = || "child".to_string();
    let m = String::new;
    assert_eq!(
        summary,
        vec![
            vec![
                (Op::Create, p()),
                (Op::Create, p()),
                (Op::Create, c()),
                (Op::Create, c())
            ],
            vec![(Op::Update, p())],
            vec![(Op::Update, p())],
            vec![(Op::Update, c())],
            vec![(Op::Delete, c())],
            vec![(Op::Delete, p())],
            vec![(Op::Message, m())],
            vec![(Op::Message, m()), (Op::Create, p())],
            vec![(Op::Truncate, p()), (Op::Truncate, c())],
            vec![(Op::Truncate, c())],
        ]
    );

    // Every event carries its own LSN, the xid and commit time of its transaction, the db.
    for txn in &txns {
        for e in &txn.events {
            assert_eq!(&*e.source.db, db.name());
            assert!(!e.source.lsn.is_zero() && e.source.lsn <= txn.end_lsn);
            if txn.xid.is_some() {
                assert_eq!(e.source.xid, txn.xid);
                assert_eq!(e.source.commit_time_us, txn.commit_time_us);
                assert!(txn.commit_time_us > 1_700_000_000_000_000);
            }
        }
    }
    let lsns: Vec<u64> = txns[0].events.iter().map(|e| e.source.lsn.0).collect();
    assert!(lsns.windows(2).all(|w| w[0] < w[1]), "{lsns:?}");

    // A TOASTed column the update left alone is UnchangedToast, not NULL; no old row under
    // REPLICA IDENTITY DEFAULT when the key did not change.
    let toast = &txns[1].events[0];
    assert_eq!(
        toast.after.as_ref().unwrap(),
        &vec![Value::Int(1), text("uno"), Value::UnchangedToast]
    );
    assert_eq!(toast.before, None);
    // A key change under DEFAULT sends the old key only.
    let rekey = &txns[2].events[0];
    assert_eq!(
        rekey.before.as_ref().unwrap(),
        &vec![Value::Int(2), Value::Null, Value::Null]
    );
    assert_eq!(rekey.after.as_ref().unwrap()[0], Value::Int(3));
    // REPLICA IDENTITY FULL sends the whole old row, for updates and deletes.
    assert_eq!(
        txns[3].events[0].before.as_ref().unwrap(),
        &vec![Value::Int(11), Value::Null, text("b")]
    );
    assert_eq!(
        txns[4].events[0].before.as_ref().unwrap(),
        &vec![Value::Int(10), Value::Int(1), text("a")]
    );
    assert_eq!(txns[4].events[0].after, None);
    // A delete under DEFAULT: key only.
    assert_eq!(
        txns[5].events[0].before.as_ref().unwrap(),
        &vec![Value::Int(1), Value::Null, Value::Null]
    );

    // Logical messages, non-transactional as their own unit, transactional inside.
    assert_eq!(txns[6].xid, None);
    let beat = txns[6].events[0].message.as_ref().unwrap();
    assert_eq!(
        (
            beat.transactional,
            beat.prefix.as_str(),
            beat.content.as_slice()
        ),
        (false, "heartbeat", &b"beat"[..])
    );
    let audit = txns[7].events[0].message.as_ref().unwrap();
    assert!(audit.transactional);
    assert_eq!(audit.content, b"in-txn");

    // The schema change takes effect from the next event.
    let added = &txns[7].events[1];
    assert_eq!(added.relation.columns.len(), 4);
    assert_eq!(added.relation.columns[3].name, "extra");
    assert_eq!(
        added.after.as_ref().unwrap(),
        &vec![Value::Int(4), text("four"), Value::Null, Value::Int(5)]
    );
    assert_eq!(txns[0].events[0].relation.columns.len(), 3);
}

#[tokio::test]
async fn streamed_transactions_with_aborts_from_real_sql() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);
             CREATE PUBLICATION pub FOR TABLE big;",
        )
        .await
        .unwrap();
    let slot = slot_name(&db);
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    // Each transaction is far beyond logical_decoding_work_mem (64kB), so it is streamed.
    run(
        &client,
        &[
            "BEGIN;
             INSERT INTO big SELECT g, repeat('p', 100) FROM generate_series(1, 3000) g;
             SAVEPOINT s1;
             INSERT INTO big SELECT g, repeat('q', 100) FROM generate_series(3001, 6000) g;
             ROLLBACK TO SAVEPOINT s1;
             INSERT INTO big SELECT g, repeat('r', 100) FROM generate_series(6001, 7000) g;
             COMMIT;",
            "BEGIN;
             INSERT INTO big SELECT g, repeat('z', 100) FROM generate_series(10001, 14000) g;
             ROLLBACK;",
            "INSERT INTO big VALUES (20000, 'after')",
        ],
    )
    .await;
    client
        .batch_execute("SET logical_decoding_work_mem = '64kB'")
        .await
        .unwrap();
    let msgs = messages(
        &client,
        &slot,
        &[
            ("proto_version", "2"),
            ("publication_names", "pub"),
            ("streaming", "on"),
        ],
    )
    .await;
    let tags: Vec<u8> = msgs
        .iter()
        .filter_map(|(_, d)| d.first().copied())
        .collect();
    let histogram = tag_histogram(&tags);
    assert!(
        tags.contains(&b'S'),
        "the transaction was streamed: {histogram}"
    );
    assert!(tags.contains(&b'A'), "an abort was streamed: {histogram}");
    assert!(
        tags.contains(&b'c'),
        "a stream commit was sent: {histogram}"
    );
    let txns = assemble(&db, registry(&client).await, &msgs);
    assert_eq!(txns.len(), 2, "the aborted transaction is never emitted");
    let ids: Vec<i64> = txns[0]
        .events
        .iter()
        .map(|e| match e.after.as_ref().unwrap()[0] {
            Value::Int(i) => i,
            ref other => panic!("{other:?}"),
        })
        .collect();
    let want: Vec<i64> = (1..=3000).chain(6001..=7000).collect();
    assert_eq!(ids, want, "the rolled-back savepoint's rows are dropped");
    assert!(
        txns[0]
            .events
            .iter()
            .all(|e| e.source.commit_time_us == txns[0].commit_time_us
                && e.source.xid == txns[0].xid)
    );
    assert_eq!(txns[1].events.len(), 1);
    assert_eq!(txns[1].events[0].after.as_ref().unwrap()[1], text("after"));
}

#[tokio::test]
async fn two_phase_transactions_from_real_sql() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE tp (id int PRIMARY KEY);
             CREATE PUBLICATION pub FOR TABLE tp;",
        )
        .await
        .unwrap();
    let slot = slot_name(&db);
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput', false, true)",
            &[&slot],
        )
        .await
        .unwrap();
    let gid = |n: &str| format!("{}_{n}", db.name());
    run(
        &client,
        &[
            &format!(
                "BEGIN; INSERT INTO tp VALUES (1); PREPARE TRANSACTION '{}';",
                gid("keep")
            ),
            &format!(
                "BEGIN; INSERT INTO tp VALUES (2); PREPARE TRANSACTION '{}';",
                gid("drop")
            ),
            "INSERT INTO tp VALUES (3)",
            &format!("COMMIT PREPARED '{}'", gid("keep")),
            &format!("ROLLBACK PREPARED '{}'", gid("drop")),
        ],
    )
    .await;
    let msgs = messages(
        &client,
        &slot,
        &[
            ("proto_version", "3"),
            ("publication_names", "pub"),
            ("two_phase", "on"),
        ],
    )
    .await;
    let tags: Vec<u8> = msgs
        .iter()
        .filter_map(|(_, d)| d.first().copied())
        .collect();
    for tag in [b'b', b'P', b'K', b'r'] {
        assert!(tags.contains(&tag), "tag {} in {tags:?}", tag as char);
    }
    let txns = assemble(&db, registry(&client).await, &msgs);
    let summary: Vec<(Option<String>, Vec<Value>)> = txns
        .iter()
        .map(|t| {
            (
                t.gid.clone(),
                t.events
                    .iter()
                    .map(|e| e.after.as_ref().unwrap()[0].clone())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (None, vec![Value::Int(3)]),
            (Some(gid("keep")), vec![Value::Int(1)]),
        ],
        "the plain commit, then the committed prepared transaction; the rolled back one never"
    );
}

/// The highest pgoutput protocol a major supports, and the options that go with it.
fn protocol_options(major: u32) -> Vec<(&'static str, &'static str)> {
    let mut options = vec![("publication_names", "pub")];
    match major {
        ..=13 => options.push(("proto_version", "1")),
        14 => options.push(("proto_version", "2")),
        15 => options.push(("proto_version", "3")),
        _ => options.push(("proto_version", "4")),
    }
    match major {
        ..=13 => {}
        14 | 15 => options.extend([("streaming", "on"), ("messages", "true")]),
        _ => options.extend([("streaming", "parallel"), ("messages", "true")]),
    }
    options
}

/// Every installed PostgreSQL (10–18) at its highest protocol: every message decodes and the
/// assembled transactions are the committed ones, streamed (14+) or not.
#[tokio::test]
async fn every_installed_version_decodes_at_its_highest_protocol() {
    let installs = walflow_tests::pg_installs();
    assert!(!installs.is_empty(), "no PostgreSQL installed");
    for install in installs
        .iter()
        .filter(|i| i.origin == "npm" || installs.len() == 1)
    {
        let major = install.major;
        let cluster =
            Cluster::start(walflow_tests::ClusterOptions::default().bin_dir(&install.bin_dir))
                .unwrap_or_else(|e| panic!("PostgreSQL {major} does not start: {e:#}"));
        let db = cluster.new_database().await;
        let client = db.client().await;
        run(
            &client,
            &[
                "CREATE TABLE m (id int PRIMARY KEY, v text);
                 CREATE PUBLICATION pub FOR TABLE m;",
                "SELECT pg_create_logical_replication_slot('s', 'pgoutput')",
                "INSERT INTO m VALUES (1, 'a'), (2, 'b')",
                "UPDATE m SET v = 'c' WHERE id = 1",
                "DELETE FROM m WHERE id = 2",
                "BEGIN;
                 SELECT pg_logical_emit_message(true, 'p', 'x');
                 INSERT INTO m VALUES (3, 'd');
                 COMMIT;",
                "BEGIN;
                 INSERT INTO m SELECT g, repeat('p', 100) FROM generate_series(1000, 4999) g;
                 COMMIT;",
                "BEGIN;
                 INSERT INTO m SELECT g, repeat('z', 100) FROM generate_series(10000, 13999) g;
                 ROLLBACK;",
                "INSERT INTO m VALUES (99, 'end')",
            ],
        )
        .await;
        if major >= 11 {
            run(&client, &["TRUNCATE m"]).await;
        }
        if major >= 13 {
            run(&client, &["SET logical_decoding_work_mem = '64kB'"]).await;
        }
        let msgs = messages(&client, "s", &protocol_options(major)).await;
        let tags: Vec<u8> = msgs
            .iter()
            .filter_map(|(_, d)| d.first().copied())
            .collect();
        if major >= 14 {
            assert!(
                tags.contains(&b'S'),
                "PostgreSQL {major} streamed: {tags:?}"
            );
        }
        if major >= 16 {
            let aborts: Vec<_> = msgs
                .iter()
                .filter(|(_, d)| d.first() == Some(&b'A'))
                .map(|(_, d)| walflow::pgoutput::decode(d, false).unwrap())
                .collect();
            // PostgreSQL 18 skips streaming a transaction it already knows aborted, so it
            // may send no Stream Abort at all when decoding happens after the fact.
            if major < 18 {
                assert!(!aborts.is_empty(), "PostgreSQL {major} streamed an abort");
            }
            for abort in &aborts {
                assert!(
                    matches!(
                        abort,
                        walflow::pgoutput::Message::StreamAbort(a) if a.abort.is_some()
                    ),
                    "PostgreSQL {major}: a v4 parallel Stream Abort carries its LSN: {abort:?}"
                );
            }
        }
        let txns = assemble(&db, registry(&client).await, &msgs);
        let mut summary: Vec<(Op, i64)> = Vec::new();
        for e in txns.iter().flat_map(|t| &t.events) {
            let id = e
                .after
                .as_ref()
                .or(e.before.as_ref())
                .and_then(|row| row.first())
                .map_or(-1, |v| match v {
                    Value::Int(i) => *i,
                    other => panic!("PostgreSQL {major}: id is {other:?}"),
                });
            summary.push((e.op, id));
        }
        let mut want = vec![
            (Op::Create, 1),
            (Op::Create, 2),
            (Op::Update, 1),
            (Op::Delete, 2),
        ];
        if major >= 14 {
            want.push((Op::Message, -1));
        }
        want.push((Op::Create, 3));
        want.extend((1000..5000).map(|id| (Op::Create, id)));
        want.push((Op::Create, 99));
        if major >= 11 {
            want.push((Op::Truncate, -1));
        }
        assert_eq!(summary.len(), want.len(), "PostgreSQL {major}");
        assert!(summary == want, "PostgreSQL {major}: events differ");
    }
}

/// Random text over the characters that stress quoting and escaping.
fn random_text(rng: &mut impl rand::Rng) -> String {
    const CHARS: &[char] = &[
        'a', 'Z', '0', ' ', '"', '\\', ',', '{', '}', '(', ')', 'é', '日', '\t', '\n', 'N', 'U',
        'L', '\'', '🦀',
    ];
    let len = rng.random_range(0..12);
    (0..len)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())])
        .collect()
}

/// What a `timestamptz` read as `to_json(ts)`, `to_json(ts AT TIME ZONE 'UTC')` (columns 1
/// and 3) is in events: PostgreSQL's JSON text, except that an offset with seconds (local mean
/// time, e.g. `-03:30:52` in St. John's before 1935), which ISO-8601 cannot say, is UTC.
fn iso_timestamptz(row: &tokio_postgres::Row) -> String {
    let local: String = row.get(1);
    let offset = local
        .as_bytes()
        .get(local.len().saturating_sub(9)..)
        .unwrap_or_default();
    let has_seconds = offset.len() == 9
        && matches!(offset[0], b'+' | b'-')
        && offset[3] == b':'
        && offset[6] == b':';
    if has_seconds {
        format!("{}+00:00", row.get::<_, String>(3))
    } else {
        local
    }
}

/// Random values written through the binary protocol come back from pgoutput's text as the
/// same typed values (or, for types the host keeps as exact text, as what PostgreSQL prints).
#[tokio::test]
async fn random_values_round_trip() {
    use rand::{Rng, SeedableRng};

    let seed: u64 = rand::random();
    eprintln!("random_values_round_trip seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    run(
        &client,
        &[
            "CREATE TABLE r (id int PRIMARY KEY, i8 int8, f8 float8, t text, n numeric,
                             ts timestamptz, iv interval, arr text[], b bytea);
             CREATE PUBLICATION pub FOR TABLE r;",
            "SELECT pg_create_logical_replication_slot(current_database(), 'pgoutput')",
        ],
    )
    .await;
    let insert = client
        .prepare(
            "INSERT INTO r VALUES ($1, $2, $3, $4, $5::text::numeric,
                 to_timestamp($6::float8 / 1000000),
                 make_interval(years => $7, months => $8, days => $9, secs => $10),
                 $11, $12)",
        )
        .await
        .unwrap();
    const ROWS: i32 = 300;
    let mut written = Vec::new();
    for id in 0..ROWS {
        let i8: i64 = rng.random();
        let f8 = loop {
            let f = f64::from_bits(rng.random());
            if !f.is_nan() {
                break f;
            }
        };
        let t = random_text(&mut rng);
        let digits: u64 = rng.random();
        let scale = rng.random_range(0..8);
        let n = format!(
            "{}{}.{:0>width$}",
            if rng.random_bool(0.5) { "-" } else { "" },
            digits,
            rng.random_range(0..10_000_000u32),
            width = scale
        );
        // Between 0001 and 9999 AD, microsecond precision.
        let ts_us: f64 =
            rng.random_range(-62_135_596_800_000_000i64..253_402_300_799_000_000) as f64;
        let (years, months, days) = (
            rng.random_range(-100..100),
            rng.random_range(-30..30),
            rng.random_range(-400..400),
        );
        let secs = rng.random_range(-1_000_000i64..1_000_000) as f64 / 1000.0;
        let arr: Vec<Option<String>> = (0..rng.random_range(0..5))
            .map(|_| rng.random_bool(0.8).then(|| random_text(&mut rng)))
            .collect();
        let b: Vec<u8> = (0..rng.random_range(0..16)).map(|_| rng.random()).collect();
        client
            .execute(
                &insert,
                &[
                    &id, &i8, &f8, &t, &n, &ts_us, &years, &months, &days, &secs, &arr, &b,
                ],
            )
            .await
            .unwrap_or_else(|e| panic!("row {id}: {e}"));
        written.push((i8, f8, t, arr, b));
    }
    client
        .batch_execute("SET TimeZone = 'America/St_Johns'")
        .await
        .unwrap();
    let msgs = messages(
        &client,
        db.name(),
        &[("proto_version", "1"), ("publication_names", "pub")],
    )
    .await;
    let events: Vec<Event> = assemble(&db, registry(&client).await, &msgs)
        .into_iter()
        .flat_map(|t| t.events)
        .collect();
    assert_eq!(events.len(), ROWS as usize);

    client
        .batch_execute("SET IntervalStyle = 'iso_8601'")
        .await
        .unwrap();
    let printed = client
        .query(
            "SELECT n::text, to_json(ts)#>>'{}', iv::text, to_json(ts AT TIME ZONE 'UTC')#>>'{}'
               FROM r ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    for (id, ((event, row), (i8, f8, t, arr, b))) in
        events.iter().zip(&printed).zip(&written).enumerate()
    {
        let got = event.after.as_ref().unwrap();
        let context = format!("row {id} (seed {seed})");
        assert_eq!(got[0], Value::Int(id as i64), "{context}");
        assert_eq!(got[1], Value::Int(*i8), "{context}");
        match got[2] {
            Value::Float(f) => assert_eq!(f.to_bits(), f8.to_bits(), "{context}: {f} vs {f8}"),
            ref other => panic!("{context}: float8 decoded as {other:?}"),
        }
        assert_eq!(got[3], Value::Text(t.clone()), "{context}");
        assert_eq!(got[4], Value::Numeric(row.get(0)), "{context}");
        assert_eq!(
            got[5],
            Value::Temporal(TemporalKind::TimestampTz, iso_timestamptz(row)),
            "{context}"
        );
        assert_eq!(
            got[6],
            Value::Temporal(TemporalKind::Interval, row.get(2)),
            "{context}"
        );
        let elements = arr
            .iter()
            .map(|e| e.as_ref().map_or(Value::Null, |s| Value::Text(s.clone())))
            .collect();
        let dims = if arr.is_empty() {
            vec![]
        } else {
            vec![arr.len() as u32]
        };
        let lower_bounds = Vec::new();
        let expected = Value::Array(Array {
            dims,
            lower_bounds,
            elements,
        });
        assert_eq!(got[7], expected, "{context}");
        assert_eq!(got[8], Value::Bytes(b.clone()), "{context}");
    }
}
