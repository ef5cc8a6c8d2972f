//! [`WalStream`] against a scripted walsender on a local socket: what it sends back and when,
//! and how it reconnects. (The real servers are in `tests/tests/replication.rs` and
//! `tests/tests/connection_loss.rs`.)

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use walflow_config::{SourceConfig, SslMode};

const VERSION: u32 = 160_000;
const START: Lsn = Lsn(0x10);
const SOON: Duration = Duration::from_secs(5);

/// The server side of one replication connection, speaking raw protocol bytes.
struct Walsender(TcpStream);

impl Walsender {
    /// Accepts a connection and logs it in without a password.
    async fn accept(listener: &TcpListener) -> Walsender {
        let (sock, _) = tokio::time::timeout(SOON, listener.accept())
            .await
            .expect("the stream connects")
            .unwrap();
        let mut server = Walsender(sock);
        let len = server.0.read_i32().await.unwrap() as usize;
        let mut startup = vec![0; len - 4];
        server.0.read_exact(&mut startup).await.unwrap();
        server.send(b'R', &0i32.to_be_bytes()).await;
        server.send(b'Z', b"I").await;
        server
    }

    /// Answers START_REPLICATION with CopyBothResponse; returns the statement.
    async fn open_copy(&mut self) -> String {
        let (tag, sql) = self.frame().await;
        assert_eq!(tag, b'Q');
        self.send(b'W', &[0, 0, 0]).await;
        String::from_utf8(sql).unwrap()
    }

    async fn send(&mut self, tag: u8, body: &[u8]) {
        let mut msg = vec![tag];
        msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        msg.extend_from_slice(body);
        self.0.write_all(&msg).await.unwrap();
    }

    async fn keepalive(&mut self, end: Lsn, reply: bool) {
        let mut body = vec![b'k'];
        body.extend_from_slice(&end.0.to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.push(u8::from(reply));
        self.send(b'd', &body).await;
    }

    async fn xlog(&mut self, start: Lsn, payload: &[u8]) {
        let mut body = vec![b'w'];
        body.extend_from_slice(&start.0.to_be_bytes());
        body.extend_from_slice(&start.0.to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(payload);
        self.send(b'd', &body).await;
    }

    async fn frame(&mut self) -> (u8, Vec<u8>) {
        let read = async {
            let tag = self.0.read_u8().await.unwrap();
            let len = self.0.read_i32().await.unwrap() as usize;
            let mut body = vec![0; len - 4];
            self.0.read_exact(&mut body).await.unwrap();
            (tag, body)
        };
        tokio::time::timeout(SOON, read)
            .await
            .expect("a message from the stream")
    }

    /// The next standby status update: its flush position and whether it asks for a reply.
    async fn status(&mut self) -> (Lsn, bool) {
        let (tag, body) = self.frame().await;
        assert_eq!((tag, body.first()), (b'd', Some(&b'r')));
        let flushed = u64::from_be_bytes(body[9..17].try_into().unwrap());
        (Lsn(flushed), body[33] != 0)
    }
}

fn options(status_interval: Duration, receive_timeout: Option<Duration>) -> WalOptions {
    WalOptions {
        slot: "s".into(),
        publication: "p".into(),
        status_interval,
        receive_timeout,
        reconnect: Backoff::new(Duration::from_millis(10), Duration::from_millis(20)),
        link: Link::default(),
    }
}

/// A [`WalStream`] streaming from a scripted walsender, and that walsender.
async fn started(options: WalOptions) -> (WalStream, Walsender, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let source = SourceConfig {
        url: format!(
            "postgres://u@127.0.0.1:{}/db",
            listener.local_addr().unwrap().port()
        ),
        sslmode: SslMode::Disable,
        ..Default::default()
    };
    let opts = ConnectOptions::from_source(&source).unwrap();
    let (conn, mut server) = tokio::join!(
        async { Connection::connect(&opts, true).await.unwrap() },
        Walsender::accept(&listener)
    );
    let (stream, sql) = tokio::join!(
        WalStream::start(conn, START, VERSION, options, WalControl::default()),
        server.open_copy()
    );
    assert!(
        sql.starts_with("START_REPLICATION SLOT \"s\" LOGICAL 0/10"),
        "{sql}"
    );
    (stream.unwrap(), server, listener)
}

async fn recv(stream: &mut WalStream) -> WalEvent {
    tokio::time::timeout(SOON, stream.recv(true))
        .await
        .expect("an event")
        .unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn yields_data_and_answers_a_keepalive_that_asks() {
    let (mut stream, mut server, _l) = started(options(HOUR, None)).await;
    assert!(stream.options.link.problem().is_none(), "streaming is up");
    server.xlog(Lsn(0x20), b"B").await;
    let WalEvent::Data(data) = recv(&mut stream).await else {
        panic!("data")
    };
    assert_eq!((data.start, &data.data[..]), (Lsn(0x20), &b"B"[..]));
    server.keepalive(Lsn(0x30), true).await;
    assert!(matches!(
        recv(&mut stream).await,
        WalEvent::Keepalive { end: Lsn(0x30) }
    ));
    stream.confirm(Lsn(0x28));
    let (next, status) = tokio::join!(recv(&mut stream), async {
        let status = server.status().await;
        server.keepalive(Lsn(0x31), false).await;
        status
    });
    assert_eq!(
        status,
        (Lsn(0x28), false),
        "the reply confirms what the caller confirmed"
    );
    assert!(matches!(next, WalEvent::Keepalive { end: Lsn(0x31) }));
}

#[tokio::test]
async fn a_confirmation_from_another_task_goes_through_the_caller() {
    let (mut stream, mut server, _l) = started(options(HOUR, None)).await;
    let control = stream.control().clone();
    let waiting = tokio::spawn(async move {
        let event = recv(&mut stream).await;
        (stream, event)
    });
    control.confirm(Lsn(0x50));
    let (mut stream, event) = waiting.await.unwrap();
    assert!(matches!(event, WalEvent::Confirmed));
    assert_eq!(
        stream.confirmed(),
        START,
        "nothing is reported before the caller agrees"
    );
    // The caller may cut it back (a held prepared transaction, say).
    stream.confirm(Lsn(0x40));
    stream.report_soon();
    let (_, status) = tokio::join!(
        async {
            let event = recv(&mut stream).await;
            assert!(matches!(event, WalEvent::Keepalive { .. }), "{event:?}");
        },
        async {
            let status = server.status().await;
            server.keepalive(Lsn(0x60), false).await;
            status
        }
    );
    assert_eq!(status, (Lsn(0x40), false));
}

#[tokio::test]
async fn status_updates_go_out_every_interval_and_on_request() {
    let (mut stream, mut server, _l) = started(options(Duration::from_millis(50), None)).await;
    let control = stream.control().clone();
    let reading = tokio::spawn(async move { recv(&mut stream).await });
    assert_eq!(server.status().await, (START, false), "a periodic update");
    control.request_position();
    let mut asked = false;
    for _ in 0..20 {
        asked = server.status().await.1;
        if asked {
            break;
        }
    }
    assert!(asked, "a request for the position asks the server to reply");
    server.keepalive(Lsn(0x70), false).await;
    assert!(matches!(
        reading.await.unwrap(),
        WalEvent::Keepalive { end: Lsn(0x70) }
    ));
}

#[tokio::test]
async fn interrupts_wait_until_the_caller_allows_them() {
    let (mut stream, mut server, _l) = started(options(HOUR, None)).await;
    stream.control().interrupt();
    server.keepalive(Lsn(0x80), false).await;
    let event = tokio::time::timeout(SOON, stream.recv(false))
        .await
        .unwrap();
    assert!(matches!(event.unwrap(), WalEvent::Keepalive { .. }));
    assert!(matches!(recv(&mut stream).await, WalEvent::Interrupted));
}

#[tokio::test]
async fn a_silent_server_is_pinged_then_left_and_reconnected_after_vetting() {
    let timeout = Duration::from_millis(400);
    let (mut stream, mut server, listener) = started(options(HOUR, Some(timeout))).await;
    stream.confirm(Lsn(0x90));
    let link = stream.options.link.clone();
    let reading = tokio::spawn(async move {
        let event = recv(&mut stream).await;
        (stream, event)
    });
    assert_eq!(
        server.status().await,
        (Lsn(0x90), true),
        "halfway through the silence the stream asks for a reply"
    );
    // No answer: the stream gives the connection up and connects again.
    let mut again = Walsender::accept(&listener).await;
    let (mut stream, event) = reading.await.unwrap();
    assert!(matches!(event, WalEvent::Reconnected));
    let problem = link.problem().expect("the loss shows in /health");
    assert!(problem.contains("nothing received for 0.4s"), "{problem}");
    assert!(stream.connection_to_vet().is_some());
    stream.resume(VERSION);
    let (event, sql) = tokio::join!(recv(&mut stream), async {
        let sql = again.open_copy().await;
        again.keepalive(Lsn(0xA0), false).await;
        sql
    });
    assert!(
        sql.contains("LOGICAL 0/90"),
        "resumes at the confirmed position: {sql}"
    );
    assert!(matches!(event, WalEvent::Keepalive { end: Lsn(0xA0) }));
    assert!(link.problem().is_none());
    drop(server);
}

#[tokio::test]
async fn a_rejected_connection_is_dropped_and_tried_again() {
    let (mut stream, server, listener) = started(options(HOUR, None)).await;
    drop(server);
    let accepting = tokio::spawn(async move {
        let first = Walsender::accept(&listener).await;
        let second = Walsender::accept(&listener).await;
        (first, second)
    });
    assert!(matches!(recv(&mut stream).await, WalEvent::Reconnected));
    assert!(stream.reject(&"the slot is active"));
    assert!(stream.connection_to_vet().is_none());
    assert!(matches!(recv(&mut stream).await, WalEvent::Reconnected));
    let _servers = accepting.await.unwrap();
}

#[tokio::test]
async fn the_backoff_limit_ends_the_retries_with_the_last_error() {
    let mut options = options(HOUR, None);
    options.reconnect = options.reconnect.with_limit(Some(1));
    let (mut stream, server, listener) = started(options).await;
    drop(server);
    drop(listener);
    let err = tokio::time::timeout(SOON, stream.recv(true))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
}

#[tokio::test]
async fn a_fatal_server_error_is_returned_at_once() {
    let (mut stream, mut server, _l) = started(options(HOUR, None)).await;
    server
        .send(
            b'E',
            b"SERROR\0VERROR\0C55000\0Mlogical decoding failed\0\0",
        )
        .await;
    let err = tokio::time::timeout(SOON, stream.recv(true))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.sqlstate(), Some("55000"));
}

#[tokio::test]
async fn a_stop_ends_the_stream_and_finishes_the_copy_cleanly() {
    let (mut stream, mut server, _l) = started(options(HOUR, None)).await;
    stream.control().stop();
    assert!(matches!(recv(&mut stream).await, WalEvent::End));
    assert!(
        matches!(recv(&mut stream).await, WalEvent::End),
        "ended stays ended"
    );
    stream.confirm(Lsn(0xB0));
    let (finished, ()) = tokio::join!(stream.finish(), async {
        assert_eq!(
            server.status().await,
            (Lsn(0xB0), false),
            "a last status update"
        );
        assert_eq!(server.frame().await.0, b'c', "CopyDone");
        server.send(b'c', b"").await;
        server.send(b'C', b"COPY 0\0").await;
        server.send(b'Z', b"I").await;
        assert_eq!(server.frame().await.0, b'X', "Terminate");
    });
    finished.unwrap();
}
