//! The typed requests (one `Op` per operation) and replies of protocol
//! version 1. The broker applies an `Op`; every transport only translates
//! bytes to and from these types.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::coord::{ActivityArgs, AgentArgs, LockArgs, LockOwnerArg};
use crate::error::{ErrorCode, WireError};
use crate::webhook::{WebhookArgs, WebhookUpdateArgs};
use crate::PROTOCOL_VERSION;

/// One operation. On the wire, a JSON object whose `op` names the variant,
/// with the variant's fields beside it (plus `v` and `tag`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// The broker's own state: version, pid, counts, paths.
    Status,
    /// The broker's Prometheus metrics, as the text `GET /metrics` serves.
    Metrics,
    Claim(ClaimArgs),
    /// Claims every one of `claims`, or (if one fails) none: a stack's
    /// ports in one step (`pb up`). No descriptors travel with the reply;
    /// a claim of each id again hands them over.
    ClaimMany {
        claims: Vec<ClaimArgs>,
    },
    /// Releases the leases `target` names, and those each of `more` names:
    /// all of them, or (if any target is bad) none.
    Release {
        target: ReleaseTarget,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        more: Vec<ReleaseTarget>,
    },
    /// Leases whose id matches `pattern` (all when absent).
    Find {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    /// One lease by id.
    Get {
        id: String,
    },
    /// Renews a lease's expiry: by `ttl_ms` if given, else by the TTL it was
    /// claimed with. The lease is named by `id` or by `port` (exactly one).
    Heartbeat {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<i64>,
    },
    /// Who holds `port`: its lease, if any, and the processes with a socket
    /// on it.
    Who {
        port: i64,
    },
    /// Every listening TCP socket on the machine, brokered or not. With
    /// `follow`, the reply stays open and each new reading that differs
    /// from the last follows as an item (the same shape, with its
    /// `generation`).
    Listeners {
        #[serde(default)]
        follow: bool,
    },
    /// A one-time code (and URL) with which a browser logs in to the
    /// broker's HTTP API (`pb dashboard`).
    LoginCode,
    /// Exchanges a one-time login code for a session (HTTP `/login`).
    Login {
        code: String,
    },
    /// Stops the broker after replying.
    Shutdown,

    // Coordination (proto/src/coord.rs has the argument and reply types).
    /// Takes a lock, or waits for it in FIFO order (`wait_ms`).
    LockAcquire(LockArgs),
    /// Lets a lock go: only its owner may, or with `force` any process of
    /// the holder's user.
    LockRelease {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<LockOwnerArg>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
        #[serde(default)]
        force: bool,
    },
    /// Renews a held lock's TTL (by `ttl_ms`, else its own), for its owner.
    LockExtend {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<LockOwnerArg>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// Held locks whose name matches `pattern` (all when absent).
    Locks {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pattern: Option<String>,
    },
    LockInfo {
        name: String,
    },
    Publish {
        channel: String,
        data: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// A stream: the retained messages after `since_id` (when given), then
    /// every new message on a channel matching one of `patterns`.
    Subscribe {
        patterns: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_id: Option<u64>,
    },
    /// Retained messages on channels matching `pattern`, oldest first.
    History {
        pattern: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since_id: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
    },
    Channels,
    /// Forgets a channel's retained messages.
    ClearChannel {
        channel: String,
    },
    AgentRegister(AgentArgs),
    AgentHeartbeat {
        id: String,
    },
    /// Removes an agent, releasing its services and locks.
    AgentUnregister {
        id: String,
    },
    Agents,
    AgentInfo {
        id: String,
    },
    /// Returns when every service in `ids` is leased and accepts TCP
    /// connections (and, with `http_path`, answers it with 2xx/3xx).
    Wait {
        ids: Vec<String>,
        timeout_ms: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        http_path: Option<String>,
    },
    /// The activity log, filtered; with `follow`, a stream.
    Activity(ActivityArgs),

    // Stacks (proto/src/stack.rs).
    /// A stack's supervisor reports its state, and what happened if
    /// `event`: the stack is this connection's until it closes.
    StackReport {
        stack: crate::StackInfo,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        event: Option<crate::StackEvent>,
    },
    /// Every stack of the caller's user.
    Stacks,
    /// Asks a stack's supervisor to restart one service (its socket kept).
    StackRestart {
        stack: String,
        service: String,
    },
    /// A stack's output, from its supervisor: each line is posted on
    /// pub/sub channel `pb:log:STACK:SERVICE` (retained as messages are).
    StackLog {
        stack: String,
        lines: Vec<crate::StackLogLine>,
    },

    // Webhooks (proto/src/webhook.rs has the argument and reply types).
    /// Registers a webhook; the reply carries its secret, shown only here.
    WebhookAdd(WebhookArgs),
    /// Every webhook, without secrets.
    Webhooks,
    WebhookGet {
        id: String,
    },
    WebhookUpdate(WebhookUpdateArgs),
    /// Removes a webhook and its queued deliveries and log.
    WebhookDelete {
        id: String,
    },
    /// Queues a `webhook.test` delivery to this webhook alone.
    WebhookTest {
        id: String,
    },
    /// The webhook's newest deliveries, with every attempt.
    WebhookDeliveries {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
    },
    /// The event kinds a webhook can subscribe to.
    WebhookEvents,

    // Work sessions (proto/src/work.rs): notes and file claims.
    SessionBegin(crate::SessionArgs),
    /// Ends a session (active or abandoned) and releases its file claims;
    /// `note` is its last note.
    SessionEnd {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    SessionPhase {
        id: String,
        phase: String,
    },
    /// Takes over an abandoned session, its notes and claims (Port
    /// Daddy's salvage); the owner as for `session_begin`.
    SessionTakeover {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<LockOwnerArg>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// The caller's user's sessions: `live` (the default), `active`,
    /// `abandoned`, `ended` or `all`.
    Sessions {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        state: Option<String>,
    },
    SessionGet {
        id: String,
    },
    /// Adds an immutable note to an active session.
    NoteAdd {
        session: String,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<String>,
    },
    /// A session's notes after number `after`, oldest first.
    Notes {
        session: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<i64>,
    },
    /// Claims paths or globs within the session's project: all, or (on a
    /// conflict with another live session) none, with `held`.
    FilesClaim {
        session: String,
        paths: Vec<String>,
    },
    /// Releases the named claims, or all of them when `paths` is empty.
    FilesRelease {
        session: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        paths: Vec<String>,
    },
    /// The live claims that cover an absolute path.
    FilesWho {
        path: String,
    },
}

/// What a release names: the lease on a port, or leases by id or by
/// pattern (`*` segments; the broker tells the two apart). On the wire a
/// number is a port, and so is a string of digits (`pb release 3100`);
/// any other string is an id or a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TargetText", into = "TargetText")]
pub enum ReleaseTarget {
    /// Checked by the broker as a port number.
    Port(i64),
    /// An id or a pattern.
    Name(String),
}

impl ReleaseTarget {
    /// A target as a person types it: digits are a port.
    pub fn parse(text: &str) -> ReleaseTarget {
        let t = text.trim();
        match t.parse::<i64>() {
            Ok(port) if t.bytes().all(|b| b.is_ascii_digit()) => ReleaseTarget::Port(port),
            _ => ReleaseTarget::Name(text.to_string()),
        }
    }
}

impl From<&str> for ReleaseTarget {
    fn from(text: &str) -> ReleaseTarget {
        ReleaseTarget::parse(text)
    }
}

impl From<String> for ReleaseTarget {
    fn from(text: String) -> ReleaseTarget {
        ReleaseTarget::parse(&text)
    }
}

impl std::fmt::Display for ReleaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReleaseTarget::Port(p) => write!(f, "{p}"),
            ReleaseTarget::Name(n) => f.write_str(n),
        }
    }
}

/// A release target's wire form.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum TargetText {
    Number(i64),
    Text(String),
}

impl From<TargetText> for ReleaseTarget {
    fn from(t: TargetText) -> ReleaseTarget {
        match t {
            TargetText::Number(p) => ReleaseTarget::Port(p),
            TargetText::Text(s) => ReleaseTarget::parse(&s),
        }
    }
}

impl From<ReleaseTarget> for TargetText {
    fn from(t: ReleaseTarget) -> TargetText {
        match t {
            ReleaseTarget::Port(p) => TargetText::Number(p),
            ReleaseTarget::Name(n) => TargetText::Text(n),
        }
    }
}

/// Who owns a lease: whose death ends it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Owner {
    /// Nobody: the lease lives until released or expired.
    #[default]
    None,
    /// The process on the other end of this connection.
    Caller,
    /// Another process of the caller's user.
    Pid(u32),
    /// A pid the client names as it is told (Port Daddy's X-PID or `pid`):
    /// the caller's own pid means `None` (a client asking for a port, as
    /// `pb claim` does, is not its owner), any other is `Pid`.
    Hint(i64),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimArgs {
    pub id: String,
    /// A specific port. Numbers are validated by the broker, so any JSON
    /// integer is accepted here and a bad one gets `invalid_port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i64>,
    /// Allocate from `[start, end]` (inclusive) instead of the broker's range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(i64, i64)>,
    /// The lease ends this many milliseconds from now unless renewed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<i64>,
    /// Attach the listening sockets to the reply (SCM_RIGHTS).
    #[serde(default)]
    pub fds: bool,
    /// Release the lease when this connection closes.
    #[serde(default)]
    pub session: bool,
    /// If `port` is taken, allocate from the range instead of failing.
    #[serde(default)]
    pub fallback: bool,
    #[serde(default)]
    pub owner: Owner,
    /// Free-form JSON object kept with the lease (at most 4 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
    /// With `fds`: hand over only this family's listener, and have the
    /// broker relay connections that reach the lease's other loopback
    /// address to it. For a client that can serve one socket only (the
    /// preload shim swapping an app's own socket), so that `localhost:P`
    /// still answers in both families.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<IpFamily>,
    /// The agent claiming: its `max_services` applies, and the lease ends
    /// when the agent goes stale or dies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// For a lease with no owner: a process of the caller's (the shell that
    /// ran the claim) whose exit ends the lease unless an app has adopted
    /// it by then, so that a claim nobody used is not reserved forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimant: Option<u32>,
    /// Reserve the number only: the broker checks that the port is free in
    /// both families, then holds no socket on it, so that its owner can
    /// bind it without SO_REUSEADDR (portpicker's portserver). Needs an
    /// owner; excludes `fds`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub number_only: bool,
    /// Extra names the proxy routes to this lease, beside the one derived
    /// from its id (`docs` or `docs.myapp.localhost`; at most 8).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// An address family of the lease's loopback sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpFamily {
    /// 127.0.0.1
    V4,
    /// ::1
    V6,
}

/// A lease as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: String,
    pub port: u16,
    pub uid: u32,
    /// The owning process, if any.
    pub pid: Option<u32>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub ttl_ms: Option<u64>,
    /// The broker holds sockets on the port (placeholders or listeners).
    pub held: bool,
    /// Only the number is reserved (a `number_only` claim): the broker
    /// holds no socket on the port, its owner binds it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub number_only: bool,
    /// The broker's sockets listen (they were handed to a client).
    pub listening: bool,
    /// The lease ends when the connection that claimed it closes.
    pub session: bool,
    pub metadata: Option<Value>,
    /// Whether a process other than the broker serves the port, as of the
    /// broker's last scan (null before the first, within seconds of a claim).
    #[serde(default)]
    pub served: Option<bool>,
    /// The owning process's command line.
    #[serde(default)]
    pub command: Option<String>,
    /// The agent that claimed it, if any.
    #[serde(default)]
    pub agent: Option<String>,
    /// The stack (`pb up`) whose service it is, in listings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// The process (the shell that ran `pb claim`) whose exit ends this
    /// number-only lease while no app has adopted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimant: Option<u32>,
    /// The host names the proxy routes to this lease (`api.myapp.localhost`
    /// and its aliases), whether or not the proxy runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// The lease's named URL through the proxy (`http://api.myapp.localhost:2080`),
    /// when the proxy runs and the lease has a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimReply {
    pub lease: LeaseInfo,
    /// The id was already claimed; this is that lease.
    pub existing: bool,
    /// The addresses of the attached descriptors, in order.
    pub fds: Vec<String>,
}

/// What `claim_many` claimed, in the order asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimManyReply {
    pub claims: Vec<ClaimReply>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseReply {
    pub released: Vec<LeaseInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FindReply {
    pub services: Vec<LeaseInfo>,
}

/// A process holding a socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub uid: u32,
    pub command: String,
    /// When the process started, in ms since the epoch.
    pub since_ms: Option<u64>,
}

/// A listening socket on the machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerInfo {
    pub port: u16,
    /// The local address, e.g. `0.0.0.0:3000` or `[::1]:3100`.
    pub addr: String,
    /// The uid that created the socket.
    pub uid: u32,
    /// The processes that hold it (those the broker may inspect).
    pub holders: Vec<Holder>,
    /// The service id, when the port is leased from this broker.
    pub service: Option<String>,
    /// The socket is the broker's own (a lease handed to a client).
    pub brokered: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhoReply {
    pub port: u16,
    /// The lease on the port, if any.
    pub service: Option<LeaseInfo>,
    /// Listening sockets on the port, each with its holders.
    pub listeners: Vec<ListenerInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenersReply {
    pub listeners: Vec<ListenerInfo>,
    /// With `follow`: which reading this is (only grows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
}

/// `shutdown`'s answer: the broker stops once it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShutdownReply {
    pub stopping: bool,
}

/// A scrape: the metrics in the OpenMetrics text format (docs/HTTP.md,
/// "Metrics"), ending in `# EOF`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReply {
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub uptime_ms: u64,
    pub leases: usize,
    pub connections: usize,
    pub socket: String,
    pub database: String,
    pub range: (u16, u16),
    pub reserved: Vec<u16>,
    /// The HTTP API's base URL, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Why the HTTP API is not running (its port held by another process,
    /// say), when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_off: Option<String>,
    /// The named-URL proxy, when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyStatus>,
    /// Why the proxy is not running, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_off: Option<String>,
    /// The Unix socket the HTTP API is also served on (PORT_DADDY_SOCK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_socket: Option<String>,
    /// Why the API is not served on PORT_DADDY_SOCK, when it is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_socket_off: Option<String>,
    /// How the broker was started (absent from brokers before it was
    /// reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_by: Option<StartedBy>,
}

/// How a broker was started, for `status`: whether anything supervises it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartedBy {
    /// systemd, on a connection to the sockets it holds (`pb install`).
    SocketActivation,
    /// systemd (or another service manager that sets INVOCATION_ID),
    /// without sockets of its own.
    ServiceManager,
    /// A client, on first use (it starts itself in the background).
    Client,
    /// `pb daemon` run by hand, in the foreground.
    Foreground,
}

impl StartedBy {
    /// Words for `pb status`.
    pub fn describe(self) -> &'static str {
        match self {
            StartedBy::SocketActivation => "systemd, socket-activated (pb install)",
            StartedBy::ServiceManager => "a service manager",
            StartedBy::Client => "a client, on first use",
            StartedBy::Foreground => "pb daemon, in the foreground",
        }
    }
}

/// Where the proxy listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStatus {
    /// The port of `http://NAME.localhost:PORT` (80 needs no port in URLs).
    pub http_port: u16,
    /// The port of `https://NAME.localhost:PORT` (the same port as HTTP
    /// unless socket activation gave the proxy 443).
    pub https_port: u16,
    /// The local CA's certificate (PEM), for `curl --cacert` and `pb trust`.
    pub ca: String,
}

impl ProxyStatus {
    /// `scheme://host[:port]`, without the port where it is the scheme's.
    pub fn url(&self, host: &str, https: bool) -> String {
        let (scheme, port, default) = if https {
            ("https", self.https_port, 443)
        } else {
            ("http", self.http_port, 80)
        };
        if port == default {
            format!("{scheme}://{host}")
        } else {
            format!("{scheme}://{host}:{port}")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginCodeReply {
    /// The URL to open: the HTTP API's `/login?code=...`.
    pub url: String,
    pub code: String,
    /// When the code stops working (ms since the epoch).
    pub expires_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginReply {
    /// The session secret (the HTTP API sets it as a cookie).
    pub session: String,
    pub expires_ms: u64,
}

/// A request frame as it is written: the op's own fields beside `v` and
/// `tag`.
#[derive(Serialize, Deserialize)]
struct Envelope<O> {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tag: Option<u64>,
    #[serde(flatten)]
    op: O,
}

/// A request frame's payload, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub tag: Option<u64>,
    pub op: Op,
}

impl Request {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            tag: self.tag,
            op: &self.op,
        })
        .expect("ops serialize")
    }

    /// Decodes a payload. On error, also returns whatever tag could be read,
    /// so the error reply can still be matched to its request.
    pub fn from_json(bytes: &[u8]) -> Result<Request, (Option<u64>, WireError)> {
        // Straight into the types: no `Value` tree, which was a tenth of
        // the broker's time under load. Whatever this path does not take
        // (a wrong version, a stray field, any error) is decided by the
        // general one below, so both accept and refuse the same payloads.
        match serde_json::from_slice::<Envelope<Op>>(bytes) {
            Ok(e) if e.v == PROTOCOL_VERSION => Ok(Request {
                tag: e.tag,
                op: e.op,
            }),
            _ => Self::from_json_value(bytes),
        }
    }

    fn from_json_value(bytes: &[u8]) -> Result<Request, (Option<u64>, WireError)> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            (
                None,
                WireError::new(ErrorCode::InvalidFrame, format!("payload is not JSON: {e}")),
            )
        })?;
        let Value::Object(mut obj) = value else {
            return Err((
                None,
                WireError::new(ErrorCode::InvalidFrame, "payload is not a JSON object"),
            ));
        };
        let tag = obj.get("tag").and_then(Value::as_u64);
        let version = obj.remove("v");
        obj.remove("tag");
        match version.as_ref().and_then(Value::as_u64) {
            Some(v) if v == PROTOCOL_VERSION as u64 => {}
            Some(v) => {
                return Err((
                    tag,
                    WireError::new(
                        ErrorCode::UnsupportedVersion,
                        format!("protocol version {v} is not supported; this broker speaks {PROTOCOL_VERSION}"),
                    ),
                ))
            }
            None => {
                return Err((
                    tag,
                    WireError::new(ErrorCode::InvalidRequest, "missing or non-integer \"v\" (protocol version)"),
                ))
            }
        }
        let op = serde_json::from_value(Value::Object(obj)).map_err(|e| {
            (
                tag,
                WireError::new(ErrorCode::InvalidRequest, e.to_string()),
            )
        })?;
        Ok(Request { tag, op })
    }
}

/// A reply frame's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    pub v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u64>,
    pub ok: bool,
    /// Kept as the JSON text it is: the broker writes it from the typed
    /// reply and a client reads it into the type it expects, neither
    /// through a `Value` tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<WireError>,
    /// How many descriptors travel with this frame (SCM_RIGHTS).
    #[serde(default)]
    pub fds: usize,
    /// More frames with this tag follow: the request opened a stream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
    /// One item of a stream (a frame after the first, with `more`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<Box<RawValue>>,
}

impl Reply {
    pub fn ok(tag: Option<u64>, result: Box<RawValue>, fds: usize) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            tag,
            ok: true,
            result: Some(result),
            error: None,
            fds,
            more: false,
            item: None,
        }
    }

    pub fn err(tag: Option<u64>, error: WireError) -> Reply {
        Reply {
            v: PROTOCOL_VERSION,
            tag,
            ok: false,
            result: None,
            error: Some(error),
            fds: 0,
            more: false,
            item: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let req = Request {
            tag: Some(7),
            op: Op::Claim(ClaimArgs {
                id: "myapp:api".into(),
                port: Some(3100),
                fds: true,
                owner: Owner::Pid(42),
                ..Default::default()
            }),
        };
        let bytes = req.to_json();
        assert_eq!(Request::from_json(&bytes).unwrap(), req);
    }

    #[test]
    fn webhook_ops_take_port_daddys_body() {
        let r = Request::from_json(
            br#"{"v":1,"op":"webhook_add","url":"https://x.example/h","events":["service.claim"],"secret":"s"}"#,
        )
        .unwrap();
        assert_eq!(
            r.op,
            Op::WebhookAdd(crate::WebhookArgs {
                url: "https://x.example/h".into(),
                events: vec!["service.claim".into()],
                secret: Some("s".into()),
                filter: None,
            })
        );
        let r = Request::from_json(br#"{"v":1,"op":"webhook_update","id":"wh_1","active":true}"#)
            .unwrap();
        assert_eq!(Request::from_json(&r.to_json()).unwrap(), r);
        let e =
            Request::from_json(br#"{"v":1,"op":"webhook_add","url":"u","evil":1}"#).unwrap_err();
        assert_eq!(e.1.code, ErrorCode::InvalidRequest);
    }

    #[test]
    fn coordination_ops_have_the_documented_shape() {
        use crate::coord::{LockArgs, LockOwnerArg};
        let req = Request::from_json(
            br#"{"v":1,"tag":3,"op":"lock_acquire","name":"db","wait_ms":500,"owner":{"name":"ci"}}"#,
        )
        .unwrap();
        assert_eq!(
            req.op,
            Op::LockAcquire(LockArgs {
                name: "db".into(),
                wait_ms: Some(500),
                owner: Some(LockOwnerArg::Name("ci".into())),
                ..Default::default()
            })
        );
        let req =
            Request::from_json(br#"{"v":1,"op":"subscribe","patterns":["build:*"],"since_id":41}"#)
                .unwrap();
        assert_eq!(
            req.op,
            Op::Subscribe {
                patterns: vec!["build:*".into()],
                since_id: Some(41)
            }
        );
        let req =
            Request::from_json(br#"{"v":1,"op":"lock_release","name":"db","owner":"caller"}"#)
                .unwrap();
        assert!(matches!(
            req.op,
            Op::LockRelease {
                owner: Some(LockOwnerArg::Caller),
                force: false,
                ..
            }
        ));
        let e = Request::from_json(br#"{"v":1,"op":"publish","channel":"c"}"#).unwrap_err();
        assert_eq!(e.1.code, ErrorCode::InvalidRequest, "data is required");
        // A stream item frame as the broker writes it decodes as a Reply.
        let item: Reply = serde_json::from_str(
            r#"{"v":1,"tag":9,"ok":true,"more":true,"item":{"id":42,"channel":"x"}}"#,
        )
        .unwrap();
        assert!(item.more && item.item.is_some() && item.result.is_none());
    }

    #[test]
    fn the_typed_path_decides_every_payload_as_the_general_one_does() {
        let payloads: &[&[u8]] = &[
            br#"{"v":1,"tag":1,"op":"claim","id":"a","fds":true}"#,
            br#"{"op":"claim","id":"a","v":1,"tag":2}"#,
            br#"{"v":1,"op":"claim","id":"a","bogus":1}"#,
            br#"{"v":1,"op":"claim","id":"a","id":"b"}"#,
            br#"{"v":1,"v":1,"op":"status"}"#,
            br#"{"v":1,"op":"status","op":"status"}"#,
            br#"{"v":1,"tag":"7","op":"status"}"#,
            br#"{"v":1,"tag":null,"op":"status"}"#,
            br#"{"v":1,"tag":-3,"op":"status"}"#,
            br#"{"v":1.0,"op":"status"}"#,
            br#"{"v":"1","op":"status"}"#,
            br#"{"v":4294967297,"op":"status"}"#,
            br#"{"v":2,"tag":5,"op":"status"}"#,
            br#"{"v":1,"op":"get","id":"a","bogus":1}"#,
            br#"{"v":1,"op":"claim","id":"a","metadata":{"b":1,"a":[1,2.5,"x",null]}}"#,
            br#"{"v":1,"op":"publish","channel":"c","data":{"z":1,"y":{"x":true}}}"#,
            br#"{"v":1,"op":"release","target":3100,"more":["3101","app:*"]}"#,
            br#"{"v":1,"op":"lock_acquire","name":"db","wait_ms":500,"owner":{"name":"ci"}}"#,
            br#"{"v":1,"op":"launch"}"#,
            br#"{"v":1}"#,
            br#"{"v":1,"op":"claim","id":"a","port":70000}"#,
            br#"{"v":1,"op":"claim","id":"a"}"#,
            b"[1]",
            b"{",
            b"",
        ];
        for p in payloads {
            assert_eq!(
                Request::from_json(p),
                Request::from_json_value(p),
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        let ok = Request::from_json(payloads[1]).unwrap();
        assert_eq!(ok.tag, Some(2));
    }

    #[test]
    fn rejects_unknown_fields_and_versions() {
        let e = Request::from_json(br#"{"v":1,"op":"claim","id":"a","bogus":1}"#).unwrap_err();
        assert_eq!(e.1.code, ErrorCode::InvalidRequest);
        let e = Request::from_json(br#"{"v":1,"op":"get","id":"a","bogus":1}"#).unwrap_err();
        assert_eq!(e.1.code, ErrorCode::InvalidRequest);
        let e = Request::from_json(br#"{"v":2,"tag":5,"op":"status"}"#).unwrap_err();
        assert_eq!(
            e,
            (
                Some(5),
                WireError::new(ErrorCode::UnsupportedVersion, e.1.message.clone())
            )
        );
        let e = Request::from_json(br#"{"op":"status"}"#).unwrap_err();
        assert_eq!(e.1.code, ErrorCode::InvalidRequest);
        let e = Request::from_json(b"[1]").unwrap_err();
        assert_eq!(e.1.code, ErrorCode::InvalidFrame);
        let e = Request::from_json(br#"{"v":1,"op":"launch"}"#).unwrap_err();
        assert_eq!(e.1.code, ErrorCode::InvalidRequest);
    }
}

#[cfg(test)]
mod release_target_tests {
    use super::*;

    #[test]
    fn a_number_or_digits_is_a_port_anything_else_a_name() {
        let op: Op =
            serde_json::from_str(r#"{"op":"release","target":3100,"more":["3101","app:*","web"]}"#)
                .unwrap();
        let Op::Release { target, more } = op else {
            panic!("a release")
        };
        assert_eq!(target, ReleaseTarget::Port(3100));
        assert_eq!(
            more,
            [
                ReleaseTarget::Port(3101),
                ReleaseTarget::Name("app:*".into()),
                ReleaseTarget::Name("web".into()),
            ]
        );
        // Out-of-range numbers reach the broker, which refuses them.
        assert_eq!(ReleaseTarget::parse("99999"), ReleaseTarget::Port(99999));
        assert_eq!(ReleaseTarget::parse("-1"), ReleaseTarget::Name("-1".into()));
        let back = serde_json::to_value(Op::Release {
            target: ReleaseTarget::Port(3100),
            more: vec![ReleaseTarget::Name("app:web".into())],
        })
        .unwrap();
        assert_eq!(back["target"], 3100);
        assert_eq!(back["more"][0], "app:web");
    }
}
