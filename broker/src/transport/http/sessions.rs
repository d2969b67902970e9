//! Work sessions over HTTP (docs/HTTP.md, "Sessions"), each route one
//! session `Op`, its reply pb's own type as JSON:
//!
//! - `POST /sessions` begins one (`{purpose, dir, phase, note, files}`);
//!   `GET /sessions?state=` lists them; `GET /sessions/{id}` shows one;
//! - `PUT /sessions/{id}/phase`, `POST /sessions/{id}/end` (or `DELETE
//!   /sessions/{id}`), `POST /sessions/{id}/takeover`;
//! - `POST /sessions/{id}/notes` and `GET /sessions/{id}/notes?after=`;
//! - `POST /sessions/{id}/files` claims, `DELETE /sessions/{id}/files`
//!   releases, `GET /files?path=` says who claims a path.
//!
//! Whose a session is follows the lock routes: X-Agent-Id's agent, else
//! X-PID (or `pid`), else the process that ran the client (curl exits with
//! its request; its shell stays).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::{get, post, put};
use axum::{Extension, Json, Router};
use pb_proto::{
    FilesReleaseReply, FilesReply, FilesWhoReply, NoteReply, NotesReply, Op, SessionArgs,
    SessionEndReply, SessionReply, SessionsReply,
};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::locks::speaker;
use super::{agent_header, call, json_body, query, HttpState, IdPath};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/sessions", get(list).post(begin))
        .route("/sessions/{id}", get(show).delete(end_delete))
        .route("/sessions/{id}/phase", put(phase))
        .route("/sessions/{id}/end", post(end))
        .route("/sessions/{id}/takeover", post(takeover))
        .route("/sessions/{id}/notes", get(notes).post(add_note))
        .route(
            "/sessions/{id}/files",
            post(claim_files).delete(release_files),
        )
        .route("/files", get(who))
}

#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct BeginBody {
    /// What the session is for.
    purpose: String,
    /// The project's directory, absolute: file claims are within it.
    dir: Option<String>,
    phase: Option<String>,
    /// A first note.
    note: Option<String>,
    /// Paths or globs to claim at once: all, or the session does not begin.
    #[serde(default)]
    files: Vec<String>,
    /// The owning process; X-PID wins.
    pid: Option<i64>,
}

/// Begin a work session.
#[utoipa::path(post, path = "/sessions", tag = "sessions",
    params(("X-Agent-Id" = Option<String>, Header, description = "the agent whose session it is"),
           ("X-PID" = Option<u32>, Header, description = "the owning process")),
    request_body(content = BeginBody, content_type = "application/json"),
    responses((status = 201, description = "`{session}`"),
              (status = 400, body = ErrorBody), (status = 409, body = ErrorBody,
               description = "held: a file is another session's; details list the conflicts"),
              (status = 429, body = ErrorBody)))]
pub async fn begin(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SessionReply>), ApiError> {
    let b: BeginBody = json_body(&body)?;
    let (agent, owner) = speaker(&headers, None, b.pid)?;
    let reply = call(
        &state,
        &caller,
        Op::SessionBegin(SessionArgs {
            purpose: b.purpose,
            dir: b.dir,
            phase: b.phase,
            owner,
            agent,
            note: b.note,
            files: b.files,
        }),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(reply)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// live (the default), active, abandoned, ended or all.
    state: Option<String>,
}

/// The caller's user's sessions, newest first.
#[utoipa::path(get, path = "/sessions", tag = "sessions", params(ListQuery),
    responses((status = 200, description = "`{sessions}`"), (status = 400, body = ErrorBody)))]
pub async fn list(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<SessionsReply>, ApiError> {
    let q: ListQuery = query(&uri)?;
    Ok(Json(
        call(&state, &caller, Op::Sessions { state: q.state }).await?,
    ))
}

/// One session.
#[utoipa::path(get, path = "/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "`{session}`"), (status = 404, body = ErrorBody)))]
pub async fn show(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
) -> Result<Json<SessionReply>, ApiError> {
    Ok(Json(call(&state, &caller, Op::SessionGet { id }).await?))
}

#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct EndBody {
    /// The last note: what was done, what is left.
    note: Option<String>,
}

/// End a session, releasing its file claims.
#[utoipa::path(post, path = "/sessions/{id}/end", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    request_body(content = Option<EndBody>, content_type = "application/json"),
    responses((status = 200, description = "`{session, released}`"),
              (status = 409, body = ErrorBody, description = "closed: it has ended")))]
pub async fn end(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SessionEndReply>, ApiError> {
    let b: EndBody = json_body(&body)?;
    let agent = agent_header(&headers)?;
    let op = Op::SessionEnd {
        id,
        note: b.note,
        agent,
    };
    Ok(Json(call(&state, &caller, op).await?))
}

/// End a session (as `POST /sessions/{id}/end` with no note).
#[utoipa::path(delete, path = "/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses((status = 200, description = "`{session, released}`"),
              (status = 409, body = ErrorBody, description = "closed: it has ended")))]
pub async fn end_delete(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    headers: HeaderMap,
) -> Result<Json<SessionEndReply>, ApiError> {
    let agent = agent_header(&headers)?;
    let op = Op::SessionEnd {
        id,
        note: None,
        agent,
    };
    Ok(Json(call(&state, &caller, op).await?))
}

#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct PhaseBody {
    phase: String,
}

/// Set a session's phase.
#[utoipa::path(put, path = "/sessions/{id}/phase", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    request_body(content = PhaseBody, content_type = "application/json"),
    responses((status = 200, description = "`{session}`"), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "closed")))]
pub async fn phase(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    body: Bytes,
) -> Result<Json<SessionReply>, ApiError> {
    let b: PhaseBody = json_body(&body)?;
    let op = Op::SessionPhase { id, phase: b.phase };
    Ok(Json(call(&state, &caller, op).await?))
}

#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct TakeoverBody {
    /// The process that owns it from now; X-PID wins.
    pid: Option<i64>,
}

/// Take over an abandoned session, its notes and file claims.
#[utoipa::path(post, path = "/sessions/{id}/takeover", tag = "sessions",
    params(("id" = String, Path, description = "session id"),
           ("X-Agent-Id" = Option<String>, Header, description = "the agent taking it"),
           ("X-PID" = Option<u32>, Header, description = "the owning process")),
    request_body(content = Option<TakeoverBody>, content_type = "application/json"),
    responses((status = 200, description = "`{session}`"),
              (status = 409, body = ErrorBody, description = "held (still active) or closed")))]
pub async fn takeover(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<SessionReply>, ApiError> {
    let b: TakeoverBody = json_body(&body)?;
    let (agent, owner) = speaker(&headers, None, b.pid)?;
    let op = Op::SessionTakeover { id, owner, agent };
    Ok(Json(call(&state, &caller, op).await?))
}

#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct NoteBody {
    text: String,
}

/// Add a note (notes are never changed).
#[utoipa::path(post, path = "/sessions/{id}/notes", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    request_body(content = NoteBody, content_type = "application/json"),
    responses((status = 201, description = "`{note}`"), (status = 400, body = ErrorBody),
              (status = 409, body = ErrorBody, description = "closed")))]
pub async fn add_note(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<NoteReply>), ApiError> {
    let b: NoteBody = json_body(&body)?;
    let agent = agent_header(&headers)?;
    let op = Op::NoteAdd {
        session: id,
        text: b.text,
        agent,
    };
    Ok((StatusCode::CREATED, Json(call(&state, &caller, op).await?)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NotesQuery {
    /// Only notes after this number.
    after: Option<u32>,
    /// At most this many.
    limit: Option<i64>,
}

/// A session's notes, oldest first.
#[utoipa::path(get, path = "/sessions/{id}/notes", tag = "sessions",
    params(("id" = String, Path, description = "session id"), NotesQuery),
    responses((status = 200, description = "`{session, notes}`"), (status = 404, body = ErrorBody)))]
pub async fn notes(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    uri: Uri,
) -> Result<Json<NotesReply>, ApiError> {
    let q: NotesQuery = query(&uri)?;
    let op = Op::Notes {
        session: id,
        after: q.after,
        limit: q.limit,
    };
    Ok(Json(call(&state, &caller, op).await?))
}

#[derive(Deserialize, ToSchema, Default, Debug)]
#[serde(deny_unknown_fields)]
pub struct FilesBody {
    /// Paths or globs, relative to the session's project or absolute in it.
    #[serde(default)]
    paths: Vec<String>,
}

/// Claim files: all, or none when another session claims any of them.
#[utoipa::path(post, path = "/sessions/{id}/files", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    request_body(content = FilesBody, content_type = "application/json"),
    responses((status = 200, description = "`{session, claimed, files}`"),
              (status = 400, body = ErrorBody, description = "invalid_path: outside the project"),
              (status = 409, body = ErrorBody, description = "held: details list the conflicts")))]
pub async fn claim_files(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    body: Bytes,
) -> Result<Json<FilesReply>, ApiError> {
    let b: FilesBody = json_body(&body)?;
    let op = Op::FilesClaim {
        session: id,
        paths: b.paths,
    };
    Ok(Json(call(&state, &caller, op).await?))
}

/// Release file claims (every one of the session's when none is named).
#[utoipa::path(delete, path = "/sessions/{id}/files", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    request_body(content = Option<FilesBody>, content_type = "application/json"),
    responses((status = 200, description = "`{session, released}`"),
              (status = 404, body = ErrorBody)))]
pub async fn release_files(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    IdPath(id): IdPath,
    body: Bytes,
) -> Result<Json<FilesReleaseReply>, ApiError> {
    let b: FilesBody = json_body(&body)?;
    let op = Op::FilesRelease {
        session: id,
        paths: b.paths,
    };
    Ok(Json(call(&state, &caller, op).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WhoQuery {
    /// An absolute path.
    path: String,
}

/// The live claims that cover a path.
#[utoipa::path(get, path = "/files", tag = "sessions", params(WhoQuery),
    responses((status = 200, description = "`{path, claims}`"), (status = 400, body = ErrorBody)))]
pub async fn who(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Json<FilesWhoReply>, ApiError> {
    let q: WhoQuery = query(&uri)?;
    Ok(Json(
        call(&state, &caller, Op::FilesWho { path: q.path }).await?,
    ))
}
