//! Byte-vector tests for every pgoutput message, built by hand from PostgreSQL's "Logical
//! Replication Message Formats" page, and the property test that no input makes the decoder
//! panic.

use proptest::prelude::*;

use super::*;
use crate::wire::{Col, Wire};

/// A PostgreSQL-epoch timestamp and the Unix-epoch microseconds it decodes to.
const PG_TS: i64 = 756_864_000_123_456; // 2023-12-25 00:00:00.123456 UTC
const UNIX_TS: i64 = PG_TS + PG_EPOCH_OFFSET_US;

fn ok(bytes: &Wire, in_stream: bool) -> Message<'_> {
    decode(&bytes.0, in_stream).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn begin() {
    let w = Wire::tag(b'B').u64(0x16_B374_D848).i64(PG_TS).u32(742);
    assert_eq!(
        ok(&w, false),
        Message::Begin(BeginBody {
            final_lsn: 0x16_B374_D848,
            commit_time_us: UNIX_TS,
            xid: 742,
        })
    );
}

#[test]
fn commit() {
    let w = Wire::tag(b'C').u8(0).u64(100).u64(180).i64(PG_TS);
    assert_eq!(
        ok(&w, false),
        Message::Commit(CommitBody {
            flags: 0,
            commit_lsn: 100,
            end_lsn: 180,
            commit_time_us: UNIX_TS,
        })
    );
}

#[test]
fn origin() {
    let w = Wire::tag(b'O').u64(77).str("node_a");
    assert_eq!(
        ok(&w, false),
        Message::Origin(OriginBody {
            commit_lsn: 77,
            name: "node_a",
        })
    );
}

fn relation_wire(xid: Option<u32>) -> Wire {
    Wire::tag(b'R')
        .xid(xid)
        .u32(16_385)
        .str("public")
        .str("orders")
        .u8(b'f')
        .i16(2)
        .u8(1)
        .str("id")
        .u32(23)
        .i32(-1)
        .u8(0)
        .str("note")
        .u32(1043)
        .i32(54)
}

#[test]
fn relation_outside_and_inside_a_stream() {
    for xid in [None, Some(901)] {
        let w = relation_wire(xid);
        let Message::Relation(r) = ok(&w, xid.is_some()) else {
            panic!("not a relation")
        };
        assert_eq!(r.xid, xid);
        assert_eq!(
            (r.rel_id, r.namespace, r.name),
            (16_385, "public", "orders")
        );
        assert_eq!(r.replica_identity, ReplicaIdentity::Full);
        assert_eq!(
            r.columns,
            vec![
                ColumnBody {
                    flags: 1,
                    name: "id",
                    type_oid: 23,
                    type_modifier: -1
                },
                ColumnBody {
                    flags: 0,
                    name: "note",
                    type_oid: 1043,
                    type_modifier: 54
                },
            ]
        );
        assert!(r.columns[0].is_key() && !r.columns[1].is_key());
    }
}

#[test]
fn relation_replica_identity_settings() {
    for (byte, want) in [
        (b'd', ReplicaIdentity::Default),
        (b'n', ReplicaIdentity::Nothing),
        (b'i', ReplicaIdentity::Index),
        (b'z', ReplicaIdentity::Other(b'z')),
    ] {
        let w = Wire::tag(b'R').u32(1).str("").str("t").u8(byte).i16(0);
        let Message::Relation(r) = ok(&w, false) else {
            panic!()
        };
        assert_eq!(r.replica_identity, want);
        assert_eq!(r.namespace, "");
        assert!(r.columns.is_empty());
    }
}

#[test]
fn type_message() {
    let w = Wire::tag(b'Y')
        .xid(Some(5))
        .u32(16_400)
        .str("public")
        .str("mood");
    assert_eq!(
        ok(&w, true),
        Message::Type(TypeBody {
            xid: Some(5),
            type_oid: 16_400,
            namespace: "public",
            name: "mood",
        })
    );
}

#[test]
fn insert_with_every_datum_kind() {
    let w = Wire::tag(b'I').u32(16_385).u8(b'N').tuple(&[
        Col::Text("42"),
        Col::Null,
        Col::Toast,
        Col::Bin(&[0, 1, 2]),
        Col::Text(""),
    ]);
    assert_eq!(
        ok(&w, false),
        Message::Insert(InsertBody {
            xid: None,
            rel_id: 16_385,
            new: vec![
                Datum::Text(b"42"),
                Datum::Null,
                Datum::UnchangedToast,
                Datum::Binary(&[0, 1, 2]),
                Datum::Text(b""),
            ],
        })
    );
}

#[test]
fn insert_in_stream_carries_xid() {
    let w = Wire::tag(b'I')
        .u32(903)
        .u32(7)
        .u8(b'N')
        .tuple(&[Col::Text("1")]);
    let Message::Insert(i) = ok(&w, true) else {
        panic!()
    };
    assert_eq!((i.xid, i.rel_id), (Some(903), 7));
}

#[test]
fn update_without_old_tuple() {
    let w = Wire::tag(b'U')
        .u32(7)
        .u8(b'N')
        .tuple(&[Col::Text("1"), Col::Toast]);
    assert_eq!(
        ok(&w, false),
        Message::Update(UpdateBody {
            xid: None,
            rel_id: 7,
            old: None,
            new: vec![Datum::Text(b"1"), Datum::UnchangedToast],
        })
    );
}

#[test]
fn update_with_key_and_with_full_old_tuple() {
    let key = Wire::tag(b'U')
        .u32(7)
        .u8(b'K')
        .tuple(&[Col::Text("1"), Col::Null])
        .u8(b'N')
        .tuple(&[Col::Text("2"), Col::Text("x")]);
    let Message::Update(u) = ok(&key, false) else {
        panic!()
    };
    assert_eq!(
        u.old,
        Some(OldTuple::Key(vec![Datum::Text(b"1"), Datum::Null]))
    );
    assert_eq!(u.new, vec![Datum::Text(b"2"), Datum::Text(b"x")]);

    let full = Wire::tag(b'U')
        .xid(Some(9))
        .u32(7)
        .u8(b'O')
        .tuple(&[Col::Text("1"), Col::Text("old")])
        .u8(b'N')
        .tuple(&[Col::Text("1"), Col::Text("new")]);
    let Message::Update(u) = ok(&full, true) else {
        panic!()
    };
    assert_eq!(u.xid, Some(9));
    assert_eq!(
        u.old,
        Some(OldTuple::Full(vec![Datum::Text(b"1"), Datum::Text(b"old")]))
    );
}

#[test]
fn delete_with_key_or_full_old_tuple() {
    for (marker, full) in [(b'K', false), (b'O', true)] {
        let w = Wire::tag(b'D').u32(7).u8(marker).tuple(&[Col::Text("5")]);
        let Message::Delete(d) = ok(&w, false) else {
            panic!()
        };
        let tuple = vec![Datum::Text(b"5")];
        let want = if full {
            OldTuple::Full(tuple)
        } else {
            OldTuple::Key(tuple)
        };
        assert_eq!(d.old, want);
    }
    let no_old = Wire::tag(b'D').u32(7).u8(b'N').tuple(&[Col::Text("5")]);
    assert!(matches!(
        decode(&no_old.0, false),
        Err(DecodeError::InvalidField {
            field: "tuple marker",
            offset: 5,
            ..
        })
    ));
}

#[test]
fn truncate_several_relations_with_flags() {
    let w = Wire::tag(b'T').i32(3).u8(3).u32(10).u32(11).u32(12);
    let Message::Truncate(t) = ok(&w, false) else {
        panic!()
    };
    assert_eq!(t.rel_ids, vec![10, 11, 12]);
    assert!(t.cascade() && t.restart_identity());

    let w = Wire::tag(b'T').xid(Some(4)).i32(1).u8(0).u32(10);
    let Message::Truncate(t) = ok(&w, true) else {
        panic!()
    };
    assert_eq!((t.xid, t.rel_ids.as_slice()), (Some(4), &[10][..]));
    assert!(!t.cascade() && !t.restart_identity());

    let w = Wire::tag(b'T').i32(1).u8(1).u32(10);
    let Message::Truncate(t) = ok(&w, false) else {
        panic!()
    };
    assert!(t.cascade() && !t.restart_identity());
}

#[test]
fn logical_messages() {
    let w = Wire::tag(b'M')
        .u8(1)
        .u64(555)
        .str("audit")
        .i32(3)
        .raw(b"a\0b");
    assert_eq!(
        ok(&w, false),
        Message::Message(LogicalMessageBody {
            xid: None,
            flags: 1,
            lsn: 555,
            prefix: "audit",
            content: b"a\0b",
        })
    );
    let w = Wire::tag(b'M').xid(Some(3)).u8(0).u64(1).str("").i32(0);
    let Message::Message(m) = ok(&w, true) else {
        panic!()
    };
    assert!(!m.transactional());
    assert_eq!((m.xid, m.prefix, m.content), (Some(3), "", &b""[..]));
}

#[test]
fn stream_start_and_stop() {
    let w = Wire::tag(b'S').u32(900).u8(1);
    assert_eq!(
        ok(&w, false),
        Message::StreamStart(StreamStartBody {
            xid: 900,
            first_segment: true,
        })
    );
    let w = Wire::tag(b'S').u32(900).u8(0);
    assert_eq!(
        ok(&w, false),
        Message::StreamStart(StreamStartBody {
            xid: 900,
            first_segment: false,
        })
    );
    assert_eq!(ok(&Wire::tag(b'E'), true), Message::StreamStop);
}

#[test]
fn stream_commit() {
    let w = Wire::tag(b'c').u32(900).u8(0).u64(300).u64(320).i64(PG_TS);
    assert_eq!(
        ok(&w, false),
        Message::StreamCommit(StreamCommitBody {
            xid: 900,
            flags: 0,
            commit_lsn: 300,
            end_lsn: 320,
            commit_time_us: UNIX_TS,
        })
    );
}

#[test]
fn stream_abort_v2_and_v4_parallel() {
    let w = Wire::tag(b'A').u32(900).u32(901);
    let Message::StreamAbort(a) = ok(&w, false) else {
        panic!()
    };
    assert_eq!((a.xid, a.subxid, a.abort), (900, 901, None));
    assert!(!a.is_top_level());

    let w = Wire::tag(b'A').u32(900).u32(900).u64(444).i64(PG_TS);
    let Message::StreamAbort(a) = ok(&w, false) else {
        panic!()
    };
    assert_eq!(a.abort, Some((444, UNIX_TS)));
    assert!(a.is_top_level());

    let half = Wire::tag(b'A').u32(900).u32(900).u64(444);
    assert!(matches!(
        decode(&half.0, false),
        Err(DecodeError::Truncated {
            field: "abort timestamp",
            offset: 17,
            needed: 8,
            available: 0,
            ..
        })
    ));
}

#[test]
fn begin_prepare() {
    let w = Wire::tag(b'b')
        .u64(1000)
        .u64(1100)
        .i64(PG_TS)
        .u32(77)
        .str("gid-1");
    assert_eq!(
        ok(&w, false),
        Message::BeginPrepare(BeginPrepareBody {
            prepare_lsn: 1000,
            end_lsn: 1100,
            prepare_time_us: UNIX_TS,
            xid: 77,
            gid: "gid-1",
        })
    );
}

#[test]
fn prepare_and_stream_prepare() {
    let body = PrepareBody {
        flags: 0,
        prepare_lsn: 1000,
        end_lsn: 1100,
        prepare_time_us: UNIX_TS,
        xid: 77,
        gid: "gid-1",
    };
    let bytes = |tag| {
        Wire::tag(tag)
            .u8(0)
            .u64(1000)
            .u64(1100)
            .i64(PG_TS)
            .u32(77)
            .str("gid-1")
    };
    assert_eq!(ok(&bytes(b'P'), false), Message::Prepare(body));
    assert_eq!(ok(&bytes(b'p'), false), Message::StreamPrepare(body));
}

#[test]
fn commit_prepared() {
    let w = Wire::tag(b'K')
        .u8(0)
        .u64(2000)
        .u64(2100)
        .i64(PG_TS)
        .u32(77)
        .str("gid-1");
    assert_eq!(
        ok(&w, false),
        Message::CommitPrepared(CommitPreparedBody {
            flags: 0,
            commit_lsn: 2000,
            end_lsn: 2100,
            commit_time_us: UNIX_TS,
            xid: 77,
            gid: "gid-1",
        })
    );
}

#[test]
fn rollback_prepared() {
    let w = Wire::tag(b'r')
        .u8(0)
        .u64(1100)
        .u64(2100)
        .i64(PG_TS)
        .i64(PG_TS + 5)
        .u32(77)
        .str("gid-1");
    assert_eq!(
        ok(&w, false),
        Message::RollbackPrepared(RollbackPreparedBody {
            flags: 0,
            prepare_end_lsn: 1100,
            rollback_end_lsn: 2100,
            prepare_time_us: UNIX_TS,
            rollback_time_us: UNIX_TS + 5,
            xid: 77,
            gid: "gid-1",
        })
    );
}

#[test]
fn decoder_tracks_streamed_blocks() {
    let mut decoder = Decoder::new();
    let insert_in_stream = Wire::tag(b'I').u32(900).u32(7).u8(b'N').tuple(&[]);
    assert!(decoder.decode(&insert_in_stream.0).is_err());
    decoder.decode(&Wire::tag(b'S').u32(900).u8(1).0).unwrap();
    assert!(decoder.in_stream());
    let Message::Insert(i) = decoder.decode(&insert_in_stream.0).unwrap() else {
        panic!()
    };
    assert_eq!(i.xid, Some(900));
    decoder.decode(&Wire::tag(b'E').0).unwrap();
    assert!(!decoder.in_stream());
}

#[test]
fn errors_name_what_is_wrong_and_where() {
    assert_eq!(decode(&[], false), Err(DecodeError::Empty));
    assert_eq!(
        decode(b"Z", false),
        Err(DecodeError::UnknownTag { tag: b'Z' })
    );
    let e = decode(&Wire::tag(b'B').u64(1).0, false).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Truncated {
            message: "Begin",
            field: "commit timestamp",
            offset: 9,
            needed: 8,
            available: 0,
        }
    );
    assert_eq!(
        e.to_string(),
        "pgoutput Begin message truncated: commit timestamp at offset 9 needs 8 bytes, 0 left"
    );
    let unterminated = Wire::tag(b'O').u64(1).raw(b"abc");
    assert!(matches!(
        decode(&unterminated.0, false),
        Err(DecodeError::UnterminatedString {
            field: "origin name",
            offset: 9,
            ..
        })
    ));
    let bad_utf8 = Wire::tag(b'O').u64(1).raw(b"\xff\0");
    assert!(matches!(
        decode(&bad_utf8.0, false),
        Err(DecodeError::InvalidUtf8 { offset: 9, .. })
    ));
    let trailing = Wire::tag(b'E').u8(0);
    assert_eq!(
        decode(&trailing.0, false),
        Err(DecodeError::TrailingBytes {
            message: "Stream Stop",
            offset: 1,
            count: 1,
        })
    );
    let negative = Wire::tag(b'I').u32(7).u8(b'N').i16(1).u8(b't').i32(-1);
    assert!(matches!(
        decode(&negative.0, false),
        Err(DecodeError::InvalidField {
            field: "text datum",
            offset: 9,
            value: -1,
            ..
        })
    ));
    let huge = Wire::tag(b'I')
        .u32(7)
        .u8(b'N')
        .i16(1)
        .u8(b't')
        .i32(i32::MAX);
    assert!(matches!(
        decode(&huge.0, false),
        Err(DecodeError::Truncated { offset: 13, .. })
    ));
    let bad_kind = Wire::tag(b'I').u32(7).u8(b'N').i16(1).u8(b'x');
    assert!(matches!(
        decode(&bad_kind.0, false),
        Err(DecodeError::InvalidField {
            field: "tuple datum kind",
            offset: 8,
            ..
        })
    ));
    let negative_columns = Wire::tag(b'R').u32(1).str("s").str("t").u8(b'd').i16(-3);
    assert!(matches!(
        decode(&negative_columns.0, false),
        Err(DecodeError::InvalidField {
            field: "column count",
            value: -3,
            ..
        })
    ));
}

/// Valid messages of every kind, for the mutation property.
fn valid_messages() -> Vec<(Vec<u8>, bool)> {
    let tuple = [Col::Text("1"), Col::Null, Col::Toast, Col::Bin(b"\x01")];
    vec![
        (Wire::tag(b'B').u64(1).i64(2).u32(3).0, false),
        (Wire::tag(b'C').u8(0).u64(1).u64(2).i64(3).0, false),
        (Wire::tag(b'O').u64(1).str("o").0, false),
        (relation_wire(None).0, false),
        (relation_wire(Some(1)).0, true),
        (Wire::tag(b'Y').u32(1).str("n").str("t").0, false),
        (Wire::tag(b'I').u32(1).u8(b'N').tuple(&tuple).0, false),
        (
            Wire::tag(b'U')
                .u32(1)
                .u8(b'O')
                .tuple(&tuple)
                .u8(b'N')
                .tuple(&tuple)
                .0,
            false,
        ),
        (Wire::tag(b'D').u32(9).u32(1).u8(b'K').tuple(&tuple).0, true),
        (Wire::tag(b'T').i32(2).u8(1).u32(1).u32(2).0, false),
        (
            Wire::tag(b'M').u8(1).u64(1).str("p").i32(2).raw(b"hi").0,
            false,
        ),
        (Wire::tag(b'S').u32(1).u8(1).0, false),
        (Wire::tag(b'E').0, true),
        (Wire::tag(b'c').u32(1).u8(0).u64(1).u64(2).i64(3).0, false),
        (Wire::tag(b'A').u32(1).u32(2).u64(3).i64(4).0, false),
        (
            Wire::tag(b'b').u64(1).u64(2).i64(3).u32(4).str("g").0,
            false,
        ),
        (
            Wire::tag(b'P').u8(0).u64(1).u64(2).i64(3).u32(4).str("g").0,
            false,
        ),
        (
            Wire::tag(b'p').u8(0).u64(1).u64(2).i64(3).u32(4).str("g").0,
            false,
        ),
        (
            Wire::tag(b'K').u8(0).u64(1).u64(2).i64(3).u32(4).str("g").0,
            false,
        ),
        (
            Wire::tag(b'r')
                .u8(0)
                .u64(1)
                .u64(2)
                .i64(3)
                .i64(4)
                .u32(5)
                .str("g")
                .0,
            false,
        ),
    ]
}

#[test]
fn every_valid_message_decodes() {
    for (bytes, in_stream) in valid_messages() {
        decode(&bytes, in_stream).unwrap_or_else(|e| panic!("{e}: {bytes:?}"));
    }
}

/// A mutation of a valid message: flip, overwrite, insert or delete bytes, or truncate.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..6).prop_map(|(i, n)| Mutation::Remove(i, n)),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let len = bytes.len().max(1);
    match m {
        Mutation::Flip(i, b) => {
            if let Some(x) = bytes.get_mut(i % len) {
                *x ^= b;
            }
        }
        Mutation::Set(i, b) => {
            if let Some(x) = bytes.get_mut(i % len) {
                *x = *b;
            }
        }
        Mutation::Insert(i, new) => {
            let at = i % (bytes.len() + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Mutation::Remove(i, n) => {
            let at = i % len;
            let end = (at + n).min(bytes.len());
            if at < end {
                bytes.drain(at..end);
            }
        }
        Mutation::Truncate(i) => bytes.truncate(i % len),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), in_stream: bool) {
        let _ = decode(&bytes, in_stream);
    }

    #[test]
    fn arbitrary_bytes_after_a_real_tag_never_panic(
        tag in proptest::sample::select(b"BCORYIUDTMSEcAbPKrp".to_vec()),
        rest in proptest::collection::vec(any::<u8>(), 0..128),
        in_stream: bool,
    ) {
        let mut bytes = vec![tag];
        bytes.extend(rest);
        let _ = decode(&bytes, in_stream);
    }

    #[test]
    fn mutated_valid_messages_never_panic(
        which in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..4),
        flip_stream: bool,
    ) {
        let messages = valid_messages();
        let (mut bytes, in_stream) = messages[which.index(messages.len())].clone();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let _ = decode(&bytes, in_stream ^ flip_stream);
    }
}
