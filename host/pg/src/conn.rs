//! The replication connection's wire level: TCP (or TLS) stream, startup with
//! `replication=database`, authentication (trust, cleartext, md5, SCRAM-SHA-256 with
//! `tls-server-end-point` channel binding when the server offers SCRAM-SHA-256-PLUS), the simple
//! query protocol, and the framing of COPY. What travels inside a replication CopyBoth stream
//! is [`crate::stream`]'s.
//!
//! Reads go through one large buffer; a CopyData frame is split off it without copying, so the
//! fast path costs one `BytesMut::split_to` per message.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::dial::{Socket, dial};
use super::error::{ConnectError, ServerError};
use super::options::{ConnectOptions, SessionAttrs};
use super::sql::io_error;
use super::tls;
use walflow_config::SslMode;

/// How much the read buffer grows by when it runs dry.
const READ_CHUNK: usize = 256 * 1024;

/// The socket (TCP or a tunnel channel), or TLS on it.
enum Transport {
    Plain(Socket),
    Tls(Box<tokio_rustls::client::TlsStream<Socket>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// One message from the server: its tag and its body (without the 5-byte header).
pub struct Frame {
    /// The message type byte.
    pub tag: u8,
    /// The body.
    pub body: BytesMut,
}

/// A row of a simple-query result in text format.
pub type TextRow = Vec<Option<String>>;

/// An open connection in replication mode.
pub struct Connection {
    io: Transport,
    rbuf: BytesMut,
    wbuf: BytesMut,
    opts: ConnectOptions,
    params: Vec<(String, String)>,
    tls: bool,
}

impl Connection {
    /// Connects and logs in with `replication=database` (or as a plain SQL session when
    /// `replication` is false).
    pub async fn connect(
        opts: &ConnectOptions,
        replication: bool,
    ) -> Result<Connection, ConnectError> {
        let mut last = None;
        for (host, port) in opts.hosts() {
            let one = opts.for_host(host, port);
            let mut conn = match Connection::connect_one(&one, replication).await {
                Ok(conn) => conn,
                Err(e) if e.is_retryable() => {
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if conn.will_do(opts.target_session_attrs).await? {
                // Reconnects start from here, and go on to the other hosts.
                conn.opts = opts.preferring(host, port);
                return Ok(conn);
            }
            conn.close().await;
            last = Some(ConnectError::Broken {
                addr: one.addr(),
                source: io::Error::other(
                    "the server is read-only and target_session_attrs asks for read-write",
                ),
            });
        }
        Err(last.unwrap_or_else(|| io_error(opts, io::Error::other("no host to connect to"))))
    }

    /// Whether this server is one `attrs` accepts.
    async fn will_do(&mut self, attrs: SessionAttrs) -> Result<bool, ConnectError> {
        match attrs {
            SessionAttrs::Any => Ok(true),
            SessionAttrs::ReadWrite => Ok(self.show("transaction_read_only").await? == "off"),
        }
    }

    /// Connects to `opts`' first host only.
    async fn connect_one(
        opts: &ConnectOptions,
        replication: bool,
    ) -> Result<Connection, ConnectError> {
        let tcp = dial(opts).await?;
        let io = negotiate_tls(opts, tcp).await?;
        let tls = matches!(io, Transport::Tls(_));
        let mut conn = Connection {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(4096),
            opts: opts.clone(),
            params: Vec::new(),
            tls,
        };
        conn.startup(replication).await?;
        Ok(conn)
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// A parameter the server reported at startup (`server_version`, …).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The options this connection was made with.
    pub fn options(&self) -> &ConnectOptions {
        &self.opts
    }

    async fn startup(&mut self, replication: bool) -> Result<(), ConnectError> {
        let mut params = vec![
            ("user", self.opts.user.as_str()),
            ("database", self.opts.dbname.as_str()),
            ("application_name", self.opts.application_name.as_str()),
            ("client_encoding", "UTF8"),
            // pgoutput prints values with the walsender's settings; the value decoder expects
            // these (and floats from servers before 12 lose digits without extra_float_digits).
            ("DateStyle", "ISO"),
            ("IntervalStyle", "postgres"),
            ("extra_float_digits", "3"),
        ];
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| self.broken(e))?;
        self.flush().await?;
        self.authenticate().await?;
        loop {
            let msg = self.read_message().await?;
            match msg {
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ParameterStatus(p) => {
                    if let (Ok(k), Ok(v)) = (p.name(), p.value()) {
                        self.params.push((k.to_string(), v.to_string()));
                    }
                }
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ErrorResponse(e) => return Err(self.login_error(e)),
                _ => {
                    return Err(ConnectError::Protocol(
                        "unexpected message during startup".into(),
                    ));
                }
            }
        }
    }

    async fn authenticate(&mut self) -> Result<(), ConnectError> {
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => return Ok(()),
                backend::Message::AuthenticationCleartextPassword => {
                    let pw = self.password()?;
                    frontend::password_message(pw.as_bytes(), &mut self.wbuf)
                        .map_err(|e| self.broken(e))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let pw = self.password()?;
                    let hash = postgres_protocol::authentication::md5_hash(
                        self.opts.user.as_bytes(),
                        pw.as_bytes(),
                        body.salt(),
                    );
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)
                        .map_err(|e| self.broken(e))?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = Vec::new();
                    let mut it = body.mechanisms();
                    while let Ok(Some(m)) = it.next() {
                        mechanisms.push(m.to_string());
                    }
                    return self.scram(&mechanisms).await;
                }
                backend::Message::ErrorResponse(e) => return Err(self.login_error(e)),
                backend::Message::AuthenticationGss
                | backend::Message::AuthenticationGssContinue(_) => {
                    return Err(ConnectError::UnsupportedAuth("GSSAPI".into()));
                }
                backend::Message::AuthenticationSspi => {
                    return Err(ConnectError::UnsupportedAuth("SSPI".into()));
                }
                backend::Message::AuthenticationKerberosV5 => {
                    return Err(ConnectError::UnsupportedAuth("Kerberos V5".into()));
                }
                _ => {
                    return Err(ConnectError::Protocol(
                        "unexpected message during authentication".into(),
                    ));
                }
            }
        }
    }

    async fn scram(&mut self, mechanisms: &[String]) -> Result<(), ConnectError> {
        let pw = self.password()?;
        let plus = mechanisms.iter().any(|m| m == "SCRAM-SHA-256-PLUS");
        let plain = mechanisms.iter().any(|m| m == "SCRAM-SHA-256");
        let (mechanism, binding) = match (&self.io, plus) {
            (Transport::Tls(s), true) => {
                let cert = s.get_ref().1.peer_certificates().and_then(|c| c.first());
                match cert {
                    Some(c) => (
                        "SCRAM-SHA-256-PLUS",
                        ChannelBinding::tls_server_end_point(tls::end_point_hash(c)),
                    ),
                    None => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
                }
            }
            (Transport::Tls(_), false) => ("SCRAM-SHA-256", ChannelBinding::unrequested()),
            (Transport::Plain(_), _) => ("SCRAM-SHA-256", ChannelBinding::unsupported()),
        };
        if mechanism == "SCRAM-SHA-256" && !plain {
            return Err(ConnectError::UnsupportedAuth(format!(
                "SASL ({})",
                mechanisms.join(", ")
            )));
        }
        let mut scram = ScramSha256::new(pw.as_bytes(), binding);
        frontend::sasl_initial_response(mechanism, scram.message(), &mut self.wbuf)
            .map_err(|e| self.broken(e))?;
        self.flush().await?;
        match self.read_message().await? {
            backend::Message::AuthenticationSaslContinue(body) => {
                scram
                    .update(body.data())
                    .map_err(|e| self.scram_failed(e))?;
            }
            backend::Message::ErrorResponse(e) => return Err(self.login_error(e)),
            _ => return Err(ConnectError::Protocol("expected SASL continue".into())),
        }
        frontend::sasl_response(scram.message(), &mut self.wbuf).map_err(|e| self.broken(e))?;
        self.flush().await?;
        match self.read_message().await? {
            backend::Message::AuthenticationSaslFinal(body) => {
                scram
                    .finish(body.data())
                    .map_err(|e| self.scram_failed(e))?;
            }
            backend::Message::ErrorResponse(e) => return Err(self.login_error(e)),
            _ => return Err(ConnectError::Protocol("expected SASL final".into())),
        }
        match self.read_message().await? {
            backend::Message::AuthenticationOk => Ok(()),
            backend::Message::ErrorResponse(e) => Err(self.login_error(e)),
            _ => Err(ConnectError::Protocol("expected authentication ok".into())),
        }
    }

    fn scram_failed(&self, e: io::Error) -> ConnectError {
        ConnectError::AuthFailed {
            user: self.opts.user.clone(),
            message: format!("SCRAM exchange failed: {e}"),
        }
    }

    fn password(&self) -> Result<String, ConnectError> {
        self.opts
            .password
            .clone()
            .ok_or_else(|| ConnectError::PasswordMissing {
                user: self.opts.user.clone(),
            })
    }

    fn login_error(&self, e: backend::ErrorResponseBody) -> ConnectError {
        ServerError::from_fields(e.fields()).into_connect_error(&self.opts.user, &self.opts.dbname)
    }

    fn broken(&self, e: io::Error) -> ConnectError {
        ConnectError::Broken {
            addr: self.opts.addr(),
            source: e,
        }
    }

    /// Writes out everything buffered.
    pub async fn flush(&mut self) -> Result<(), ConnectError> {
        if !self.wbuf.is_empty() {
            let res = self.io.write_all(&self.wbuf).await;
            self.wbuf.clear();
            res.map_err(|e| self.broken(e))?;
        }
        self.io.flush().await.map_err(|e| self.broken(e))
    }

    /// The tag and whole length (header included) of the next frame, when the read buffer
    /// holds all of it; otherwise makes room for it.
    fn peek_frame(&mut self) -> Result<Option<(u8, usize)>, ConnectError> {
        if self.rbuf.len() < 5 {
            return Ok(None);
        }
        let len =
            u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]) as usize;
        if len < 4 {
            return Err(ConnectError::Protocol(format!(
                "message length {len} is impossible"
            )));
        }
        let total = len + 1;
        if self.rbuf.len() < total {
            self.rbuf.reserve(total - self.rbuf.len());
            return Ok(None);
        }
        Ok(Some((self.rbuf[0], total)))
    }

    /// Splits the next whole frame off the read buffer, without I/O.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, ConnectError> {
        let Some((tag, total)) = self.peek_frame()? else {
            return Ok(None);
        };
        let mut body = self.rbuf.split_to(total);
        body.advance(5);
        Ok(Some(Frame { tag, body }))
    }

    /// Whether the read buffer holds a whole message.
    pub fn has_buffered(&self) -> bool {
        self.rbuf.len() >= 5
            && self.rbuf.len()
                > u32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]])
                    as usize
    }

    /// Reads once from the socket into the buffer. Cancel-safe: bytes read are kept.
    pub async fn fill(&mut self) -> Result<(), ConnectError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 4 {
            self.rbuf.reserve(READ_CHUNK);
        }
        let n = self
            .io
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| self.broken(e))?;
        if n == 0 {
            return Err(self.broken(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    /// Reads the next whole frame.
    pub async fn read_frame(&mut self) -> Result<Frame, ConnectError> {
        loop {
            if let Some(frame) = self.try_frame()? {
                return Ok(frame);
            }
            self.fill().await?;
        }
    }

    /// Reads the next frame and parses it with postgres-protocol (not for CopyBoth data).
    async fn read_message(&mut self) -> Result<backend::Message, ConnectError> {
        let frame = self.read_frame().await?;
        parse_frame(frame)
    }

    /// Runs one statement with the simple query protocol and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<TextRow>, ConnectError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.broken(e))?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::DataRow(row) => rows.push(text_row(&row)?),
                backend::Message::ErrorResponse(e) => {
                    error = Some(ServerError::from_fields(e.fields()));
                }
                backend::Message::ReadyForQuery(_) => break,
                backend::Message::CopyOutResponse(_) | backend::Message::CopyInResponse(_) => {
                    return Err(ConnectError::Protocol(
                        "unexpected COPY in a simple query".into(),
                    ));
                }
                _ => {}
            }
        }
        match error {
            Some(e) => Err(e.into_generic()),
            None => Ok(rows),
        }
    }

    /// Sends a statement that starts CopyBoth (START_REPLICATION) and waits for the copy to open.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), ConnectError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.broken(e))?;
        self.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'W' => return Ok(()),
                b'N' => {}
                b'E' => return Err(self.error_then_ready(frame).await),
                other => {
                    return Err(ConnectError::Protocol(format!(
                        "expected CopyBothResponse, got message '{}'",
                        other as char
                    )));
                }
            }
        }
    }

    /// Sends a `COPY … TO STDOUT` and waits for the copy to open; then read its rows with
    /// [`copy_out_buffered`](Self::copy_out_buffered) and [`fill`](Self::fill).
    pub async fn start_copy_out(&mut self, sql: &str) -> Result<(), ConnectError> {
        frontend::query(sql, &mut self.wbuf).map_err(|e| self.broken(e))?;
        self.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'H' => return Ok(()),
                b'N' => {}
                b'E' => return Err(self.error_then_ready(frame).await),
                other => {
                    return Err(ConnectError::Protocol(format!(
                        "expected CopyOutResponse, got message '{}'",
                        other as char
                    )));
                }
            }
        }
    }

    /// Hands each whole row (CopyData body) in the read buffer to `each`, in place: no I/O, no
    /// copy, no allocation per row. `Ok(true)` once the server has ended the COPY and is ready
    /// for the next statement; `Ok(false)` when it needs more input ([`fill`](Self::fill)).
    /// After an error the connection is unusable.
    pub fn copy_out_buffered<E: From<ConnectError>>(
        &mut self,
        mut each: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        while let Some((tag, total)) = self.peek_frame()? {
            if tag == b'd' {
                let row = each(&self.rbuf[5..total]);
                self.rbuf.advance(total);
                row?;
                continue;
            }
            let frame = self
                .try_frame()?
                .ok_or_else(|| ConnectError::Protocol("a peeked frame went missing".into()))?;
            match frame.tag {
                b'Z' => return Ok(true),
                b'c' | b'C' | b'N' | b'S' => {}
                b'E' => return Err(server_error(frame).into()),
                other => {
                    return Err(ConnectError::Protocol(format!(
                        "unexpected message '{}' in a COPY",
                        other as char
                    ))
                    .into());
                }
            }
        }
        Ok(false)
    }

    /// The server error in `frame`, after reading on to the ReadyForQuery that follows it.
    /// (An error frame that does not parse is returned at once.)
    async fn error_then_ready(&mut self, frame: Frame) -> ConnectError {
        let err = server_error(frame);
        if !matches!(err, ConnectError::Protocol(_)) {
            let _ = self.read_message().await;
        }
        err
    }

    /// Queues a CopyData message with `body` (sent with the next [`flush`](Self::flush)).
    pub fn queue_copy_data(&mut self, body: &[u8]) {
        self.wbuf.extend_from_slice(b"d");
        self.wbuf
            .extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
        self.wbuf.extend_from_slice(body);
    }

    /// Ends the copy from our side (CopyDone) and waits for the server to finish, so the
    /// connection can be closed cleanly.
    pub async fn finish_copy(&mut self) -> Result<(), ConnectError> {
        frontend::copy_done(&mut self.wbuf);
        self.flush().await?;
        loop {
            let frame = self.read_frame().await?;
            match frame.tag {
                b'Z' => return Ok(()),
                b'E' => return Err(server_error(frame)),
                _ => {}
            }
        }
    }

    /// Sends Terminate and waits up to `wait` for the server to close the connection. A backend
    /// closes its socket only after releasing its connection and walsender slots, so a session
    /// opened next does not find them still taken (with a tight `max_wal_senders`).
    pub async fn close_and_wait(mut self, wait: std::time::Duration) {
        frontend::terminate(&mut self.wbuf);
        if self.flush().await.is_err() {
            return;
        }
        let until_closed = async {
            while self.fill().await.is_ok() {
                self.rbuf.clear();
            }
        };
        let _ = tokio::time::timeout(wait, until_closed).await;
    }

    /// Sends Terminate and closes the socket.
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}

/// The error an ErrorResponse frame (tag `E`) carries.
pub(crate) fn server_error(frame: Frame) -> ConnectError {
    match parse_frame(frame) {
        Ok(backend::Message::ErrorResponse(e)) => {
            ServerError::from_fields(e.fields()).into_generic()
        }
        Ok(_) => ConnectError::Protocol("a malformed error response".into()),
        Err(e) => e,
    }
}

fn parse_frame(frame: Frame) -> Result<backend::Message, ConnectError> {
    let mut buf = BytesMut::with_capacity(frame.body.len() + 5);
    buf.extend_from_slice(&[frame.tag]);
    buf.extend_from_slice(&(frame.body.len() as u32 + 4).to_be_bytes());
    buf.extend_from_slice(&frame.body);
    match backend::Message::parse(&mut buf) {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(ConnectError::Protocol("incomplete message".into())),
        Err(e) => Err(ConnectError::Protocol(format!(
            "cannot parse message '{}': {e}",
            frame.tag as char
        ))),
    }
}

fn text_row(row: &backend::DataRowBody) -> Result<TextRow, ConnectError> {
    let buf = row.buffer();
    let mut out = Vec::new();
    let mut ranges = row.ranges();
    while let Some(range) = ranges
        .next()
        .map_err(|e| ConnectError::Protocol(format!("bad data row: {e}")))?
    {
        out.push(range.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
    }
    Ok(out)
}

/// SSLRequest and handshake per sslmode.
async fn negotiate_tls(opts: &ConnectOptions, mut tcp: Socket) -> Result<Transport, ConnectError> {
    let Some(config) = tls::client_config(opts)? else {
        return Ok(Transport::Plain(tcp));
    };
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    let broken = |e: io::Error| ConnectError::Broken {
        addr: opts.addr(),
        source: e,
    };
    tcp.write_all(&buf).await.map_err(broken)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(broken)?;
    match answer[0] {
        b'S' => {}
        b'N' if opts.sslmode == SslMode::Prefer => return Ok(Transport::Plain(tcp)),
        b'N' => {
            return Err(ConnectError::Tls {
                addr: opts.addr(),
                message: "the server does not accept TLS connections; enable ssl on the server or use sslmode=prefer or disable".into(),
            });
        }
        other => {
            return Err(ConnectError::Protocol(format!(
                "answer '{}' to the TLS request",
                other as char
            )));
        }
    }
    let name = tls::server_name(&opts.host)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = tokio::time::timeout(opts.connect_timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| {
            io_error(
                opts,
                io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"),
            )
        })?
        .map_err(|e| tls::handshake_error(opts, e))?;
    Ok(Transport::Tls(Box::new(stream)))
}
