//! A TCP proxy in front of a Kafka-protocol broker that loses the broker's answer to one
//! produce request: the request reaches the broker (and is written), the answer never reaches
//! the producer, and the connection is cut. That is the failure an idempotent producer exists
//! for: its retry must not write the records a second time.
//!
//! Kafka frames are a 4-byte big-endian length and a body. A request body starts with the API
//! key (2 bytes; 0 is Produce), the API version (2) and the correlation id (4); a response body
//! starts with the correlation id. The proxy reads whole frames in both directions, so it knows
//! which response answers which request.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

const PRODUCE: i16 = 0;

/// The running proxy.
pub struct KafkaProxy {
    port: u16,
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicUsize>,
}

impl KafkaProxy {
    /// Listens on a free loopback port; call [`KafkaProxy::forward_to`] once the broker runs.
    pub async fn bind() -> (KafkaProxy, TcpListener) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy port");
        let port = listener.local_addr().expect("proxy address").port();
        let proxy = KafkaProxy {
            port,
            armed: Arc::new(AtomicBool::new(false)),
            cut: Arc::new(AtomicUsize::new(0)),
        };
        (proxy, listener)
    }

    /// Forwards every connection to the broker at `upstream`.
    pub fn forward_to(&self, listener: TcpListener, upstream: u16) {
        let armed = self.armed.clone();
        let cut = self.cut.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                tokio::spawn(relay(client, broker, armed.clone(), cut.clone()));
            }
        });
    }

    /// The `host:port` clients use.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port clients use.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Loses the answer to the next produce request.
    pub fn lose_next_produce_answer(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// How many produce answers were lost.
    pub fn answers_lost(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

async fn relay(
    client: TcpStream,
    broker: TcpStream,
    armed: Arc<AtomicBool>,
    cut: Arc<AtomicUsize>,
) {
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = broker.into_split();
    let doomed = Arc::new(Mutex::new(HashSet::new()));
    let requests = requests(client_read, broker_write, armed, doomed.clone());
    let responses = responses(broker_read, client_write, doomed, cut);
    // Whichever side ends first ends the connection (dropping both halves closes it).
    tokio::select! {
        _ = requests => {}
        _ = responses => {}
    }
}

/// Client to broker: notes the correlation id of the produce request whose answer is to be lost.
async fn requests(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    armed: Arc<AtomicBool>,
    doomed: Arc<Mutex<HashSet<i32>>>,
) {
    while let Some(frame) = read_frame(&mut from).await {
        if frame.len() >= 12 {
            let api_key = i16::from_be_bytes([frame[4], frame[5]]);
            let correlation = i32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]);
            if api_key == PRODUCE && armed.swap(false, Ordering::SeqCst) {
                doomed.lock().unwrap().insert(correlation);
            }
        }
        if to.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// Broker to client: forwards answers, except a doomed one, which ends the connection.
async fn responses(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    doomed: Arc<Mutex<HashSet<i32>>>,
    cut: Arc<AtomicUsize>,
) {
    while let Some(frame) = read_frame(&mut from).await {
        if frame.len() >= 8 {
            let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
            if doomed.lock().unwrap().remove(&correlation) {
                cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
        }
        if to.write_all(&frame).await.is_err() {
            return;
        }
    }
}

/// One whole frame, length prefix included; `None` at the end of the stream.
async fn read_frame(from: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await.ok()?;
    let size = usize::try_from(i32::from_be_bytes(length)).ok()?;
    let mut frame = vec![0u8; 4 + size];
    frame[..4].copy_from_slice(&length);
    from.read_exact(&mut frame[4..]).await.ok()?;
    Some(frame)
}
