//! The broker's tools for coding agents over the Model Context Protocol
//! (docs/MCP.md), one set for both of its transports: `pb mcp` on stdio,
//! which reaches the broker over its Unix socket, and `/mcp` on the HTTP
//! port, which dispatches in the broker itself. The protocol is rmcp's,
//! the official Rust SDK (ARCHITECTURE.md says why).
//!
//! Each tool is one `Op` handed to a [`Backend`], which applies it as its
//! transport does, so no rule lives here: the broker validates, and its
//! errors come back as tool errors carrying pb's code and message. What is
//! MCP's own is here: the tool names (Port Daddy's, so agents' prompts keep
//! working, and pb's), the short default list with `pd_discover`, progress
//! notifications while a call waits, and cancellation.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pb_proto::{
    ActivityArgs, AgentArgs, ClaimArgs, ErrorCode, LockArgs, LockOwnerArg, Op, Owner,
    ReleaseTarget, SessionArgs, WebhookArgs, WebhookUpdateArgs, WireError,
};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::ToolCallContext;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    AnnotateAble, CallToolRequestParams, CallToolResult, Extensions, Implementation,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, RawResource, RawResourceTemplate, ReadResourceRequestParams,
    ReadResourceResult, ResourceContents, ServerCapabilities, ServerInfo, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How the tools reach the broker.
pub trait Backend: Send + Sync + 'static {
    /// Applies `op` for this request's client (`cx`: its id, its
    /// extensions, which carry the HTTP caller over HTTP, and the token
    /// that the client's cancellation fires). A call still waiting when it
    /// is cancelled must leave nothing behind (a lock granted after is
    /// given back).
    fn call(&self, op: Op, cx: &RequestContext<RoleServer>) -> BoxFuture<Result<Value, WireError>>;
    /// Who owns what the tools claim: the agent that started `pb mcp`, or
    /// the HTTP caller.
    fn owner(&self) -> Owner;
    fn lock_owner(&self) -> LockOwnerArg;
    /// The client as the kernel names it.
    fn whoami(&self, cx: &Extensions) -> BoxFuture<Result<Value, WireError>>;
    /// The directory relative paths are read from, if the transport has one
    /// (stdio: the agent's working directory).
    fn project_dir(&self) -> Option<String>;
    /// Brings a stack up from its file, or down, as `pb up -d` and `pb down`
    /// do: a supervisor is a process of the user's, which only a transport
    /// on the user's side can start (over HTTP this is refused).
    fn stack(&self, verb: StackVerb, at: StackAt) -> BoxFuture<Result<Value, WireError>>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackVerb {
    Up,
    Down,
}

/// Which stack: its file, found as `pb up` finds it.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
pub struct StackAt {
    /// Where to look for the stack file (default: where the agent works).
    pub dir: Option<String>,
    /// The stack file (pb.toml, .portdaddyrc, Procfile), if not the one
    /// found upward from `dir`.
    pub file: Option<String>,
    /// The id's last segment (default: the git branch or worktree).
    pub context: Option<String>,
}

/// Listed by default, beside `pd_discover`, which lists every tool.
pub const ESSENTIAL: &[&str] = &[
    "claim_port",
    "release_port",
    "list_services",
    "get_service",
    "acquire_lock",
    "release_lock",
    "publish_message",
    "get_messages",
    "wait_for_service",
    "begin_session",
    "end_session_full",
    "add_note",
    "claim_files",
    "who_owns_file",
    "whoami",
    "pd_discover",
];

/// How often a waiting call reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The longest `wait_for_messages` waits, and how often it looks.
pub const MAX_MESSAGE_WAIT_MS: i64 = 60_000;
const MESSAGE_POLL: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct PbTools {
    backend: Arc<dyn Backend>,
    router: ToolRouter<PbTools>,
    /// List every tool, not only the essential ones.
    all: bool,
}

type ToolResult = Result<CallToolResult, ErrorData>;

fn tool_error(
    code: ErrorCode,
    message: impl Into<String>,
    details: Option<Value>,
) -> CallToolResult {
    let mut body = json!({ "code": code.name(), "error": message.into() });
    if let Some(d) = details {
        body["details"] = d;
    }
    CallToolResult::structured_error(body)
}

/// A backend's answer as a tool's result: its reply, or a tool error with
/// pb's code.
fn answer(got: Result<Value, WireError>) -> CallToolResult {
    match got {
        Ok(v) => CallToolResult::structured(v),
        Err(e) => tool_error(e.code, e.message, e.details),
    }
}

/// Whether `op` may wait (a lock's queue, `wait`): such a call reports
/// progress, and a backend gives it a connection of its own.
pub fn waits(op: &Op) -> bool {
    matches!(op, Op::LockAcquire(a) if a.wait_ms.is_some_and(|w| w > 0))
        || matches!(op, Op::Wait { .. })
}

impl PbTools {
    pub fn new(backend: Arc<dyn Backend>, all: bool) -> PbTools {
        PbTools {
            backend,
            router: Self::tool_router(),
            all,
        }
    }

    /// Applies `op`; while it waits, progress notifications go to a client
    /// that asked for them (a progress token), once a second.
    async fn run(&self, cx: &RequestContext<RoleServer>, op: Op) -> ToolResult {
        let what = match &op {
            Op::LockAcquire(a) => format!("queued for lock {}", a.name),
            Op::Wait { ids, .. } => format!("waiting for {}", ids.join(", ")),
            _ => String::new(),
        };
        let token = waits(&op).then(|| cx.meta.get_progress_token()).flatten();
        let mut call = self.backend.call(op, cx);
        let got = match token {
            None => call.await,
            Some(token) => {
                let started = Instant::now();
                let mut tick = tokio::time::interval(PROGRESS_EVERY);
                tick.tick().await;
                loop {
                    tokio::select! {
                        got = &mut call => break got,
                        _ = tick.tick() => {
                            let waited = started.elapsed().as_secs_f64();
                            let _ = cx.peer.notify_progress(ProgressNotificationParam {
                                progress_token: token.clone(),
                                progress: waited,
                                total: None,
                                message: Some(format!("{what} for {waited:.0}s")),
                            }).await;
                        }
                    }
                }
            }
        };
        Ok(answer(got))
    }

    /// A path as the agent gave it: relative ones from the backend's
    /// directory, where it has one (the broker judges the rest).
    fn path(&self, p: String) -> String {
        match self.backend.project_dir() {
            Some(d) if !p.starts_with('/') => format!("{d}/{p}"),
            _ => p,
        }
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
    /// Own the lease by this process (of your user) instead of your agent.
    pid: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
pub struct Id {
    /// The id (a service id, an agent id or a webhook id, as the tool says).
    id: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct Target {
    /// A service id, a pattern (`myapp:*`) or a port number.
    id: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct MaybePattern {
    /// Only ids (or names) matching this pattern, e.g. `myapp:*`.
    pattern: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct Port {
    /// A TCP port number.
    port: i64,
}

#[derive(Deserialize, JsonSchema)]
pub struct AcquireLock {
    /// The lock's name.
    name: String,
    /// How long the holding lasts, in milliseconds (0: while the agent lives).
    ttl_ms: Option<i64>,
    /// Wait in the lock's queue up to this many milliseconds when it is
    /// held; progress is reported meanwhile.
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
pub struct WaitMessages {
    /// A channel or pattern (`build:*`).
    channel: String,
    /// Only messages after this id (the last one seen).
    since_id: Option<u64>,
    /// Wait at most this long for one (default and most 60 000 ms).
    timeout_ms: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
pub struct Channel {
    /// The channel.
    channel: String,
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

#[derive(Deserialize, JsonSchema)]
pub struct RegisterAgent {
    /// The agent's id, e.g. `claude-1`.
    id: String,
    name: Option<String>,
    /// What kind of agent: claude, codex, ci, ...
    kind: Option<String>,
    /// Most services it may hold at once.
    max_services: Option<i64>,
    /// Most locks it may hold at once.
    max_locks: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
pub struct ActivityQuery {
    /// Only this action (`service.claim`), or a prefix ending in `*`.
    action: Option<String>,
    /// Only entries about this target (an id, a lock, a channel).
    target: Option<String>,
    /// Only entries after this time (ms since the epoch).
    since_ms: Option<i64>,
    /// At most this many, the newest.
    limit: Option<i64>,
}

#[derive(Deserialize, JsonSchema)]
pub struct WebhookAdd {
    /// Where deliveries go (http or https).
    url: String,
    /// Event kinds (`service.claim`, ...); all when absent.
    #[serde(default)]
    events: Vec<String>,
    /// Only events whose target matches this pattern.
    filter: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct WebhookUpdate {
    /// The webhook's id.
    id: String,
    url: Option<String>,
    events: Option<Vec<String>>,
    filter: Option<String>,
    active: Option<bool>,
}

#[derive(Deserialize, JsonSchema)]
pub struct BeginSession {
    /// What the session is for, in a line.
    purpose: String,
    /// The project's directory (absolute): file claims are within it.
    /// Default: where the agent works.
    dir: Option<String>,
    /// Where the work is: planning, implementing, testing, ...
    phase: Option<String>,
    /// A first note.
    note: Option<String>,
    /// Files to claim at once (paths or globs, relative to the project).
    #[serde(default)]
    files: Vec<String>,
    /// Act as this registered agent: the session is the agent's.
    agent: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct Session {
    /// The session's id (`s12`).
    session: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct EndSession {
    /// The session's id.
    session: String,
    /// A last note: what was done, what is left.
    note: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct SessionPhase {
    /// The session's id.
    session: String,
    /// The new phase.
    phase: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct Takeover {
    /// The abandoned session's id.
    session: String,
    /// Act as this registered agent: the session becomes the agent's.
    agent: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct ListSessions {
    /// live (active and abandoned; the default), active, abandoned, ended or all.
    state: Option<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct AddNote {
    /// The session's id.
    session: String,
    /// The note; notes are never changed.
    text: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct ListNotes {
    /// The session's id.
    session: String,
    /// Only notes after this number.
    after: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
pub struct ClaimFiles {
    /// The session's id.
    session: String,
    /// Paths or globs (`src/auth`, `src/**/*.rs`), relative to the project
    /// or absolute within it. All are claimed, or none when another
    /// session claims any of them.
    paths: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct ReleaseFiles {
    /// The session's id.
    session: String,
    /// The claims to release; all of the session's when empty.
    #[serde(default)]
    paths: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
pub struct FilePath {
    /// A path, relative to where the agent works or absolute.
    path: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct StackService {
    /// The stack's name (its project).
    stack: String,
    /// The service to restart.
    service: String,
}

#[derive(Deserialize, JsonSchema)]
pub struct StackLogs {
    /// The stack's name.
    stack: String,
    /// One service (every service when absent).
    service: Option<String>,
    /// Only lines after this message id.
    since_id: Option<u64>,
    /// At most this many lines, the newest.
    limit: Option<i64>,
}

#[tool_router]
impl PbTools {
    // Ports.

    #[tool(
        description = "Claim a port for a service id. The broker binds it in the kernel and holds it \
        for you (no other process can take it); it is yours until you release it or exit. \
        Returns the lease, its port first."
    )]
    async fn claim_port(
        &self,
        Parameters(a): Parameters<ClaimPort>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let owner = a.pid.map_or_else(|| self.backend.owner(), Owner::Pid);
        let op = Op::Claim(ClaimArgs {
            id: a.id,
            port: a.port,
            fallback: a.fallback,
            expires_ms: a.expires_ms,
            owner,
            ..ClaimArgs::default()
        });
        self.run(&cx, op).await
    }

    #[tool(description = "Release a service's port by id, pattern (myapp:*) or port number.")]
    async fn release_port(
        &self,
        Parameters(a): Parameters<Target>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::Release {
            target: ReleaseTarget::parse(&a.id),
            more: Vec::new(),
        };
        self.run(&cx, op).await
    }

    #[tool(description = "List leased services (ports), optionally matching a pattern.")]
    async fn list_services(
        &self,
        Parameters(a): Parameters<MaybePattern>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::Find { pattern: a.pattern }).await
    }

    #[tool(description = "One service's lease (by id): its port, owner and state.")]
    async fn get_service(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::Get { id: a.id }).await
    }

    #[tool(description = "A service's URL on this machine (http://localhost:PORT), by id.")]
    async fn service_url(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let r = self.run(&cx, Op::Get { id: a.id }).await?;
        Ok(map_structured(r, |lease| {
            let port = lease["port"].as_u64().unwrap_or(0) as u16;
            json!({ "id": lease["id"], "port": port, "url": pb_proto::names::url(port) })
        }))
    }

    #[tool(
        description = "Environment variables for services matching a pattern: MYAPP_API_PORT=3100 ..."
    )]
    async fn service_env(
        &self,
        Parameters(a): Parameters<MaybePattern>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let r = self.run(&cx, Op::Find { pattern: a.pattern }).await?;
        Ok(map_structured(r, |found| {
            let vars: serde_json::Map<String, Value> = found["services"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    let id = l["id"].as_str().unwrap_or_default();
                    (pb_proto::names::env_name(id), l["port"].clone())
                })
                .collect();
            json!({ "env": vars })
        }))
    }

    #[tool(description = "Who holds a TCP port: its lease, and every process with a socket on it.")]
    async fn who_holds_port(
        &self,
        Parameters(a): Parameters<Port>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::Who { port: a.port }).await
    }

    #[tool(
        description = "Every TCP port listening on this machine, whose it is, and which are pb's."
    )]
    async fn list_system_ports(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        self.run(&cx, Op::Listeners { follow: false }).await
    }

    // Locks.

    #[tool(
        description = "Take a lock (fenced: the reply carries a token that rises with each \
        holder). Held by you until released, its TTL, or your exit. With wait_ms, queue for it \
        (first come, first served), with progress reported while queued."
    )]
    async fn acquire_lock(
        &self,
        Parameters(a): Parameters<AcquireLock>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::LockAcquire(LockArgs {
            name: a.name,
            ttl_ms: a.ttl_ms,
            wait_ms: a.wait_ms,
            owner: Some(self.backend.lock_owner()),
            agent: None,
        });
        self.run(&cx, op).await
    }

    #[tool(description = "Release a lock you hold.")]
    async fn release_lock(
        &self,
        Parameters(a): Parameters<Name>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::LockRelease {
            name: a.name,
            owner: Some(self.backend.lock_owner()),
            agent: None,
            force: false,
        };
        self.run(&cx, op).await
    }

    #[tool(description = "Held locks, optionally matching a pattern.")]
    async fn list_locks(
        &self,
        Parameters(a): Parameters<MaybePattern>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::Locks { pattern: a.pattern }).await
    }

    // Messages.

    #[tool(description = "Publish a message on a channel (retained for other agents to read).")]
    async fn publish_message(
        &self,
        Parameters(a): Parameters<Publish>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::Publish {
            channel: a.channel,
            data: a.message,
            agent: None,
        };
        self.run(&cx, op).await
    }

    #[tool(
        description = "Messages retained on a channel or pattern, oldest first; since_id \
        resumes after the last one seen."
    )]
    async fn get_messages(
        &self,
        Parameters(a): Parameters<GetMessages>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::History {
            pattern: a.channel,
            since_id: a.since_id,
            limit: a.limit,
        };
        self.run(&cx, op).await
    }

    #[tool(
        description = "Wait (at most timeout_ms, 60 s at most) for messages on a channel or \
        pattern after since_id: a bounded long-poll, the subscription of an agent."
    )]
    async fn wait_for_messages(
        &self,
        Parameters(a): Parameters<WaitMessages>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let timeout = a.timeout_ms.unwrap_or(MAX_MESSAGE_WAIT_MS);
        if !(0..=MAX_MESSAGE_WAIT_MS).contains(&timeout) {
            return Ok(tool_error(
                ErrorCode::InvalidDuration,
                format!("timeout_ms {timeout} is out of range (0 to {MAX_MESSAGE_WAIT_MS})"),
                None,
            ));
        }
        let until = Instant::now() + Duration::from_millis(timeout as u64);
        loop {
            let op = Op::History {
                pattern: a.channel.clone(),
                since_id: a.since_id,
                limit: None,
            };
            let r = self.run(&cx, op).await?;
            let empty = r.is_error != Some(true)
                && r.structured_content
                    .as_ref()
                    .and_then(|v| v["messages"].as_array())
                    .is_some_and(Vec::is_empty);
            if !empty || Instant::now() >= until || cx.ct.is_cancelled() {
                return Ok(r);
            }
            tokio::select! {
                _ = tokio::time::sleep(MESSAGE_POLL) => {}
                _ = cx.ct.cancelled() => {}
            }
        }
    }

    #[tool(description = "Channels with retained messages.")]
    async fn list_channels(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        self.run(&cx, Op::Channels).await
    }

    #[tool(description = "Forget a channel's retained messages.")]
    async fn clear_channel(
        &self,
        Parameters(a): Parameters<Channel>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::ClearChannel { channel: a.channel }).await
    }

    // Agents.

    #[tool(
        description = "Register an agent (by id), living and dying with you: when you exit, \
        its services, locks and sessions end or are abandoned."
    )]
    async fn register_agent(
        &self,
        Parameters(a): Parameters<RegisterAgent>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::AgentRegister(AgentArgs {
            id: a.id,
            name: a.name,
            kind: a.kind,
            max_services: a.max_services,
            max_locks: a.max_locks,
            owner: self.backend.owner(),
            metadata: None,
        });
        self.run(&cx, op).await
    }

    #[tool(description = "Keep an agent from going stale (by id).")]
    async fn agent_heartbeat(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::AgentHeartbeat { id: a.id }).await
    }

    #[tool(description = "Remove an agent (by id), releasing its services and locks.")]
    async fn unregister_agent(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::AgentUnregister { id: a.id }).await
    }

    #[tool(description = "One agent (by id): its process, services and locks.")]
    async fn get_agent(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::AgentInfo { id: a.id }).await
    }

    #[tool(description = "Registered agents.")]
    async fn list_agents(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        self.run(&cx, Op::Agents).await
    }

    #[tool(description = "Wait until each service is leased and accepts connections.")]
    async fn wait_for_service(
        &self,
        Parameters(a): Parameters<WaitFor>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::Wait {
            ids: a.ids,
            timeout_ms: a.timeout_ms.unwrap_or(pb_proto::DEFAULT_WAIT_MS),
            http_path: a.http_path,
        };
        self.run(&cx, op).await
    }

    #[tool(description = "The activity log: who claimed, released, locked, published what, when.")]
    async fn activity_log(
        &self,
        Parameters(a): Parameters<ActivityQuery>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::Activity(ActivityArgs {
            action: a.action,
            target: a.target,
            since_ms: a.since_ms,
            limit: a.limit,
            ..ActivityArgs::default()
        });
        self.run(&cx, op).await
    }

    #[tool(description = "The broker: version, pid, counts.")]
    async fn daemon_status(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        self.run(&cx, Op::Status).await
    }

    #[tool(description = "The broker's version and protocol.")]
    async fn get_version(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        let r = self.run(&cx, Op::Status).await?;
        Ok(map_structured(
            r,
            |s| json!({ "version": s["version"], "protocol": s["protocol"] }),
        ))
    }

    #[tool(
        description = "Who you are to the broker, as the kernel says: your pid, uid and command, \
        and your registered agent if there is one. What you claim and lock is this process's."
    )]
    async fn whoami(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        let mut me = match self.backend.whoami(&cx.extensions).await {
            Ok(v) => v,
            Err(e) => return Ok(tool_error(e.code, e.message, e.details)),
        };
        // The registered agent that lives and dies with this process.
        let agents = self.run(&cx, Op::Agents).await?;
        let agent = agents
            .structured_content
            .as_ref()
            .and_then(|v| v["agents"].as_array().cloned())
            .into_iter()
            .flatten()
            .find(|a| !a["pid"].is_null() && a["pid"] == me["pid"]);
        me["agent"] = agent.map_or(Value::Null, |a| a["id"].clone());
        Ok(CallToolResult::structured(me))
    }

    // Webhooks.

    #[tool(
        description = "Add a webhook: signed HTTP deliveries of the broker's events. The reply \
        carries its secret, shown only here."
    )]
    async fn webhook_add(
        &self,
        Parameters(a): Parameters<WebhookAdd>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::WebhookAdd(WebhookArgs {
            url: a.url,
            events: a.events,
            filter: a.filter,
            ..WebhookArgs::default()
        });
        self.run(&cx, op).await
    }

    #[tool(description = "Every webhook (without secrets).")]
    async fn webhook_list(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        self.run(&cx, Op::Webhooks).await
    }

    #[tool(description = "One webhook, by id.")]
    async fn webhook_get(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::WebhookGet { id: a.id }).await
    }

    #[tool(description = "Change a webhook's URL, events, filter or whether it is active.")]
    async fn webhook_update(
        &self,
        Parameters(a): Parameters<WebhookUpdate>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::WebhookUpdate(WebhookUpdateArgs {
            id: a.id,
            url: a.url,
            events: a.events,
            filter: a.filter,
            active: a.active,
            ..WebhookUpdateArgs::default()
        });
        self.run(&cx, op).await
    }

    #[tool(description = "Remove a webhook (by id) with its queued deliveries.")]
    async fn webhook_delete(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::WebhookDelete { id: a.id }).await
    }

    #[tool(description = "Send a test delivery to a webhook (by id).")]
    async fn webhook_test(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::WebhookTest { id: a.id }).await
    }

    #[tool(description = "A webhook's newest deliveries (by id), with every attempt.")]
    async fn webhook_deliveries(
        &self,
        Parameters(a): Parameters<Id>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::WebhookDeliveries {
            id: a.id,
            limit: None,
        };
        self.run(&cx, op).await
    }

    #[tool(description = "The event kinds a webhook can subscribe to.")]
    async fn webhook_events(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        self.run(&cx, Op::WebhookEvents).await
    }

    // Work sessions.

    #[tool(
        description = "Begin a work session: a purpose, a phase, notes, and claims on files of \
        your project, so that other agents see what you work on. Call at start; end it with \
        end_session_full. If you exit first, it is abandoned and another agent may take it over."
    )]
    async fn begin_session(
        &self,
        Parameters(a): Parameters<BeginSession>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let owner = a.agent.is_none().then(|| self.backend.lock_owner());
        let op = Op::SessionBegin(SessionArgs {
            purpose: a.purpose,
            dir: a.dir.map(|d| self.path(d)).or(self.backend.project_dir()),
            phase: a.phase,
            owner,
            agent: a.agent,
            note: a.note,
            files: a.files,
        });
        self.run(&cx, op).await
    }

    #[tool(
        description = "End a work session: its file claims are released; `note` is its last \
        note (what was done, what is left for whoever comes next)."
    )]
    async fn end_session_full(
        &self,
        Parameters(a): Parameters<EndSession>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::SessionEnd {
            id: a.session,
            note: a.note,
            agent: None,
        };
        self.run(&cx, op).await
    }

    #[tool(description = "Set a session's phase (planning, implementing, testing, ...).")]
    async fn set_session_phase(
        &self,
        Parameters(a): Parameters<SessionPhase>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::SessionPhase {
            id: a.session,
            phase: a.phase,
        };
        self.run(&cx, op).await
    }

    #[tool(
        description = "Take over an abandoned session (its agent is gone), with its notes and \
        file claims: read its notes to go on where it stopped."
    )]
    async fn takeover_session(
        &self,
        Parameters(a): Parameters<Takeover>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let owner = a.agent.is_none().then(|| self.backend.lock_owner());
        let op = Op::SessionTakeover {
            id: a.session,
            owner,
            agent: a.agent,
        };
        self.run(&cx, op).await
    }

    #[tool(
        description = "Work sessions of your user: live (default), active, abandoned, ended or all."
    )]
    async fn list_sessions(
        &self,
        Parameters(a): Parameters<ListSessions>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::Sessions { state: a.state }).await
    }

    #[tool(description = "One work session: purpose, phase, state, owner, file claims.")]
    async fn get_session(
        &self,
        Parameters(a): Parameters<Session>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        self.run(&cx, Op::SessionGet { id: a.session }).await
    }

    #[tool(description = "Add a note to your session (notes are immutable and kept in order).")]
    async fn add_note(
        &self,
        Parameters(a): Parameters<AddNote>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::NoteAdd {
            session: a.session,
            text: a.text,
            agent: None,
        };
        self.run(&cx, op).await
    }

    #[tool(description = "A session's notes, oldest first.")]
    async fn list_notes(
        &self,
        Parameters(a): Parameters<ListNotes>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::Notes {
            session: a.session,
            after: a.after,
            limit: None,
        };
        self.run(&cx, op).await
    }

    #[tool(
        description = "Claim files for your session (advisory): paths or globs within its \
        project. All are claimed, or none when another session claims any of them; the error \
        then lists who holds what."
    )]
    async fn claim_files(
        &self,
        Parameters(a): Parameters<ClaimFiles>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::FilesClaim {
            session: a.session,
            paths: a.paths,
        };
        self.run(&cx, op).await
    }

    #[tool(description = "Release file claims of your session (all of them when none is named).")]
    async fn release_files(
        &self,
        Parameters(a): Parameters<ReleaseFiles>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::FilesRelease {
            session: a.session,
            paths: a.paths,
        };
        self.run(&cx, op).await
    }

    #[tool(description = "Which sessions claim a file (or anything under a directory).")]
    async fn who_owns_file(
        &self,
        Parameters(a): Parameters<FilePath>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::FilesWho {
            path: self.path(a.path),
        };
        self.run(&cx, op).await
    }

    // Stacks (`pb up`).

    #[tool(
        description = "Bring a stack up from its pb.toml, .portdaddyrc or Procfile, detached, as \
        `pb up -d`: every port claimed first, each service started when what it needs is ready. \
        Answers once it is up, with each service's state and port."
    )]
    async fn stack_up(&self, Parameters(at): Parameters<StackAt>) -> ToolResult {
        Ok(answer(self.backend.stack(StackVerb::Up, at).await))
    }

    #[tool(description = "Stop a stack brought up detached, as `pb down`.")]
    async fn stack_down(&self, Parameters(at): Parameters<StackAt>) -> ToolResult {
        Ok(answer(self.backend.stack(StackVerb::Down, at).await))
    }

    #[tool(description = "Running stacks (pb up): each service's state, pid, port and restarts.")]
    async fn list_stacks(&self, cx: RequestContext<RoleServer>) -> ToolResult {
        self.run(&cx, Op::Stacks).await
    }

    #[tool(
        description = "Restart one service of a running stack; its socket is kept, so requests \
        sent meanwhile are answered by the new process."
    )]
    async fn restart_service(
        &self,
        Parameters(a): Parameters<StackService>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::StackRestart {
            stack: a.stack,
            service: a.service,
        };
        self.run(&cx, op).await
    }

    #[tool(description = "A running stack's output, by service, oldest first.")]
    async fn stack_logs(
        &self,
        Parameters(a): Parameters<StackLogs>,
        cx: RequestContext<RoleServer>,
    ) -> ToolResult {
        let op = Op::History {
            pattern: format!("pb:log:{}:{}", a.stack, a.service.as_deref().unwrap_or("*")),
            since_id: a.since_id,
            limit: a.limit,
        };
        self.run(&cx, op).await
    }

    #[tool(
        description = "Every tool this server has, with what each does (the default list shows \
        only the essential ones; all of them can be called)."
    )]
    async fn pd_discover(&self) -> ToolResult {
        let tools: Vec<Value> = self
            .router
            .list_all()
            .into_iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "essential": ESSENTIAL.contains(&t.name.as_ref()),
                    "input_schema": t.input_schema,
                })
            })
            .collect();
        Ok(CallToolResult::structured(json!({ "tools": tools })))
    }
}

/// The resources: the broker's state to read, each one `Op` (`pb://...`).
const RESOURCES: &[(&str, &str, &str)] = &[
    ("pb://status", "status", "The broker: version, pid, counts."),
    ("pb://services", "services", "Every leased service (port)."),
    ("pb://locks", "locks", "Held locks, with their waiters."),
    ("pb://agents", "agents", "Registered agents."),
    (
        "pb://sessions",
        "sessions",
        "Live work sessions of your user.",
    ),
    ("pb://stacks", "stacks", "Running stacks (pb up)."),
    (
        "pb://channels",
        "channels",
        "Channels with retained messages.",
    ),
];

const RESOURCE_TEMPLATES: &[(&str, &str, &str)] = &[
    ("pb://services/{id}", "service", "One service's lease."),
    ("pb://sessions/{id}", "session", "One work session."),
    (
        "pb://sessions/{id}/notes",
        "notes",
        "A work session's notes, oldest first.",
    ),
    (
        "pb://messages/{channel}",
        "messages",
        "A channel's (or pattern's) retained messages.",
    ),
];

/// The `Op` that reads resource `uri`.
fn resource_op(uri: &str) -> Option<Op> {
    let path = uri.strip_prefix("pb://")?;
    let parts: Vec<&str> = path.split('/').collect();
    Some(match parts[..] {
        ["status"] => Op::Status,
        ["services"] => Op::Find { pattern: None },
        ["locks"] => Op::Locks { pattern: None },
        ["agents"] => Op::Agents,
        ["sessions"] => Op::Sessions { state: None },
        ["stacks"] => Op::Stacks,
        ["channels"] => Op::Channels,
        ["services", id] => Op::Get { id: id.into() },
        ["sessions", id] => Op::SessionGet { id: id.into() },
        ["sessions", id, "notes"] => Op::Notes {
            session: id.into(),
            after: None,
            limit: None,
        },
        ["messages", channel] => Op::History {
            pattern: channel.into(),
            since_id: None,
            limit: None,
        },
        _ => return None,
    })
}

/// A successful structured result made into another shape; errors pass.
fn map_structured(r: CallToolResult, f: impl FnOnce(&Value) -> Value) -> CallToolResult {
    match (&r.is_error, &r.structured_content) {
        (Some(true), _) | (_, None) => r,
        (_, Some(v)) => CallToolResult::structured(f(v)),
    }
}

impl ServerHandler for PbTools {
    fn get_info(&self) -> ServerInfo {
        let mut me = Implementation::from_build_env();
        me.name = "pb".into();
        me.version = env!("CARGO_PKG_VERSION").into();
        ServerInfo::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .build(),
        )
            .with_server_info(me)
            .with_instructions(
                "pb is a kernel-aware port broker. Claim ports with claim_port (the broker binds them, \
                 so nobody else can take them), coordinate with acquire_lock/release_lock and \
                 publish_message/get_messages. At start, begin_session with your purpose and \
                 claim_files for what you will edit; at the end, end_session_full with a note. \
                 What you claim and lock is freed when you exit. pd_discover lists every tool.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let tools = self
            .router
            .list_all()
            .into_iter()
            .filter(|t| self.all || ESSENTIAL.contains(&t.name.as_ref()))
            .collect();
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let resources = RESOURCES
            .iter()
            .map(|(uri, name, about)| {
                RawResource::new(*uri, *name)
                    .with_description(*about)
                    .with_mime_type("application/json")
                    .no_annotation()
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _cx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let templates = RESOURCE_TEMPLATES
            .iter()
            .map(|(uri, name, about)| {
                RawResourceTemplate::new(*uri, *name)
                    .with_description(*about)
                    .with_mime_type("application/json")
                    .no_annotation()
            })
            .collect();
        Ok(ListResourceTemplatesResult::with_all_items(templates))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResult, ErrorData> {
        let uri = request.uri;
        let Some(op) = resource_op(&uri) else {
            return Err(ErrorData::resource_not_found(
                format!("no resource {uri}: resources/list and resources/templates/list name them"),
                Some(json!({ "code": ErrorCode::NotFound.name() })),
            ));
        };
        match self.backend.call(op, &cx).await {
            Ok(v) => Ok(ReadResourceResult::new(vec![ResourceContents::text(
                v.to_string(),
                uri,
            )
            .with_mime_type("application/json")])),
            Err(e) => {
                let data = Some(json!({ "code": e.code.name(), "error": e.message }));
                Err(if e.code == ErrorCode::NotFound {
                    ErrorData::resource_not_found(e.message, data)
                } else {
                    ErrorData::invalid_params(e.message, data)
                })
            }
        }
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.router.get(name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        cx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        if !self.router.has_route(&request.name) {
            return Err(ErrorData::invalid_params(
                format!("no tool {}: pd_discover lists every tool", request.name),
                Some(json!({ "code": ErrorCode::InvalidRequest.name() })),
            ));
        }
        let size = serde_json::to_vec(&request.arguments).map_or(0, |v| v.len());
        if size > pb_proto::MAX_REQUEST {
            return Ok(tool_error(
                ErrorCode::TooLarge,
                format!(
                    "the arguments are {size} bytes; at most {} are taken",
                    pb_proto::MAX_REQUEST
                ),
                None,
            ));
        }
        let r = self
            .router
            .call(ToolCallContext::new(self, request, cx))
            .await?;
        // rmcp answers arguments that fail the schema with a text error:
        // pb's answer carries its code.
        if r.is_error == Some(true) && r.structured_content.is_none() {
            let text: Vec<String> = r
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                .collect();
            return Ok(tool_error(ErrorCode::InvalidRequest, text.join(" "), None));
        }
        Ok(r)
    }
}
