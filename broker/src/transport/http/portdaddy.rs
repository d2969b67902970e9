//! Port Daddy's service routes, with the request and response shapes of
//! its README and server: /health, /version, `POST /claim/:id` and
//! `POST /claim` with `{"id"}`, `DELETE /release/:id` and `DELETE /release`
//! with `{"id"}`, /services and /services/:id. The X-PID header (which
//! Port Daddy's CLI and SDK always send, naming themselves) is an owner
//! hint: another process named there owns the lease, checked by the core
//! exactly as `pb claim --pid` is; the requesting process naming itself is
//! a client like `pb claim`, and the lease is adopted by the app that binds
//! the port.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use pb_proto::{
    ClaimArgs, ClaimReply, ErrorCode, FindReply, LeaseInfo, Op, Owner, ReleaseReply, StatusReply,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{call, json_body, query, HttpState, IdPath, Millis};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/health", get(health))
        .route("/version", get(version))
        .route("/claim", post(claim))
        .route("/claim/{id}", post(claim_id))
        .route("/release", delete(release))
        .route("/release/{id}", delete(release_id))
        .route("/services", get(services))
        .route("/services/{id}", get(service))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the broker answers.
    status: String,
    version: String,
    uptime_seconds: u64,
    /// How many leases exist.
    active_ports: usize,
    pid: u32,
}

/// The broker is up.
#[utoipa::path(get, path = "/health", tag = "port-daddy",
    responses((status = 200, body = Health)))]
pub async fn health(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Health>, ApiError> {
    let s: StatusReply = call(&state, &caller, Op::Status).await?;
    Ok(Json(Health {
        status: "ok".into(),
        version: s.version,
        uptime_seconds: s.uptime_ms / 1000,
        active_ports: s.leases,
        pid: s.pid,
    }))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Version {
    version: String,
    /// SHA-256 of the running `pb` executable.
    code_hash: Option<String>,
    /// When the broker started, ms since the epoch.
    started_at: u64,
    /// Always `pb`.
    service: String,
    /// Always `semantic` (Port Daddy's name for its id-based API).
    api: String,
    /// The IPC protocol version.
    protocol: u32,
    pid: u32,
    /// Seconds since start.
    uptime: u64,
}

/// The broker's version.
#[utoipa::path(get, path = "/version", tag = "port-daddy",
    responses((status = 200, body = Version)))]
pub async fn version(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Version>, ApiError> {
    let s: StatusReply = call(&state, &caller, Op::Status).await?;
    Ok(Json(Version {
        version: s.version,
        code_hash: state.code_hash().await,
        started_at: crate::core::now_ms().saturating_sub(s.uptime_ms),
        service: "pb".into(),
        api: "semantic".into(),
        protocol: s.protocol,
        pid: s.pid,
        uptime: s.uptime_ms / 1000,
    }))
}

/// The body of a claim; every field is optional (`id` comes from the path
/// in `POST /claim/{id}`).
#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    id: Option<String>,
    /// Exactly this port.
    port: Option<i64>,
    /// `[start, end]`, inclusive.
    range: Option<(i64, i64)>,
    /// Milliseconds, or a duration such as `"2h"`, `"30m"`, `"1h30m"` (a
    /// bare number in a string is seconds, as `pb claim --expires` takes it).
    expires: Option<Millis>,
    /// The owning process: the lease ends when it dies. X-PID wins.
    pid: Option<i64>,
    /// If `port` is taken, allocate from the range instead of failing.
    fallback: Option<bool>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// pb's: extra names for the proxy (`docs`, `docs.myapp.localhost`).
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ClaimResponse {
    success: bool,
    id: String,
    port: u16,
    /// `assigned`, or `running` once a process serves the port.
    status: String,
    /// The id was already claimed; this is its lease.
    existing: bool,
    message: String,
    #[serde(rename = "expiresAt")]
    expires_at: Option<u64>,
}

/// Claim a port for the id in the path.
#[utoipa::path(post, path = "/claim/{id}", tag = "port-daddy",
    params(("id" = String, Path, description = "service id, project[:stack[:context]]"),
           ("X-PID" = Option<u32>, Header, description = "owning process"),
           ("X-Agent-Id" = Option<String>, Header, description = "the agent claiming: its max_services apply")),
    request_body(content = Option<ClaimBody>, content_type = "application/json"),
    responses((status = 200, body = ClaimResponse),
              (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn claim_id(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ClaimResponse>, ApiError> {
    let body: ClaimBody = json_body(&body)?;
    if body.id.as_ref().is_some_and(|b| *b != id) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "the body's id differs from the path's",
        ));
    }
    do_claim(&state, &caller, id, body, &headers).await
}

/// Claim a port for the id in the body (Port Daddy's SDK and CLI).
#[utoipa::path(post, path = "/claim", tag = "port-daddy",
    params(("X-PID" = Option<u32>, Header, description = "owning process"),
           ("X-Agent-Id" = Option<String>, Header, description = "the agent claiming: its max_services apply")),
    request_body(content = ClaimBody, content_type = "application/json"),
    responses((status = 200, body = ClaimResponse),
              (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn claim(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<ClaimResponse>, ApiError> {
    let mut body: ClaimBody = json_body(&body)?;
    let id = body
        .id
        .take()
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "missing \"id\""))?;
    do_claim(&state, &caller, id, body, &headers).await
}

async fn do_claim(
    state: &HttpState,
    caller: &Caller,
    id: String,
    body: ClaimBody,
    headers: &HeaderMap,
) -> Result<Json<ClaimResponse>, ApiError> {
    // Port Daddy's CLI and SDK name themselves: the core makes a client
    // that asks for a port for itself no owner (as with `pb claim`, the
    // app that binds the port adopts the lease), and any other process
    // the owner, checked like --pid.
    let owner = owner_hint(headers)?
        .or(body.pid)
        .map_or(Owner::None, Owner::Hint);
    let expires_ms = body
        .expires
        .as_ref()
        .map(|e| e.ms_bare(pb_proto::duration::Bare::Seconds))
        .transpose()?;
    let asked_port = body.port;
    let reply: ClaimReply = call(
        state,
        caller,
        Op::Claim(ClaimArgs {
            id,
            port: body.port,
            range: body.range,
            expires_ms,
            fallback: body.fallback.unwrap_or(false),
            owner,
            metadata: body.metadata,
            agent: super::agent_header(headers)?,
            names: body.names,
            ..Default::default()
        }),
    )
    .await?;
    let l = reply.lease;
    let message = if reply.existing {
        "reusing existing service"
    } else if asked_port == Some(l.port as i64) {
        "assigned preferred port"
    } else {
        "assigned new port"
    };
    Ok(Json(ClaimResponse {
        success: true,
        status: status_of(&l).into(),
        id: l.id,
        port: l.port,
        existing: reply.existing,
        message: message.into(),
        expires_at: l.expires_ms,
    }))
}

/// X-PID, when sent: a process of the caller's, checked by the core.
/// X-PID, when sent: a number, which the core judges.
pub(crate) fn owner_hint(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get("x-pid") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .map(Some)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "X-PID is not a pid"))
}

fn status_of(l: &LeaseInfo) -> &'static str {
    if l.served == Some(true) {
        "running"
    } else {
        "assigned"
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReleaseBody {
    /// An id, a pattern (`myapp:*`) or a port number.
    id: Option<String>,
    /// Port Daddy's SDK: release only leases past their expiry. pb ends a
    /// lease at its expiry itself, so with `true` there is never one to
    /// release: the answer is `released: 0` and nothing changes.
    expired_only: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ReleaseResponse {
    success: bool,
    /// How many leases ended.
    released: usize,
    #[serde(rename = "releasedPorts")]
    released_ports: Vec<u16>,
    /// The port, when one lease ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    message: String,
}

/// Release a service by id, pattern or port.
#[utoipa::path(delete, path = "/release/{id}", tag = "port-daddy",
    params(("id" = String, Path, description = "id, pattern or port")),
    responses((status = 200, body = ReleaseResponse),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn release_id(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<ReleaseResponse>, ApiError> {
    do_release(&state, &caller, id).await
}

/// Release a service named in the body (Port Daddy's SDK).
#[utoipa::path(delete, path = "/release", tag = "port-daddy",
    request_body(content = ReleaseBody, content_type = "application/json"),
    responses((status = 200, body = ReleaseResponse),
              (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn release(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let body: ReleaseBody = json_body(&body)?;
    if body.expired_only == Some(true) {
        return Ok(Json(ReleaseResponse {
            success: true,
            released: 0,
            released_ports: Vec::new(),
            port: None,
            message: "pb ends leases at their expiry; none is past it".into(),
        }));
    }
    let id = body
        .id
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "missing \"id\""))?;
    do_release(&state, &caller, id).await
}

async fn do_release(
    state: &HttpState,
    caller: &Caller,
    target: String,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let released: Result<ReleaseReply, ApiError> = call(
        state,
        caller,
        Op::Release {
            target: pb_proto::ReleaseTarget::parse(&target),
            more: Vec::new(),
        },
    )
    .await;
    // Port Daddy answers a release of nothing with 200 and `released: 0`;
    // its clients release on exit without knowing whether they claimed.
    let reply = match released {
        Err(ApiError(e)) if e.code == ErrorCode::NotFound => {
            return Ok(Json(ReleaseResponse {
                success: true,
                released: 0,
                released_ports: Vec::new(),
                port: None,
                message: e.message,
            }))
        }
        other => other?,
    };
    let ports: Vec<u16> = reply.released.iter().map(|l| l.port).collect();
    let message = match reply.released.as_slice() {
        [one] => format!("released {} (port {})", one.id, one.port),
        many => format!("released {} service(s) matching {target}", many.len()),
    };
    Ok(Json(ReleaseResponse {
        success: true,
        released: ports.len(),
        port: (ports.len() == 1).then(|| ports[0]),
        released_ports: ports,
        message,
    }))
}

/// A service as Port Daddy shows it, with pb's own fields beside.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    id: String,
    port: u16,
    /// The owning process, if any.
    pid: Option<u32>,
    /// `assigned`, or `running` once a process serves the port.
    status: String,
    /// The owner's command line.
    cmd: Option<String>,
    created_at: u64,
    expires_at: Option<u64>,
    /// `{"local": "http://localhost:PORT"}`, and `named` (the proxy's
    /// URL, `http://api.myapp.localhost:2080`) when the proxy runs.
    urls: BTreeMap<String, String>,
    /// The host names the proxy routes to it.
    names: Vec<String>,
    #[schema(value_type = Option<Object>)]
    metadata: Option<Value>,
    /// The user who claimed it.
    uid: u32,
    /// The broker holds sockets on the port.
    held: bool,
    /// The broker's sockets listen (they were handed to a client).
    listening: bool,
}

impl From<LeaseInfo> for Service {
    fn from(l: LeaseInfo) -> Service {
        Service {
            status: status_of(&l).into(),
            urls: [("local".to_string(), format!("http://localhost:{}", l.port))]
                .into_iter()
                .chain(l.url.map(|u| ("named".to_string(), u)))
                .collect(),
            names: l.names,
            id: l.id,
            port: l.port,
            pid: l.pid,
            cmd: l.command,
            created_at: l.created_ms,
            expires_at: l.expires_ms,
            metadata: l.metadata,
            uid: l.uid,
            held: l.held,
            listening: l.listening,
        }
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ServicesQuery {
    /// Only ids matching this pattern (`myapp:*`).
    pattern: Option<String>,
    /// Only the service on this port.
    port: Option<u16>,
    /// Only services in this state: `assigned` or `running`.
    status: Option<String>,
    /// `true`: only services past their expiry (pb ends those itself, so
    /// normally none); `false`: only the others.
    expired: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct ServicesResponse {
    success: bool,
    services: Vec<Service>,
    count: usize,
}

/// List services, optionally by pattern.
#[utoipa::path(get, path = "/services", tag = "port-daddy",
    params(("pattern" = Option<String>, Query, description = "id pattern, e.g. myapp:*"),
           ("port" = Option<u16>, Query, description = "only the service on this port"),
           ("status" = Option<String>, Query, description = "assigned or running"),
           ("expired" = Option<bool>, Query, description = "only expired (true) or unexpired (false)")),
    responses((status = 200, body = ServicesResponse), (status = 400, body = ErrorBody)))]
pub async fn services(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<ServicesResponse>, ApiError> {
    let q: ServicesQuery = query(&uri)?;
    if let Some(s) = q
        .status
        .as_deref()
        .filter(|s| !matches!(*s, "assigned" | "running"))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("status {s:?} is not assigned or running"),
        ));
    }
    let reply: FindReply = call(&state, &caller, Op::Find { pattern: q.pattern }).await?;
    // Port Daddy's filters are views of the reply, not rules: they only
    // choose which of the leases the core returned are shown.
    let now = crate::core::now_ms();
    let services: Vec<Service> = reply
        .services
        .into_iter()
        .filter(|l| q.port.is_none_or(|p| l.port == p))
        .filter(|l| q.status.as_deref().is_none_or(|s| status_of(l) == s))
        .filter(|l| {
            q.expired
                .is_none_or(|want| l.expires_ms.is_some_and(|e| e <= now) == want)
        })
        .map(Service::from)
        .collect();
    Ok(Json(ServicesResponse {
        success: true,
        count: services.len(),
        services,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ServiceResponse {
    success: bool,
    service: Service,
}

/// One service by id.
#[utoipa::path(get, path = "/services/{id}", tag = "port-daddy",
    params(("id" = String, Path, description = "service id")),
    responses((status = 200, body = ServiceResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn service(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<ServiceResponse>, ApiError> {
    let lease: LeaseInfo = call(&state, &caller, Op::Get { id }).await?;
    Ok(Json(ServiceResponse {
        success: true,
        service: lease.into(),
    }))
}
