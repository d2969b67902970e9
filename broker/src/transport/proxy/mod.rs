//! The named-URL proxy: `http://api.myapp.localhost:2080` reaches the
//! lease `myapp:api`, whatever its port, over HTTP/1.1 (keep-alive,
//! WebSocket upgrades, streaming bodies and server-sent events passed on
//! as they come), and over TLS with HTTP/2 or HTTP/1.1 (ALPN) on the same
//! port: the first byte of a connection says which.
//!
//! It is a transport like the others in that it holds no rule: which name
//! leads where is the core's (`Core::route`, changed in the same step as
//! the leases), and a request is sent only to the lease's own user's
//! listener, which the kernel names (`tcp_peer` on the backend
//! connection). What is the proxy's own is HTTP: hop-by-hop headers,
//! X-Forwarded-*, timeouts, and the pages for names that lead nowhere.
//! It never reaches the broker's own API or dashboard: those have a port
//! no lease can hold.

mod forward;
mod page;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::config::HTTP_READ_TIMEOUT;
use crate::core::SharedCore;

/// Most client connections at once (WebSocket tunnels included); the next
/// one gets a 503 and is closed.
pub const MAX_CONNECTIONS: usize = 512;
/// Largest request head a client may send (HTTP/1.1 headers, HTTP/2's
/// header list); bigger gets 431.
pub const MAX_HEADERS: usize = 64 * 1024;
/// Most connections to backends at once, over all clients (an HTTP/2
/// client's streams may each need one).
pub const MAX_BACKENDS: usize = 1024;
/// Most HTTP/2 streams at once on one connection.
pub const MAX_STREAMS: u32 = 128;
/// How long connecting to a backend may take (it is on loopback: a
/// listener that does not answer in this time has a full backlog).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every proxied connection shares.
pub struct ProxyState {
    pub core: SharedCore,
    /// TLS with the local CA's leaves; `None` serves plain HTTP only.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub slots: Arc<tokio::sync::Semaphore>,
    pub backend_slots: Arc<tokio::sync::Semaphore>,
    /// How long a backend may take to begin its answer once it has the
    /// request (PB_PROXY_TIMEOUT). Bodies have no timeout of their own (an
    /// event stream may be quiet for hours); a client that hangs up ends
    /// the exchange.
    pub response_timeout: Duration,
}

impl ProxyState {
    pub fn new(
        core: SharedCore,
        tls: Option<tokio_rustls::TlsAcceptor>,
        response_timeout: Duration,
    ) -> Arc<ProxyState> {
        Arc::new(ProxyState {
            core,
            tls,
            response_timeout,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            backend_slots: Arc::new(tokio::sync::Semaphore::new(MAX_BACKENDS)),
        })
    }
}

/// Accepts connections on `listener` for the life of the runtime.
pub async fn serve(listener: TcpListener, state: Arc<ProxyState>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(connection(stream, peer, state.clone()));
            }
            Err(e) => {
                tracing::warn!("proxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, peer: SocketAddr, state: Arc<ProxyState>) {
    let Ok(slot) = state.slots.clone().try_acquire_owned() else {
        let body = format!("pb's proxy has {MAX_CONNECTIONS} connections open; try again\n");
        let reply = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ =
            tokio::time::timeout(Duration::from_secs(1), stream.write_all(reply.as_bytes())).await;
        return;
    };
    let _ = stream.set_nodelay(true);
    // TLS begins with a handshake record (0x16); HTTP with a method's letter.
    let mut first = [0u8; 1];
    let tls = match tokio::time::timeout(HTTP_READ_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == 0x16,
        _ => return,
    };
    let client = forward::Client {
        peer,
        https: tls,
        slot: Arc::new(slot),
        backends: Default::default(),
    };
    if tls {
        let Some(acceptor) = state.tls.clone() else {
            return;
        };
        let Ok(Ok(tls_stream)) =
            tokio::time::timeout(HTTP_READ_TIMEOUT, acceptor.accept(stream)).await
        else {
            return;
        };
        serve_http(TokioIo::new(tls_stream), state, client).await;
    } else {
        serve_http(TokioIo::new(stream), state, client).await;
    }
}

/// Serves one connection, HTTP/1.1 or HTTP/2 (by ALPN, or a client's
/// HTTP/2 preface on plain TCP), with upgrades for WebSockets.
async fn serve_http<I>(io: I, state: Arc<ProxyState>, client: forward::Client)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let client = Arc::new(client);
    let service = hyper::service::service_fn(move |req| {
        let state = state.clone();
        let client = client.clone();
        async move { Ok::<_, std::convert::Infallible>(forward::handle(&state, &client, req).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_READ_TIMEOUT)
        .max_buf_size(MAX_HEADERS)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADERS as u32)
        .max_concurrent_streams(MAX_STREAMS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(HTTP_READ_TIMEOUT);
    let _ = builder.serve_connection_with_upgrades(io, service).await;
}

/// Binds every address of PB_PROXY_ADDR.
pub async fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    super::bind_all("the proxy", addrs).await
}
