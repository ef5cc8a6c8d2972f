//! An HTTP endpoint for the http sink's tests: it answers each request with the next status from
//! a script (then 200), and keeps the bodies it answered 2xx to.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// Statuses to answer next, each with an optional `Retry-After`.
type Script = Arc<Mutex<VecDeque<(u16, Option<&'static str>)>>>;

/// What the endpoint saw.
#[derive(Default)]
pub struct Seen {
    /// Bodies of accepted requests, in order, with their content type.
    pub accepted: Vec<(String, Bytes)>,
    /// Statuses answered, in order, with when.
    pub answers: Vec<(u16, Instant)>,
    /// A header the test looks for, per request.
    pub auth: Vec<Option<String>>,
}

/// A scripted endpoint on a loopback port.
pub struct Endpoint {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    script: Script,
    down: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// Starts an endpoint answering the `script` statuses (with an optional `Retry-After`) first.
    pub async fn start(script: Vec<(u16, Option<&'static str>)>) -> Endpoint {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, sc, d) = (seen.clone(), script.clone(), down.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (s, sc, d) = (s.clone(), sc.clone(), d.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| handle(req, s.clone(), sc.clone(), d.clone()));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Endpoint {
            addr,
            seen,
            script,
            down,
            task,
        }
    }

    /// The URL to POST to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// While down, every request is answered 503 (what a load balancer says of a service
    /// behind it that is down) and nothing is accepted.
    #[allow(dead_code)]
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::Release);
    }

    /// Makes the next requests get these answers.
    #[allow(dead_code)]
    pub fn push_script(&self, answers: &[(u16, Option<&'static str>)]) {
        self.script.lock().unwrap().extend(answers.iter().copied());
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
    script: Script,
    down: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let (status, retry_after) = if down.load(std::sync::atomic::Ordering::Acquire) {
        (503, None)
    } else {
        script.lock().unwrap().pop_front().unwrap_or((200, None))
    };
    let mut seen = seen.lock().unwrap();
    seen.answers.push((status, Instant::now()));
    seen.auth.push(auth);
    if (200..300).contains(&status) {
        seen.accepted.push((content_type, body));
    }
    let mut response = Response::builder().status(StatusCode::from_u16(status).unwrap());
    if let Some(r) = retry_after {
        response = response.header("retry-after", r);
    }
    let text = if status == 400 { "bad field `qty`" } else { "" };
    Ok(response.body(Full::new(Bytes::from(text))).unwrap())
}
