//! The broker's one internal event bus. Everything that changes state
//! (a claim, a lock handed over, a message, an agent gone stale) is emitted
//! here once, from inside the core, and fans out from here: to the activity
//! log (batched into SQLite), to pub/sub (every event but a message is
//! republished on the channel `pb:<kind>`), and to async followers through
//! a bounded broadcast (`pb log --follow`, `pb wait`, and later SSE); and
//! to webhooks, which queue a delivery per subscribed webhook (`webhooks`).
//!
//! Event ids are unique and increasing across restarts: they are reserved
//! from SQLite in blocks (`ID_BLOCK`), so a restart resumes above every id
//! ever handed out at the cost of one write per block. Pub/sub messages
//! take their ids from the same counter.

use std::sync::Arc;

use pb_proto::{ActivityEntry, Actor};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::broadcast;

use crate::core::activity::ActivityLog;
use crate::core::{now_ms, Caller, Core};
use crate::store::{ActivityRow, Store, StoreError};

/// Ids reserved in SQLite per write.
const ID_BLOCK: u64 = 10_000;
/// Events buffered for slow async followers before they lag.
pub const FOLLOW_BUFFER: usize = 4096;
/// Events buffered before they are handed to the log's writer even
/// without a tick.
const FLUSH_AT: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    ServiceClaim,
    ServiceRelease,
    ServiceExpire,
    /// The owner died and nobody held the socket: the lease ended.
    ServiceReclaim,
    /// Ownership moved (socket follow, adoption).
    ServiceOwnerChanged,
    /// A lease the broker could not hold after a restart (its port was
    /// taken) is held again, its port being free.
    ServiceHeld,
    ServiceRenew,
    LockAcquire,
    LockRelease,
    LockExpire,
    LockExtend,
    /// A request joined a lock's queue.
    LockWait,
    /// A queued request gave up (timeout, disconnect, owner death).
    LockCancel,
    MessagePublish,
    ChannelClear,
    AgentRegister,
    AgentHeartbeat,
    AgentUnregister,
    AgentStale,
    /// A webhook delivery attempt ended: delivered, failed, or retrying.
    WebhookAttempt,
    /// A stack's supervisor reported every service ready.
    StackUp,
    StackDown,
    StackRestart,
    /// A service of a stack ended on its own.
    StackCrash,
    /// A client asked a stack's supervisor to restart a service.
    StackRestartRequested,
    SessionBegin,
    SessionPhase,
    SessionNote,
    SessionEnd,
    /// A session's owner died or its agent went away.
    SessionAbandon,
    SessionTakeover,
    FilesClaim,
    FilesRelease,
    DaemonStart,
    DaemonStop,
    /// Retention trims and other housekeeping that removed data.
    Cleanup,
}

impl EventKind {
    /// A lease began, ended or changed hands, so the broker's sockets (or
    /// who holds them) may have changed. A renewal changes no socket.
    pub fn moves_sockets(self) -> bool {
        use EventKind::*;
        matches!(
            self,
            ServiceClaim
                | ServiceRelease
                | ServiceExpire
                | ServiceReclaim
                | ServiceOwnerChanged
                | ServiceHeld
        )
    }

    pub fn name(self) -> &'static str {
        use EventKind::*;
        match self {
            ServiceClaim => "service.claim",
            ServiceRelease => "service.release",
            ServiceExpire => "service.expire",
            ServiceReclaim => "service.reclaim",
            ServiceOwnerChanged => "service.owner_changed",
            ServiceHeld => "service.held",
            ServiceRenew => "service.renew",
            LockAcquire => "lock.acquire",
            LockRelease => "lock.release",
            LockExpire => "lock.expire",
            LockExtend => "lock.extend",
            LockWait => "lock.wait",
            LockCancel => "lock.cancel",
            MessagePublish => "message.publish",
            ChannelClear => "channel.clear",
            AgentRegister => "agent.register",
            AgentHeartbeat => "agent.heartbeat",
            AgentUnregister => "agent.unregister",
            AgentStale => "agent.stale",
            WebhookAttempt => "webhook.attempt",
            StackUp => "stack.up",
            StackDown => "stack.down",
            StackRestart => "stack.restart",
            StackCrash => "stack.crash",
            StackRestartRequested => "stack.restart_requested",
            SessionBegin => "session.begin",
            SessionPhase => "session.phase",
            SessionNote => "session.note",
            SessionEnd => "session.end",
            SessionAbandon => "session.abandoned",
            SessionTakeover => "session.takeover",
            FilesClaim => "files.claim",
            FilesRelease => "files.release",
            DaemonStart => "daemon.start",
            DaemonStop => "daemon.stop",
            Cleanup => "cleanup",
        }
    }
}

/// One thing that happened. Shared by every consumer.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: u64,
    pub time_ms: u64,
    pub kind: EventKind,
    pub target: String,
    pub actor: Option<Actor>,
    /// As serialized text: an event outlives its request as a retained
    /// message on `pb:<kind>` (the last PB_MSG_RETAIN of each), where a
    /// `Value` tree of the same details costs several times its bytes
    /// (BENCHMARKS.md, issue 20); the activity log stores this text as is.
    pub details: Box<RawValue>,
}

impl Event {
    /// `details` as a `Value`, for the consumers that build JSON around it.
    pub fn details_value(&self) -> Value {
        serde_json::from_str(self.details.get()).unwrap_or(Value::Null)
    }

    pub fn entry(&self) -> ActivityEntry {
        ActivityEntry {
            id: self.id,
            time_ms: self.time_ms,
            action: self.kind.name().to_string(),
            target: self.target.clone(),
            actor: self.actor.clone(),
            details: self.details_value(),
        }
    }

    pub fn row(&self) -> ActivityRow {
        let a = self.actor.clone().unwrap_or_default();
        ActivityRow {
            id: self.id,
            time_ms: self.time_ms,
            action: self.kind.name().to_string(),
            target: self.target.clone(),
            agent: a.agent,
            pid: a.pid,
            uid: a.uid,
            command: a.command.as_deref().map(str::to_string),
            no_actor: self.actor.is_none(),
            details: self.details.get().to_string(),
        }
    }
}

pub struct EventBus {
    next_id: u64,
    /// Ids below this are reserved in the store.
    ceiling: u64,
    followers: broadcast::Sender<Arc<Event>>,
    /// Emitted but not yet handed to the activity log's writer (which
    /// turns them into rows on its own thread).
    pending: Vec<Arc<Event>>,
    log: ActivityLog,
}

impl EventBus {
    pub fn open(store: &Store, activity_db: &std::path::Path) -> Result<EventBus, StoreError> {
        let ceiling = store.event_id_ceiling()?;
        Ok(EventBus {
            log: ActivityLog::open(activity_db)?,
            next_id: ceiling + 1,
            ceiling,
            followers: broadcast::channel(FOLLOW_BUFFER).0,
            pending: Vec::new(),
        })
    }

    /// The next id, reserving a new block in the store when needed. If the
    /// store refuses, ids keep increasing in memory; only a restart after
    /// such a failure could repeat one.
    pub fn allocate(&mut self, store: &mut Store) -> u64 {
        if self.next_id >= self.ceiling {
            let ceiling = self.next_id + ID_BLOCK;
            match store.set_event_id_ceiling(ceiling) {
                Ok(()) => self.ceiling = ceiling,
                Err(e) => tracing::error!("cannot reserve event ids: {e}"),
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The newest id handed out so far.
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Queues the event for the activity table and hands it to followers.
    pub fn record(&mut self, ev: Arc<Event>) {
        // No followers is not an error.
        if self.followers.receiver_count() > 0 {
            let _ = self.followers.send(ev.clone());
        }
        self.pending.push(ev);
        if self.pending.len() >= FLUSH_AT {
            self.flush();
        }
    }

    pub fn log(&self) -> &ActivityLog {
        &self.log
    }

    pub fn follow(&self) -> broadcast::Receiver<Arc<Event>> {
        self.followers.subscribe()
    }

    /// Hands what is pending to the activity log's writer.
    pub fn flush(&mut self) {
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            self.log.append(batch);
        }
    }

    /// Who `caller` is, for the log: the kernel's pid and uid, the
    /// process's command line (read once per connection, by the
    /// transport), and the agent the request named.
    pub fn actor(&self, caller: &Caller, agent: Option<&str>) -> Actor {
        Actor {
            agent: agent.map(str::to_string),
            pid: caller.process.map(|p| p.pid),
            // The real user, not the one a token holder acts for.
            uid: Some(caller.peer_uid),
            command: caller.command.clone(),
        }
    }
}

/// An event as it travels on the `pb:<kind>` pub/sub channel.
pub fn as_message_data(ev: &Event) -> Value {
    serde_json::json!({
        "event": ev.kind.name(),
        "target": ev.target,
        "actor": ev.actor,
        "details": ev.details_value(),
    })
}

impl Core {
    /// Emits one event: the single place every change is announced.
    /// Returns its id.
    pub(crate) fn emit(
        &mut self,
        kind: EventKind,
        target: &str,
        actor: Option<Actor>,
        details: Value,
    ) -> u64 {
        let id = self.bus.allocate(&mut self.store);
        self.metrics.event(kind.name());
        // The lease counters, from the event that announces each change.
        let lease_counter = match kind {
            EventKind::ServiceClaim => Some(&self.metrics.claims),
            EventKind::ServiceRelease => Some(&self.metrics.releases),
            EventKind::ServiceReclaim => Some(&self.metrics.reclaims),
            EventKind::ServiceExpire => Some(&self.metrics.expiries),
            _ => None,
        };
        if let Some(c) = lease_counter {
            c.inc();
        }
        let ev = Arc::new(Event {
            id,
            time_ms: now_ms(),
            kind,
            target: target.to_string(),
            actor,
            details: serde_json::value::to_raw_value(&details).expect("a Value always serializes"),
        });
        if kind != EventKind::MessagePublish {
            self.pubsub.republish(&ev, &self.cfg.coord);
        }
        self.webhooks_on_event(&ev);
        self.bus.record(ev);
        id
    }

    /// `emit` for a request's caller.
    pub(crate) fn emit_by(
        &mut self,
        kind: EventKind,
        target: &str,
        caller: &Caller,
        agent: Option<&str>,
        details: Value,
    ) -> u64 {
        let actor = self.bus.actor(caller, agent);
        self.emit(kind, target, Some(actor), details)
    }
}
