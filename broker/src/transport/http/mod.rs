//! The HTTP transport: the broker's API on loopback TCP, with the routes
//! of both seeds (Port Daddy's and PortManager's) and /openapi.json.
//!
//! It also serves the dashboard ([`dashboard`]), a client of this same API.
//!
//! Like the Unix-socket transport it only translates: each route turns a
//! request into an [`pb_proto::Op`] and calls [`crate::service::dispatch`],
//! the path every transport shares, so no rule exists here a second time.
//! What is HTTP's own is the defence of a TCP port that any local process
//! and any web page can reach: [`guard`] admits requests, [`limits`] bounds
//! connections and request rates per user, and each connection's user is
//! read from the kernel's socket table (pb_platform::sockets::tcp_peer),
//! never from what the client says.

pub mod activity;
pub mod agents;
pub mod dashboard;
pub mod error;
pub mod guard;
pub mod io;
pub mod limits;
pub mod listeners;
pub mod locks;
pub mod login;
pub mod mcp;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod portdaddy;
pub mod portmanager;
pub mod sessions;
pub mod sse;
pub mod stacks;
pub mod webhooks;
pub mod whoami;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use pb_proto::{ErrorCode, WireError};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tower::ServiceExt;

use crate::config::{Config, HTTP_RATE_BURST_SECONDS, HTTP_RATE_MAX_CLIENTS, HTTP_READ_TIMEOUT};
use crate::core::answer::ReplyType;
use crate::core::SharedCore;
use crate::token::Token;
use error::ApiError;
use limits::{Connections, RateLimiter};

/// What every route and check shares.
pub struct HttpState {
    pub core: SharedCore,
    pub token: Token,
    /// The broker's own uid: its callers need no token.
    pub broker_uid: u32,
    pub rate: RateLimiter,
    pub connections: Arc<Connections>,
    /// SHA-256 of the running executable (/version's `codeHash`), computed
    /// once, off the runtime's thread, when first asked for.
    pub code_hash: tokio::sync::OnceCell<Option<String>>,
    /// Bounds the /proc walks for callers' pids ([`PID_LOOKUPS`]).
    pub pid_lookups: tokio::sync::Semaphore,
    /// `/mcp` lists every tool (PB_MCP_TOOLS=all).
    pub mcp_all_tools: bool,
    /// The broker's metrics: each request is counted here.
    pub metrics: crate::metrics::Metrics,
}

/// One accepted connection, as the kernel describes it.
#[derive(Debug)]
pub struct Conn {
    /// Where the connection came in.
    pub origin: Origin,
    /// The uid that made the peer's socket.
    pub peer_uid: u32,
    /// The process holding the peer's socket and its command line, looked
    /// up at most once.
    process: tokio::sync::OnceCell<(Option<pb_platform::ProcessId>, Option<Arc<str>>)>,
    /// The connection's socket (shared with hyper, not duplicated: every
    /// connection costs one descriptor), to see whether the client hung up
    /// while a call waits ([`Conn::hung_up`]).
    socket: Arc<dyn io::Socket>,
}

/// A connection's two ends, as the kernel names them.
#[derive(Debug)]
pub enum Origin {
    /// Loopback TCP: our address (its port is the one Host must name), the
    /// peer's, and the peer socket's inode, to find its process when that
    /// is needed.
    Tcp {
        local: SocketAddr,
        peer: SocketAddr,
        inode: u64,
    },
    /// The API's Unix socket (PORT_DADDY_SOCK): the peer's process from
    /// SO_PEERCRED (pid and start time).
    Unix {
        process: Option<pb_platform::ProcessId>,
    },
}

impl Conn {
    /// The port a browser's Host and Origin must name: a TCP connection's
    /// own. A Unix socket has none, and no browser reaches it, so DNS
    /// rebinding and cross-site requests cannot arrive there.
    pub fn host_port(&self) -> Option<u16> {
        match self.origin {
            Origin::Tcp { local, .. } => Some(local.port()),
            Origin::Unix { .. } => None,
        }
    }
}

/// How often a waiting call looks whether its client hung up.
const HANGUP_CHECK: Duration = Duration::from_millis(100);

/// How many /proc walks for callers' pids may run at once: a flood of
/// new connections must not become a flood of blocking threads.
pub const PID_LOOKUPS: usize = 4;

impl Conn {
    /// Resolves once the client has closed the connection. hyper learns of
    /// it only when it next writes, and a call waiting in a lock's queue
    /// writes nothing until it is granted: it must stop waiting first.
    /// Whether the client has closed the connection, as of now. A client
    /// that only shut down its sending side (rare for HTTP) counts too.
    pub fn has_hung_up(&self) -> bool {
        pb_platform::os::peer_closed(&self.socket.as_fd())
    }

    pub async fn hung_up(&self) {
        while !pb_platform::os::peer_closed(&self.socket.as_fd()) {
            tokio::time::sleep(HANGUP_CHECK).await;
        }
    }

    /// The process at the other end, from the kernel: the walk over /proc
    /// runs off the runtime's thread, once per connection, and only when a
    /// request needs the pid (state changes, /whoami).
    pub async fn process(
        &self,
        state: &HttpState,
    ) -> (Option<pb_platform::ProcessId>, Option<Arc<str>>) {
        self.process
            .get_or_init(|| async {
                let Ok(_permit) = state.pid_lookups.acquire().await else {
                    return (None, None);
                };
                let (uid, origin) = match self.origin {
                    Origin::Tcp { inode, .. } => (self.peer_uid, Ok(inode)),
                    Origin::Unix { process } => (self.peer_uid, Err(process)),
                };
                tokio::task::spawn_blocking(move || {
                    let p = match origin {
                        Ok(inode) => pb_platform::sockets::holder_of(uid, inode),
                        // SO_PEERCRED named it when it connected.
                        Err(process) => process,
                    };
                    let command = p.and_then(|p| pb_platform::process::command_of(p.pid));
                    (p, command.map(Into::into))
                })
                .await
                .unwrap_or_default()
            })
            .await
            .clone()
    }
}

impl HttpState {
    pub fn new(cfg: &Config, core: SharedCore, token: Token) -> Arc<HttpState> {
        let metrics = crate::core::lock(&core).metrics();
        Arc::new(HttpState {
            token,
            // SAFETY: geteuid cannot fail.
            broker_uid: pb_platform::os::effective_uid(),
            rate: RateLimiter::new(
                cfg.http_rate,
                cfg.http_rate.saturating_mul(HTTP_RATE_BURST_SECONDS),
                HTTP_RATE_MAX_CLIENTS,
            ),
            connections: Connections::new(
                cfg.http_max_connections,
                cfg.http_max_connections_per_client,
            ),
            code_hash: tokio::sync::OnceCell::new(),
            pid_lookups: tokio::sync::Semaphore::new(PID_LOOKUPS),
            mcp_all_tools: cfg.mcp_all_tools,
            metrics,
            core,
        })
    }

    /// The running executable's SHA-256 (hex), like Port Daddy's code hash:
    /// it tells a client whether the broker runs the binary now installed.
    /// It hashes the running file even after an upgrade replaced it.
    pub async fn code_hash(&self) -> Option<String> {
        self.code_hash
            .get_or_init(|| async {
                tokio::task::spawn_blocking(|| {
                    use sha2::Digest;
                    let mut f = pb_platform::process::own_executable().ok()?;
                    let mut h = sha2::Sha256::new();
                    std::io::copy(&mut f, &mut h).ok()?;
                    Some(hex::encode(h.finalize()))
                })
                .await
                .ok()
                .flatten()
            })
            .await
            .clone()
    }
}

/// Binds every address of PB_HTTP_ADDR.
pub async fn bind(addrs: &[SocketAddr]) -> anyhow::Result<Vec<TcpListener>> {
    super::bind_all("the HTTP API", addrs).await
}

/// Every route: both seeds' APIs and the OpenAPI document, with JSON
/// errors for unknown routes and methods.
pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .merge(portdaddy::routes())
        .merge(portmanager::routes())
        .merge(locks::routes())
        .merge(messages::routes())
        .merge(agents::routes())
        .merge(activity::routes())
        .merge(login::routes())
        .merge(whoami::routes())
        .merge(webhooks::routes())
        .merge(listeners::routes())
        .merge(stacks::routes())
        .merge(sessions::routes())
        .merge(dashboard::routes())
        .merge(metrics::routes())
        .route(
            mcp::PATH,
            mcp::route(state.core.clone(), state.mcp_all_tools),
        )
        .route("/openapi.json", axum::routing::get(openapi::document))
        .fallback(|| async {
            ApiError::new(ErrorCode::NotFound, "no such route (see /openapi.json)")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(metrics::mark_route))
        .with_state(state)
}

/// Accepts connections on `listener` for the life of the runtime.
pub async fn serve(listener: TcpListener, state: Arc<HttpState>, router: Router) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(connection(stream, peer, state.clone(), router.clone()));
            }
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: TcpStream, peer: SocketAddr, state: Arc<HttpState>, router: Router) {
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr();
    admitted(stream, state, router, async move {
        let local = local
            .map_err(|e| WireError::new(ErrorCode::Internal, format!("no local address: {e}")))?;
        match super::tcp_peer(local, peer).await {
            Ok(Some(who)) => Ok((
                Origin::Tcp {
                    local,
                    peer,
                    inode: who.inode,
                },
                who.uid,
            )),
            Ok(None) => Err(WireError::new(
                ErrorCode::Forbidden,
                format!("the kernel lists no socket for {peer}; only local processes are served"),
            )),
            Err(e) => Err(WireError::new(
                ErrorCode::Internal,
                format!("cannot identify {peer}: {e}"),
            )),
        }
    })
    .await
}

/// Accepts connections on the API's Unix socket (PORT_DADDY_SOCK) for the
/// life of the runtime: the same routes and checks as over TCP, the caller
/// named by SO_PEERCRED.
pub async fn serve_unix(listener: UnixListener, state: Arc<HttpState>, router: Router) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(unix_connection(stream, state.clone(), router.clone()));
            }
            Err(e) => {
                tracing::warn!("HTTP accept on the Unix socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn unix_connection(stream: UnixStream, state: Arc<HttpState>, router: Router) {
    let who = pb_platform::PeerIdentity::of_unix_peer(&stream);
    admitted(stream, state, router, async move {
        let who = who.map_err(|e| {
            WireError::new(
                ErrorCode::Internal,
                format!("cannot identify the peer: {e}"),
            )
        })?;
        Ok((
            Origin::Unix {
                process: who.process,
            },
            who.uid,
        ))
    })
    .await
}

/// Takes a connection slot, then who is calling (`identify`), then that
/// user's share of the slots, and serves the connection; each refusal is
/// answered with its error. One path for TCP and the Unix socket.
async fn admitted<S: io::Socket + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    state: Arc<HttpState>,
    router: Router,
    identify: impl std::future::Future<Output = Result<(Origin, u32), WireError>>,
) {
    let mut slot = match state.connections.enter() {
        Ok(s) => s,
        Err(e) => return refuse(&mut stream, &e).await,
    };
    let (origin, uid) = match identify.await {
        Ok(who) => who,
        Err(e) => return refuse(&mut stream, &e).await,
    };
    if let Err(e) = state.connections.assign(&mut slot, uid) {
        return refuse(&mut stream, &e).await;
    }
    serve_connection(io::SharedStream::new(stream), origin, uid, state, router).await;
    drop(slot);
}

/// Serves HTTP/1.1 on one admitted connection until it closes.
async fn serve_connection<S: io::Socket>(
    shared: io::SharedStream<S>,
    origin: Origin,
    peer_uid: u32,
    state: Arc<HttpState>,
    router: Router,
) {
    let socket: Arc<dyn io::Socket> = shared.socket();
    let conn = Arc::new(Conn {
        origin,
        peer_uid,
        process: tokio::sync::OnceCell::new(),
        socket,
    });
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let state = state.clone();
        let router = router.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(&state, conn, router, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HTTP_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(shared.clone()), service)
        .await;
    if let Err(e) = served {
        // Headers that began and never finished: say so before closing.
        if e.is_timeout() && shared.request_started() {
            let e = WireError::new(
                ErrorCode::Timeout,
                format!("the request headers did not arrive within {HTTP_READ_TIMEOUT:?}"),
            );
            shared.last_words(&error::raw_refusal(&e));
        }
    }
}

async fn handle(
    state: &Arc<HttpState>,
    conn: Arc<Conn>,
    router: Router,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let began = std::time::Instant::now();
    let method = req.method().clone();
    let (resp, refused) = match guard::admit(state, &conn, req).await {
        Ok(req) => match router.oneshot(req).await {
            Ok(resp) => (resp, false),
            Err(never) => match never {},
        },
        Err(e) => (e.into_response(), true),
    };
    let route = match resp.extensions().get::<axum::extract::MatchedPath>() {
        Some(r) => r.as_str(),
        None if refused => "refused",
        None => "unmatched",
    };
    state.metrics.http_request(
        method.as_str(),
        route,
        resp.status().as_u16(),
        began.elapsed(),
    );
    resp
}

/// Answers a connection that will not be served, and closes it.
async fn refuse(mut stream: impl tokio::io::AsyncWrite + Unpin, e: &WireError) {
    let bytes = error::raw_refusal(e);
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&bytes)).await;
    let _ = stream.shutdown().await;
}

/// Applies `op` for `caller` through the path every transport shares, and
/// reads its result as `T`.
pub async fn call<T: ReplyType>(
    state: &HttpState,
    caller: &crate::core::Caller,
    op: pb_proto::Op,
) -> Result<T, ApiError> {
    let out = crate::service::dispatch(&state.core, caller, op).await?;
    // Spare sockets are made once the reply is on its way, as on the Unix
    // socket: this task runs after the current one yields.
    let core = state.core.clone();
    tokio::spawn(async move { crate::core::lock(&core).after_reply() });
    Ok(out.result.into_reply()?)
}

/// Applies `op` like [`call`], for operations that may open a stream
/// (`subscribe`, `activity` with `follow`): the first reply, read as `T`,
/// and the stream, for the route to send as server-sent events.
pub async fn call_stream<T: ReplyType>(
    state: &HttpState,
    caller: &crate::core::Caller,
    op: pb_proto::Op,
) -> Result<(T, Option<crate::core::stream::Stream>), ApiError> {
    let mut out = crate::service::dispatch(&state.core, caller, op).await?;
    let stream = out.stream.take();
    Ok((out.result.into_reply()?, stream))
}

/// The agent a request acts as: the `X-Agent-Id` header (Port Daddy's
/// SDK sends it; the IPC equivalent is `--agent` / PB_AGENT). It names a
/// registered agent of the caller's user, which the core checks: it is
/// never the caller's identity, only whose limits and lifetime apply.
pub fn agent_header(headers: &axum::http::HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("x-agent-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Some(s.to_string()))
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "X-Agent-Id is not an agent id"))
}

/// Milliseconds from a body or query field that Port Daddy sends as a
/// number of ms and pb's CLI as a duration (`"30s"`, `"5m"`).
#[derive(serde::Deserialize, utoipa::ToSchema, Debug, Clone)]
#[serde(untagged)]
pub enum Millis {
    Ms(i64),
    Text(String),
}

impl Millis {
    /// A bare number is milliseconds, as Port Daddy and `pb lock` mean it.
    pub fn ms(&self) -> Result<i64, ApiError> {
        self.ms_bare(pb_proto::duration::Bare::Millis)
    }

    /// A JSON number is milliseconds; a text's bare number means `bare`.
    /// The one parser is pb-proto's.
    pub fn ms_bare(&self, bare: pb_proto::duration::Bare) -> Result<i64, ApiError> {
        match self {
            Millis::Ms(ms) => Ok(*ms),
            Millis::Text(t) => Ok(pb_proto::duration::parse_bare(t, bare)
                .map_err(|e| ApiError::new(ErrorCode::InvalidDuration, e.to_string()))?
                .as_millis()
                .min(i64::MAX as u128) as i64),
        }
    }
}

/// Parses a JSON body into `T`: bad JSON, wrong types and unknown fields
/// are `invalid_request`. An empty body is `T::default()`.
pub fn json_body<T: serde::de::DeserializeOwned + Default>(
    body: &axum::body::Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("bad JSON body: {e}")))
}

/// A query's yes/no parameter: absent, `0` or `false` is no; `1`, `true`
/// or empty (`?follow`) is yes; anything else is an error.
pub fn flag(name: &str, value: Option<&str>) -> Result<bool, ApiError> {
    match value {
        None | Some("0") | Some("false") => Ok(false),
        Some("1") | Some("true") | Some("") => Ok(true),
        Some(v) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{name}={v:?} is not 1, true, 0 or false"),
        )),
    }
}

/// Parses a query string into `T`, with the same errors.
pub fn query<T: serde::de::DeserializeOwned>(uri: &axum::http::Uri) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
}

/// The `{id}` of a route's path, with a JSON error when it cannot be read
/// (bad percent-encoding, say) instead of axum's plain-text one.
pub struct IdPath(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<IdPath, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|p| IdPath(p.0))
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
    }
}
