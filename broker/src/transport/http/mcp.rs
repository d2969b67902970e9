//! `/mcp`: the MCP tools (`transport/mcp.rs`) over the streamable HTTP
//! transport, on the broker's HTTP port. The route sits behind the same
//! guard as every other (Host, Origin, rate, caller and token, content
//! type, body), so the caller each tool acts for is the one the kernel
//! named for the connection, and what it claims and locks is that
//! process's, as for any HTTP caller.
//!
//! The server is stateless (each POST is one JSON-RPC request, answered on
//! its own event stream): no session table to bound or lose on a restart.
//! Progress notifications travel on the request's stream; a client that
//! hangs up mid-call ends the call, and takes its place in a lock's queue
//! with it ([`Conn::hung_up`]), so that it is never granted a lock nobody
//! will hear of.

use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use pb_proto::{ErrorCode, LockOwnerArg, Op, Owner, WireError};
use rmcp::model::Extensions;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{json, Value};

use crate::core::{Caller, SharedCore};
use crate::transport::http::error::ApiError;
use crate::transport::http::{Conn, HttpState};
use crate::transport::mcp::{Backend, BoxFuture, PbTools, StackAt, StackVerb};

/// Where the MCP endpoint is.
pub const PATH: &str = "/mcp";

struct HttpBackend {
    core: SharedCore,
}

/// The caller the guard admitted this request as.
fn caller(cx: &Extensions) -> Result<Caller, WireError> {
    cx.get::<Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| WireError::new(ErrorCode::Internal, "an MCP request without its caller"))
}

impl Backend for HttpBackend {
    fn call(
        &self,
        op: Op,
        cx: &Extensions,
        cancelled: BoxFuture<()>,
    ) -> BoxFuture<Result<Value, WireError>> {
        let core = self.core.clone();
        let caller = caller(cx);
        let conn = cx
            .get::<Parts>()
            .and_then(|p| p.extensions.get::<Arc<Conn>>())
            .cloned();
        Box::pin(async move {
            let caller = caller?;
            let hung_up = async {
                match conn {
                    Some(c) => c.hung_up().await,
                    None => std::future::pending().await,
                }
            };
            let out = tokio::select! {
                out = crate::service::dispatch(&core, &caller, op) => out?,
                // Dropping the dispatch takes a waiter out of its queue.
                () = cancelled => {
                    return Err(WireError::new(ErrorCode::Timeout, "the call was cancelled"))
                }
                () = hung_up => {
                    return Err(WireError::new(ErrorCode::Timeout, "the client hung up"))
                }
            };
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
    axum::routing::post_service(service(core, all_tools))
        .layer(axum::middleware::map_response(as_pb_error))
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

/// The `/mcp` service.
pub fn service(
    core: SharedCore,
    all_tools: bool,
) -> StreamableHttpService<PbTools, LocalSessionManager> {
    let backend: Arc<dyn Backend> = Arc::new(HttpBackend { core });
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
