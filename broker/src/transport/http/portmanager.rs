//! PortManager's routes, with its JSON shapes: `POST /alloc`
//! `{"service_name", "ttl_seconds", "tags"}`, `POST /release` and
//! `POST /heartbeat` naming a lease by `port` or `service_name`, `GET /list`
//! and `GET /lookup?service=NAME`. PortManager's leases live for a TTL
//! renewed by heartbeats; here they are pb leases claimed with that TTL,
//! so the core's expiry timer ends them the same way, and the port is
//! held in the kernel meanwhile.
//!
//! PortManager gives a second `/alloc` of a name a second instance, and
//! `/lookup` lists every instance's port (`all_ports`). Here the first
//! instance is the lease whose id is the name; the n-th is `NAME.n`, marked
//! as an instance of NAME in its metadata (`{"instance_of": NAME}`), so
//! that a lease a pb client happened to call `NAME.2` is never taken for
//! one. Everywhere else (pb's own routes, the CLI) an id is one lease.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::Uri;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use pb_proto::{
    ClaimArgs, ClaimReply, ErrorCode, FindReply, LeaseInfo, Op, ReleaseReply, ReleaseTarget,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::{call, json_body, query, HttpState};
use crate::core::Caller;

/// PortManager's TTL when `/alloc` names none: five minutes.
pub const DEFAULT_TTL_SECONDS: i64 = 300;
/// Most instances of one name.
pub const MAX_INSTANCES: u32 = 64;
/// The metadata key that marks an instance and names its service.
const INSTANCE_OF: &str = "instance_of";

/// The id of instance `n` (from 1) of service `name`.
fn instance_id(name: &str, n: u32) -> String {
    if n == 1 {
        name.to_string()
    } else {
        format!("{name}.{n}")
    }
}

/// The service `l` is an instance of, if it is one of `name`'s (the
/// first instance, or a later one marked as such).
fn instance_of(l: &LeaseInfo) -> &str {
    l.metadata
        .as_ref()
        .and_then(|m| m.get(INSTANCE_OF))
        .and_then(Value::as_str)
        .unwrap_or(&l.id)
}

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/alloc", post(alloc))
        .route("/release", post(release))
        .route("/heartbeat", post(heartbeat))
        .route("/list", get(list))
        .route("/lookup", get(lookup))
}

/// A lease as PortManager shows it.
#[derive(Serialize, ToSchema)]
pub struct Lease {
    port: u16,
    service_name: String,
    /// The pb id of this instance (`NAME`, `NAME.2`, ...), pb's addition.
    id: String,
    /// RFC 3339, UTC.
    allocated_at: String,
    /// RFC 3339, UTC: when the lease was last claimed or renewed.
    last_heartbeat: String,
    /// The TTL heartbeats renew by; null for a lease without one.
    ttl_seconds: Option<u64>,
    tags: Vec<String>,
    /// When it ends unless renewed (RFC 3339), pb's addition.
    expires_at: Option<String>,
    /// The owning process, pb's addition.
    pid: Option<u32>,
}

impl From<LeaseInfo> for Lease {
    fn from(l: LeaseInfo) -> Lease {
        let renewed = match (l.expires_ms, l.ttl_ms) {
            (Some(e), Some(t)) => e.saturating_sub(t),
            _ => l.created_ms,
        };
        let tags = l
            .metadata
            .as_ref()
            .and_then(|m| m.get("tags"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Lease {
            port: l.port,
            service_name: instance_of(&l).to_string(),
            id: l.id.clone(),
            allocated_at: rfc3339(l.created_ms),
            last_heartbeat: rfc3339(renewed),
            ttl_seconds: l.ttl_ms.map(|t| t / 1000),
            tags,
            expires_at: l.expires_ms.map(rfc3339),
            pid: l.pid,
        }
    }
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AllocRequest {
    service_name: String,
    /// Default 300.
    ttl_seconds: Option<i64>,
    /// Kept with the lease as metadata `{"tags": [...]}`.
    tags: Option<Vec<String>>,
    /// Exactly this port (pb's addition).
    port: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AllocResponse {
    port: u16,
    lease: Lease,
}

/// Allocate a port for a service, leased for `ttl_seconds`.
#[utoipa::path(post, path = "/alloc", tag = "portmanager",
    request_body(content = AllocRequest, content_type = "application/json"),
    responses((status = 200, body = AllocResponse),
              (status = 400, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn alloc(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Json<AllocResponse>, ApiError> {
    let req: AllocRequest = json_body(&body)?;
    if req.service_name.is_empty() && body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "missing \"service_name\"",
        ));
    }
    let ttl = req.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
    let agent = super::agent_header(&headers)?;
    let name = req.service_name;
    // A new instance each time: an id already leased (to the caller, or to
    // another user) moves on to the next.
    for n in 1..=MAX_INSTANCES {
        let mut metadata = serde_json::Map::new();
        if let Some(t) = &req.tags {
            metadata.insert("tags".into(), serde_json::json!(t));
        }
        if n > 1 {
            metadata.insert(INSTANCE_OF.into(), Value::String(name.clone()));
        }
        let claimed: Result<ClaimReply, ApiError> = call(
            &state,
            &caller,
            Op::Claim(ClaimArgs {
                id: instance_id(&name, n),
                port: req.port,
                // An overflowing TTL is passed on as one the core refuses.
                expires_ms: Some(ttl.checked_mul(1000).unwrap_or(i64::MAX)),
                metadata: (!metadata.is_empty()).then_some(Value::Object(metadata)),
                agent: agent.clone(),
                ..Default::default()
            }),
        )
        .await;
        match claimed {
            Ok(reply) if !reply.existing => {
                return Ok(Json(AllocResponse {
                    port: reply.lease.port,
                    lease: reply.lease.into(),
                }))
            }
            Ok(_) => continue,
            Err(ApiError(e)) if n > 1 && e.code == ErrorCode::Forbidden => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::new(
        ErrorCode::Limit,
        format!("{name:?} has {MAX_INSTANCES} instances already (the limit)"),
    ))
}

/// Every live instance of service `name`, oldest instance first.
async fn instances(
    state: &HttpState,
    caller: &Caller,
    name: &str,
) -> Result<Vec<LeaseInfo>, ApiError> {
    // Checked as an id first: a bad name is the claim's error, not an
    // empty answer.
    crate::ids::check_id(name)?;
    // Every lease, filtered here: a pattern `NAME*` would be longer than
    // the longest name the id grammar allows.
    let reply: FindReply = call(state, caller, Op::Find { pattern: None }).await?;
    let mut found: Vec<(u32, LeaseInfo)> = reply
        .services
        .into_iter()
        .filter(|l| instance_of(l) == name)
        .filter_map(|l| {
            let n = if l.id == name {
                1
            } else {
                l.id.strip_prefix(name)?.strip_prefix('.')?.parse().ok()?
            };
            Some((n, l))
        })
        .collect();
    found.sort_by_key(|(n, _)| *n);
    Ok(found.into_iter().map(|(_, l)| l).collect())
}

/// Names a lease: by `port` or by `service_name`.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct LeaseRef {
    port: Option<i64>,
    service_name: Option<String>,
    /// Heartbeat only: renew by this TTL instead of the lease's own.
    ttl_seconds: Option<i64>,
}

/// Release a lease by port, or every instance of a service by name.
/// PortManager answers an empty 200.
#[utoipa::path(post, path = "/release", tag = "portmanager",
    request_body(content = LeaseRef, content_type = "application/json"),
    responses((status = 200, description = "released (an empty body, as PortManager answers)"),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn release(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<(), ApiError> {
    let r: LeaseRef = json_body(&body)?;
    if r.ttl_seconds.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "release takes no ttl_seconds",
        ));
    }
    let mut targets = match (r.port, r.service_name) {
        (Some(p), None) => vec![ReleaseTarget::Port(p)],
        // A name with a `*` would be a pattern: PortManager names a
        // service. A name of digits is a name, not a port.
        (None, Some(name)) if !name.contains('*') => {
            let all = instances(&state, &caller, &name).await?;
            if all.is_empty() {
                return Err(ApiError::new(
                    ErrorCode::NotFound,
                    format!("no service {name:?}"),
                ));
            }
            all.into_iter().map(|l| ReleaseTarget::Name(l.id)).collect()
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "name the lease by exactly one of \"port\" and \"service_name\"",
            ))
        }
    };
    let target = targets.remove(0);
    let reply: ReleaseReply = call(
        &state,
        &caller,
        Op::Release {
            target,
            more: targets,
        },
    )
    .await?;
    if reply.released.is_empty() {
        return Err(ApiError::new(ErrorCode::NotFound, "no such lease"));
    }
    Ok(())
}

/// Renew a lease's TTL, by port or service name.
#[utoipa::path(post, path = "/heartbeat", tag = "portmanager",
    request_body(content = LeaseRef, content_type = "application/json"),
    responses((status = 200, body = Lease),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn heartbeat(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Json<Lease>, ApiError> {
    let r: LeaseRef = json_body(&body)?;
    let ttl_ms = r
        .ttl_seconds
        .map(|t| t.checked_mul(1000).unwrap_or(i64::MAX));
    let beat = |id: Option<String>, port: Option<i64>| Op::Heartbeat { id, port, ttl_ms };
    // By name: every instance of it is renewed (the first is returned),
    // as release and lookup by name reach every instance.
    let ids = match (&r.service_name, r.port) {
        (Some(name), None) => instances(&state, &caller, name)
            .await?
            .into_iter()
            .map(|l| l.id)
            .collect(),
        _ => Vec::new(),
    };
    if ids.is_empty() {
        let lease: LeaseInfo = call(&state, &caller, beat(r.service_name, r.port)).await?;
        return Ok(Json(lease.into()));
    }
    let mut first = None;
    for id in ids {
        let lease: LeaseInfo = call(&state, &caller, beat(Some(id), None)).await?;
        first.get_or_insert(lease);
    }
    Ok(Json(first.expect("at least one instance").into()))
}

/// Every lease.
#[utoipa::path(get, path = "/list", tag = "portmanager",
    responses((status = 200, body = Vec<Lease>)))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<Lease>>, ApiError> {
    let reply: FindReply = call(&state, &caller, Op::Find { pattern: None }).await?;
    Ok(Json(reply.services.into_iter().map(Lease::from).collect()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LookupQuery {
    service: String,
}

#[derive(Serialize, ToSchema)]
pub struct LookupResponse {
    service_name: String,
    port: u16,
    all_ports: Vec<u16>,
    lease: Lease,
}

/// Find a service's port by name.
#[utoipa::path(get, path = "/lookup", tag = "portmanager",
    params(("service" = String, Query, description = "service name")),
    responses((status = 200, body = LookupResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn lookup(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<LookupResponse>, ApiError> {
    let q: LookupQuery = query(&uri)?;
    let all = instances(&state, &caller, &q.service).await?;
    let Some(first) = all.first().cloned() else {
        return Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no service {:?}", q.service),
        ));
    };
    Ok(Json(LookupResponse {
        service_name: q.service,
        port: first.port,
        all_ports: all.iter().map(|l| l.port).collect(),
        lease: first.into(),
    }))
}

/// Milliseconds since the epoch as RFC 3339 UTC (`2026-11-23T07:30:00.123Z`).
pub fn rfc3339(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            super::rfc3339(1_795_418_523_456),
            "2026-11-23T07:22:03.456Z"
        );
    }
}
