//! `pb mcp`: the broker's MCP tools (pb-broker's `transport::mcp`) on
//! stdio, for `claude mcp add pb -- pb mcp`. Each tool's `Op` goes to the
//! broker over its Unix socket, as every client's does.
//!
//! An MCP server is started by the agent that uses it: what it claims and
//! locks belongs to that agent's process (this server's parent, as the
//! kernel names it), so it ends when the agent exits, as with any owner.
//! A call that waits (a lock's queue, `wait_for_service`) has a connection
//! of its own, closed when the call is cancelled or the client goes away,
//! so that the broker takes the waiter out of its queue; a grant that
//! arrives as that happens is released here, never left held.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use pb_broker::transport::mcp::{waits, Backend, BoxFuture, PbTools, StackAt, StackVerb};
use pb_platform::ProcessId;
use pb_proto::client::ClientError;
use pb_proto::paths::Paths;
use pb_proto::{Client, ErrorCode, LockOwnerArg, Op, Owner, WireError};
use rmcp::model::Extensions;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServiceExt};
use serde_json::{json, Value};

use crate::connect;

/// How long, once the client has gone, calls still waiting get to give
/// back what they were granted.
const WIND_DOWN: Duration = Duration::from_secs(5);

/// Runs the server on stdin/stdout until the client closes it.
pub fn serve(paths: &Paths, all: bool) -> Result<i32> {
    let (closing, _) = tokio::sync::watch::channel(false);
    let backend = Arc::new(StdioBackend {
        paths: paths.clone(),
        agent: ProcessId::current().parent(),
        kept: Arc::default(),
        closing: closing.clone(),
        in_flight: Arc::default(),
        cwd: std::env::current_dir()
            .ok()
            .map(|d| d.to_string_lossy().into_owned()),
    });
    let tools = PbTools::new(backend.clone(), all);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the MCP server's runtime")?;
    rt.block_on(async move {
        let running = tools
            .serve(rmcp::transport::stdio())
            .await
            .context("the MCP handshake")?;
        let served = running.waiting().await;
        // The client is gone: calls still waiting stop, and give back
        // what they were granted meanwhile.
        let _ = closing.send(true);
        let deadline = tokio::time::Instant::now() + WIND_DOWN;
        while backend.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        served.context("serving MCP")?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(0)
}

struct StdioBackend {
    paths: Paths,
    /// The agent: the process that started this server.
    agent: Option<ProcessId>,
    /// One connection kept for the calls that answer at once (a call that
    /// may wait in a lock's queue has its own, so it holds up no other).
    kept: Arc<Mutex<Option<Client>>>,
    /// Set once the client has gone.
    closing: tokio::sync::watch::Sender<bool>,
    /// Calls that wait, not yet finished.
    in_flight: Arc<AtomicUsize>,
    cwd: Option<String>,
}

fn unreachable(e: impl std::fmt::Display) -> WireError {
    WireError::new(
        ErrorCode::Internal,
        format!("the broker is unreachable: {e:#}"),
    )
}

fn wire(e: ClientError) -> WireError {
    match e {
        ClientError::Wire(w) => w,
        other => unreachable(other),
    }
}

/// Sends `op` on the kept connection, making one (and starting a broker)
/// if there is none; a broken connection is not kept.
fn call_kept(paths: &Paths, kept: &Mutex<Option<Client>>, op: Op) -> Result<Value, WireError> {
    let mut slot = kept.lock().unwrap_or_else(|e| e.into_inner());
    let client = match slot.as_mut() {
        Some(c) => c,
        None => slot.insert(connect::connect(paths).map_err(unreachable)?),
    };
    let answer = client.call(op);
    let hung_up = match &answer {
        Err(ClientError::Io(_) | ClientError::Protocol(_)) => true,
        // The broker closes a connection whose frame it refused.
        Err(ClientError::Wire(w)) => w.code == ErrorCode::InvalidFrame,
        Ok(_) => false,
    };
    if hung_up {
        *slot = None;
    }
    answer.map(|(v, _)| v).map_err(wire)
}

/// Counts a waiting call while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(n: &Arc<AtomicUsize>) -> InFlight {
        n.fetch_add(1, Ordering::SeqCst);
        InFlight(n.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Backend for StdioBackend {
    fn call(&self, op: Op, cx: &RequestContext<RoleServer>) -> BoxFuture<Result<Value, WireError>> {
        let paths = self.paths.clone();
        let cancelled = cx.ct.clone();
        if !waits(&op) {
            let kept = self.kept.clone();
            return Box::pin(async move {
                tokio::task::spawn_blocking(move || call_kept(&paths, &kept, op))
                    .await
                    .map_err(unreachable)?
            });
        }
        let guard = InFlight::enter(&self.in_flight);
        let mut closing = self.closing.subscribe();
        let kept = self.kept.clone();
        let release = match &op {
            Op::LockAcquire(a) => Some(Op::LockRelease {
                name: a.name.clone(),
                owner: a.owner.clone(),
                agent: a.agent.clone(),
                force: false,
            }),
            _ => None,
        };
        Box::pin(async move {
            let _guard = guard;
            let mut client = tokio::task::spawn_blocking({
                let paths = paths.clone();
                move || connect::connect(&paths)
            })
            .await
            .map_err(unreachable)?
            .map_err(unreachable)?;
            let hangup = client.stream().try_clone().map_err(unreachable)?;
            let mut call = tokio::task::spawn_blocking(move || client.call(op).map(|(v, _)| v));
            let stopped = tokio::select! {
                got = &mut call => return got.map_err(unreachable)?.map_err(wire),
                () = cancelled.cancelled() => "the call was cancelled",
                _ = closing.wait_for(|c| *c) => "the client went away",
            };
            // The broker takes a waiter whose connection closes out of the
            // queue; a grant already on its way is released.
            let _ = hangup.shutdown(std::net::Shutdown::Both);
            if let (Ok(Ok(_granted)), Some(release)) = (call.await, release) {
                let _ =
                    tokio::task::spawn_blocking(move || call_kept(&paths, &kept, release)).await;
            }
            Err(WireError::new(ErrorCode::Timeout, stopped))
        })
    }

    fn owner(&self) -> Owner {
        self.agent.map_or(Owner::None, |p| Owner::Pid(p.pid))
    }

    fn lock_owner(&self) -> LockOwnerArg {
        self.agent
            .map_or(LockOwnerArg::Caller, |p| LockOwnerArg::Pid(p.pid))
    }

    fn whoami(&self, _cx: &Extensions) -> BoxFuture<Result<Value, WireError>> {
        let agent = self.agent;
        Box::pin(async move {
            let info = tokio::task::spawn_blocking(move || {
                agent.and_then(|p| pb_platform::ProcessInfo::of(p.pid))
            })
            .await
            .map_err(unreachable)?;
            Ok(json!({
                "pid": agent.map(|p| p.pid),
                "uid": info.as_ref().map(|i| i.uid),
                "command": info.as_ref().map(|i| i.command()),
            }))
        })
    }

    fn project_dir(&self) -> Option<String> {
        self.cwd.clone()
    }

    /// Runs `pb -j up -d` or `pb -j down` as the agent would in a shell: the
    /// supervisor is the user's process, not this server's child for long.
    fn stack(&self, verb: StackVerb, at: StackAt) -> BoxFuture<Result<Value, WireError>> {
        let dir = at.dir.or_else(|| self.cwd.clone());
        Box::pin(async move {
            let exe = std::env::current_exe().map_err(unreachable)?;
            let mut cmd = tokio::process::Command::new(exe);
            cmd.arg("-j");
            match verb {
                StackVerb::Up => cmd.args(["up", "-d"]),
                StackVerb::Down => cmd.arg("down"),
            };
            if let Some(f) = &at.file {
                cmd.args(["-f", f]);
            }
            if let Some(c) = &at.context {
                cmd.args(["--context", c]);
            }
            if let Some(d) = &dir {
                cmd.current_dir(d);
            }
            cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
            let out = cmd.output().await.map_err(unreachable)?;
            let v: Value = serde_json::from_slice(&out.stdout).map_err(|_| {
                WireError::new(
                    ErrorCode::Internal,
                    format!(
                        "pb up printed no JSON: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                )
            })?;
            if out.status.success() {
                return Ok(v);
            }
            // The CLI's error: pb's code when the broker gave one; a bad
            // stack file or a stack already up is the caller's input.
            let code =
                serde_json::from_value(v["code"].clone()).unwrap_or(ErrorCode::InvalidRequest);
            let message = v["error"].as_str().unwrap_or("pb up failed").to_string();
            Err(WireError::new(code, message))
        })
    }
}
