//! The one way walflow opens a byte stream to PostgreSQL: a TCP connection, or a channel of
//! the `[source.ssh]` tunnel. Replication connections, snapshot readers and SQL sessions all
//! start here, so a tunnel (or any future transport) applies to every one of them, and TLS and
//! authentication are negotiated on top, the same for both.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::error::ConnectError;
use super::options::ConnectOptions;
use super::sql::io_error;
use super::ssh::TunnelStream;

/// A connected byte stream to PostgreSQL, before TLS.
pub enum Socket {
    /// Directly over TCP.
    Tcp(TcpStream),
    /// A channel of the SSH tunnel.
    Ssh(Box<TunnelStream>),
}

/// Connects to the server `opts` names: through its tunnel when it has one, else over TCP with
/// keepalive (see [`crate::socket`]), within `connect_timeout` either way.
pub async fn dial(opts: &ConnectOptions) -> Result<Socket, ConnectError> {
    if let Some(tunnel) = &opts.tunnel {
        let stream = tunnel.open(&opts.host, opts.port).await?;
        return Ok(Socket::Ssh(Box::new(stream)));
    }
    let tcp = tokio::time::timeout(
        opts.connect_timeout,
        TcpStream::connect((opts.host.as_str(), opts.port)),
    )
    .await
    .map_err(|_| {
        io_error(
            opts,
            io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
        )
    })?
    .map_err(|e| io_error(opts, e))?;
    let _ = tcp.set_nodelay(true);
    if let Err(e) = super::socket::configure(&tcp) {
        tracing::warn!(error = %e, "cannot set tcp keepalive; a silently dead link will go unnoticed longer");
    }
    Ok(Socket::Tcp(tcp))
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Ssh(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Ssh(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Ssh(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Ssh(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}
