//! `GET /whoami`: the caller as the broker sees it, from the kernel: the
//! uid that made the connection's socket, the uid it acts as, and the
//! process holding the socket. For people debugging a refusal, and the
//! proof that identity never comes from what a client says.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Conn, HttpState};
use crate::core::Caller;

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new().route("/whoami", get(whoami))
}

#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    /// The uid that made this connection's socket.
    peer_uid: u32,
    /// The uid requests on it act as (the broker's own for a token holder).
    uid: u32,
    /// The process holding the connection's socket, if the broker may see it.
    pid: Option<u32>,
    /// Its command line.
    command: Option<String>,
}

/// Who the kernel says is calling.
#[utoipa::path(get, path = "/whoami", tag = "pb",
    responses((status = 200, body = WhoAmI)))]
pub async fn whoami(
    State(state): State<Arc<HttpState>>,
    Extension(caller): Extension<Caller>,
    Extension(conn): Extension<Arc<Conn>>,
) -> Json<WhoAmI> {
    let (process, command) = conn.process(&state).await;
    Json(WhoAmI {
        peer_uid: conn.peer_uid,
        uid: caller.uid,
        pid: process.map(|p| p.pid),
        command: command.as_deref().map(str::to_string),
    })
}
