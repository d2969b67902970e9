//! One proxied request: read the name it is for, ask the core where that
//! leads, connect to the lease's port (checking in the kernel that the
//! lease's own user answers), send the request on with hop-by-hop headers
//! removed and X-Forwarded-* added, and stream the answer back. A 101
//! answer (a WebSocket) becomes a tunnel of bytes both ways.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::page::Refusal;
use super::{ProxyState, CONNECT_TIMEOUT};
use crate::core::jobs::Route;
use crate::hostnames;

/// Backend connections kept per client connection, for its next requests.
const KEPT_BACKENDS: usize = 4;

/// Which lease a kept backend connection was made for: a later lease of
/// the same id and port (even of another user, in the same millisecond) is
/// another key, so it never inherits one.
type Key = (String, u64, u16, u32);

/// One client connection.
pub struct Client {
    pub peer: SocketAddr,
    pub https: bool,
    /// Its place among the proxy's connections, held by its tunnels too.
    pub slot: Arc<OwnedSemaphorePermit>,
    pub backends: Mutex<Vec<(Key, SendRequest<Incoming>)>>,
}

pub async fn handle(state: &ProxyState, client: &Client, req: Request<Incoming>) -> Response<Body> {
    let html = wants_html(req.headers());
    let base = (client.https, local_port(&req));
    match forward(state, client, req).await {
        Ok(resp) => resp,
        Err(refusal) => refusal.into_response(html, base),
    }
}

async fn forward(
    state: &ProxyState,
    client: &Client,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "pb's proxy is not a forward proxy: CONNECT is refused".into(),
        ));
    }
    let authority = authority(&req)?;
    let host = hostnames::request_host(&authority).ok_or_else(|| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            format!("Host {authority:?} is not a host name"),
        )
    })?;
    if !hostnames::is_ours(&host) {
        return Err(Refusal::new(
            StatusCode::MISDIRECTED_REQUEST,
            "not_ours",
            format!("pb's proxy serves names under .localhost only, not {host}: it is not an open proxy"),
        ));
    }
    let route = {
        let core = crate::core::lock(&state.core);
        match core.route(&host) {
            Some(r) => r,
            None => return Err(Refusal::unknown(&host, core.routes())),
        }
    };
    let upgrade = upgrade_of(&req);
    let client_side = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    let out = backend_request(req, &authority, client, upgrade);
    let send = send(state, client, &route, out);
    let (key, sender, mut resp) = match tokio::time::timeout(state.response_timeout, send).await {
        Err(_) => {
            return Err(Refusal::new(
                StatusCode::GATEWAY_TIMEOUT,
                "backend_timeout",
                format!(
                "{} (port {}) did not answer within {:?} of the request's start (PB_PROXY_TIMEOUT)",
                who(&route),
                route.port,
                state.response_timeout
            ),
            ))
        }
        Ok(sent) => sent?,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_side) = client_side else {
            return Err(Refusal::new(
                StatusCode::BAD_GATEWAY,
                "backend_protocol",
                format!("{} switched protocols unasked", who(&route)),
            ));
        };
        let backend_side = hyper::upgrade::on(&mut resp);
        let (parts, _) = resp.into_parts();
        tunnel(client_side, backend_side, client.slot.clone());
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    client.keep(key, sender);
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// The name a request is for. HTTP/2 carries it as `:authority`; HTTP/1.1
/// must send Host, and an absolute-form target must name the same host
/// (no request is ever sent on to a host of its own choosing).
fn authority(req: &Request<Incoming>) -> Result<String, Refusal> {
    let bad = |m: String| Refusal::new(StatusCode::BAD_REQUEST, "invalid_request", m);
    let host_header = match req.headers().get(header::HOST) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| bad("the Host header is not text".into()))?
                .to_string(),
        ),
        None => None,
    };
    if req.headers().get_all(header::HOST).iter().count() > 1 {
        return Err(bad("more than one Host header".into()));
    }
    if req.version() >= Version::HTTP_2 {
        let authority = req.uri().authority().map(|a| a.as_str().to_string());
        // The name routed on is the name the backend is told.
        if let (Some(a), Some(h)) = (&authority, &host_header) {
            if hostnames::request_host(a) != hostnames::request_host(h) {
                return Err(bad(format!("Host {h} is not the request's :authority {a}")));
            }
        }
        return authority
            .or(host_header)
            .ok_or_else(|| bad("the request names no host (:authority)".into()));
    }
    let host = host_header
        .ok_or_else(|| bad("no Host header: pb's proxy routes by the name in Host".into()))?;
    if let Some(target) = req.uri().authority() {
        let same = hostnames::request_host(target.as_str()) == hostnames::request_host(&host);
        let scheme_ok = matches!(req.uri().scheme_str(), Some("http" | "https"));
        if !same || !scheme_ok {
            return Err(Refusal::new(
                StatusCode::MISDIRECTED_REQUEST,
                "not_ours",
                format!(
                    "an absolute-form request for {} with Host {host}: pb's proxy is not an open proxy",
                    req.uri()
                ),
            ));
        }
    }
    Ok(host)
}

/// The `Upgrade` a request asks for (HTTP/1.1 only), or `None`.
fn upgrade_of(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() >= Version::HTTP_2 {
        return None;
    }
    let asks = connection_tokens(req.headers()).any(|t| t.eq_ignore_ascii_case("upgrade"));
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Headers of one connection, not of the message (RFC 9110 §7.6.1): never
/// passed on.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let listed: Vec<HeaderName> = connection_tokens(h)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for n in listed {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// The request as the backend gets it: origin-form, HTTP/1.1, Host kept
/// (from `:authority` for HTTP/2), X-Forwarded-For, -Proto and -Host.
fn backend_request(
    req: Request<Incoming>,
    authority: &str,
    client: &Client,
    upgrade: Option<HeaderValue>,
) -> Request<Incoming> {
    let (mut parts, body) = req.into_parts();
    let from_h2 = parts.version >= Version::HTTP_2;
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = target.parse().unwrap_or_else(|_| Uri::from_static("/"));
    parts.version = Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    if let Some(up) = upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, up);
    }
    // The name it was routed by (HTTP/2's :authority, or the one Host).
    if let Ok(v) = HeaderValue::from_str(authority) {
        h.insert(header::HOST, v);
    }
    // HTTP/2 may split cookies over several fields; HTTP/1.1 wants one.
    if from_h2 && h.get_all(header::COOKIE).iter().count() > 1 {
        let joined: Vec<&str> = h
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if let Ok(v) = HeaderValue::from_str(&joined.join("; ")) {
            h.insert(header::COOKIE, v);
        }
    }
    let ip = client.peer.ip().to_canonical().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(before) => format!("{before}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    let proto = if client.https { "https" } else { "http" };
    h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(authority) {
        h.insert("x-forwarded-host", v);
    }
    Request::from_parts(parts, body)
}

/// Sends `req` to `route`'s backend: on a connection this client kept for
/// the lease, and when that one turns out closed before the request went
/// out (a backend's keep-alive timeout), once more on a new one.
async fn send(
    state: &ProxyState,
    client: &Client,
    route: &Route,
    req: Request<Incoming>,
) -> Result<(Key, SendRequest<Incoming>, Response<Incoming>), Refusal> {
    let key: Key = (route.id.clone(), route.created_ms, route.port, route.uid);
    let closed = |e: hyper::Error| {
        Refusal::new(
            StatusCode::BAD_GATEWAY,
            "backend_closed",
            format!(
                "{} (port {}) closed the connection without an answer: {e}",
                who(route),
                route.port
            ),
        )
    };
    let req = match client.kept(&key) {
        Some(mut sender) => match sender.try_send_request(req).await {
            Ok(resp) => return Ok((key, sender, resp)),
            Err(mut e) => match e.take_message() {
                Some(req) => req,
                None => return Err(closed(e.into_error())),
            },
        },
        None => req,
    };
    let mut sender = client.backend(state, route).await?;
    let resp = sender.send_request(req).await.map_err(closed)?;
    Ok((key, sender, resp))
}

impl Client {
    /// A connection this client kept for the lease `key`, ready for a
    /// request.
    fn kept(&self, key: &Key) -> Option<SendRequest<Incoming>> {
        let mut kept = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(i) = kept.iter().position(|(k, _)| k == key) {
            let (_, sender) = kept.swap_remove(i);
            if sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// A new connection to `route`'s port, whose other end the kernel says
    /// is the lease's user's.
    async fn backend(
        &self,
        state: &ProxyState,
        route: &Route,
    ) -> Result<SendRequest<Incoming>, Refusal> {
        let Ok(slot) = state.backend_slots.clone().try_acquire_owned() else {
            return Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "limit",
                format!(
                    "pb's proxy has {} backend connections open; try again",
                    super::MAX_BACKENDS
                ),
            ));
        };
        let stream = connect(route).await?;
        check_user(&stream, route).await?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                Refusal::new(
                    StatusCode::BAD_GATEWAY,
                    "backend_closed",
                    format!("{} (port {}): {e}", who(route), route.port),
                )
            })?;
        tokio::spawn(async move {
            let _slot = slot;
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    fn keep(&self, key: Key, sender: SendRequest<Incoming>) {
        let mut kept = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() < KEPT_BACKENDS {
            kept.push((key, sender));
        }
    }
}

/// Connects to the lease's port on 127.0.0.1, then on ::1 (an app may
/// serve only the other family of a number-only lease).
async fn connect(route: &Route) -> Result<TcpStream, Refusal> {
    let mut refused = None;
    for ip in [
        std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
        std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ] {
        let addr = SocketAddr::new(ip, route.port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => refused = Some(e),
            Err(_) => {
                return Err(Refusal::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "backend_timeout",
                    format!(
                        "{} did not take a connection on port {} within {} s",
                        who(route),
                        route.port,
                        CONNECT_TIMEOUT.as_secs()
                    ),
                ))
            }
        }
    }
    let why = refused.map(|e| e.to_string()).unwrap_or_default();
    Err(Refusal::new(
        StatusCode::BAD_GATEWAY,
        "not_serving",
        format!(
            "{} is leased on port {} and expected to be served by {}, but nothing accepts connections there ({why})",
            route.id,
            route.port,
            expected(route)
        ),
    ))
}

/// Refuses a backend whose socket another user made: a stranger that
/// slipped onto a lease's port never gets a request meant for the lease.
async fn check_user(stream: &TcpStream, route: &Route) -> Result<(), Refusal> {
    let (Ok(ours), Ok(theirs)) = (stream.local_addr(), stream.peer_addr()) else {
        return Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            "backend_closed",
            format!("{} closed the connection at once", who(route)),
        ));
    };
    match crate::transport::tcp_peer(ours, theirs).await {
        Ok(Some(p)) if p.uid == route.uid => Ok(()),
        Ok(Some(p)) => Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            "foreign_listener",
            format!(
                "port {} of {} is served by uid {}, not by the lease's user (uid {}): pb routes only to the lease's own listener",
                route.port, route.id, p.uid, route.uid
            ),
        )),
        Ok(None) | Err(_) => Err(Refusal::new(
            StatusCode::BAD_GATEWAY,
            "foreign_listener",
            format!(
                "the kernel does not say who serves port {} of {}; pb does not send requests to a listener it cannot name",
                route.port, route.id
            ),
        )),
    }
}

/// Passes bytes both ways once client and backend have switched protocols.
/// The tunnel holds its client's connection slot until either side closes.
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    slot: Arc<OwnedSemaphorePermit>,
) {
    tokio::spawn(async move {
        let _slot = slot;
        let (Ok(c), Ok(b)) = tokio::join!(client, backend) else {
            return;
        };
        let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
        let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
    });
}

fn who(route: &Route) -> String {
    format!("{} ({})", route.id, expected(route))
}

fn expected(route: &Route) -> String {
    match (route.pid, &route.command) {
        (Some(pid), Some(cmd)) => format!("pid {pid}, {cmd}"),
        (Some(pid), None) => format!("pid {pid}"),
        (None, _) => "the app that binds its port (the lease has no owner process)".into(),
    }
}

fn wants_html(h: &HeaderMap) -> bool {
    h.get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The port the client used, for links on the page of services.
fn local_port(req: &Request<Incoming>) -> Option<u16> {
    let a = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })?;
    a.rsplit_once(':').and_then(|(_, p)| p.parse().ok())
}
