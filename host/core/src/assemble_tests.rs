//! The assembler driven by hand-built message sequences: plain, streamed and two-phase
//! transactions, schema changes, TOAST, truncates, logical messages and protocol errors.

use std::sync::Arc;

use walflow_pgoutput::wire::{Col, Wire};
use walflow_pgoutput::*;

use crate::assemble::*;
use crate::event::{Lsn, Op, Value};
use crate::value::{TypeInfo, TypeKind, TypeRegistry};

const PG_TS: i64 = 1_000_000;
const UNIX_TS: i64 = PG_TS + PG_EPOCH_OFFSET_US;

struct Harness {
    asm: Assembler,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            asm: Assembler::new("appdb", TypeRegistry::new()),
        }
    }

    /// Feeds a message; returns what it completed.
    fn push(&mut self, lsn: u64, w: Wire) -> Option<Transaction> {
        self.asm
            .push_bytes(Lsn(lsn), &w.0)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Feeds a message that must not complete anything.
    fn feed(&mut self, lsn: u64, w: Wire) {
        assert_eq!(self.push(lsn, w), None);
    }

    fn err(&mut self, w: Wire) -> AssembleError {
        self.asm.push_bytes(Lsn(1), &w.0).unwrap_err()
    }
}

/// `public.items (id int4 key, name text, tags _text)`, replica identity default.
fn items(xid: Option<u32>) -> Wire {
    Wire::tag(b'R')
        .xid(xid)
        .u32(100)
        .str("public")
        .str("items")
        .u8(b'd')
        .i16(3)
        .u8(1)
        .str("id")
        .u32(23)
        .i32(-1)
        .u8(0)
        .str("name")
        .u32(25)
        .i32(-1)
        .u8(0)
        .str("tags")
        .u32(1009)
        .i32(-1)
}

fn begin(xid: u32) -> Wire {
    Wire::tag(b'B').u64(500).i64(PG_TS).u32(xid)
}

fn commit(end: u64) -> Wire {
    Wire::tag(b'C').u8(0).u64(500).u64(end).i64(PG_TS)
}

fn insert(xid: Option<u32>, rel: u32, cols: &[Col<'_>]) -> Wire {
    Wire::tag(b'I').xid(xid).u32(rel).u8(b'N').tuple(cols)
}

fn t(s: &str) -> Value {
    Value::Text(s.into())
}

#[test]
fn a_plain_transaction_becomes_typed_events() {
    let mut h = Harness::new();
    h.feed(10, items(None));
    h.feed(20, begin(742));
    h.feed(
        30,
        insert(
            None,
            100,
            &[
                Col::Text("1"),
                Col::Text("one"),
                Col::Text("{a,\"b c\",NULL}"),
            ],
        ),
    );
    h.feed(
        40,
        Wire::tag(b'U')
            .u32(100)
            .u8(b'N')
            .tuple(&[Col::Text("1"), Col::Text("uno"), Col::Null]),
    );
    h.feed(
        50,
        Wire::tag(b'U')
            .u32(100)
            .u8(b'K')
            .tuple(&[Col::Text("1"), Col::Null, Col::Null])
            .u8(b'N')
            .tuple(&[Col::Text("2"), Col::Text("uno"), Col::Null]),
    );
    h.feed(
        60,
        Wire::tag(b'D')
            .u32(100)
            .u8(b'K')
            .tuple(&[Col::Text("2"), Col::Null, Col::Null]),
    );
    let txn = h
        .push(70, commit(900))
        .expect("commit completes the transaction");

    assert_eq!(txn.xid, Some(742));
    assert_eq!(
        (txn.commit_lsn, txn.end_lsn, txn.commit_time_us),
        (Lsn(500), Lsn(900), UNIX_TS)
    );
    let ops: Vec<Op> = txn.events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::Create, Op::Update, Op::Update, Op::Delete]);
    let lsns: Vec<u64> = txn.events.iter().map(|e| e.source.lsn.0).collect();
    assert_eq!(lsns, [30, 40, 50, 60]);
    for e in &txn.events {
        assert_eq!(&*e.source.db, "appdb");
        assert_eq!(e.source.xid, Some(742));
        assert_eq!(e.source.commit_time_us, UNIX_TS);
        assert_eq!(e.relation.qualified_name(), "public.items");
    }

    let insert = &txn.events[0];
    let tags = Value::Array(crate::event::Array {
        dims: vec![3],
        lower_bounds: Vec::new(),
        elements: vec![t("a"), t("b c"), Value::Null],
    });
    assert_eq!(insert.after, Some(vec![Value::Int(1), t("one"), tags]));
    assert_eq!(insert.before, None);
    let cols = &insert.relation.columns;
    assert_eq!(
        cols.iter()
            .map(|c| c.type_name.as_str())
            .collect::<Vec<_>>(),
        ["int4", "text", "_text"]
    );
    assert!(cols[0].key && !cols[1].key);
    assert_eq!(insert.key(), vec![("id", &Value::Int(1))]);

    assert_eq!(txn.events[1].before, None, "no old tuple → no before row");
    assert_eq!(
        txn.events[2].before,
        Some(vec![Value::Int(1), Value::Null, Value::Null]),
        "a K tuple holds only the key columns"
    );
    assert_eq!(
        txn.events[3].before,
        Some(vec![Value::Int(2), Value::Null, Value::Null])
    );
    assert_eq!(txn.events[3].after, None);
}

#[test]
fn full_old_rows_and_unchanged_toast() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(2, begin(1));
    h.feed(
        3,
        Wire::tag(b'U')
            .u32(100)
            .u8(b'O')
            .tuple(&[Col::Text("1"), Col::Text("old"), Col::Null])
            .u8(b'N')
            .tuple(&[Col::Text("1"), Col::Toast, Col::Null]),
    );
    let txn = h.push(4, commit(5)).unwrap();
    let e = &txn.events[0];
    assert_eq!(e.before, Some(vec![Value::Int(1), t("old"), Value::Null]));
    assert_eq!(
        e.after,
        Some(vec![Value::Int(1), Value::UnchangedToast, Value::Null])
    );
    assert_ne!(Value::UnchangedToast, Value::Null);
}

#[test]
fn a_new_relation_message_takes_effect_from_the_next_event() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(2, begin(1));
    h.feed(
        3,
        insert(None, 100, &[Col::Text("1"), Col::Text("a"), Col::Null]),
    );
    // ALTER TABLE items DROP COLUMN tags, ALTER name TYPE int8
    h.feed(
        4,
        Wire::tag(b'R')
            .u32(100)
            .str("public")
            .str("items")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("name")
            .u32(20)
            .i32(-1),
    );
    h.feed(5, insert(None, 100, &[Col::Text("2"), Col::Text("7")]));
    let txn = h.push(6, commit(7)).unwrap();
    let [first, second] = &txn.events[..] else {
        panic!("two events")
    };
    assert_eq!(first.relation.columns.len(), 3);
    assert_eq!(second.relation.columns.len(), 2);
    assert_eq!(second.relation.columns[1].type_name, "int8");
    assert_eq!(second.after, Some(vec![Value::Int(2), Value::Int(7)]));
    assert!(!Arc::ptr_eq(&first.relation, &second.relation));
    assert_eq!(h.asm.relation(100).unwrap().columns.len(), 2);
}

#[test]
fn truncate_gives_one_event_per_relation() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(
        2,
        Wire::tag(b'R')
            .u32(101)
            .str("shop")
            .str("orders")
            .u8(b'd')
            .i16(0),
    );
    h.feed(3, begin(1));
    h.feed(4, Wire::tag(b'T').i32(2).u8(1).u32(100).u32(101));
    let txn = h.push(5, commit(6)).unwrap();
    let names: Vec<String> = txn
        .events
        .iter()
        .map(|e| e.relation.qualified_name())
        .collect();
    assert_eq!(names, ["public.items", "shop.orders"]);
    assert!(
        txn.events
            .iter()
            .all(|e| e.op == Op::Truncate && e.after.is_none())
    );
}

#[test]
fn logical_messages_transactional_and_not() {
    let mut h = Harness::new();
    let lone = h
        .push(9, Wire::tag(b'M').u8(0).u64(8).str("hb").i32(2).raw(b"hi"))
        .expect("a non-transactional message is its own unit");
    assert_eq!(
        (lone.xid, lone.commit_lsn, lone.end_lsn),
        (None, Lsn(8), Lsn(8))
    );
    let m = lone.events[0].message.as_ref().unwrap();
    assert_eq!(
        (m.transactional, m.prefix.as_str(), &m.content[..]),
        (false, "hb", &b"hi"[..])
    );
    assert_eq!(lone.events[0].op, Op::Message);

    h.feed(10, begin(3));
    h.feed(
        11,
        Wire::tag(b'M').u8(1).u64(11).str("audit").i32(1).raw(b"x"),
    );
    let txn = h.push(12, commit(13)).unwrap();
    assert_eq!(txn.events.len(), 1);
    assert_eq!(txn.events[0].source.xid, Some(3));
    assert_eq!(txn.events[0].source.lsn, Lsn(11));
    assert!(txn.events[0].message.as_ref().unwrap().transactional);
}

fn stream_start(xid: u32, first: bool) -> Wire {
    Wire::tag(b'S').u32(xid).u8(u8::from(first))
}

fn stream_stop() -> Wire {
    Wire::tag(b'E')
}

fn stream_commit(xid: u32) -> Wire {
    Wire::tag(b'c')
        .u32(xid)
        .u8(0)
        .u64(800)
        .u64(810)
        .i64(PG_TS + 1)
}

fn stream_abort(xid: u32, subxid: u32) -> Wire {
    Wire::tag(b'A').u32(xid).u32(subxid)
}

fn id_of(e: &crate::event::Event) -> i64 {
    match e.after.as_ref().and_then(|r| r.first()) {
        Some(Value::Int(i)) => *i,
        other => panic!("no id: {other:?}"),
    }
}

#[test]
fn streamed_transaction_with_subtransaction_abort() {
    let mut h = Harness::new();
    let row = |id: &'static str| [Col::Text(id), Col::Null, Col::Null];
    h.feed(1, stream_start(900, true));
    h.feed(2, items(Some(900)));
    h.feed(3, insert(Some(900), 100, &row("1")));
    h.feed(4, insert(Some(901), 100, &row("2")));
    h.feed(5, stream_stop());
    // An unrelated transaction commits between the blocks.
    h.feed(6, items(None));
    h.feed(7, begin(950));
    h.feed(8, insert(None, 100, &row("50")));
    let other = h.push(9, commit(10)).unwrap();
    assert_eq!(other.events.iter().map(id_of).collect::<Vec<_>>(), [50]);
    h.feed(11, stream_start(900, false));
    h.feed(12, insert(Some(901), 100, &row("3")));
    h.feed(13, insert(Some(902), 100, &row("4")));
    h.feed(14, stream_stop());
    h.feed(15, stream_abort(900, 901));
    let txn = h.push(16, stream_commit(900)).unwrap();
    assert_eq!(txn.xid, Some(900));
    assert_eq!((txn.commit_lsn, txn.end_lsn), (Lsn(800), Lsn(810)));
    assert_eq!(txn.events.iter().map(id_of).collect::<Vec<_>>(), [1, 4]);
    for e in &txn.events {
        assert_eq!(e.source.xid, Some(900));
        assert_eq!(e.source.commit_time_us, UNIX_TS + 1);
    }
    assert_eq!(txn.events[1].source.lsn, Lsn(13));
}

#[test]
fn aborted_streamed_transaction_is_never_emitted() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(2, stream_start(900, true));
    h.feed(
        3,
        insert(Some(900), 100, &[Col::Text("1"), Col::Null, Col::Null]),
    );
    h.feed(4, stream_stop());
    h.feed(5, Wire::tag(b'A').u32(900).u32(900).u64(6).i64(PG_TS));
    assert!(matches!(
        h.err(stream_commit(900)),
        AssembleError::UnknownStream { xid: 900 }
    ));
    assert!(matches!(
        h.err(stream_start(900, false)),
        AssembleError::UnknownStream { xid: 900 }
    ));
}

#[test]
fn relation_described_in_a_stream_stays_private_until_commit() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(2, stream_start(900, true));
    // Inside the streamed transaction the table has only `id`.
    h.feed(
        3,
        Wire::tag(b'R')
            .u32(900)
            .u32(100)
            .str("public")
            .str("items")
            .u8(b'd')
            .i16(1)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1),
    );
    h.feed(4, insert(Some(900), 100, &[Col::Text("1")]));
    h.feed(5, stream_stop());
    h.feed(6, begin(1));
    h.feed(
        7,
        insert(None, 100, &[Col::Text("2"), Col::Null, Col::Null]),
    );
    assert_eq!(h.push(8, commit(9)).unwrap().events.len(), 1);
    let txn = h.push(10, stream_commit(900)).unwrap();
    assert_eq!(txn.events[0].relation.columns.len(), 1);
    assert_eq!(h.asm.relation(100).unwrap().columns.len(), 1);
}

fn prepare_msg(tag: u8, xid: u32, gid: &str) -> Wire {
    Wire::tag(tag)
        .u8(0)
        .u64(600)
        .u64(610)
        .i64(PG_TS)
        .u32(xid)
        .str(gid)
}

fn commit_prepared(xid: u32, gid: &str) -> Wire {
    Wire::tag(b'K')
        .u8(0)
        .u64(700)
        .u64(710)
        .i64(PG_TS + 9)
        .u32(xid)
        .str(gid)
}

#[test]
fn two_phase_is_held_until_commit_prepared() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(
        2,
        Wire::tag(b'b')
            .u64(600)
            .u64(610)
            .i64(PG_TS)
            .u32(77)
            .str("g1"),
    );
    h.feed(
        3,
        insert(None, 100, &[Col::Text("1"), Col::Null, Col::Null]),
    );
    h.feed(4, prepare_msg(b'P', 77, "g1"));
    assert_eq!(h.asm.held_since_lsn(), Some(Lsn(600)));
    // Another transaction commits while g1 is prepared.
    h.feed(5, begin(78));
    assert!(h.push(6, commit(7)).unwrap().events.is_empty());
    let txn = h.push(8, commit_prepared(77, "g1")).unwrap();
    assert_eq!(txn.gid.as_deref(), Some("g1"));
    assert_eq!(
        (txn.xid, txn.commit_lsn, txn.end_lsn),
        (Some(77), Lsn(700), Lsn(710))
    );
    assert_eq!(txn.events.len(), 1);
    assert_eq!(txn.events[0].source.commit_time_us, UNIX_TS + 9);
    assert_eq!(h.asm.held_since_lsn(), None);
}

#[test]
fn rollback_prepared_drops_the_transaction() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(
        2,
        Wire::tag(b'b')
            .u64(600)
            .u64(610)
            .i64(PG_TS)
            .u32(77)
            .str("g1"),
    );
    h.feed(
        3,
        insert(None, 100, &[Col::Text("1"), Col::Null, Col::Null]),
    );
    h.feed(4, prepare_msg(b'P', 77, "g1"));
    h.feed(
        5,
        Wire::tag(b'r')
            .u8(0)
            .u64(610)
            .u64(720)
            .i64(PG_TS)
            .i64(PG_TS)
            .u32(77)
            .str("g1"),
    );
    assert_eq!(h.asm.held_since_lsn(), None);
    assert_eq!(
        h.err(commit_prepared(77, "g1")),
        AssembleError::UnknownPrepared { gid: "g1".into() }
    );
}

#[test]
fn stream_prepare_then_commit_prepared() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(2, stream_start(900, true));
    h.feed(
        3,
        insert(Some(900), 100, &[Col::Text("1"), Col::Null, Col::Null]),
    );
    h.feed(
        4,
        insert(Some(901), 100, &[Col::Text("2"), Col::Null, Col::Null]),
    );
    h.feed(5, stream_stop());
    h.feed(6, stream_abort(900, 901));
    h.feed(7, prepare_msg(b'p', 900, "g2"));
    let txn = h.push(8, commit_prepared(900, "g2")).unwrap();
    assert_eq!(txn.events.iter().map(id_of).collect::<Vec<_>>(), [1]);
}

#[test]
fn type_messages_and_catalog_types_shape_values() {
    let mut registry = TypeRegistry::new();
    registry.insert(TypeInfo {
        oid: 16_500,
        name: "mood".into(),
        kind: TypeKind::Enum,
    });
    let mut h = Harness {
        asm: Assembler::new("appdb", registry),
    };
    h.feed(1, Wire::tag(b'Y').u32(16_500).str("public").str("mood"));
    h.feed(2, Wire::tag(b'Y').u32(16_600).str("public").str("hstore"));
    h.feed(
        3,
        Wire::tag(b'R')
            .u32(200)
            .str("public")
            .str("people")
            .u8(b'd')
            .i16(2)
            .u8(0)
            .str("mood")
            .u32(16_500)
            .i32(-1)
            .u8(0)
            .str("attrs")
            .u32(16_600)
            .i32(-1),
    );
    h.feed(4, begin(1));
    h.feed(
        5,
        insert(None, 200, &[Col::Text("happy"), Col::Text("\"a\"=>\"1\"")]),
    );
    let txn = h.push(6, commit(7)).unwrap();
    let e = &txn.events[0];
    assert_eq!(e.relation.columns[0].type_name, "mood");
    assert_eq!(e.relation.columns[1].type_name, "hstore");
    assert_eq!(
        e.after,
        Some(vec![
            t("happy"),
            Value::Raw {
                type_name: "hstore".into(),
                text: "\"a\"=>\"1\"".into()
            }
        ])
    );
}

#[test]
fn out_of_order_and_unknown_input_is_an_error() {
    let mut h = Harness::new();
    let row = [Col::Text("1"), Col::Null, Col::Null];
    assert!(matches!(
        h.err(insert(None, 100, &row)),
        AssembleError::UnknownRelation { rel_id: 100 }
    ));
    h.feed(1, items(None));
    assert!(matches!(
        h.err(insert(None, 100, &row)),
        AssembleError::OutOfOrder {
            message: "Insert",
            ..
        }
    ));
    assert!(matches!(h.err(commit(1)), AssembleError::OutOfOrder { .. }));
    assert!(matches!(
        h.err(stream_stop()),
        AssembleError::OutOfOrder { .. }
    ));
    h.feed(2, begin(1));
    assert!(matches!(h.err(begin(2)), AssembleError::OutOfOrder { .. }));
    let e = h.err(insert(None, 100, &row[..2]));
    assert_eq!(
        e,
        AssembleError::ColumnCount {
            relation: "public.items".into(),
            expected: 3,
            got: 2
        }
    );
    assert!(e.to_string().contains("2 columns for public.items"));
    assert!(matches!(h.err(Wire::tag(b'Z')), AssembleError::Decode(_)));
}

#[test]
fn reset_forgets_transactions_in_flight() {
    let mut h = Harness::new();
    h.feed(1, items(None));
    h.feed(2, stream_start(900, true));
    h.asm.reset_in_flight();
    assert!(!h.asm.in_stream());
    h.feed(3, begin(1));
    h.feed(
        4,
        insert(None, 100, &[Col::Text("1"), Col::Null, Col::Null]),
    );
    assert_eq!(h.push(5, commit(6)).unwrap().events.len(), 1);
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// A message from a small vocabulary over two relations, two xids and two gids.
    fn message() -> impl Strategy<Value = Wire> {
        let xid = prop_oneof![Just(900u32), Just(901u32)];
        let gid = prop_oneof![Just("g1"), Just("g2")];
        prop_oneof![
            Just(items(None)),
            Just(items(Some(900))),
            Just(begin(1)),
            Just(commit(2)),
            Just(insert(None, 100, &[Col::Text("1"), Col::Null, Col::Toast])),
            Just(insert(
                Some(901),
                100,
                &[Col::Text("x"), Col::Null, Col::Null]
            )),
            Just(insert(None, 101, &[])),
            Just(Wire::tag(b'T').i32(1).u8(0).u32(100)),
            Just(Wire::tag(b'M').u8(1).u64(1).str("p").i32(0)),
            Just(Wire::tag(b'M').u8(0).u64(1).str("p").i32(0)),
            (xid.clone(), any::<bool>()).prop_map(|(x, first)| stream_start(x, first)),
            Just(stream_stop()),
            xid.clone().prop_map(stream_commit),
            (xid.clone(), xid.clone()).prop_map(|(x, s)| stream_abort(x, s)),
            gid.clone()
                .prop_map(|g| Wire::tag(b'b').u64(1).u64(2).i64(3).u32(4).str(g)),
            gid.clone().prop_map(|g| prepare_msg(b'P', 4, g)),
            (xid, gid.clone()).prop_map(|(x, g)| prepare_msg(b'p', x, g)),
            gid.clone().prop_map(|g| commit_prepared(4, g)),
            gid.prop_map(|g| Wire::tag(b'r')
                .u8(0)
                .u64(1)
                .u64(2)
                .i64(3)
                .i64(4)
                .u32(4)
                .str(g)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

        /// Any order of messages yields units or errors, never a panic, and every event that
        /// comes out belongs to the unit that carries it.
        #[test]
        fn any_message_order_never_panics(msgs in proptest::collection::vec(message(), 0..40)) {
            let mut asm = Assembler::new("db", TypeRegistry::new());
            for (i, w) in msgs.iter().enumerate() {
                if let Ok(Some(txn)) = asm.push_bytes(Lsn(i as u64), &w.0) {
                    for e in &txn.events {
                        prop_assert_eq!(e.source.xid, txn.xid.or(e.source.xid));
                        prop_assert_eq!(&*e.source.db, "db");
                    }
                }
            }
        }
    }
}

#[test]
fn committed_events_of_a_huge_transaction_can_be_taken_early() {
    let mut h = Harness::new();
    let row = |id: &'static str| [Col::Text(id), Col::Null, Col::Null];
    h.feed(1, items(None));
    assert_eq!(h.asm.take_committed_events(), None);
    h.feed(2, begin(5));
    h.feed(3, insert(None, 100, &row("1")));
    h.feed(4, insert(None, 100, &row("2")));
    assert_eq!(h.asm.open_events(), 2);
    let early = h.asm.take_committed_events().unwrap();
    assert_eq!(early.iter().map(id_of).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(h.asm.open_events(), 0);
    assert_eq!(h.asm.take_committed_events(), None);
    h.feed(5, insert(None, 100, &row("3")));
    let rest = h.push(6, commit(7)).unwrap();
    assert_eq!(rest.events.iter().map(id_of).collect::<Vec<_>>(), [3]);
    assert_eq!(rest.end_lsn, Lsn(7));

    // A prepared transaction may still roll back: nothing is handed over early.
    h.feed(
        8,
        Wire::tag(b'b').u64(600).u64(610).i64(PG_TS).u32(6).str("g"),
    );
    h.feed(9, insert(None, 100, &row("4")));
    assert_eq!(h.asm.take_committed_events(), None);
}

#[test]
fn key_columns_can_be_named_for_replica_identity_full() {
    let full = || {
        Wire::tag(b'R')
            .u32(300)
            .str("public")
            .str("audit")
            .u8(b'f')
            .i16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(1)
            .str("v")
            .u32(25)
            .i32(-1)
    };
    let mut h = Harness::new();
    h.feed(1, full());
    let keys = |h: &Harness| -> Vec<bool> {
        let rel = h.asm.relation(300).unwrap();
        rel.columns.iter().map(|c| c.key).collect()
    };
    assert_eq!(
        keys(&h),
        [true, true],
        "pgoutput flags every column under FULL"
    );
    h.asm.set_key_columns(300, Some(vec!["id".into()]));
    h.feed(2, full());
    assert_eq!(keys(&h), [true, false]);
    h.feed(3, begin(1));
    h.feed(4, insert(None, 300, &[Col::Text("7"), Col::Text("x")]));
    let txn = h.push(5, commit(6)).unwrap();
    assert_eq!(txn.events[0].key(), vec![("id", &Value::Int(7))]);
    h.asm.set_key_columns(300, None);
    h.feed(7, full());
    assert_eq!(keys(&h), [true, true]);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

    /// Whatever bytes arrive after a real tag, the assembler answers with an error at worst.
    #[test]
    fn arbitrary_messages_never_panic_the_assembler(
        tag in proptest::sample::select(b"BCORYIUDTMSEcAbPKrp".to_vec()),
        rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128),
    ) {
        let mut bytes = vec![tag];
        bytes.extend(rest);
        let mut assembler = Assembler::new("db", TypeRegistry::new());
        let _ = assembler.push_bytes(Lsn(1), &bytes);
    }
}
