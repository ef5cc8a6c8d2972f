//! A minimal HTTP/1.1 client for talking to walflow's own listeners (the serve API, metrics):
//! one request per connection, the answer read to the end. Enough for tests, and it shows the
//! bytes exactly as a client sees them.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: the status code and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The response headers, as sent.
    pub headers: String,
    /// The body (text).
    pub body: String,
}

impl Answer {
    /// The body as JSON (panics with the body when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// Sends `method path` to `addr` with an optional bearer `token` and JSON `body`.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Answer> {
    let body = body.unwrap_or("").as_bytes();
    send(addr, (method, path), token, ("application/json", body))
}

/// Sends `method path` to `addr` with an optional bearer `token` and a body of
/// `(content type, bytes)`.
pub fn send(
    addr: &str,
    (method, path): (&str, &str),
    token: Option<&str>,
    (content_type, body): (&str, &[u8]),
) -> std::io::Result<Answer> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    head.push_str(&format!(
        "content-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    ));
    conn.write_all(head.as_bytes())?;
    conn.write_all(body)?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Answer {
        status,
        headers: headers.to_string(),
        body: body.to_string(),
    })
}
