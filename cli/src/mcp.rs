//! `pb mcp`: the broker's tools for coding agents, over the Model Context
//! Protocol on stdio (`claude mcp add pb -- pb mcp`). The protocol is
//! rmcp's, the official Rust SDK (ARCHITECTURE.md says why); each tool is
//! one `Op` sent to the broker over its Unix socket, as every client's, so
//! no rule lives here: the broker validates, and its errors come back as
//! tool errors carrying pb's code and message.
//!
//! An MCP server is started by the agent that uses it: what it claims and
//! locks belongs to that agent's process (this server's parent, as the
//! kernel names it), so it ends when the agent exits, as with any owner.
//!
//! Tool names are Port Daddy's (`claim_port`, `acquire_lock`, ...), so
//! agents' existing prompts keep working.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use pb_platform::ProcessId;
use pb_proto::client::ClientError;
use pb_proto::paths::Paths;
use pb_proto::{ClaimArgs, Client, LockArgs, LockOwnerArg, Op, Owner, ReleaseTarget};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerInfo};
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::connect;

/// Runs the server on stdin/stdout until the client closes it.
pub fn serve(paths: &Paths) -> Result<i32> {
    let server = PbTools {
        paths: paths.clone(),
        agent: ProcessId::current().parent(),
        kept: Arc::default(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the MCP server's runtime")?;
    rt.block_on(async move {
        let running = server
            .serve(rmcp::transport::stdio())
            .await
            .context("the MCP handshake")?;
        running.waiting().await.context("serving MCP")?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(0)
}

#[derive(Clone)]
pub struct PbTools {
    paths: Paths,
    /// The agent: the process that started this server.
    agent: Option<ProcessId>,
    /// One connection kept for the calls that answer at once (a call that
    /// may wait in a lock's queue has its own, so it holds up no other).
    kept: Arc<Mutex<Option<Client>>>,
}

type ToolResult = Result<CallToolResult, ErrorData>;

impl PbTools {
    /// Sends `op` to the broker (starting one if none runs), off the
    /// runtime's thread: a lock wait blocks only its own call.
    async fn call(&self, op: Op) -> ToolResult {
        let paths = self.paths.clone();
        let waits = matches!(&op, Op::LockAcquire(a) if a.wait_ms.is_some_and(|w| w > 0))
            || matches!(op, Op::Wait { .. });
        let kept = (!waits).then(|| self.kept.clone());
        let got = tokio::task::spawn_blocking(move || {
            let connect = || {
                connect::connect(&paths).map_err(|e| ("unavailable".to_string(), format!("{e:#}")))
            };
            let mut slot = kept
                .as_ref()
                .map(|k| k.lock().unwrap_or_else(|e| e.into_inner()));
            let mut own = None;
            let c = match slot.as_deref_mut() {
                Some(s) => match s {
                    Some(c) => c,
                    None => s.insert(connect()?),
                },
                None => own.insert(connect()?),
            };
            let answer = c.call(op);
            let hung_up = match &answer {
                Err(ClientError::Io(_) | ClientError::Protocol(_)) => true,
                // The broker closes a connection whose frame it refused.
                Err(ClientError::Wire(w)) => w.code == pb_proto::ErrorCode::InvalidFrame,
                Ok(_) => false,
            };
            if hung_up {
                // A broken connection is not kept: the next call makes one.
                if let Some(s) = slot.as_deref_mut() {
                    *s = None;
                }
            }
            answer.map(|(v, _)| v).map_err(|e| match e {
                ClientError::Wire(w) => (w.code.name(), w.message),
                other => ("unavailable".to_string(), other.to_string()),
            })
        })
        .await
        .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(match got {
            Ok(v) => CallToolResult::structured(v),
            Err((code, message)) => CallToolResult::structured_error(json!({
                "code": code,
                "error": message,
            })),
        })
    }

    fn owner(&self) -> Owner {
        self.agent.map_or(Owner::None, |p| Owner::Pid(p.pid))
    }

    fn lock_owner(&self) -> Option<LockOwnerArg> {
        self.agent.map(|p| LockOwnerArg::Pid(p.pid))
    }
}

#[derive(Deserialize, JsonSchema)]
pub struct ClaimPort {
    /// The service id, `project[:stack[:context]]` (e.g. `myapp:api`).
    id: String,
    /// This port exactly (fails if taken, unless `fallback`).
    port: Option<i64>,
    /// With `port`: take another from the range if it is taken.
    #[serde(default)]
    fallback: bool,
    /// The lease ends this many milliseconds from now unless renewed.
    expires_ms: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
pub struct Id {
    /// The service id.
    id: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct MaybePattern {
    /// Only ids (or names) matching this pattern, e.g. `myapp:*`.
    pattern: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct AcquireLock {
    /// The lock's name.
    name: String,
    /// How long the holding lasts, in milliseconds (0: while the agent lives).
    ttl_ms: Option<i64>,
    /// Wait in the lock's queue up to this many milliseconds when it is held.
    wait_ms: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
pub struct Name {
    /// The lock's name.
    name: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct Publish {
    /// The channel, e.g. `build:api`.
    channel: String,
    /// Any JSON value.
    message: Value,
}

#[derive(Deserialize, JsonSchema)]
pub struct GetMessages {
    /// A channel or pattern (`build:*`).
    channel: String,
    /// Only messages after this id (the last one seen).
    since_id: Option<u64>,
    /// At most this many, the newest.
    limit: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
pub struct WaitFor {
    /// The service ids to wait for.
    ids: Vec<String>,
    /// Give up after this many milliseconds (default 60 000).
    timeout_ms: Option<i64>,
    /// Also require this HTTP path to answer 2xx/3xx.
    http_path: Option<String>,
}

#[tool_router]
impl PbTools {
    #[tool(
        description = "Claim a port for a service id. The broker binds it in the kernel and holds it \
        for you (no other process can take it); it is yours until you release it or exit. \
        Returns the lease, its port first."
    )]
    async fn claim_port(&self, Parameters(a): Parameters<ClaimPort>) -> ToolResult {
        self.call(Op::Claim(ClaimArgs {
            id: a.id,
            port: a.port,
            fallback: a.fallback,
            expires_ms: a.expires_ms,
            owner: self.owner(),
            ..ClaimArgs::default()
        }))
        .await
    }

    #[tool(description = "Release a service's port by id, pattern (myapp:*) or port number.")]
    async fn release_port(&self, Parameters(a): Parameters<Id>) -> ToolResult {
        self.call(Op::Release {
            target: ReleaseTarget::parse(&a.id),
            more: Vec::new(),
        })
        .await
    }

    #[tool(description = "List leased services (ports), optionally matching a pattern.")]
    async fn list_services(&self, Parameters(a): Parameters<MaybePattern>) -> ToolResult {
        self.call(Op::Find { pattern: a.pattern }).await
    }

    #[tool(description = "One service's lease: its port, owner and state.")]
    async fn get_service(&self, Parameters(a): Parameters<Id>) -> ToolResult {
        self.call(Op::Get { id: a.id }).await
    }

    #[tool(
        description = "Take a lock (fenced: the reply carries a token that rises with each \
        holder). Held by you until released, its TTL, or your exit. With wait_ms, queue for it."
    )]
    async fn acquire_lock(&self, Parameters(a): Parameters<AcquireLock>) -> ToolResult {
        self.call(Op::LockAcquire(LockArgs {
            name: a.name,
            ttl_ms: a.ttl_ms,
            wait_ms: a.wait_ms,
            owner: self.lock_owner(),
            agent: None,
        }))
        .await
    }

    #[tool(description = "Release a lock you hold.")]
    async fn release_lock(&self, Parameters(a): Parameters<Name>) -> ToolResult {
        self.call(Op::LockRelease {
            name: a.name,
            owner: self.lock_owner(),
            agent: None,
            force: false,
        })
        .await
    }

    #[tool(description = "Held locks, optionally matching a pattern.")]
    async fn list_locks(&self, Parameters(a): Parameters<MaybePattern>) -> ToolResult {
        self.call(Op::Locks { pattern: a.pattern }).await
    }

    #[tool(description = "Publish a message on a channel (retained for other agents to read).")]
    async fn publish_message(&self, Parameters(a): Parameters<Publish>) -> ToolResult {
        self.call(Op::Publish {
            channel: a.channel,
            data: a.message,
            agent: None,
        })
        .await
    }

    #[tool(
        description = "Messages retained on a channel or pattern, oldest first; since_id \
        resumes after the last one seen."
    )]
    async fn get_messages(&self, Parameters(a): Parameters<GetMessages>) -> ToolResult {
        self.call(Op::History {
            pattern: a.channel,
            since_id: a.since_id,
            limit: a.limit,
        })
        .await
    }

    #[tool(description = "Wait until each service is leased and accepts connections.")]
    async fn wait_for_service(&self, Parameters(a): Parameters<WaitFor>) -> ToolResult {
        self.call(Op::Wait {
            ids: a.ids,
            timeout_ms: a.timeout_ms.unwrap_or(pb_proto::DEFAULT_WAIT_MS),
            http_path: a.http_path,
        })
        .await
    }

    #[tool(description = "The broker: version, pid, counts.")]
    async fn daemon_status(&self) -> ToolResult {
        self.call(Op::Status).await
    }

    #[tool(
        description = "Who you are to the broker, as the kernel says: the process that \
        started this MCP server (your agent), which owns what you claim and lock."
    )]
    async fn whoami(&self) -> ToolResult {
        let info = self.agent.and_then(|p| pb_platform::ProcessInfo::of(p.pid));
        Ok(CallToolResult::structured(json!({
            "pid": self.agent.map(|p| p.pid),
            "uid": info.as_ref().map(|i| i.uid),
            "command": info.as_ref().map(|i| i.command()),
        })))
    }
}

#[tool_handler]
impl ServerHandler for PbTools {
    fn get_info(&self) -> ServerInfo {
        let mut me = Implementation::from_build_env();
        me.name = "pb".into();
        me.version = env!("CARGO_PKG_VERSION").into();
        ServerInfo::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(me)
            .with_instructions(
                "pb is a kernel-aware port broker. Claim ports with claim_port (the broker binds them, \
                 so nobody else can take them), coordinate with acquire_lock/release_lock and \
                 publish_message/get_messages. What you claim and lock is freed when you exit.",
            )
    }
}
