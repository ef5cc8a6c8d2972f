//! What a plugin's store holds and may reach: WASI with an empty context (no preopened
//! directories, environment, arguments or network), stdout/stderr turned into log lines tagged
//! with the plugin's name, and a memory cap enforced by a resource limiter.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::v0_1::walflow::plugin::outbound_http as outbound_http_v0_1;
use super::bindings::walflow::plugin::outbound_http::{self, Request, Response};
use super::outbound_http::HttpGrant;

/// The data of one plugin's store.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// The memory cap, and whether the guest ran into it.
    pub limiter: MemoryLimiter,
    /// Outbound HTTP, when granted (sink plugins with `allow_hosts`).
    pub http: Option<Arc<HttpGrant>>,
}

impl StoreState {
    /// Fresh state for the plugin `name` with a memory cap of `memory_bytes`.
    pub fn new(name: &Arc<str>, memory_bytes: usize, http: Option<Arc<HttpGrant>>) -> StoreState {
        StoreState {
            wasi: empty_wasi(name),
            table: ResourceTable::new(),
            limiter: MemoryLimiter {
                cap: memory_bytes,
                hit: false,
            },
            http,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A WASI context that grants nothing: no files, no environment, no arguments, no sockets and
/// no name lookups. Clocks and random numbers stay (they carry no authority).
fn empty_wasi(name: &Arc<str>) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(LogStream::new(name.clone(), "stdout"))
        .stderr(LogStream::new(name.clone(), "stderr"))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder.build()
}

/// The error a guest gets when it grows memory past its cap; recognised by the chain and
/// reported as [`super::PluginError::OutOfMemory`].
#[derive(Debug, thiserror::Error)]
#[error("memory cap of {cap} bytes exceeded (asked for {desired})")]
pub struct MemoryCapExceeded {
    /// The cap.
    pub cap: usize,
    /// What the guest asked for.
    pub desired: usize,
}

/// Caps a plugin's linear memory.
pub struct MemoryLimiter {
    cap: usize,
    /// Set once the guest asked for more than the cap.
    pub hit: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Err(MemoryCapExceeded {
                cap: self.cap,
                desired,
            }
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// A guest's stdout or stderr: each complete line becomes one `tracing` event carrying the
/// plugin's name.
#[derive(Clone)]
struct LogStream {
    plugin: Arc<str>,
    stream: &'static str,
}

impl LogStream {
    fn new(plugin: Arc<str>, stream: &'static str) -> LogStream {
        LogStream { plugin, stream }
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger::new(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineLogger::new(self.clone()))
    }
}

/// Collects bytes into lines and logs each one.
struct LineLogger {
    target: LogStream,
    pending: Vec<u8>,
}

/// Longest line kept; a guest printing without newlines cannot grow the host's memory.
const MAX_LINE: usize = 16 * 1024;

impl LineLogger {
    fn new(target: LogStream) -> LineLogger {
        LineLogger {
            target,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.emit();
            } else if self.pending.len() < MAX_LINE {
                self.pending.push(b);
            }
        }
    }

    fn emit(&mut self) {
        let line = String::from_utf8_lossy(&self.pending);
        let line = line.trim_end_matches('\r');
        if self.target.stream == "stderr" {
            tracing::warn!(plugin = %self.target.plugin, stream = "stderr", "{line}");
        } else {
            tracing::info!(plugin = %self.target.plugin, stream = "stdout", "{line}");
        }
        self.pending.clear();
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
    }
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: bytes::Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for LineLogger {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl outbound_http::Host for StoreState {
    fn send(&mut self, request: Request) -> Result<Response, String> {
        match &self.http {
            Some(grant) => grant.send(request),
            None => Err(
                "this plugin has no outbound HTTP; only a [[sinks]] type = \"plugin\" with allow_hosts has"
                    .to_string(),
            ),
        }
    }
}

/// 0.1.0's `outbound-http`: the same records under another package version.
impl outbound_http_v0_1::Host for StoreState {
    fn send(
        &mut self,
        request: outbound_http_v0_1::Request,
    ) -> Result<outbound_http_v0_1::Response, String> {
        let request = Request {
            method: request.method,
            url: request.url,
            headers: request.headers,
            body: request.body,
        };
        outbound_http::Host::send(self, request).map(|r| outbound_http_v0_1::Response {
            status: r.status,
            headers: r.headers,
            body: r.body,
        })
    }
}

/// Adds the `outbound-http` import of every ABI version to a plugin linker (served by the
/// store's [`HttpGrant`], when it has one).
pub fn add_http_to_linker(
    linker: &mut wasmtime::component::Linker<StoreState>,
) -> wasmtime::Result<()> {
    use wasmtime::component::HasSelf;
    outbound_http::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |state| state)?;
    outbound_http_v0_1::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |state| state)
}
