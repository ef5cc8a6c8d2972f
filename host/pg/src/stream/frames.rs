//! The messages inside a replication CopyBoth stream, as bytes: XLogData and primary keepalive
//! from the server, the standby status update back to it.
//!
//! They are parsed here, apart from the socket, so each layout is written once and can be tested
//! on bytes alone. What an XLogData payload means (pgoutput) is not this crate's business: it
//! stays [`Bytes`], split off the read buffer without copying.

use bytes::{Buf, Bytes, BytesMut};

use crate::conn::{Frame, server_error};
use crate::error::ConnectError;
use crate::lsn::Lsn;

/// WAL data from the server (XLogData, `w`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalData {
    /// Where this data starts in the WAL.
    pub start: Lsn,
    /// The server's current end of WAL.
    pub end: Lsn,
    /// The payload (a pgoutput message).
    pub data: Bytes,
}

/// A message inside the CopyBoth stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyMessage {
    /// WAL data (`w`).
    XLogData(WalData),
    /// Primary keepalive (`k`).
    Keepalive {
        /// The server's current end of WAL.
        end: Lsn,
        /// Whether the server asks for a status update at once.
        reply: bool,
    },
    /// The server ended the copy (CopyDone).
    Done,
    /// The server ended streaming on its own with CommandComplete and no CopyDone: what a
    /// walsender does when its server shuts down (a restart, a failover, maintenance).
    ServerEnded,
}

/// Length of an XLogData header: kind, start, end, send time.
const XLOG_HEADER: usize = 1 + 8 + 8 + 8;
/// Length of a primary keepalive: kind, end, send time, reply flag.
const KEEPALIVE_LEN: usize = 1 + 8 + 8 + 1;
/// Length of a standby status update: kind, written, flushed, applied, send time, reply flag.
pub const STATUS_UPDATE_LEN: usize = 1 + 8 + 8 + 8 + 8 + 1;

/// What a frame of the replication stream carries: `None` for notices and parameter changes,
/// which do not concern the stream.
pub fn copy_message(frame: Frame) -> Result<Option<CopyMessage>, ConnectError> {
    match frame.tag {
        b'd' => copy_data(frame.body).map(Some),
        b'c' => Ok(Some(CopyMessage::Done)),
        b'C' => Ok(Some(CopyMessage::ServerEnded)),
        b'N' | b'S' => Ok(None),
        b'E' => Err(server_error(frame)),
        other => Err(ConnectError::Protocol(format!(
            "unexpected message '{}' in the replication stream",
            other as char
        ))),
    }
}

/// Parses the body of a CopyData frame.
pub fn copy_data(mut body: BytesMut) -> Result<CopyMessage, ConnectError> {
    match body.first() {
        Some(b'w') if body.len() >= XLOG_HEADER => {
            let start = lsn_at(&body, 1);
            let end = lsn_at(&body, 9);
            body.advance(XLOG_HEADER);
            Ok(CopyMessage::XLogData(WalData {
                start,
                end,
                data: body.freeze(),
            }))
        }
        Some(b'k') if body.len() >= KEEPALIVE_LEN => Ok(CopyMessage::Keepalive {
            end: lsn_at(&body, 1),
            reply: body[KEEPALIVE_LEN - 1] != 0,
        }),
        Some(b'w') | Some(b'k') | None => Err(ConnectError::Protocol(
            "truncated CopyData in the replication stream".into(),
        )),
        Some(other) => Err(ConnectError::Protocol(format!(
            "unknown CopyData kind '{}' in the replication stream",
            *other as char
        ))),
    }
}

/// The big-endian LSN at `at`; the caller checked the length.
fn lsn_at(body: &[u8], at: usize) -> Lsn {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&body[at..at + 8]);
    Lsn(u64::from_be_bytes(bytes))
}

/// A standby status update (`r`) saying everything before `lsn` is written, flushed and applied,
/// sent at `now_micros` (since 2000-01-01); `reply` asks the server to answer with a keepalive.
pub fn status_update(lsn: Lsn, now_micros: i64, reply: bool) -> [u8; STATUS_UPDATE_LEN] {
    let mut body = [0u8; STATUS_UPDATE_LEN];
    body[0] = b'r';
    for at in [1, 9, 17] {
        body[at..at + 8].copy_from_slice(&lsn.0.to_be_bytes());
    }
    body[25..33].copy_from_slice(&now_micros.to_be_bytes());
    body[33] = u8::from(reply);
    body
}

/// Microseconds since 2000-01-01, PostgreSQL's epoch.
pub fn pg_now_micros() -> i64 {
    const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    now.as_micros() as i64 - PG_EPOCH_UNIX_SECS * 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog(start: u64, end: u64, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(b"w");
        b.extend_from_slice(&start.to_be_bytes());
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&42i64.to_be_bytes());
        b.extend_from_slice(payload);
        b
    }

    fn keepalive(end: u64, reply: bool) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(b"k");
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&42i64.to_be_bytes());
        b.extend_from_slice(&[u8::from(reply)]);
        b
    }

    fn frame(tag: u8, body: &[u8]) -> Frame {
        Frame {
            tag,
            body: BytesMut::from(body),
        }
    }

    #[test]
    fn xlog_data_splits_header_from_payload() {
        let msg = copy_data(xlog(0x16_B374_D848, 0x17_0000_0000, b"B...")).unwrap();
        assert_eq!(
            msg,
            CopyMessage::XLogData(WalData {
                start: Lsn(0x16_B374_D848),
                end: Lsn(0x17_0000_0000),
                data: Bytes::from_static(b"B..."),
            })
        );
        let CopyMessage::XLogData(empty) = copy_data(xlog(1, 2, b"")).unwrap() else {
            panic!("xlog data")
        };
        assert!(
            empty.data.is_empty(),
            "a header alone is a valid, empty message"
        );
    }

    #[test]
    fn keepalive_carries_the_end_and_the_reply_flag() {
        for reply in [false, true] {
            assert_eq!(
                copy_data(keepalive(0xABCD, reply)).unwrap(),
                CopyMessage::Keepalive {
                    end: Lsn(0xABCD),
                    reply
                }
            );
        }
    }

    #[test]
    fn short_or_unknown_copy_data_is_a_protocol_error() {
        let mut short = xlog(1, 2, b"");
        short.truncate(XLOG_HEADER - 1);
        let mut short_keepalive = keepalive(1, true);
        short_keepalive.truncate(KEEPALIVE_LEN - 1);
        for (body, says) in [
            (short, "truncated"),
            (short_keepalive, "truncated"),
            (BytesMut::new(), "truncated"),
            (BytesMut::from(&b"x123"[..]), "unknown CopyData kind 'x'"),
        ] {
            let err = copy_data(body).unwrap_err();
            assert!(matches!(err, ConnectError::Protocol(_)), "{err}");
            assert!(err.to_string().contains(says), "{err}");
            assert!(
                !err.is_retryable(),
                "a broken stream is not retried blindly"
            );
        }
    }

    #[test]
    fn frames_other_than_copy_data_end_skip_or_fail() {
        assert_eq!(
            copy_message(frame(b'c', b"")).unwrap(),
            Some(CopyMessage::Done)
        );
        assert_eq!(copy_message(frame(b'N', b"SNOTICE\0\0")).unwrap(), None);
        assert_eq!(copy_message(frame(b'S', b"a\0b\0")).unwrap(), None);
        let err = copy_message(frame(b'Z', b"I")).unwrap_err();
        assert!(err.to_string().contains("unexpected message 'Z'"), "{err}");
        assert_eq!(
            copy_message(frame(b'C', b"START_REPLICATION\0")).unwrap(),
            Some(CopyMessage::ServerEnded),
            "a walsender of a server shutting down ends with CommandComplete alone"
        );
        let Some(CopyMessage::Keepalive { reply: true, .. }) =
            copy_message(frame(b'd', &keepalive(7, true))).unwrap()
        else {
            panic!("a keepalive in a CopyData frame")
        };
    }

    #[test]
    fn an_error_response_in_the_stream_is_the_servers_error() {
        let body =
            b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0";
        let err = copy_message(frame(b'E', body)).unwrap_err();
        assert_eq!(err.sqlstate(), Some("57P01"));
        assert!(
            err.is_retryable(),
            "an administrator's termination is retried"
        );
    }

    #[test]
    fn status_update_reports_one_position_three_times() {
        let body = status_update(Lsn(0x0102_0304_0506_0708), 99, true);
        assert_eq!(body[0], b'r');
        for at in [1, 9, 17] {
            assert_eq!(lsn_at(&body, at), Lsn(0x0102_0304_0506_0708));
        }
        assert_eq!(i64::from_be_bytes(body[25..33].try_into().unwrap()), 99);
        assert_eq!(body[33], 1);
        assert_eq!(status_update(Lsn(1), 0, false)[33], 0);
    }

    #[test]
    fn now_counts_from_the_postgresql_epoch() {
        // 2024-01-01 is 24 years of microseconds past 2000-01-01; this test runs later.
        assert!(pg_now_micros() > 757_382_400 * 1_000_000);
    }
}
