//! `/mcp`: the MCP tools (`transport/mcp.rs`) over the streamable HTTP
//! transport, on the broker's HTTP port. The route sits behind the same
//! guard as every other (Host, Origin, rate, caller and token, content
//! type, body), so the caller each tool acts for is the one the kernel
//! named for the connection, and what it claims and locks is that
//! process's, as for any HTTP caller.
//!
//! The server is stateless (each POST is one JSON-RPC request, answered on
//! its own event stream): no session table to bound or lose on a restart.
//! Progress notifications travel on the request's stream. A client that
//! cancels a call (`notifications/cancelled`, its own POST: [`Cancels`])
//! or hangs up mid-call ([`Conn::hung_up`]) ends the call, and takes its
//! place in a lock's queue with it; a grant that crossed the hang-up is
//! given back. Nobody is granted a lock it will not hear of.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use pb_proto::{ErrorCode, LockOwnerArg, Op, Owner, WireError};
use rmcp::model::Extensions;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::RoleServer;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::core::{Caller, SharedCore};
use crate::transport::http::error::ApiError;
use crate::transport::http::{Conn, HttpState};
use crate::transport::mcp::{Backend, BoxFuture, PbTools, StackAt, StackVerb};

/// Where the MCP endpoint is.
pub const PATH: &str = "/mcp";

struct HttpBackend {
    core: SharedCore,
    cancels: Arc<Cancels>,
}

/// The calls in flight that a `notifications/cancelled` may end. Stateless
/// rmcp answers that notification (its own POST) and forgets it, so the
/// route reads it on its way in ([`note_cancels`]) and ends the call it
/// names here: the same caller (uid and process), the same request id.
/// An entry lives as long as its call; calls are bounded by connections.
#[derive(Default)]
pub struct Cancels {
    calls: Mutex<HashMap<CallKey, oneshot::Sender<()>>>,
}

type CallKey = (u32, Option<u32>, String);

fn call_key(c: &Caller, request_id: &Value) -> CallKey {
    (c.peer_uid, c.process.map(|p| p.pid), request_id.to_string())
}

/// Takes a call's entry out when the call ends, however it ends.
struct Registered<'a> {
    cancels: &'a Cancels,
    key: CallKey,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.cancels
            .calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// The caller the guard admitted this request as.
fn caller(cx: &Extensions) -> Result<Caller, WireError> {
    cx.get::<Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| WireError::new(ErrorCode::Internal, "an MCP request without its caller"))
}

impl Backend for HttpBackend {
    fn call(&self, op: Op, cx: &RequestContext<RoleServer>) -> BoxFuture<Result<Value, WireError>> {
        let core = self.core.clone();
        let cancels = self.cancels.clone();
        let caller = caller(&cx.extensions);
        let conn = cx
            .extensions
            .get::<Parts>()
            .and_then(|p| p.extensions.get::<Arc<Conn>>())
            .cloned();
        let request_id = serde_json::to_value(&cx.id).unwrap_or(Value::Null);
        Box::pin(async move {
            let caller = caller?;
            let (tx, cancelled) = oneshot::channel();
            let key = call_key(&caller, &request_id);
            cancels
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key.clone(), tx);
            let _registered = Registered {
                cancels: &cancels,
                key,
            };
            let hung_up = async {
                match &conn {
                    Some(c) => c.hung_up().await,
                    None => std::future::pending().await,
                }
            };
            let out = tokio::select! {
                out = crate::service::dispatch(&core, &caller, op) => out?,
                // Dropping the dispatch takes a waiter out of its queue.
                _ = cancelled => {
                    return Err(WireError::new(ErrorCode::Timeout, "the call was cancelled"))
                }
                () = hung_up => {
                    return Err(WireError::new(ErrorCode::Timeout, "the client hung up"))
                }
            };
            // A grant that arrived as the client hung up is given back, as
            // the Unix socket gives back a reply it could not write.
            if conn.as_ref().is_some_and(|c| c.has_hung_up()) {
                if let Some(undo) = out.undo {
                    crate::core::lock(&core).undo(undo);
                }
                return Err(WireError::new(ErrorCode::Timeout, "the client hung up"));
            }
            tokio::spawn(async move { crate::core::lock(&core).after_reply() });
            serde_json::to_value(&out.result)
                .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))
        })
    }

    fn owner(&self) -> Owner {
        Owner::Caller
    }

    fn lock_owner(&self) -> LockOwnerArg {
        LockOwnerArg::Caller
    }

    fn whoami(&self, cx: &Extensions) -> BoxFuture<Result<Value, WireError>> {
        let caller = caller(cx);
        Box::pin(async move {
            let c = caller?;
            Ok(json!({
                "pid": c.process.map(|p| p.pid),
                "uid": c.peer_uid,
                "command": c.command,
            }))
        })
    }

    fn project_dir(&self) -> Option<String> {
        None
    }

    fn stack(&self, _verb: StackVerb, _at: StackAt) -> BoxFuture<Result<Value, WireError>> {
        Box::pin(async {
            Err(WireError::new(
                ErrorCode::Forbidden,
                "the broker starts no process for an HTTP caller: run `pb up -d` (or `pb mcp` \
                 on stdio) to bring a stack up or down; list_stacks, restart_service and \
                 stack_logs work here",
            ))
        })
    }
}

/// The `/mcp` route: POST is the MCP endpoint; every other method, and
/// every refusal of the MCP layer itself (a missing Accept, a body that is
/// not JSON-RPC), answers as every route of pb does, `{error, code}`.
pub fn route(core: SharedCore, all_tools: bool) -> axum::routing::MethodRouter<Arc<HttpState>> {
    let cancels = Arc::new(Cancels::default());
    let seen = cancels.clone();
    axum::routing::post_service(service(core, cancels, all_tools))
        .layer(axum::middleware::map_response(as_pb_error))
        .layer(axum::middleware::from_fn(move |req, next| {
            note_cancels(seen.clone(), req, next)
        }))
        .fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "MCP over HTTP is POST /mcp: one JSON-RPC message a request (docs/MCP.md)",
            )
        })
}

/// An error rmcp answered as text, made pb's JSON.
async fn as_pb_error(resp: Response) -> Response {
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("text/event-stream"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return resp;
    }
    let text = axum::body::to_bytes(resp.into_body(), 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    // The guard has already taken only JSON bodies: what rmcp refuses is
    // the request's MCP (its Accept header, a body that is no JSON-RPC
    // message), answered with the status of pb's code for it.
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    };
    ApiError::new(code, format!("MCP: {text}")).into_response()
}

/// Ends the call a `notifications/cancelled` names, then lets rmcp answer
/// the notification as it does. The guard has read the body already (at
/// most 64 KiB), so it is read again from memory.
async fn note_cancels(
    cancels: Arc<Cancels>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, pb_proto::MAX_REQUEST).await else {
        return ApiError::new(ErrorCode::TooLarge, "the body is over 64 KiB").into_response();
    };
    if let (Ok(msg), Some(c)) = (
        serde_json::from_slice::<Value>(&bytes),
        parts.extensions.get::<Caller>(),
    ) {
        if msg["method"] == "notifications/cancelled" {
            let key = call_key(c, &msg["params"]["requestId"]);
            let call = cancels
                .calls
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            if let Some(tx) = call {
                let _ = tx.send(());
            }
        }
    }
    next.run(axum::extract::Request::from_parts(
        parts,
        axum::body::Body::from(bytes),
    ))
    .await
}

/// The `/mcp` service.
pub fn service(
    core: SharedCore,
    cancels: Arc<Cancels>,
    all_tools: bool,
) -> StreamableHttpService<PbTools, LocalSessionManager> {
    let backend: Arc<dyn Backend> = Arc::new(HttpBackend { core, cancels });
    let config = StreamableHttpServerConfig::default()
        .with_stateful_mode(false)
        .with_json_response(false)
        .with_sse_keep_alive(Some(Duration::from_secs(15)))
        .with_sse_retry(None)
        .disable_allowed_hosts();
    StreamableHttpService::new(
        move || Ok(PbTools::new(backend.clone(), all_tools)),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}
