//! Port Daddy's lock routes: `POST /locks/{name}` takes a lock (waiting in
//! its queue with `wait`/`timeout`), `PUT /locks/{name}` and
//! `POST /locks/{name}/extend` renew it, `DELETE /locks/{name}` lets it go,
//! `GET /locks` and `GET /locks/{name}` show them. Each is one lock `Op`.
//!
//! Who owns a lock taken over HTTP is said by the request: `owner` (a
//! name), `pid` or X-PID naming another process of the caller's, or the
//! agent of X-Agent-Id. Without any, the owner is the requesting process's
//! parent (above any `$(…)` subshell, the shell that forked it:
//! `ProcessId::lasting_ancestor`), as `pb lock`'s is pb's: a script that runs `curl -X POST
//! .../locks/x` holds the lock until it ends (or the TTL runs out), and its
//! `curl -X DELETE .../locks/x` releases it under the same default. The
//! requesting process itself is no owner: curl exits with its request.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use pb_proto::{
    ErrorCode, LockArgs, LockInfo, LockOwnerArg, LockReply, LocksReply, Op, UnlockReply, WireError,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::portdaddy::owner_hint;
use super::{agent_header, call, json_body, query, HttpState, IdPath, Millis};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/locks", get(list))
        .route(
            "/locks/{name}",
            get(show).post(acquire).put(extend).delete(release),
        )
        .route("/locks/{name}/extend", post(extend_post))
}

/// A held lock, in Port Daddy's camelCase with pb's fields.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lock {
    name: String,
    /// The fencing token: greater than any given before for this lock.
    token: u64,
    /// Who holds it: the owner name, the agent id, or `pid:N`.
    owner: String,
    /// `process`, `name` or `agent`.
    owner_type: String,
    /// The owning process (or the agent's).
    pid: Option<u32>,
    uid: u32,
    /// The owning process's command line.
    command: Option<String>,
    /// When it was taken, ms since the epoch.
    acquired_at: u64,
    /// `null` for a lock held while its owner process lives.
    expires_at: Option<u64>,
    /// Its time to live, ms.
    ttl: u64,
    /// Requests waiting in its queue.
    waiters: usize,
}

impl From<LockInfo> for Lock {
    fn from(l: LockInfo) -> Lock {
        Lock {
            owner: match (&l.owner_name, l.pid) {
                (Some(n), _) => n.clone(),
                (None, Some(p)) => format!("pid:{p}"),
                (None, None) => l.owner.clone(),
            },
            name: l.name,
            token: l.token,
            owner_type: l.owner,
            pid: l.pid,
            uid: l.uid,
            command: l.command,
            acquired_at: l.since_ms,
            expires_at: l.expires_ms,
            ttl: l.ttl_ms,
            waiters: l.waiters,
        }
    }
}

/// The body of `POST /locks/{name}`; every field is optional.
#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct AcquireBody {
    /// Time to live: ms, or a duration such as `"5m"` (default 5 min).
    #[schema(value_type = Option<Object>)]
    ttl: Option<Millis>,
    /// Hold it under this name (release with the same `owner`).
    owner: Option<String>,
    /// Another process of yours that owns it; X-PID wins.
    pid: Option<i64>,
    /// Wait in the lock's queue (first come, first served) while another
    /// owner holds it: `true` (for `timeout`, default 60 s) or ms.
    #[schema(value_type = Option<Object>)]
    wait: Option<Wait>,
    /// How long to wait: ms or a duration; implies `wait`.
    #[schema(value_type = Option<Object>)]
    timeout: Option<Millis>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Wait {
    Flag(bool),
    For(Millis),
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcquireResponse {
    success: bool,
    name: String,
    owner: String,
    token: u64,
    expires_at: Option<u64>,
    /// The same owner already held it; its TTL was renewed.
    existing: bool,
    /// How long the request waited in the queue, ms.
    waited_ms: u64,
    lock: Lock,
}

impl AcquireResponse {
    /// The reply to an acquire or an extend: Port Daddy's flat fields beside
    /// the whole lock.
    fn new(lock: pb_proto::LockInfo, existing: bool, waited_ms: u64) -> AcquireResponse {
        let lock = Lock::from(lock);
        AcquireResponse {
            success: true,
            name: lock.name.clone(),
            owner: lock.owner.clone(),
            token: lock.token,
            expires_at: lock.expires_at,
            existing,
            waited_ms,
            lock,
        }
    }
}

/// Who a request speaks as: its agent (X-Agent-Id) and the owner it names,
/// or the default (see the module's doc); the core resolves each.
pub(crate) fn speaker(
    headers: &HeaderMap,
    owner: Option<String>,
    pid: Option<i64>,
) -> Result<(Option<String>, Option<LockOwnerArg>), ApiError> {
    let agent = agent_header(headers)?;
    let owner = match (owner, owner_hint(headers)?.or(pid)) {
        (Some(name), _) => Some(LockOwnerArg::Name(name)),
        (None, Some(pid)) => Some(LockOwnerArg::Hint(pid)),
        // The core makes the agent the owner.
        (None, None) if agent.is_some() => None,
        (None, None) => Some(LockOwnerArg::CallerParent),
    };
    Ok((agent, owner))
}

/// Take a lock, or wait for it.
#[utoipa::path(post, path = "/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "lock name"),
           ("X-Agent-Id" = Option<String>, Header, description = "the agent acting: its max_locks apply and it owns the lock"),
           ("X-PID" = Option<u32>, Header, description = "owning process")),
    request_body(content = Option<AcquireBody>, content_type = "application/json"),
    responses((status = 200, body = AcquireResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 408, body = ErrorBody, description = "the wait timed out"),
              (status = 409, body = ErrorBody, description = "held: details name the holder"),
              (status = 429, body = ErrorBody, description = "the agent's max_locks")))]
pub async fn acquire(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(name): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AcquireResponse>, ApiError> {
    let body: AcquireBody = json_body(&body)?;
    let (agent, owner) = speaker(&headers, body.owner, body.pid)?;
    let wait_ms = match (body.wait, &body.timeout) {
        (Some(Wait::Flag(false)), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "\"timeout\" is how long to wait, but \"wait\" is false",
            ))
        }
        (Some(Wait::Flag(false)), None) | (None, None) => None,
        (Some(Wait::For(ms)), None) => Some(ms.ms()?),
        (Some(Wait::For(_)), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "give the wait as \"wait\": ms or as \"timeout\", not both",
            ))
        }
        (_, Some(t)) => Some(t.ms()?),
        (Some(Wait::Flag(true)), None) => Some(pb_proto::DEFAULT_LOCK_WAIT_MS),
    };
    let ttl_ms = body.ttl.as_ref().map(Millis::ms).transpose()?;
    let reply: LockReply = call(
        &state,
        &caller,
        Op::LockAcquire(LockArgs {
            name,
            ttl_ms,
            wait_ms,
            owner,
            agent,
        }),
    )
    .await?;
    Ok(Json(AcquireResponse::new(
        reply.lock,
        reply.existing,
        reply.waited_ms,
    )))
}

/// The body of `DELETE /locks/{name}`.
#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The owner name it was taken under.
    owner: Option<String>,
    pid: Option<i64>,
    /// Release whoever holds it (a holder of your own user only).
    force: Option<bool>,
}

#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ReleaseQuery {
    force: Option<bool>,
    owner: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ReleaseResponse {
    success: bool,
    released: bool,
    /// The holding that ended.
    lock: Lock,
}

/// Let a lock go.
#[utoipa::path(delete, path = "/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "lock name"),
           ("force" = Option<bool>, Query, description = "release whoever holds it (your user's holders only)"),
           ("owner" = Option<String>, Query, description = "the owner name it was taken under"),
           ("X-Agent-Id" = Option<String>, Header, description = "the agent that holds it"),
           ("X-PID" = Option<u32>, Header, description = "owning process")),
    request_body(content = Option<ReleaseBody>, content_type = "application/json"),
    responses((status = 200, body = ReleaseResponse),
              (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn release(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(name): IdPath,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Result<Json<ReleaseResponse>, ApiError> {
    let body: ReleaseBody = json_body(&body)?;
    let q: ReleaseQuery = query(&uri)?;
    if body.owner.is_some() && q.owner.is_some() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "name the owner in the body or the query, not both",
        ));
    }
    let force = body.force.unwrap_or(false) || q.force.unwrap_or(false);
    let (agent, owner) = speaker(&headers, body.owner.or(q.owner), body.pid)?;
    let r: UnlockReply = call(
        &state,
        &caller,
        Op::LockRelease {
            name,
            owner,
            agent,
            force,
        },
    )
    .await?;
    Ok(Json(ReleaseResponse {
        success: true,
        released: true,
        lock: r.released.into(),
    }))
}

/// The body of a lock's renewal.
#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct ExtendBody {
    /// The new TTL from now: ms or a duration (default: the lock's own).
    #[schema(value_type = Option<Object>)]
    ttl: Option<Millis>,
    owner: Option<String>,
    pid: Option<i64>,
}

/// Renew a held lock's TTL (its owner only).
#[utoipa::path(put, path = "/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "lock name"),
           ("X-Agent-Id" = Option<String>, Header, description = "the agent that holds it"),
           ("X-PID" = Option<u32>, Header, description = "owning process")),
    request_body(content = Option<ExtendBody>, content_type = "application/json"),
    responses((status = 200, body = AcquireResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn extend(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(name): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AcquireResponse>, ApiError> {
    let body: ExtendBody = json_body(&body)?;
    let (agent, owner) = speaker(&headers, body.owner, body.pid)?;
    let ttl_ms = body.ttl.as_ref().map(Millis::ms).transpose()?;
    let reply: LockReply = call(
        &state,
        &caller,
        Op::LockExtend {
            name,
            ttl_ms,
            owner,
            agent,
        },
    )
    .await?;
    Ok(Json(AcquireResponse::new(reply.lock, true, 0)))
}

/// The same renewal as `PUT /locks/{name}`, for clients that only POST.
#[utoipa::path(post, path = "/locks/{name}/extend", tag = "locks",
    params(("name" = String, Path, description = "lock name")),
    request_body(content = Option<ExtendBody>, content_type = "application/json"),
    responses((status = 200, body = AcquireResponse),
              (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody)))]
pub async fn extend_post(
    state: State<Arc<HttpState>>,
    caller: Extension<Caller>,
    name: IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<AcquireResponse>, ApiError> {
    extend(state, caller, name, headers, body).await
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only names matching this pattern (`files:*`).
    pattern: Option<String>,
    /// Only locks held under this owner name or agent (Port Daddy's
    /// filter; a view of the core's answer).
    owner: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ListResponse {
    success: bool,
    locks: Vec<Lock>,
    count: usize,
}

/// Held locks.
#[utoipa::path(get, path = "/locks", tag = "locks",
    params(("pattern" = Option<String>, Query, description = "name pattern, e.g. files:*"),
           ("owner" = Option<String>, Query, description = "owner name or agent id")),
    responses((status = 200, body = ListResponse), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<ListResponse>, ApiError> {
    let q: ListQuery = query(&uri)?;
    let reply: LocksReply = call(&state, &caller, Op::Locks { pattern: q.pattern }).await?;
    let locks: Vec<Lock> = reply
        .locks
        .into_iter()
        .filter(|l| q.owner.is_none() || l.owner_name == q.owner)
        .map(Lock::from)
        .collect();
    Ok(Json(ListResponse {
        success: true,
        count: locks.len(),
        locks,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct ShowResponse {
    success: bool,
    name: String,
    /// Whether it is held; `lock` is its holding when it is.
    locked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock: Option<Lock>,
}

/// One lock: who holds it, if anyone (Port Daddy answers a free lock with
/// `locked: false`, and so does pb).
#[utoipa::path(get, path = "/locks/{name}", tag = "locks",
    params(("name" = String, Path, description = "lock name")),
    responses((status = 200, body = ShowResponse), (status = 400, body = ErrorBody)))]
pub async fn show(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(name): IdPath,
) -> Result<Json<ShowResponse>, ApiError> {
    let got: Result<LockInfo, ApiError> =
        call(&state, &caller, Op::LockInfo { name: name.clone() }).await;
    let lock = match got {
        Ok(l) => Some(Lock::from(l)),
        Err(ApiError(WireError {
            code: ErrorCode::NotFound,
            ..
        })) => None,
        Err(e) => return Err(e),
    };
    Ok(Json(ShowResponse {
        success: true,
        name,
        locked: lock.is_some(),
        lock,
    }))
}
