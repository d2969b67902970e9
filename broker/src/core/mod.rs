//! The broker core: the one place that applies every request.
//!
//! Transports (the Unix socket today, HTTP later) decode bytes into an
//! [`Op`], name the [`Caller`] as the kernel identified it, and hand both to
//! [`Core::apply`]. Every rule (validation, ownership, limits, allocation)
//! lives here or in the modules it calls, never in a transport.
//!
//! The core is synchronous and owned behind one mutex: each operation is a
//! few syscalls and one SQLite transaction, far shorter than any lock
//! hand-off a finer scheme would need. Operations that wait (a lock queue)
//! or go on (a subscription) return at once with a `pending` or `stream`
//! part that the transport awaits with the mutex released.
//!
//! Coordination (locks, pub/sub, agents, the activity log) keeps its state
//! in its own modules (`locks`, `pubsub`, `agents`, `activity`), each with
//! an `impl Core` block for its operations; every change is announced once
//! on the event bus (`events`) through `Core::emit`.

pub mod activity;
pub mod agents;
pub mod answer;
pub mod coord;
pub mod events;
pub mod facts;
pub mod jobs;
pub mod locks;
pub mod pubsub;
pub mod stacks;
pub mod stream;
pub mod webhooks;
pub mod work;

#[cfg(test)]
pub(crate) mod tests;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pb_platform::{BindError, BindMode, ExitWatch, LoopbackSockets, ProcessId, SocketPool};
use pb_proto::{
    ClaimArgs, ClaimManyReply, ClaimReply, ErrorCode, FindReply, IpFamily, LeaseInfo,
    LoginCodeReply, LoginReply, Op, Owner, ReleaseReply, ReleaseTarget, ShutdownReply, StatusReply,
    WireError, PROTOCOL_VERSION,
};

use crate::config::Config;
use crate::core::agents::Agents;
pub use crate::core::answer::Answer;
use crate::core::events::{EventBus, EventKind};
use crate::core::facts::{Facts, ProcessFacts};
use crate::core::jobs::{LeaseView, ReaperJob, Verdict};
use crate::core::locks::{Locks, PendingLock};
use crate::core::pubsub::PubSub;
use crate::core::stream::Stream;
use crate::ids::{self, Pattern};
use crate::logins::Logins;
use crate::metrics::{Gauges, Metrics};
use crate::relay::Relay;
use crate::rules;
use crate::store::{LeaseRecord, Store, StoreError};

/// The one core of a running broker, shared by its transports and tasks,
/// and what stands beside it rather than in it: the listener feed, which
/// only `service::inspect` reads and feeds.
pub struct Shared {
    core: std::sync::Mutex<Core>,
    pub(crate) listener_feed: Arc<crate::core::stream::ListenerFeed>,
    /// Told of every answer, to keep the broker awake a moment after it
    /// (`service/awake.rs`).
    pub(crate) answered: tokio::sync::Notify,
}

pub type SharedCore = Arc<Shared>;

impl Shared {
    pub fn new(mut core: Core) -> SharedCore {
        // From now on other requests may be waiting on the core's mutex:
        // its facts are asked before the mutex is taken, never under it.
        core.facts = Facts::default();
        Arc::new(Shared {
            core: std::sync::Mutex::new(core),
            listener_feed: Arc::default(),
            answered: tokio::sync::Notify::new(),
        })
    }
}

/// Takes the core's mutex. Never held across a question to the machine or
/// an await: callers ask first, then apply.
pub fn lock(core: &SharedCore) -> std::sync::MutexGuard<'_, Core> {
    // A panic aborts the broker (daemon.rs) before any unwinding, so the
    // core is never seen poisoned, half-applied, by a later request.
    core.core
        .lock()
        .expect("the core is never poisoned: a panic aborts the broker")
}

/// Who sent a request, as the kernel (not the client) says.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user the request acts as.
    pub uid: u32,
    /// The uid the kernel says made the connection: `uid`, except for an
    /// HTTP caller of another user acting with the broker's token.
    pub peer_uid: u32,
    pub process: Option<ProcessId>,
    /// `process`'s command line, read when its connection was identified
    /// (once per connection), for the activity log and owners' commands.
    pub command: Option<Arc<str>>,
    /// The connection, for leases that end when it closes.
    pub session: Option<SessionId>,
    /// The peer's pidfd, taken from the connection (SO_PEERPIDFD) where the
    /// kernel offers it.
    pub exit_watch: Option<Arc<ExitWatch>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub u64);

/// What applying an operation produced, for the transport to send.
#[derive(Debug)]
pub struct Outcome {
    pub result: Answer,
    /// Sockets whose descriptors go with the reply.
    pub sockets: Option<Handover>,
    /// The broker should stop once this reply is sent.
    pub shutdown: bool,
    /// How to take this outcome back if its reply cannot be delivered.
    pub undo: Option<Undo>,
    /// The request waits (in a lock's queue): the transport awaits this,
    /// without the core's mutex, for the real outcome.
    pub pending: Option<PendingLock>,
    /// More replies follow `result`: the transport sends each item.
    pub stream: Option<Stream>,
}

/// A lease's listeners on their way to a client. Shared with the lease, not
/// duplicated: the transport sends straight from them, and the lease's own
/// sockets stay open at least until the send is done.
#[derive(Debug)]
pub struct Handover {
    sockets: Arc<LoopbackSockets>,
    /// Only this family's socket goes; `None` sends both.
    only: Option<IpFamily>,
}

impl Handover {
    /// Shares `sockets` for a reply, and marks the ones that go as handed,
    /// so the reaper knows which can be held by other processes.
    fn new(sockets: Arc<LoopbackSockets>, only: Option<IpFamily>) -> Handover {
        let handover = Handover { sockets, only };
        let (v4, v6) = handover.families();
        handover.sockets.mark_handed(v4, v6);
        handover
    }

    /// Whether the IPv4 and the IPv6 socket go.
    fn families(&self) -> (bool, bool) {
        let has_v6 = self.sockets.v6.is_some();
        match self.only {
            Some(IpFamily::V6) if has_v6 => (false, true),
            Some(_) => (true, false),
            None => (true, has_v6),
        }
    }

    /// The descriptors to send, IPv4 first.
    pub fn fds(&self) -> Vec<BorrowedFd<'_>> {
        let (v4, v6) = self.families();
        let s = &self.sockets;
        v4.then(|| s.v4.as_fd())
            .into_iter()
            .chain(s.v6.as_ref().filter(|_| v6).map(|fd| fd.as_fd()))
            .collect()
    }
}

/// Takes back what a request did when its reply never reached the client,
/// so that a request that was not acknowledged leaves no trace.
#[derive(Debug)]
pub enum Undo {
    /// A claim: the lease ends, the id's sticky port is restored.
    Claim {
        id: String,
        sticky_before: Option<u16>,
    },
    /// A lock grant: the holding ends (and passes on to the queue).
    Lock { name: String, token: u64 },
    /// Several, taken back last first.
    Batch(Vec<Undo>),
}

impl Outcome {
    pub fn of(reply: impl Into<Answer>) -> Outcome {
        Outcome {
            result: reply.into(),
            sockets: None,
            shutdown: false,
            undo: None,
            pending: None,
            stream: None,
        }
    }
}

/// A port held for an id.
struct Lease {
    record: LeaseRecord,
    /// The reservation in the kernel: `None` only after a restart found the
    /// port held by someone else (its owner, normally).
    sockets: Option<Arc<LoopbackSockets>>,
    session: Option<SessionId>,
    /// The owner was found listening on the port, not named by the claim:
    /// the lease ends when it stops listening.
    adopted: bool,
    /// Whether a process other than the broker serves the port, as of the
    /// reaper's last scan (`None` before the first).
    served: Option<bool>,
    /// The owner's command line, read when it became the owner.
    owner_command: Option<Arc<str>>,
    /// Connections to the family the client does not serve, relayed to the
    /// one it does; stops when the lease ends.
    relay: Option<Relay>,
    /// The reaper closed the broker's copies of the sockets and has yet to
    /// settle the lease (`Core::let_go`).
    letting_go: bool,
    /// When the app that had adopted this number-only lease stopped
    /// listening (it exited, or a reloader is restarting it): the port
    /// stays reserved for the reload grace (PB_RELOAD_GRACE) for the next
    /// process that binds it, then the lease ends.
    orphaned_ms: Option<u64>,
    /// For a lease with no owner: the process whose exit ends it if no app
    /// has adopted it by then (memory only: after a restart the lease waits
    /// for a release, an expiry or an app).
    claimant: Option<ProcessId>,
    /// The proxy's names for it: its derived host (unless a lease that
    /// came first has it), then its aliases.
    hosts: Vec<String>,
}

impl Lease {
    fn new(
        record: LeaseRecord,
        sockets: Option<LoopbackSockets>,
        session: Option<SessionId>,
        owner_command: Option<Arc<str>>,
    ) -> Lease {
        Lease {
            record,
            sockets: sockets.map(Arc::new),
            session,
            adopted: false,
            served: None,
            owner_command,
            relay: None,
            letting_go: false,
            orphaned_ms: None,
            claimant: None,
            hosts: Vec::new(),
        }
    }

    fn owner(&self) -> Option<ProcessId> {
        match (self.record.owner_pid, self.record.owner_start) {
            (Some(pid), Some(start_time)) => Some(ProcessId { pid, start_time }),
            _ => None,
        }
    }

    fn view(&self) -> LeaseView {
        LeaseView {
            id: self.record.id.clone(),
            port: self.record.port,
            owner: self.owner(),
            inodes: self
                .sockets
                .iter()
                .flat_map(|s| s.inodes().iter().copied())
                .collect(),
            handed: self
                .sockets
                .iter()
                .flat_map(|s| s.handed_inodes())
                .collect(),
            adopted: self.adopted,
            listening: self.sockets.as_ref().is_some_and(|s| s.is_listening()),
            session: self.session.is_some(),
            created_ms: self.record.created_ms,
            orphaned_ms: self.orphaned_ms,
            claimant: self.claimant,
            held: self.sockets.is_some(),
            number_only: self.record.number_only,
        }
    }

    /// The lease as clients see it; its named URL when the proxy runs.
    fn info(&self, proxy: Option<&pb_proto::ProxyStatus>) -> LeaseInfo {
        let r = &self.record;
        LeaseInfo {
            id: r.id.clone(),
            port: r.port,
            uid: r.uid,
            pid: r.owner_pid,
            created_ms: r.created_ms,
            expires_ms: r.expires_ms,
            ttl_ms: r.ttl_ms,
            held: self.sockets.is_some(),
            number_only: r.number_only,
            listening: self.sockets.as_ref().is_some_and(|s| s.is_listening()),
            session: self.session.is_some(),
            metadata: r.metadata.clone(),
            served: self.served,
            command: self.owner_command.as_deref().map(str::to_string),
            agent: r.agent.clone(),
            claimant: self.claimant.map(|p| p.pid),
            stack: None,
            names: self.hosts.clone(),
            url: proxy.and_then(|p| self.hosts.first().map(|h| p.url(h, false))),
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub struct Core {
    pub(crate) cfg: Config,
    pub(crate) store: Store,
    /// Boxed: a table that grows by doubling keeps its spare buckets
    /// small (a pointer each), not a whole `Lease` each (BENCHMARKS.md,
    /// `memory`).
    leases: HashMap<String, Box<Lease>>,
    by_port: HashMap<u16, String>,
    /// The proxy's routes: every live lease's names, to its id.
    by_host: HashMap<String, String>,
    /// Where the proxy listens, once it does.
    proxy: Option<pb_proto::ProxyStatus>,
    proxy_off: Option<String>,
    /// Each id's last port, kept after release so a re-claim gets it back.
    sticky: HashMap<String, u16>,
    sticky_owner: HashMap<u16, String>,
    started: Instant,
    next_session: u64,
    connections: usize,
    pool: SocketPool,
    /// Where owner watches and reclaims go; `None` until the daemon starts
    /// the reaper (and in benchmarks of the core alone).
    reaper: Option<tokio::sync::mpsc::Sender<ReaperJob>>,
    pub(crate) bus: EventBus,
    pub(crate) locks: Locks,
    pub(crate) pubsub: PubSub,
    pub(crate) agents: Agents,
    pub(crate) stacks: crate::core::stacks::Stacks,
    pub(crate) work: crate::core::work::WorkSessions,
    /// The HTTP API's base URL once it listens (for login URLs).
    http_base: Option<String>,
    http_off: Option<String>,
    /// How the daemon was started, once it says.
    started_by: Option<pb_proto::StartedBy>,
    /// PORT_DADDY_SOCK: where the HTTP API is also served, or why not.
    http_socket: Option<String>,
    http_socket_inode: Option<u64>,
    http_socket_off: Option<String>,
    logins: Logins,
    pub(crate) webhooks: crate::core::webhooks::Webhooks,
    /// What `/metrics` counts; transports and the reaper share it.
    pub(crate) metrics: Metrics,
    /// What the machine said for the request being applied
    /// (`facts.rs`): asked on the spot only until the core is shared.
    pub(crate) facts: Facts,
}

impl Core {
    /// Loads the stored leases and reserves their ports again. A lease whose
    /// owner has died, or that expired while the broker was down, ends here.
    pub fn open(cfg: Config, store: Store) -> Result<Core, StoreError> {
        let bus = EventBus::open(&store, &cfg.paths.activity_database())?;
        let metrics = Metrics::new();
        let mut core = Core {
            cfg,
            store,
            leases: HashMap::new(),
            by_port: HashMap::new(),
            by_host: HashMap::new(),
            proxy: None,
            proxy_off: None,
            sticky: HashMap::new(),
            sticky_owner: HashMap::new(),
            started: Instant::now(),
            next_session: 1,
            connections: 0,
            pool: SocketPool::default(),
            reaper: None,
            bus,
            locks: Locks::default(),
            pubsub: PubSub::counting_drops(metrics.subscribers_dropped.clone()),
            agents: Agents::default(),
            stacks: Default::default(),
            work: Default::default(),
            http_base: None,
            http_off: None,
            started_by: None,
            http_socket: None,
            http_socket_inode: None,
            http_socket_off: None,
            logins: Logins::default(),
            webhooks: Default::default(),
            metrics,
            facts: Facts::direct(),
        };
        // Before anything is emitted, so that webhooks see every event.
        core.load_webhooks()?;
        core.pool.refill();
        for (id, port) in core.store.load_sticky()?.into_iter().rev() {
            core.remember(id, port);
        }
        let now = now_ms();
        let mut ended = Vec::new();
        let mut records = core.store.load_leases()?;
        // The oldest first, so that a derived name two leases share stays
        // with the one that had it.
        records.sort_by_key(|r| r.created_ms);
        for record in records {
            let owner_dead = match (record.owner_pid, record.owner_start) {
                (Some(pid), Some(start_time)) => !ProcessId { pid, start_time }.is_alive(),
                _ => false,
            };
            if owner_dead || record.expires_ms.is_some_and(|e| e <= now) {
                ended.push(record.id.clone());
                continue;
            }
            // Rebind as a placeholder: a client may still hold the
            // listener we handed it, in which case it holds the port. A
            // number-only reservation stays unbound: its owner binds it.
            let sockets = match record.number_only {
                true => None,
                false => match bind_wanted(record.port, false, &mut core.pool, &mut core.facts) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        tracing::error!(
                            "lease {} keeps port {} but cannot hold it: {e}",
                            record.id,
                            record.port
                        );
                        None
                    }
                },
            };
            core.by_port.insert(record.port, record.id.clone());
            // Asked on the spot: nothing else runs while the core opens.
            let command = record
                .owner_pid
                .and_then(|pid| core.facts.process(pid).ok().flatten())
                .and_then(|f| f.command.clone());
            let id = record.id.clone();
            let mut lease = Lease::new(record, sockets, None, command);
            lease.hosts = core.hosts_for(&id, &lease.record.aliases);
            core.leases.insert(id.clone(), Box::new(lease));
            core.enter_routes(&id);
        }
        let refs: Vec<&str> = ended.iter().map(String::as_str).collect();
        core.store.end_leases(&refs)?;
        for id in &ended {
            core.emit(
                EventKind::ServiceReclaim,
                id,
                None,
                serde_json::json!({ "reason": "ended while the broker was down" }),
            );
        }
        core.load_coord()?;
        Ok(core)
    }

    /// The HTTP API listens at `base` (`http://localhost:9876`).
    /// Why the HTTP API is not running, for `status`.
    pub fn set_http_off(&mut self, why: String) {
        self.http_off = Some(why);
    }

    pub fn set_http_base(&mut self, base: String) {
        self.http_base = Some(base);
    }

    /// The HTTP API's port, once it listens.
    pub fn http_port(&self) -> Option<u16> {
        let base = self.http_base.as_deref()?;
        base.rsplit(':').next()?.parse().ok()
    }

    /// The proxy listens: every named lease has a URL from now on.
    pub fn set_proxy(&mut self, proxy: pb_proto::ProxyStatus) {
        self.proxy = Some(proxy);
    }

    /// The HTTP API is also served on this Unix socket (its path and the
    /// inode it was bound with), or (`Err`) why not.
    pub fn set_http_socket(&mut self, served: Result<(String, Option<u64>), String>) {
        match served {
            Ok((path, inode)) => {
                self.http_socket = Some(path);
                self.http_socket_inode = inode;
            }
            Err(why) => self.http_socket_off = Some(why),
        }
    }

    /// The inode of the Unix socket the HTTP API was bound with.
    pub fn http_socket_inode(&self) -> Option<u64> {
        self.http_socket_inode
    }

    /// How the broker was started, for `status`.
    pub fn set_started_by(&mut self, how: pb_proto::StartedBy) {
        self.started_by = Some(how);
    }

    /// Why the proxy is not running, for `status`.
    pub fn set_proxy_off(&mut self, why: String) {
        self.proxy_off = Some(why);
    }

    /// Where `host` (lower case, no port) leads: the lease that answers to
    /// it. Routes change in the same step as leases, so a released or
    /// reclaimed lease is never routed to.
    pub fn route(&self, host: &str) -> Option<crate::core::jobs::Route> {
        let lease = &self.leases[self.by_host.get(host)?];
        Some(crate::core::jobs::Route {
            id: lease.record.id.clone(),
            port: lease.record.port,
            uid: lease.record.uid,
            pid: lease.record.owner_pid,
            command: lease.owner_command.as_deref().map(str::to_string),
            created_ms: lease.record.created_ms,
        })
    }

    /// Every named lease, for the proxy's page of services: (host, id,
    /// port), sorted by host.
    pub fn routes(&self) -> Vec<(String, String, u16)> {
        let mut all: Vec<(String, String, u16)> = self
            .by_host
            .iter()
            .map(|(h, id)| (h.clone(), id.clone(), self.leases[id].record.port))
            .collect();
        all.sort();
        all
    }

    /// The names `id` would answer to now: its derived host (unless an
    /// earlier lease has it), then its aliases (checked free when it was
    /// claimed).
    fn hosts_for(&self, id: &str, aliases: &[String]) -> Vec<String> {
        let mut hosts: Vec<String> = Vec::new();
        for h in crate::hostnames::derived(id)
            .into_iter()
            .chain(aliases.iter().cloned())
        {
            let free = self.by_host.get(&h).is_none_or(|other| other == id);
            if free && !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        hosts
    }

    /// Enters a lease's names in the proxy's table, once it is live.
    fn enter_routes(&mut self, id: &str) {
        for h in &self.leases[id].hosts {
            self.by_host.insert(h.clone(), id.to_string());
        }
    }

    /// The aliases a claim asks for, checked and made full hosts: none
    /// another live lease answers to.
    fn check_aliases(&self, id: &str, names: &[String]) -> Result<Vec<String>, WireError> {
        if names.len() > crate::hostnames::MAX_ALIASES {
            return Err(WireError::new(
                ErrorCode::InvalidName,
                format!(
                    "at most {} names a lease, not {}",
                    crate::hostnames::MAX_ALIASES,
                    names.len()
                ),
            ));
        }
        let mut out: Vec<String> = Vec::with_capacity(names.len());
        for n in names {
            let host = crate::hostnames::alias(n)?;
            if let Some(other) = self.by_host.get(&host).filter(|o| *o != id) {
                return Err(WireError::new(
                    ErrorCode::NameTaken,
                    format!("{host} is already the name of {other}"),
                )
                .with_details(serde_json::json!({ "name": host, "service": other })));
            }
            if !out.contains(&host) {
                out.push(host);
            }
        }
        Ok(out)
    }

    /// Whether `secret` is a live dashboard session.
    /// Whether `secret` is a live dashboard session of `peer_uid`'s.
    pub fn session_valid(&self, secret: &str, peer_uid: u32) -> bool {
        self.logins.session_valid(secret, peer_uid, now_ms())
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn lease_count(&self) -> usize {
        self.leases.len()
    }

    /// A new Unix-socket connection from a process of `peer_uid`: a session
    /// id; `Forbidden` for another user's (the socket is the broker user's
    /// and root's alone), `Limit` when there are too many.
    pub fn open_session(&mut self, peer_uid: u32) -> Result<SessionId, WireError> {
        if peer_uid != pb_platform::os::effective_uid() && peer_uid != 0 {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "this broker serves only its own user",
            ));
        }
        if self.connections >= self.cfg.max_connections {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("too many connections (limit {})", self.cfg.max_connections),
            ));
        }
        self.connections += 1;
        self.metrics.ipc_connections.inc();
        let id = SessionId(self.next_session);
        self.next_session += 1;
        Ok(id)
    }

    /// A connection closed. Its session leases end, unless another live
    /// process holds their sockets (the child `pb exec` started, say): then
    /// ownership follows the socket. The reaper decides, off this thread.
    pub fn close_session(&mut self, session: SessionId) {
        self.connections = self.connections.saturating_sub(1);
        self.stacks_session_closed(session);
        let mut ids = Vec::new();
        for l in self
            .leases
            .values_mut()
            .filter(|l| l.session == Some(session))
        {
            l.session = None;
            ids.push(l.record.id.clone());
        }
        if ids.is_empty() {
            return;
        }
        if !self.send_to_reaper(ReaperJob::Reclaim {
            ids: ids.clone(),
            gone: None,
        }) {
            // No reaper to ask: end them here, as before it existed.
            if let Err(e) = self.end_leases(&ids) {
                tracing::error!("cannot end session leases: {}", e.message);
            }
        }
    }

    /// Connects the reaper and asks it to watch every owner already known.
    pub fn set_reaper(&mut self, tx: tokio::sync::mpsc::Sender<ReaperJob>) {
        self.reaper = Some(tx);
        let mut owners: Vec<ProcessId> = self.leases.values().filter_map(|l| l.owner()).collect();
        owners.extend(self.coord_processes());
        for p in owners {
            self.send_to_reaper(ReaperJob::Watch(p, None));
        }
    }

    /// False when there is no reaper or its queue is full; the periodic
    /// scan then catches what the job was for.
    pub(crate) fn send_to_reaper(&self, job: ReaperJob) -> bool {
        match &self.reaper {
            Some(tx) => tx.try_send(job).is_ok(),
            None => false,
        }
    }

    /// What the reaper needs to know of the named leases (all when `None`).
    pub fn views(&self, ids: Option<&[String]>) -> Vec<LeaseView> {
        match ids {
            Some(ids) => ids
                .iter()
                .filter_map(|id| self.leases.get(id))
                .map(|l| l.view())
                .collect(),
            None => self.leases.values().map(|l| l.view()).collect(),
        }
    }

    /// The port of `id`'s lease, and whether the broker's sockets listen.
    pub fn lease_port(&self, id: &str) -> Option<(u16, bool)> {
        self.leases.get(id).map(|l| {
            (
                l.record.port,
                l.sockets.as_ref().is_some_and(|s| s.is_listening()),
            )
        })
    }

    /// The ids of the leases an agent claimed.
    pub(crate) fn leases_of_agent(&self, agent: &str) -> Vec<String> {
        self.leases
            .values()
            .filter(|l| l.record.agent.as_deref() == Some(agent))
            .map(|l| l.record.id.clone())
            .collect()
    }

    pub fn lease_on_port(&self, port: u16) -> Option<LeaseInfo> {
        self.by_port
            .get(&port)
            .map(|id| self.leases[id].info(self.proxy.as_ref()))
    }

    /// The leases `p`'s exit concerns: those it owns, and the unadopted
    /// ones it claimed.
    pub fn leases_owned_by(&self, p: ProcessId) -> Vec<String> {
        self.leases
            .values()
            .filter(|l| l.owner() == Some(p) || (l.owner().is_none() && l.claimant == Some(p)))
            .map(|l| l.record.id.clone())
            .collect()
    }

    pub fn set_served(&mut self, id: &str, served: bool) {
        if let Some(l) = self.leases.get_mut(id) {
            l.served = Some(served);
        }
    }

    /// Applies the reaper's verdict on a lease whose owner was `expected`
    /// when it looked: ownership moves to `holder`, or the lease ends. A
    /// lease that changed meanwhile is left alone. A lease the broker let
    /// go of (`let_go`) holds its sockets again through `back`, copies
    /// taken from the holder; without them (the holder kept one family
    /// only, or the kernel refused) it follows as an adopted lease.
    /// Meanwhile no other verdict applies: one made from a look at the
    /// lease without its copies would not know whose they were; and a
    /// lease that has sockets again by then (a claim bound the free port)
    /// is left to the next scan. Whether the lease ended (its port is
    /// free).
    pub fn settle(&mut self, id: &str, expected: Option<ProcessId>, verdict: Verdict) -> bool {
        let Some(lease) = self.leases.get_mut(id) else {
            return false;
        };
        if lease.letting_go != verdict.let_go {
            return false;
        }
        lease.letting_go = false;
        if lease.owner() != expected
            || lease.session.is_some()
            || (verdict.let_go && lease.sockets.is_some())
        {
            return false;
        }
        let followed_bare = verdict.let_go && verdict.back.is_none();
        let Verdict { holder, back, .. } = verdict;
        match holder {
            Some(p) => {
                if let Some(back) = back {
                    let port = lease.record.port;
                    let sockets = LoopbackSockets::from_listeners(port, back.v4, back.v6);
                    lease.sockets = Some(Arc::new(sockets));
                }
                // An unowned lease that gains an owner was adopted; so is
                // one whose copies could not be taken back: the app's
                // listener is all there is.
                let adopted = lease.adopted || expected.is_none() || followed_bare;
                self.set_owner(id, p, adopted, "follows its socket to");
            }
            None if lease.adopted && !lease.sockets.as_ref().is_some_and(|s| s.is_listening()) => {
                self.orphan(id, expected)
            }
            None => {
                let (reason, why) = match expected {
                    Some(p) => (
                        "owner gone, socket unheld",
                        format!("its owner {} is gone and nobody holds its socket", p.pid),
                    ),
                    None => (
                        "claimant gone, never used",
                        "its claimant is gone and no app took it".to_string(),
                    ),
                };
                self.reclaim(id, expected, reason, &why);
            }
        }
        !self.leases.contains_key(id)
    }

    /// Closes the broker's own copies of lease `id`'s sockets, if its owner
    /// is still `dead` (a process the caller knows has ended), so that the
    /// kernel's table of listening sockets answers who else holds them: one
    /// that nobody else holds is gone, its port free, the moment the
    /// broker's copy closes, and one that is still listed is held by some
    /// other process. That costs one dump of the listeners where the other
    /// way to know is to read every process's descriptors. Only a lease
    /// whose sockets listen and all went to clients is let go: not a
    /// session's, an adopted one, or one with a relay (the family it
    /// serves never left the broker, and a claim in the meantime would
    /// find the relay's copy in its way). Whether it was let go; the
    /// reaper settles the lease (`settle`), with copies taken back from the
    /// holder it finds, or gives it up (`keep_after_let_go`).
    pub fn let_go(&mut self, id: &str, dead: ProcessId) -> bool {
        let Some(lease) = self.leases.get_mut(id) else {
            return false;
        };
        if lease.owner() != Some(dead)
            || lease.session.is_some()
            || lease.adopted
            || lease.relay.is_some()
            || !lease.sockets.as_ref().is_some_and(|s| s.is_listening())
        {
            return false;
        }
        lease.sockets = None;
        lease.letting_go = true;
        true
    }

    /// The reaper could not settle the leases it let go of: they wait, with
    /// their dead owner, for the scan's verdict (and their port, if free,
    /// for its `hold_again`).
    pub fn keep_after_let_go(&mut self, ids: &HashSet<String>) {
        for id in ids {
            if let Some(l) = self.leases.get_mut(id) {
                l.letting_go = false;
            }
        }
    }

    /// The app that adopted number-only lease `id` is gone: the lease
    /// waits, unowned, for the next binder of its port (a reloader's next
    /// run: nodemon, Django's and Flask's autoreloaders) for the reload
    /// grace; with no grace it ends now.
    fn orphan(&mut self, id: &str, was: Option<ProcessId>) {
        if self.cfg.reload_grace.is_zero() {
            let why = "its app stopped listening (no reload grace)";
            return self.reclaim(id, was, "adopter gone", why);
        }
        let grace_ms = self.cfg.reload_grace.as_millis() as u64;
        if let Err(e) = self.store.set_owner(id, None, None) {
            tracing::error!("cannot record that {id} lost its owner: {e}");
            return;
        }
        let lease = self.leases.get_mut(id).expect("checked by the caller");
        lease.record.owner_pid = None;
        lease.record.owner_start = None;
        lease.adopted = false;
        lease.owner_command = None;
        lease.orphaned_ms = Some(now_ms());
        let port = lease.record.port;
        tracing::info!(
            "{id}: its app {} stopped listening; port {port} stays reserved {grace_ms} ms for its next run",
            was.map_or("(none)".to_string(), |p| format!("pid {}", p.pid)),
        );
        self.emit(
            EventKind::ServiceOwnerChanged,
            id,
            None,
            serde_json::json!({
                "port": port,
                "from": was.map(|p| p.pid),
                "to": null,
                "how": "waits for its app's next run",
                "grace_ms": grace_ms,
            }),
        );
    }

    /// A lease reloaded without its sockets (its port was taken when the
    /// broker restarted) takes the port back as soon as it is free, so the
    /// first invariant holds again: a leased port is held in the kernel.
    pub fn hold_again(&mut self, id: &str, time_wait: bool) {
        let Some(lease) = self.leases.get(id) else {
            return;
        };
        // A number-only reservation is its owner's to bind.
        if lease.sockets.is_some() || lease.record.number_only {
            return;
        }
        let port = lease.record.port;
        // Exclusive first, as every claim: a port that anything still holds
        // (even a non-listening socket) stays where it is.
        let Ok(sockets) = bind(port, false, &mut self.pool, time_wait) else {
            return;
        };
        let lease = self.leases.get_mut(id).expect("checked above");
        lease.sockets = Some(Arc::new(sockets));
        tracing::info!("lease {id}: port {port} is free again; the broker holds it");
        self.emit(
            EventKind::ServiceHeld,
            id,
            None,
            serde_json::json!({ "port": port }),
        );
    }

    /// Ends orphaned lease `id` if it is still unowned since `since`.
    pub fn end_orphan(&mut self, id: &str, since: u64) {
        let Some(lease) = self.leases.get(id) else {
            return;
        };
        if lease.orphaned_ms != Some(since) || lease.owner().is_some() {
            return;
        }
        let why = "no app bound its port within the reload grace";
        self.reclaim(id, None, "no app bound it within the reload grace", why);
    }

    /// Ends lease `id` on the reaper's word, with one log line and one
    /// `service.reclaim` event saying why.
    fn reclaim(&mut self, id: &str, owner: Option<ProcessId>, reason: &str, why: &str) {
        match self.end_leases(&[id.to_string()]) {
            Ok(ended) => {
                tracing::info!("reclaimed {id}: {why}");
                self.emit(
                    EventKind::ServiceReclaim,
                    id,
                    None,
                    serde_json::json!({
                        "port": ended.first().map(|l| l.port),
                        "owner": owner.map(|p| p.pid),
                        "reason": reason,
                    }),
                );
            }
            Err(e) => tracing::error!("cannot reclaim {id}: {}", e.message),
        }
    }

    /// A number-only lease whose port `p` now listens on becomes `p`'s.
    pub fn adopt(&mut self, id: &str, p: ProcessFacts) {
        let Some(lease) = self.leases.get(id) else {
            return;
        };
        if lease.owner().is_some() || p.uid != Some(lease.record.uid) {
            return;
        }
        self.set_owner(id, p, true, "is adopted by");
        if let Some(l) = self.leases.get_mut(id) {
            l.orphaned_ms = None;
            // Adopted, the lease lives and dies with the app.
            l.claimant = None;
        }
    }

    fn set_owner(&mut self, id: &str, facts: ProcessFacts, adopted: bool, how: &str) {
        let p = facts.id;
        if let Err(e) = self.store.set_owner(id, Some(p.pid), Some(p.start_time)) {
            tracing::error!("cannot record the new owner of {id}: {e}");
            return;
        }
        let lease = self.leases.get_mut(id).expect("checked by the callers");
        let before = lease.record.owner_pid;
        lease.record.owner_pid = Some(p.pid);
        lease.record.owner_start = Some(p.start_time);
        lease.adopted = adopted;
        lease.owner_command = facts.command;
        tracing::info!(
            "{id} {how} pid {} ({})",
            p.pid,
            lease.owner_command.as_deref().unwrap_or("?")
        );
        let details = serde_json::json!({
            "port": lease.record.port,
            "from": before,
            "to": p.pid,
            "command": lease.owner_command,
            "how": how,
        });
        self.send_to_reaper(ReaperJob::Watch(p, None));
        self.emit(EventKind::ServiceOwnerChanged, id, None, details);
    }

    pub fn apply(&mut self, caller: &Caller, op: Op) -> Result<Outcome, WireError> {
        match op {
            Op::Status => Ok(Outcome::of(self.status())),
            Op::Claim(args) => self.claim(caller, args),
            Op::ClaimMany { claims } => self.claim_many(caller, claims),
            Op::Release { target, more } => self.release(caller, &target, &more),
            Op::Find { pattern } => self.find(pattern.as_deref()),
            Op::Get { id } => {
                ids::check_id(&id)?;
                Ok(Outcome::of(self.lease(&id)?.info(self.proxy.as_ref())))
            }
            Op::Heartbeat { id, port, ttl_ms } => {
                let id = self.named_lease(id, port)?;
                self.heartbeat(caller, &id, ttl_ms)
            }
            // Asked of the machine, or of the activity log's own database,
            // without the core's mutex: `service::dispatch` answers these and
            // never hands them here.
            Op::Who { .. }
            | Op::Listeners { .. }
            | Op::Activity(_)
            | Op::Wait { .. }
            | Op::Metrics => Err(WireError::new(
                ErrorCode::Internal,
                "this operation is answered by service::dispatch, not the core",
            )),
            Op::LoginCode => {
                let base = self.http_base.clone().ok_or_else(|| {
                    WireError::new(ErrorCode::InvalidRequest, "the HTTP API is not running")
                })?;
                let (code, expires_ms) = self.logins.new_code(now_ms())?;
                Ok(Outcome::of(LoginCodeReply {
                    url: format!("{base}/login?code={code}"),
                    code,
                    expires_ms,
                }))
            }
            Op::Login { code } => {
                let (session, expires_ms) = self.logins.redeem(&code, caller.peer_uid, now_ms())?;
                Ok(Outcome::of(LoginReply {
                    session,
                    expires_ms,
                }))
            }
            Op::Shutdown => Ok(Outcome {
                shutdown: true,
                ..Outcome::of(ShutdownReply { stopping: true })
            }),
            Op::StackReport { stack, event } => self.stack_report(caller, stack, event),
            Op::Stacks => Ok(self.stacks_list(caller)),
            Op::StackRestart { stack, service } => self.stack_restart(caller, &stack, &service),
            Op::StackLog { stack, lines } => self.stack_log(caller, &stack, lines),
            Op::WebhookAdd(a) => self.webhook_add(a),
            Op::Webhooks => Ok(self.webhooks_list()),
            Op::WebhookGet { id } => self.webhook_get(&id),
            Op::WebhookUpdate(a) => self.webhook_update(a),
            Op::WebhookDelete { id } => self.webhook_delete(&id),
            Op::WebhookTest { id } => self.webhook_test(&id),
            Op::WebhookDeliveries { id, limit } => self.webhook_deliveries(&id, limit),
            Op::WebhookEvents => Ok(webhooks::events_list()),
            Op::SessionBegin(a) => self.session_begin(caller, a),
            Op::SessionEnd { id, note, agent } => self.session_end(caller, &id, note, agent),
            Op::SessionPhase { id, phase } => self.session_phase(caller, &id, phase),
            Op::SessionTakeover { id, owner, agent } => {
                self.session_takeover(caller, &id, owner, agent)
            }
            Op::Sessions { state } => self.sessions_list(caller, state.as_deref()),
            Op::SessionGet { id } => self.session_get(caller, &id),
            Op::NoteAdd {
                session,
                text,
                agent,
            } => self.note_add(caller, &session, text, agent),
            Op::Notes {
                session,
                after,
                limit,
            } => self.notes_list(caller, &session, after, limit),
            Op::FilesClaim { session, paths } => self.files_claim(caller, &session, paths),
            Op::FilesRelease { session, paths } => self.files_release(caller, &session, paths),
            Op::FilesWho { path } => self.files_who(caller, &path),
            Op::LockAcquire(a) => self.lock_acquire(caller, a),
            Op::LockRelease {
                name,
                owner,
                agent,
                force,
            } => self.lock_release(caller, &name, owner, agent, force),
            Op::LockExtend {
                name,
                ttl_ms,
                owner,
                agent,
            } => self.lock_extend(caller, &name, ttl_ms, owner, agent),
            Op::Locks { pattern } => self.locks_list(pattern.as_deref()),
            Op::LockInfo { name } => self.lock_info(&name),
            Op::Publish {
                channel,
                data,
                agent,
            } => self.publish(caller, channel, data, agent),
            Op::Subscribe { patterns, since_id } => self.subscribe(patterns, since_id),
            Op::History {
                pattern,
                since_id,
                limit,
            } => self.history(&pattern, since_id, limit),
            Op::Channels => Ok(self.channels()),
            Op::ClearChannel { channel } => self.clear_channel(caller, &channel),
            Op::AgentRegister(a) => self.agent_register(caller, a),
            Op::AgentHeartbeat { id } => self.agent_heartbeat(caller, &id),
            Op::AgentUnregister { id } => self.agent_unregister(caller, &id),
            Op::Agents => Ok(self.agents_list()),
            Op::AgentInfo { id } => self.agent_info_op(&id),
        }
    }

    fn status(&self) -> StatusReply {
        StatusReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
            pid: std::process::id(),
            uptime_ms: self.uptime().as_millis() as u64,
            leases: self.leases.len(),
            connections: self.connections,
            socket: self.cfg.paths.socket().display().to_string(),
            database: self.cfg.paths.database().display().to_string(),
            range: self.cfg.range,
            reserved: self.cfg.reserved.clone(),
            http: self.http_base.clone(),
            http_off: self.http_off.clone(),
            proxy: self.proxy.clone(),
            proxy_off: self.proxy_off.clone(),
            started_by: self.started_by,
            http_socket: self.http_socket.clone(),
            http_socket_off: self.http_socket_off.clone(),
        }
    }

    /// The metrics' handles, for the transports and the reaper to move.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The state a scrape reports: counts only, from memory.
    pub fn gauges(&self) -> Gauges {
        let mut leases = [
            ("handed_over", 0),
            ("held", 0),
            ("number_only", 0),
            ("unheld", 0),
        ];
        for l in self.leases.values() {
            let state = match &l.sockets {
                Some(s) if s.is_listening() => 0,
                Some(_) => 1,
                None if l.record.number_only => 2,
                None => 3,
            };
            leases[state].1 += 1;
        }
        Gauges {
            leases,
            locks_held: self.locks.held_count(),
            lock_waiters: self.locks.waiter_count(),
            subscribers: self.pubsub.subscriber_count(),
            webhook_queue: self.webhooks.queued(),
            ipc_open: self.connections,
        }
    }

    /// Since the core opened.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn lease(&self, id: &str) -> Result<&Lease, WireError> {
        self.leases
            .get(id)
            .map(|l| &**l)
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no service {id:?}")))
    }

    /// The id of the lease a request names by `id` or by `port`: exactly
    /// one of them.
    fn named_lease(&self, id: Option<String>, port: Option<i64>) -> Result<String, WireError> {
        match (id, port) {
            (Some(id), None) => Ok(id),
            (None, Some(port)) => {
                let port = rules::check_port(port)?;
                self.by_port.get(&port).cloned().ok_or_else(|| {
                    WireError::new(ErrorCode::NotFound, format!("port {port} is not leased"))
                })
            }
            _ => Err(WireError::new(
                ErrorCode::InvalidRequest,
                "name the lease by exactly one of \"id\" and \"port\"",
            )),
        }
    }

    fn owned_by_caller(lease: &Lease, caller: &Caller) -> Result<(), WireError> {
        if lease.record.uid != caller.uid {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                format!("{} belongs to uid {}", lease.record.id, lease.record.uid),
            ));
        }
        Ok(())
    }

    /// A pid a client names for itself or another (X-PID): `None` when it
    /// is the caller's own.
    pub(crate) fn hinted(caller: &Caller, pid: i64) -> Result<Option<u32>, WireError> {
        let pid = u32::try_from(pid).ok().filter(|p| *p > 0).ok_or_else(|| {
            WireError::new(ErrorCode::InvalidRequest, format!("pid {pid} is not a pid"))
        })?;
        Ok((caller.process.map(|p| p.pid) != Some(pid)).then_some(pid))
    }

    /// The shell or script that ran the caller (its lasting ancestor).
    pub(crate) fn caller_parent(&mut self, caller: &Caller) -> Result<ProcessId, WireError> {
        let p = caller.process.ok_or_else(|| {
            WireError::new(
                ErrorCode::InvalidRequest,
                "the caller's process is not visible to the broker; name an owner",
            )
        })?;
        let gone = || {
            WireError::new(
                ErrorCode::InvalidRequest,
                "the caller's parent is gone, so nothing could own it; name an owner",
            )
        };
        // An orphan's parent is init (or a session's subreaper): not a
        // shell that will end, so no owner at all.
        let parent = self
            .facts
            .ancestor(p)?
            .filter(|a| a.pid > 1)
            .ok_or_else(gone)?;
        // Checked as a named pid is: alive, and of the caller's user.
        self.resolve_owner(caller, Owner::Pid(parent.pid))?
            .ok_or_else(gone)
    }

    pub(crate) fn resolve_owner(
        &mut self,
        caller: &Caller,
        owner: Owner,
    ) -> Result<Option<ProcessId>, WireError> {
        match owner {
            Owner::None => Ok(None),
            Owner::Caller => caller.process.map(Some).ok_or_else(|| {
                WireError::new(
                    ErrorCode::InvalidRequest,
                    "the caller's process is not visible to the broker",
                )
            }),
            Owner::Hint(pid) => match Self::hinted(caller, pid)? {
                None => Ok(None),
                Some(pid) => self.resolve_owner(caller, Owner::Pid(pid)),
            },
            Owner::Pid(pid) => {
                let p = self.facts.process(pid)?.ok_or_else(|| {
                    WireError::new(
                        ErrorCode::InvalidRequest,
                        format!("no process with pid {pid}"),
                    )
                })?;
                if p.uid != Some(caller.uid) {
                    return Err(WireError::new(
                        ErrorCode::Forbidden,
                        format!("process {pid} belongs to another user"),
                    ));
                }
                Ok(Some(p.id))
            }
        }
    }

    /// Claims all of `claims` or none: each is applied as a claim alone
    /// would be; the first that fails takes back those before it (the log
    /// shows them released, reason "batch"), and its error, naming it, is
    /// the answer.
    fn claim_many(
        &mut self,
        caller: &Caller,
        claims: Vec<ClaimArgs>,
    ) -> Result<Outcome, WireError> {
        if claims.is_empty() || claims.len() > rules::MAX_CLAIM_BATCH {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "claim_many takes 1 to {} claims, not {}",
                    rules::MAX_CLAIM_BATCH,
                    claims.len()
                ),
            ));
        }
        for (i, a) in claims.iter().enumerate() {
            if a.fds {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("claim {i} ({}): claim_many hands over no descriptors; claim the id again for them", a.id),
                ));
            }
            if claims[..i].iter().any(|b| b.id == a.id) {
                return Err(WireError::new(
                    ErrorCode::IdConflict,
                    format!("{} is claimed twice in one claim_many", a.id),
                ));
            }
        }
        let mut replies = Vec::with_capacity(claims.len());
        let mut undo = Vec::new();
        for a in claims {
            let id = a.id.clone();
            match self.claim(caller, a) {
                Ok(out) => {
                    undo.extend(out.undo);
                    replies.push(out.result.into_reply::<ClaimReply>()?);
                }
                Err(e) => {
                    self.undo_for(Undo::Batch(undo), "batch");
                    return Err(WireError::new(e.code, format!("{id}: {}", e.message)));
                }
            }
        }
        Ok(Outcome {
            undo: Some(Undo::Batch(undo)),
            ..Outcome::of(ClaimManyReply { claims: replies })
        })
    }

    fn claim(&mut self, caller: &Caller, a: ClaimArgs) -> Result<Outcome, WireError> {
        // Validate everything before touching anything.
        ids::check_id(&a.id)?;
        let want_port = a.port.map(rules::check_port).transpose()?;
        let range = match a.range {
            Some((s, e)) => rules::check_range(s, e)?,
            None => self.cfg.range,
        };
        let ttl = a.expires_ms.map(rules::check_ttl).transpose()?;
        let metadata = rules::check_metadata(a.metadata)?;
        let aliases = self.check_aliases(&a.id, &a.names)?;
        let owner = self.resolve_owner(caller, a.owner)?;
        // Only an unowned lease has a claimant; it is checked like `--pid`.
        let claimant = match a.claimant {
            Some(pid) if owner.is_none() => self.resolve_owner(caller, Owner::Pid(pid))?,
            _ => None,
        };
        if a.number_only && a.fds {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "a \"number_only\" claim holds no socket to hand over, so it cannot take \"fds\"",
            ));
        }
        if a.number_only && owner.is_none() {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "a \"number_only\" claim needs an owner (\"owner\": {\"pid\": N}), whose exit ends it",
            ));
        }
        if a.family.is_some() && !a.fds {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "\"family\" chooses which listener to hand over, so it needs \"fds\": true",
            ));
        }
        self.check_agent(caller, a.agent.as_deref())?;
        if a.session && caller.session.is_none() {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "session leases need a connection",
            ));
        }
        if let Some(p) = want_port {
            if self.cfg.reserved.contains(&p) {
                return Err(WireError::new(
                    ErrorCode::ReservedPort,
                    format!("port {p} is reserved"),
                ));
            }
        }

        if self.cfg.test_panic_on_claim.as_deref() == Some(a.id.as_str()) {
            panic!("PB_TEST_PANIC_ON_CLAIM: a claim of {}", a.id);
        }
        if let Some(lease) = self.leases.get_mut(&a.id) {
            Self::owned_by_caller(lease, caller)?;
            if let Some(p) = want_port.filter(|p| *p != lease.record.port) {
                return Err(WireError::new(
                    ErrorCode::IdConflict,
                    format!("{} already holds port {}, not {p}", a.id, lease.record.port),
                ));
            }
            if let Some(n) = aliases.iter().find(|n| !lease.hosts.contains(n)) {
                return Err(WireError::new(
                    ErrorCode::IdConflict,
                    format!(
                        "{} is already claimed without the name {n}; release it to change its names",
                        a.id
                    ),
                ));
            }
            return claim_outcome(
                lease,
                true,
                (a.fds, a.family),
                &mut self.pool,
                &mut self.facts,
                self.proxy.as_ref(),
            );
        }

        if self.leases.len() >= self.cfg.max_leases {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("too many leases (limit {})", self.cfg.max_leases),
            ));
        }
        self.check_service_limit(a.agent.as_deref())?;

        let sockets = match want_port {
            Some(p) => match self.reserve_exact(p, a.fds) {
                Ok(s) => s,
                Err(e) if a.fallback && e.code == ErrorCode::PortTaken => {
                    self.allocate(&a.id, range, a.fds)?
                }
                Err(e) => return Err(e),
            },
            None => self.allocate(&a.id, range, a.fds)?,
        };

        let now = now_ms();
        let record = LeaseRecord {
            id: a.id.clone(),
            port: sockets.port,
            uid: caller.uid,
            owner_pid: owner.map(|o| o.pid),
            owner_start: owner.map(|o| o.start_time),
            created_ms: now,
            expires_ms: ttl.map(|t| now + t),
            ttl_ms: ttl,
            metadata,
            agent: a.agent.clone(),
            aliases,
            number_only: a.number_only,
        };
        let session = if a.session { caller.session } else { None };
        // The exclusive bind proved the port free in both families (as a
        // portserver's check would); a number-only lease lets go of it at
        // once, for its owner to bind without SO_REUSEADDR.
        let sockets = (!a.number_only).then_some(sockets);
        // The reply is made before anything is stored: handing the sockets
        // over can still fail (a relay's duplicate descriptor, EMFILE), and
        // a claim that fails must change nothing.
        let command = owner.and_then(|o| self.command_of(caller, o));
        let mut lease = Lease::new(record.clone(), sockets, session, command);
        lease.claimant = claimant;
        lease.hosts = self.hosts_for(&a.id, &record.aliases);
        let outcome = claim_outcome(
            &mut lease,
            false,
            (a.fds, a.family),
            &mut self.pool,
            &mut self.facts,
            self.proxy.as_ref(),
        )?;
        // Persist, then acknowledge: if the disk refuses, the sockets (and
        // any relay) close on drop and nothing changed.
        self.store.insert_lease(&record)?;
        let undo = Undo::Claim {
            id: a.id.clone(),
            sticky_before: self.sticky.get(&a.id).copied(),
        };
        let port = record.port;
        self.remember(a.id.clone(), port);
        self.by_port.insert(port, a.id.clone());
        if let Some(p) = owner {
            let from_connection = (a.owner == Owner::Caller)
                .then(|| caller.exit_watch.clone())
                .flatten();
            self.send_to_reaper(ReaperJob::Watch(p, from_connection));
        }
        if let Some(c) = claimant {
            self.send_to_reaper(ReaperJob::Watch(c, None));
        }
        let names = lease.hosts.clone();
        self.leases.insert(a.id.clone(), Box::new(lease));
        self.enter_routes(&a.id);
        self.trim_sticky();
        self.emit_by(
            EventKind::ServiceClaim,
            &a.id,
            caller,
            a.agent.as_deref(),
            serde_json::json!({
                "port": port,
                "owner": owner.map(|p| p.pid),
                "session": a.session,
                "fds": a.fds,
                "names": names,
            }),
        );
        Ok(Outcome {
            undo: Some(undo),
            ..outcome
        })
    }

    fn reserve_exact(&mut self, port: u16, listen: bool) -> Result<LoopbackSockets, WireError> {
        if let Some(holder) = self.by_port.get(&port) {
            return Err(WireError::new(
                ErrorCode::PortTaken,
                format!("port {port} is leased to {holder}"),
            ));
        }
        bind_wanted(port, listen, &mut self.pool, &mut self.facts)
    }

    /// The command of `p`, a process this request's checks asked about
    /// (or the caller itself).
    pub(crate) fn command_of(&self, caller: &Caller, p: ProcessId) -> Option<Arc<str>> {
        if caller.process == Some(p) {
            return caller.command.clone();
        }
        self.facts
            .known(p.pid)
            .filter(|f| f.id == p)
            .and_then(|f| f.command.clone())
    }

    /// Finds and binds a free port for `id` in `range`: its sticky port
    /// first, then the lowest port nobody leases or remembers, then ports
    /// other ids remember. A port some other process holds fails to bind and
    /// is skipped. Only the sticky port may be bound beside TIME_WAIT
    /// remnants (the id's own server closing its connections, usually).
    fn allocate(
        &mut self,
        id: &str,
        range: (u16, u16),
        listen: bool,
    ) -> Result<LoopbackSockets, WireError> {
        let Core {
            cfg,
            by_port,
            sticky,
            sticky_owner,
            pool,
            facts,
            ..
        } = self;
        let usable = |p: u16| {
            !cfg.reserved.contains(&p)
                && !by_port.contains_key(&p)
                && !rules::DEV_DEFAULT_PORTS.contains(&p)
        };
        let sticky = sticky
            .get(id)
            .copied()
            .filter(|p| (range.0..=range.1).contains(p) && usable(*p));
        let fresh = (range.0..=range.1).filter(|p| usable(*p) && !sticky_owner.contains_key(p));
        let remembered = (range.0..=range.1)
            .filter(|p| usable(*p) && sticky_owner.get(p).is_some_and(|o| o != id));
        let mut last_error = None;
        if let Some(port) = sticky {
            match bind_wanted(port, listen, pool, facts) {
                Ok(s) => return Ok(s),
                // Not yet known whether TIME_WAIT is all that holds it:
                // asked, and the claim applied again.
                Err(e) if facts.has_questions() => return Err(e),
                Err(_) => {}
            }
        }
        for port in fresh.chain(remembered) {
            match LoopbackSockets::bind(port, listen, BindMode::Exclusive, pool) {
                Ok(s) => return Ok(s),
                Err(BindError::InUse { .. }) => continue,
                Err(e) => last_error = Some(e),
            }
        }
        Err(match last_error {
            Some(e) => WireError::new(ErrorCode::Internal, e.to_string()),
            None => WireError::new(
                ErrorCode::Exhausted,
                format!("no free port in {}-{}", range.0, range.1),
            ),
        })
    }

    fn remember(&mut self, id: String, port: u16) {
        if let Some(old) = self.sticky.insert(id.clone(), port) {
            if self.sticky_owner.get(&old) == Some(&id) {
                self.sticky_owner.remove(&old);
            }
        }
        self.sticky_owner.insert(port, id);
    }

    fn trim_sticky(&mut self) {
        if self.sticky.len() <= self.cfg.max_sticky + self.cfg.max_sticky / 8 {
            return;
        }
        match self.store.trim_sticky(self.cfg.max_sticky) {
            Ok(gone) => {
                for id in gone {
                    if let Some(p) = self.sticky.remove(&id) {
                        if self.sticky_owner.get(&p) == Some(&id) {
                            self.sticky_owner.remove(&p);
                        }
                    }
                }
            }
            Err(e) => tracing::error!("cannot trim sticky ports: {e}"),
        }
    }

    fn release(
        &mut self,
        caller: &Caller,
        target: &ReleaseTarget,
        more: &[ReleaseTarget],
    ) -> Result<Outcome, WireError> {
        if more.len() >= self.cfg.max_leases {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("too many targets (limit {})", self.cfg.max_leases),
            ));
        }
        // Every target is resolved before any lease ends.
        let mut ids: Vec<String> = Vec::new();
        for t in std::iter::once(target).chain(more) {
            for id in self.release_targets(caller, t)? {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
        let released = self.end_leases(&ids)?;
        for l in &released {
            self.emit_by(
                EventKind::ServiceRelease,
                &l.id,
                caller,
                None,
                serde_json::json!({ "port": l.port, "reason": "released" }),
            );
        }
        Ok(Outcome::of(ReleaseReply { released }))
    }

    /// The ids one release target names: a port, an id or a pattern.
    fn release_targets(
        &self,
        caller: &Caller,
        target: &ReleaseTarget,
    ) -> Result<Vec<String>, WireError> {
        let ids = match target {
            ReleaseTarget::Port(port) => {
                let port = rules::check_port(*port)?;
                let id = self.by_port.get(&port).ok_or_else(|| {
                    WireError::new(ErrorCode::NotFound, format!("port {port} is not leased"))
                })?;
                Self::owned_by_caller(&self.leases[id], caller)?;
                vec![id.clone()]
            }
            ReleaseTarget::Name(name) => self.named_targets(caller, name.trim())?,
        };
        Ok(ids)
    }

    /// The ids an id or a pattern names.
    fn named_targets(&self, caller: &Caller, target: &str) -> Result<Vec<String>, WireError> {
        let ids = {
            let pattern = Pattern::parse(target)?;
            if pattern.is_literal() {
                ids::check_id(target)?;
                Self::owned_by_caller(self.lease(target)?, caller)?;
                vec![target.to_string()]
            } else {
                // A pattern only ever reaches the caller's own leases.
                self.leases
                    .values()
                    .filter(|l| l.record.uid == caller.uid && pattern.matches(&l.record.id))
                    .map(|l| l.record.id.clone())
                    .collect()
            }
        };
        Ok(ids)
    }

    /// Ends leases: the store first, then memory and the kernel sockets.
    pub(crate) fn end_leases(&mut self, ids: &[String]) -> Result<Vec<LeaseInfo>, WireError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.store.end_leases(&refs)?;
        let mut infos = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(lease) = self.leases.remove(id) {
                self.by_port.remove(&lease.record.port);
                for h in &lease.hosts {
                    self.by_host.remove(h);
                }
                infos.push(lease.info(self.proxy.as_ref()));
            }
        }
        infos.sort_by_key(|l| l.port);
        Ok(infos)
    }

    fn find(&self, pattern: Option<&str>) -> Result<Outcome, WireError> {
        let pattern = pattern.map(Pattern::parse).transpose()?;
        let mut services: Vec<LeaseInfo> = self
            .leases
            .values()
            .filter(|l| pattern.as_ref().is_none_or(|p| p.matches(&l.record.id)))
            .map(|l| LeaseInfo {
                stack: self
                    .stacks
                    .of_lease(l.record.uid, &l.record.id)
                    .map(str::to_string),
                ..l.info(self.proxy.as_ref())
            })
            .collect();
        services.sort_by_key(|l| l.port);
        Ok(Outcome::of(FindReply { services }))
    }

    fn heartbeat(
        &mut self,
        caller: &Caller,
        id: &str,
        ttl_ms: Option<i64>,
    ) -> Result<Outcome, WireError> {
        ids::check_id(id)?;
        let ttl = ttl_ms.map(rules::check_ttl).transpose()?;
        let lease = self.lease(id)?;
        Self::owned_by_caller(lease, caller)?;
        let ttl = ttl.or(lease.record.ttl_ms).ok_or_else(|| {
            WireError::new(
                ErrorCode::InvalidRequest,
                format!("{id} has no TTL to renew; pass ttl_ms"),
            )
        })?;
        let expires = now_ms() + ttl;
        self.store.set_expiry(id, expires, ttl)?;
        let lease = self.leases.get_mut(id).expect("checked above");
        lease.record.expires_ms = Some(expires);
        lease.record.ttl_ms = Some(ttl);
        let info = lease.info(self.proxy.as_ref());
        self.emit_by(
            EventKind::ServiceRenew,
            id,
            caller,
            None,
            serde_json::json!({ "port": info.port, "expires_ms": expires, "ttl_ms": ttl }),
        );
        Ok(Outcome::of(info))
    }

    /// Takes back what a request did when its reply was not delivered: a
    /// claim's lease ends and the id remembers the port it remembered
    /// before; a lock grant ends.
    pub fn undo(&mut self, undo: Undo) {
        self.undo_for(undo, "undelivered")
    }

    /// [`undo`](Core::undo), saying why in the log.
    fn undo_for(&mut self, undo: Undo, reason: &str) {
        let (id, sticky_before) = match undo {
            Undo::Claim { id, sticky_before } => (id, sticky_before),
            Undo::Lock { name, token } => return self.undo_lock(&name, token),
            Undo::Batch(all) => {
                for u in all.into_iter().rev() {
                    self.undo_for(u, reason);
                }
                return;
            }
        };
        match self.end_leases(std::slice::from_ref(&id)) {
            Ok(ended) => {
                for l in ended {
                    self.emit(
                        EventKind::ServiceRelease,
                        &l.id,
                        None,
                        serde_json::json!({ "port": l.port, "reason": reason }),
                    );
                }
            }
            Err(e) => {
                tracing::error!("cannot take back {id}: {}", e.message);
                return;
            }
        }
        if let Err(e) = self.store.restore_sticky(&id, sticky_before) {
            tracing::error!("cannot restore the sticky port of {id}: {e}");
            return;
        }
        if let Some(p) = self.sticky.remove(&id) {
            if self.sticky_owner.get(&p) == Some(&id) {
                self.sticky_owner.remove(&p);
            }
        }
        if let Some(p) = sticky_before {
            self.remember(id, p);
        }
    }

    /// Work that can wait until a reply is out: making spare sockets.
    pub fn after_reply(&mut self) {
        if self.pool.needs_refill() {
            self.pool.refill();
        }
    }

    /// The earliest expiry of any lease, in ms since the epoch.
    pub fn next_expiry(&self) -> Option<u64> {
        self.leases
            .values()
            .filter_map(|l| l.record.expires_ms)
            .min()
    }

    /// Ends every lease whose expiry has passed.
    pub fn expire_due(&mut self, now: u64) -> Vec<LeaseInfo> {
        let due: Vec<String> = self
            .leases
            .values()
            .filter(|l| l.record.expires_ms.is_some_and(|e| e <= now))
            .map(|l| l.record.id.clone())
            .collect();
        let ended = self.end_leases(&due).unwrap_or_else(|e| {
            tracing::error!("cannot expire leases: {}", e.message);
            Vec::new()
        });
        for l in &ended {
            self.emit(
                EventKind::ServiceExpire,
                &l.id,
                None,
                serde_json::json!({ "port": l.port, "reason": "expired" }),
            );
        }
        ended
    }
}

/// The reply to a claim of `lease`, with its sockets when `fds` is asked.
fn claim_outcome(
    lease: &mut Lease,
    existing: bool,
    (fds, family): (bool, Option<IpFamily>),
    pool: &mut SocketPool,
    facts: &mut Facts,
    proxy: Option<&pb_proto::ProxyStatus>,
) -> Result<Outcome, WireError> {
    let (sockets, addrs) = if fds {
        hand_over(lease, family, pool, facts)?
    } else {
        (None, Vec::new())
    };
    let reply = ClaimReply {
        lease: lease.info(proxy),
        existing,
        fds: addrs,
    };
    Ok(Outcome {
        sockets,
        ..Outcome::of(reply)
    })
}

/// Makes the lease's sockets listen and shares them for a reply. With
/// `family`, only that family's socket goes, and the other one is relayed to
/// it (when the machine has both).
fn hand_over(
    lease: &mut Lease,
    family: Option<IpFamily>,
    pool: &mut SocketPool,
    facts: &mut Facts,
) -> Result<(Option<Handover>, Vec<String>), WireError> {
    let port = lease.record.port;
    if lease.sockets.is_none() {
        lease.sockets = Some(Arc::new(bind_wanted(port, true, pool, facts)?));
    }
    let sockets = lease.sockets.as_ref().expect("bound above");
    sockets.listen().map_err(|e| match e {
        BindError::InUse { .. } => WireError::new(
            ErrorCode::PortTaken,
            format!("port {port} is being served by another process"),
        ),
        other => bind_error(other),
    })?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = sockets
        .v6
        .as_ref()
        .map(|fd| (fd, SocketAddr::from((Ipv6Addr::LOCALHOST, port))));
    let addrs: Vec<SocketAddr> = match (family, v6) {
        (None, v6) => std::iter::once(v4).chain(v6.map(|(_, a)| a)).collect(),
        (Some(_), None) => vec![v4],
        (Some(served), Some((v6_fd, v6))) => {
            let (relayed, target) = match served {
                IpFamily::V4 => (v6_fd.as_fd(), v4),
                IpFamily::V6 => (sockets.v4.as_fd(), v6),
            };
            if lease.relay.as_ref().is_none_or(|r| r.target != target) {
                let relay = Relay::start(relayed, target).map_err(|e| {
                    WireError::new(
                        ErrorCode::Internal,
                        format!("cannot relay to {target}: {e}"),
                    )
                })?;
                lease.relay = Some(relay);
            }
            vec![target]
        }
    };
    let handover = Handover::new(sockets.clone(), family);
    Ok((
        Some(handover),
        addrs.iter().map(|a| a.to_string()).collect(),
    ))
}

/// Binds a port wanted by number: exclusively if possible, else beside
/// TIME_WAIT remnants when the kernel shows some (a fact asked before the
/// core's mutex: see `facts.rs`). A port whose only other holder is
/// invisible (a bound, non-listening socket) stays refused.
fn bind_wanted(
    port: u16,
    listen: bool,
    pool: &mut SocketPool,
    facts: &mut Facts,
) -> Result<LoopbackSockets, WireError> {
    match LoopbackSockets::bind(port, listen, BindMode::Exclusive, pool) {
        Err(e @ BindError::InUse { .. }) => {
            if facts.time_wait(port)? {
                bind(port, listen, pool, true).map_err(bind_error)
            } else {
                Err(bind_error(e))
            }
        }
        other => other.map_err(bind_error),
    }
}

/// Binds `port`: beside TIME_WAIT remnants if `time_wait` (the kernel
/// listed some), else exclusively.
fn bind(
    port: u16,
    listen: bool,
    pool: &mut SocketPool,
    time_wait: bool,
) -> Result<LoopbackSockets, BindError> {
    let mode = if time_wait {
        BindMode::AllowTimeWait
    } else {
        BindMode::Exclusive
    };
    LoopbackSockets::bind(port, listen, mode, pool)
}

fn bind_error(e: BindError) -> WireError {
    match e {
        BindError::InUse { port, addr } => WireError::new(
            ErrorCode::PortTaken,
            format!("port {port} is in use by another process ({addr})"),
        ),
        other => WireError::new(ErrorCode::Internal, other.to_string()),
    }
}
