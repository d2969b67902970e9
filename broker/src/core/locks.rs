//! Locks with fencing tokens and a fair FIFO queue served by the broker.
//!
//! A lock is held by an owner: a process (by default the caller, as the
//! kernel identifies it; the lock ends the moment it dies, through the
//! reaper's exit watch), a name, or an agent (the lock ends when the agent
//! goes stale or dies). Every acquisition gets a fencing token from one
//! counter shared by all locks: strictly greater than every token handed
//! out before, persisted with the holding in SQLite, so it keeps
//! increasing across restarts.
//!
//! A request that finds the lock held either fails at once (`held`, with
//! the holder, since when and until when) or joins the lock's queue. When a
//! holding ends (release, expiry, owner death), the broker itself hands the
//! lock to the queue's head, in the same step: nobody can overtake a
//! waiter, and no client polls. A waiter that times out or disconnects
//! leaves the queue; a grant that raced with its departure is taken back.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use pb_platform::{ExitWatch, ProcessId};
use pb_proto::{
    Actor, ErrorCode, LockArgs, LockInfo, LockOwnerArg, LockReply, LocksReply, Owner, UnlockReply,
    WireError,
};
use serde_json::json;
use tokio::sync::oneshot;

use crate::core::events::EventKind;
use crate::core::jobs::ReaperJob;
use crate::core::{lock, SharedCore};
use crate::core::{now_ms, Answer, Caller, Core, Outcome, Undo};
use crate::names::{self, NamePattern};
use crate::store::{LockRecord, StoreError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOwner {
    Process(ProcessId),
    Name(String),
    Agent(String),
}

impl LockOwner {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            LockOwner::Process(_) => "process",
            LockOwner::Name(_) => "name",
            LockOwner::Agent(_) => "agent",
        }
    }

    fn name(&self) -> Option<String> {
        match self {
            LockOwner::Process(_) => None,
            LockOwner::Name(n) | LockOwner::Agent(n) => Some(n.clone()),
        }
    }

    pub(crate) fn process(&self) -> Option<ProcessId> {
        match self {
            LockOwner::Process(p) => Some(*p),
            _ => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            LockOwner::Process(p) => format!("pid {}", p.pid),
            LockOwner::Name(n) => format!("owner {n}"),
            LockOwner::Agent(a) => format!("agent {a}"),
        }
    }
}

struct Holding {
    owner: LockOwner,
    /// The agent that asked (or owns): its max_locks counts this holding.
    agent: Option<String>,
    uid: u32,
    token: u64,
    since_ms: u64,
    expires_ms: u64,
    ttl_ms: u64,
    command: Option<String>,
}

impl Holding {
    /// When it expires, as clients see it: `None` while its owner lives.
    fn expiry(&self) -> Option<u64> {
        (self.ttl_ms != UNTIL_EXIT).then_some(self.expires_ms)
    }
}

/// What a request for a lock carries, checked and resolved.
struct Request {
    owner: LockOwner,
    agent: Option<String>,
    uid: u32,
    ttl_ms: u64,
    actor: Option<Actor>,
    watch: Option<Arc<ExitWatch>>,
    /// The owner process's command line, known when the request was
    /// checked (a hand-off grants it later, with no machine to ask).
    command: Option<String>,
}

type GrantSender = oneshot::Sender<Result<LockReply, WireError>>;

struct Waiter {
    request: Request,
    queued: Instant,
    tx: GrantSender,
}

#[derive(Default)]
struct LockQueue {
    holding: Option<Holding>,
    waiters: VecDeque<Waiter>,
}

#[derive(Default)]
pub struct Locks {
    map: HashMap<String, LockQueue>,
    last_token: u64,
    held: usize,
}

impl Locks {
    pub fn held_count(&self) -> usize {
        self.held
    }

    /// Requests queued behind a holder, over every lock.
    pub fn waiter_count(&self) -> usize {
        self.map.values().map(|q| q.waiters.len()).sum()
    }

    /// Held locks by this agent.
    pub fn held_by_agent(&self, agent: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .map
            .iter()
            .filter(|(_, q)| {
                q.holding
                    .as_ref()
                    .is_some_and(|h| h.agent.as_deref() == Some(agent))
            })
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// Every process that owns a holding.
    pub fn owner_processes(&self) -> Vec<ProcessId> {
        self.map
            .values()
            .filter_map(|q| q.holding.as_ref().and_then(|h| h.owner.process()))
            .collect()
    }

    pub fn next_expiry(&self) -> Option<u64> {
        self.map
            .values()
            .filter_map(|q| q.holding.as_ref().map(|h| h.expires_ms))
            .min()
    }
}

fn info(name: &str, h: &Holding, waiters: usize) -> LockInfo {
    LockInfo {
        name: name.to_string(),
        token: h.token,
        owner: h.owner.kind().to_string(),
        pid: h.owner.process().map(|p| p.pid),
        owner_name: h.owner.name(),
        uid: h.uid,
        command: h.command.clone(),
        since_ms: h.since_ms,
        expires_ms: h.expiry(),
        ttl_ms: h.ttl_ms,
        waiters,
    }
}

/// A TTL of 0: the holding has no expiry, and lasts while its owner
/// process lives (`pb lock NAME -- CMD`: CMD holds it however long it
/// runs, even if pb is killed and nobody renews it).
pub const UNTIL_EXIT: u64 = 0;
/// The expiry of such a holding: never (and still an SQLite integer).
const NEVER: u64 = i64::MAX as u64;

/// When a holding of `ttl_ms` taken or renewed at `now` expires.
fn expiry(now: u64, ttl_ms: u64) -> u64 {
    match ttl_ms {
        UNTIL_EXIT => NEVER,
        ttl => now + ttl,
    }
}

fn until_exit_needs_a_process() -> WireError {
    WireError::new(
        ErrorCode::InvalidDuration,
        "a lock TTL of 0 (held while its owner lives) needs a process as the owner",
    )
}

fn held_error(name: &str, h: &Holding, waiters: usize) -> WireError {
    let now = now_ms();
    let until = match h.ttl_ms {
        UNTIL_EXIT => "it is held until that process exits".to_string(),
        _ => format!(
            "it expires in {:.1}s unless renewed",
            h.expires_ms.saturating_sub(now) as f64 / 1000.0
        ),
    };
    WireError::new(
        ErrorCode::Held,
        format!(
            "lock {name} is held by {}{} for {:.1}s; {until}",
            h.owner.describe(),
            h.command
                .as_ref()
                .map(|c| format!(" ({})", c.chars().take(60).collect::<String>()))
                .unwrap_or_default(),
            now.saturating_sub(h.since_ms) as f64 / 1000.0,
        ),
    )
    .with_details(json!({
        "name": name,
        "owner": h.owner.kind(),
        "pid": h.owner.process().map(|p| p.pid),
        "owner_name": h.owner.name(),
        "command": h.command,
        "since_ms": h.since_ms,
        "expires_ms": h.expiry(),
        "waiters": waiters,
    }))
}

/// A request waiting in a lock's queue; `dispatch` awaits it with the
/// core's mutex released.
#[derive(Debug)]
pub struct PendingLock {
    name: String,
    rx: oneshot::Receiver<Result<LockReply, WireError>>,
    deadline: tokio::time::Instant,
}

/// Leaves the queue cleanly however the wait ends: a grant that arrived
/// after the waiter stopped listening is taken back, under the core's lock,
/// so no grant is ever lost in between.
struct WaitGuard {
    core: SharedCore,
    name: String,
    rx: Option<oneshot::Receiver<Result<LockReply, WireError>>>,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Some(mut rx) = self.rx.take() {
            let mut core = lock(&self.core);
            if let Ok(Ok(reply)) = rx.try_recv() {
                core.undo_lock(&self.name, reply.lock.token);
            }
            drop(rx);
            core.drop_gone_waiters(&self.name, "disconnected");
        }
    }
}

fn granted(reply: LockReply) -> Outcome {
    let undo = Undo::Lock {
        name: reply.lock.name.clone(),
        token: reply.lock.token,
    };
    Outcome {
        undo: Some(undo),
        ..Outcome::of(reply)
    }
}

impl PendingLock {
    pub async fn wait(self, core: &SharedCore) -> Result<Outcome, WireError> {
        let PendingLock { name, rx, deadline } = self;
        let mut guard = WaitGuard {
            core: core.clone(),
            name: name.clone(),
            rx: Some(rx),
        };
        let res = tokio::time::timeout_at(deadline, guard.rx.as_mut().expect("set above")).await;
        match res {
            Ok(r) => {
                guard.rx = None;
                match r {
                    Ok(r) => r.map(granted),
                    Err(_) => Err(WireError::new(
                        ErrorCode::Internal,
                        "the broker dropped the waiting request",
                    )),
                }
            }
            Err(_) => {
                let mut rx = guard.rx.take().expect("set above");
                let mut c = lock(core);
                // A grant may have come in the same instant as the timeout.
                if let Ok(r) = rx.try_recv() {
                    return r.map(granted);
                }
                drop(rx);
                c.drop_gone_waiters(&name, "timeout");
                Err(WireError::new(
                    ErrorCode::Timeout,
                    format!("timed out waiting for lock {name}"),
                ))
            }
        }
    }
}

impl Core {
    /// Loads held locks; those whose owner died or that expired while the
    /// broker was down end now.
    pub(crate) fn load_locks(&mut self) -> Result<(), StoreError> {
        let (held, max) = self.store.load_locks()?;
        self.locks.last_token = max;
        let now = now_ms();
        for r in held {
            let owner = match r.owner_kind.as_str() {
                "process" => match (r.owner_pid, r.owner_start) {
                    (Some(pid), Some(start_time)) => {
                        LockOwner::Process(ProcessId { pid, start_time })
                    }
                    _ => continue,
                },
                "agent" => LockOwner::Agent(r.owner_name.clone().unwrap_or_default()),
                _ => LockOwner::Name(r.owner_name.clone().unwrap_or_default()),
            };
            let dead = owner.process().is_some_and(|p| !p.is_alive());
            let command = owner
                .process()
                .and_then(|p| pb_platform::process::command_of(p.pid));
            let agent = match &owner {
                LockOwner::Agent(a) => Some(a.clone()),
                _ => None,
            };
            let q = self.locks.map.entry(r.name.clone()).or_default();
            q.holding = Some(Holding {
                owner,
                agent,
                uid: r.uid,
                token: r.token,
                since_ms: r.since_ms,
                expires_ms: r.expires_ms,
                ttl_ms: r.ttl_ms,
                command,
            });
            self.locks.held += 1;
            if dead {
                self.end_holding(&r.name, EventKind::LockRelease, "owner_died", None);
            } else if r.expires_ms <= now {
                self.end_holding(&r.name, EventKind::LockExpire, "expired", None);
            }
        }
        Ok(())
    }

    fn lock_request(
        &mut self,
        caller: &Caller,
        owner: Option<LockOwnerArg>,
        agent: Option<String>,
        ttl_ms: u64,
    ) -> Result<Request, WireError> {
        self.check_agent(caller, agent.as_deref())?;
        let arg = owner.unwrap_or(match &agent {
            Some(a) => LockOwnerArg::Agent(a.clone()),
            None => LockOwnerArg::Caller,
        });
        let (owner, watch) = self.lock_owner(caller, arg, agent.as_deref())?;
        let agent = match &owner {
            LockOwner::Agent(a) => Some(a.clone()),
            _ => agent,
        };
        let actor = Some(self.bus.actor(caller, agent.as_deref()));
        let command = owner.process().and_then(|p| self.command_of(caller, p));
        Ok(Request {
            owner,
            agent,
            uid: caller.uid,
            ttl_ms,
            actor,
            watch,
            command: command.as_deref().map(str::to_string),
        })
    }

    /// The owner a request names, checked; with the caller's exit watch
    /// when the caller itself is the owner.
    pub(crate) fn lock_owner(
        &mut self,
        caller: &Caller,
        arg: LockOwnerArg,
        agent: Option<&str>,
    ) -> Result<(LockOwner, Option<Arc<ExitWatch>>), WireError> {
        let owner = match arg {
            LockOwnerArg::Caller => {
                let p = caller.process.ok_or_else(|| {
                    WireError::new(
                        ErrorCode::InvalidRequest,
                        "the caller's process is not visible to the broker; name an owner",
                    )
                })?;
                return Ok((LockOwner::Process(p), caller.exit_watch.clone()));
            }
            LockOwnerArg::Pid(pid) => LockOwner::Process(
                self.resolve_owner(caller, Owner::Pid(pid))?
                    .expect("a pid resolves to a process"),
            ),
            LockOwnerArg::Name(n) => {
                names::check_owner(&n)?;
                LockOwner::Name(n)
            }
            LockOwnerArg::Agent(a) => {
                self.check_agent(caller, Some(&a))?;
                LockOwner::Agent(a)
            }
            LockOwnerArg::CallerParent => LockOwner::Process(self.caller_parent(caller)?),
            // Naming itself, a client (Port Daddy's CLI) asks for the
            // default a command gets: its agent, else the shell that ran it.
            LockOwnerArg::Hint(pid) => {
                let arg = match (Core::hinted(caller, pid)?, agent) {
                    (Some(pid), _) => LockOwnerArg::Pid(pid),
                    (None, Some(a)) => LockOwnerArg::Agent(a.to_string()),
                    (None, None) => LockOwnerArg::CallerParent,
                };
                return self.lock_owner(caller, arg, agent);
            }
        };
        Ok((owner, None))
    }

    fn check_lock_ttl(&self, ttl_ms: Option<i64>) -> Result<u64, WireError> {
        let max = self.cfg.coord.lock_max_ttl_ms;
        match ttl_ms {
            None => Ok(self.cfg.coord.lock_ttl_ms),
            Some(0) => Ok(UNTIL_EXIT),
            Some(t) if t > 0 && t as u64 <= max => Ok(t as u64),
            Some(t) => Err(WireError::new(
                ErrorCode::InvalidDuration,
                format!("lock TTL of {t} ms is out of range (1 ms to {max} ms, or 0: while its owner process lives)"),
            )),
        }
    }

    /// `Limit` when the agent already holds its `max_locks`.
    fn check_lock_limit(&self, agent: Option<&str>) -> Result<(), WireError> {
        let Some(max) = agent.and_then(|a| self.agent_max_locks(a)) else {
            return Ok(());
        };
        let agent = agent.expect("checked above");
        let held = self.locks.held_by_agent(agent).len() as u64;
        if held >= max {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("agent {agent} holds {held} locks, its limit (max_locks {max})"),
            ));
        }
        Ok(())
    }

    pub(crate) fn lock_acquire(
        &mut self,
        caller: &Caller,
        a: LockArgs,
    ) -> Result<Outcome, WireError> {
        names::check_lock(&a.name)?;
        let ttl = self.check_lock_ttl(a.ttl_ms)?;
        let max_wait = self.cfg.coord.lock_max_wait_ms;
        let wait_ms = match a.wait_ms {
            None | Some(0) => None,
            Some(w) if w > 0 && w as u64 <= max_wait => Some(w as u64),
            Some(w) => {
                return Err(WireError::new(
                    ErrorCode::InvalidDuration,
                    format!("wait of {w} ms is out of range (0 to {max_wait} ms)"),
                ))
            }
        };
        let req = self.lock_request(caller, a.owner, a.agent, ttl)?;
        if ttl == UNTIL_EXIT && !matches!(req.owner, LockOwner::Process(_)) {
            return Err(until_exit_needs_a_process());
        }
        let name = a.name;
        let q = self.locks.map.get(&name);
        let Some(h) = q.and_then(|q| q.holding.as_ref()) else {
            if self.locks.held >= self.cfg.coord.max_locks {
                return Err(WireError::new(
                    ErrorCode::Limit,
                    format!("too many locks held (limit {})", self.cfg.coord.max_locks),
                ));
            }
            self.check_lock_limit(req.agent.as_deref())?;
            let lock = self.grant(&name, req, 0)?;
            return Ok(granted(LockReply {
                lock,
                existing: false,
                waited_ms: 0,
            }));
        };
        let waiting = q.map_or(0, |q| q.waiters.len());
        if h.owner == req.owner && h.uid == req.uid {
            // The owner asks again: renew, same token; with the TTL it
            // names, or the one it holds by (a holding until exit stays so).
            let ttl = if a.ttl_ms.is_some() { ttl } else { h.ttl_ms };
            let lock = self.extend_holding(&name, ttl, req.actor)?;
            return Ok(Outcome::of(LockReply {
                lock,
                existing: true,
                waited_ms: 0,
            }));
        }
        let Some(wait_ms) = wait_ms else {
            return Err(held_error(&name, h, waiting));
        };
        if waiting >= self.cfg.coord.max_waiters {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!(
                    "too many requests wait for lock {name} (limit {})",
                    self.cfg.coord.max_waiters
                ),
            ));
        }
        self.check_lock_limit(req.agent.as_deref())?;
        let (tx, rx) = oneshot::channel();
        let actor = req.actor.clone();
        let q = self.locks.map.get_mut(&name).expect("held above");
        q.waiters.push_back(Waiter {
            request: req,
            queued: Instant::now(),
            tx,
        });
        let position = q.waiters.len();
        self.emit(
            EventKind::LockWait,
            &name,
            actor,
            json!({ "position": position, "wait_ms": wait_ms }),
        );
        Ok(Outcome {
            pending: Some(PendingLock {
                name,
                rx,
                deadline: tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms),
            }),
            ..Outcome::of(Answer::Queued)
        })
    }

    /// Makes `req` the holder of the free lock `name`: stored first.
    fn grant(&mut self, name: &str, req: Request, waited_ms: u64) -> Result<LockInfo, WireError> {
        let token = self.locks.last_token + 1;
        let now = now_ms();
        let owner_process = req.owner.process();
        let record = LockRecord {
            name: name.to_string(),
            token,
            uid: req.uid,
            owner_kind: req.owner.kind().to_string(),
            owner_name: req.owner.name(),
            owner_pid: owner_process.map(|p| p.pid),
            owner_start: owner_process.map(|p| p.start_time),
            since_ms: now,
            expires_ms: expiry(now, req.ttl_ms),
            ttl_ms: req.ttl_ms,
        };
        self.store.hold_lock(&record)?;
        self.locks.last_token = token;
        self.locks.held += 1;
        let command = req.command;
        let q = self.locks.map.entry(name.to_string()).or_default();
        let h = q.holding.insert(Holding {
            owner: req.owner,
            agent: req.agent,
            uid: req.uid,
            token,
            since_ms: now,
            expires_ms: record.expires_ms,
            ttl_ms: req.ttl_ms,
            command,
        });
        let lock = info(name, h, q.waiters.len());
        if let Some(p) = owner_process {
            self.send_to_reaper(ReaperJob::Watch(p, req.watch));
        }
        self.emit(
            EventKind::LockAcquire,
            name,
            req.actor,
            json!({
                "token": token,
                "owner": lock.owner,
                "owner_name": lock.owner_name,
                "pid": lock.pid,
                "ttl_ms": req.ttl_ms,
                "waited_ms": waited_ms,
            }),
        );
        Ok(lock)
    }

    fn extend_holding(
        &mut self,
        name: &str,
        ttl_ms: u64,
        actor: Option<Actor>,
    ) -> Result<LockInfo, WireError> {
        let expires = expiry(now_ms(), ttl_ms);
        self.store.set_lock_expiry(name, expires, ttl_ms)?;
        let q = self.locks.map.get_mut(name).expect("checked by callers");
        let h = q.holding.as_mut().expect("checked by callers");
        h.expires_ms = expires;
        h.ttl_ms = ttl_ms;
        let lock = info(name, h, q.waiters.len());
        self.emit(
            EventKind::LockExtend,
            name,
            actor,
            json!({ "token": lock.token, "ttl_ms": ttl_ms, "expires_ms": lock.expires_ms }),
        );
        Ok(lock)
    }

    /// Ends the holding of `name` and hands the lock to the next waiter.
    fn end_holding(&mut self, name: &str, kind: EventKind, reason: &str, actor: Option<Actor>) {
        let Some(h) = self.locks.map.get_mut(name).and_then(|q| q.holding.take()) else {
            return;
        };
        if let Err(e) = self.store.free_lock(name) {
            // Memory and disk now disagree until the next holding rewrites
            // the row; a restart would bring back a holding that ended.
            tracing::error!("cannot record the release of lock {name}: {e}");
        }
        self.locks.held -= 1;
        self.emit(
            kind,
            name,
            actor,
            json!({ "token": h.token, "reason": reason, "owner": h.owner.kind(),
                    "pid": h.owner.process().map(|p| p.pid), "owner_name": h.owner.name() }),
        );
        self.grant_next(name);
    }

    /// Serves the queue of the free lock `name`: the first waiter still
    /// listening, whose owner lives and whose agent is under its limit.
    fn grant_next(&mut self, name: &str) {
        loop {
            let Some(q) = self.locks.map.get_mut(name) else {
                return;
            };
            if q.holding.is_some() {
                return;
            }
            let Some(w) = q.waiters.pop_front() else {
                self.locks.map.remove(name);
                return;
            };
            if w.tx.is_closed() {
                self.emit(
                    EventKind::LockCancel,
                    name,
                    w.request.actor.clone(),
                    json!({ "reason": "disconnected" }),
                );
                continue;
            }
            if w.request.owner.process().is_some_and(|p| !p.is_alive()) {
                let _ = w.tx.send(Err(WireError::new(
                    ErrorCode::NotFound,
                    "the owning process exited while waiting",
                )));
                continue;
            }
            if let Err(e) = self.check_lock_limit(w.request.agent.as_deref()) {
                let _ = w.tx.send(Err(e));
                continue;
            }
            let waited_ms = w.queued.elapsed().as_millis() as u64;
            match self.grant(name, w.request, waited_ms) {
                Ok(lock) => {
                    let token = lock.token;
                    let reply = LockReply {
                        lock,
                        existing: false,
                        waited_ms,
                    };
                    if w.tx.send(Ok(reply)).is_err() {
                        self.undo_lock(name, token);
                    }
                    return;
                }
                Err(e) => {
                    let _ = w.tx.send(Err(e));
                }
            }
        }
    }

    /// Removes waiters that stopped listening (timeout, disconnect).
    pub(crate) fn drop_gone_waiters(&mut self, name: &str, reason: &str) {
        let Some(q) = self.locks.map.get_mut(name) else {
            return;
        };
        let mut gone = Vec::new();
        q.waiters.retain_mut(|w| {
            if w.tx.is_closed() {
                gone.push(w.request.actor.take());
                false
            } else {
                true
            }
        });
        for actor in gone {
            self.emit(
                EventKind::LockCancel,
                name,
                actor,
                json!({ "reason": reason }),
            );
        }
        if self
            .locks
            .map
            .get(name)
            .is_some_and(|q| q.holding.is_none() && q.waiters.is_empty())
        {
            self.locks.map.remove(name);
        }
    }

    /// Takes back a grant whose reply was not delivered.
    pub(crate) fn undo_lock(&mut self, name: &str, token: u64) {
        let current = self
            .locks
            .map
            .get(name)
            .and_then(|q| q.holding.as_ref())
            .map(|h| h.token);
        if current == Some(token) {
            self.end_holding(name, EventKind::LockRelease, "undelivered", None);
        }
    }

    /// Checks that the request speaks for the holder of `name`.
    fn check_holder(
        &mut self,
        caller: &Caller,
        name: &str,
        owner: Option<LockOwnerArg>,
        agent: Option<String>,
        force: bool,
    ) -> Result<Option<Actor>, WireError> {
        names::check_lock(name)?;
        let (h_uid, h_owner) = {
            let q = self.locks.map.get(name);
            let h = q.and_then(|q| q.holding.as_ref()).ok_or_else(|| {
                WireError::new(ErrorCode::NotFound, format!("lock {name} is not held"))
            })?;
            (h.uid, h.owner.clone())
        };
        if h_uid != caller.uid {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                format!("lock {name} belongs to another user"),
            ));
        }
        if force {
            self.check_agent(caller, agent.as_deref())?;
            return Ok(Some(self.bus.actor(caller, agent.as_deref())));
        }
        let req = self.lock_request(caller, owner, agent, 1)?;
        // The holding process itself is the holder whatever owner it names:
        // a shell that runs `pb unlock` as its last command execs into it
        // (`bash -c 'pb lock x; work; pb unlock x'`), so the shell's default
        // owner, its parent, would be the shell's own parent there.
        let is_holder = caller
            .process
            .is_some_and(|p| h_owner == LockOwner::Process(p));
        if req.owner != h_owner && !is_holder {
            let q = &self.locks.map[name];
            let h = q.holding.as_ref().expect("checked above");
            let mut e = held_error(name, h, q.waiters.len());
            e.message = format!(
                "{}; you ask as {} (to release it from a holder of your user: pb unlock --force, or ?force=true over HTTP)",
                e.message,
                req.owner.describe()
            );
            return Err(e);
        }
        Ok(req.actor)
    }

    pub(crate) fn lock_release(
        &mut self,
        caller: &Caller,
        name: &str,
        owner: Option<LockOwnerArg>,
        agent: Option<String>,
        force: bool,
    ) -> Result<Outcome, WireError> {
        let actor = self.check_holder(caller, name, owner, agent, force)?;
        let q = &self.locks.map[name];
        let released = info(name, q.holding.as_ref().expect("checked"), q.waiters.len());
        let reason = if force { "forced" } else { "released" };
        self.end_holding(name, EventKind::LockRelease, reason, actor);
        Ok(Outcome::of(UnlockReply { released }))
    }

    pub(crate) fn lock_extend(
        &mut self,
        caller: &Caller,
        name: &str,
        ttl_ms: Option<i64>,
        owner: Option<LockOwnerArg>,
        agent: Option<String>,
    ) -> Result<Outcome, WireError> {
        let ttl = ttl_ms.map(|t| self.check_lock_ttl(Some(t))).transpose()?;
        let actor = self.check_holder(caller, name, owner, agent, false)?;
        let h = self.locks.map[name].holding.as_ref().expect("checked");
        let ttl = ttl.unwrap_or(h.ttl_ms);
        if ttl == UNTIL_EXIT && !matches!(h.owner, LockOwner::Process(_)) {
            return Err(until_exit_needs_a_process());
        }
        let lock = self.extend_holding(name, ttl, actor)?;
        Ok(Outcome::of(LockReply {
            lock,
            existing: true,
            waited_ms: 0,
        }))
    }

    pub(crate) fn locks_list(&self, pattern: Option<&str>) -> Result<Outcome, WireError> {
        let p = pattern.map(NamePattern::parse_name).transpose()?;
        let mut locks: Vec<LockInfo> = self
            .locks
            .map
            .iter()
            .filter(|(n, _)| p.as_ref().is_none_or(|p| p.matches(n)))
            .filter_map(|(n, q)| q.holding.as_ref().map(|h| info(n, h, q.waiters.len())))
            .collect();
        locks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Outcome::of(LocksReply { locks }))
    }

    pub(crate) fn lock_info(&self, name: &str) -> Result<Outcome, WireError> {
        names::check_lock(name)?;
        let q = self.locks.map.get(name);
        let h = q.and_then(|q| q.holding.as_ref()).ok_or_else(|| {
            WireError::new(ErrorCode::NotFound, format!("lock {name} is not held"))
        })?;
        Ok(Outcome::of(info(name, h, q.map_or(0, |q| q.waiters.len()))))
    }

    /// Ends holdings past their expiry.
    pub(crate) fn expire_locks(&mut self, now: u64) {
        if self.locks.next_expiry().is_none_or(|e| e > now) {
            return;
        }
        let due: Vec<String> = self
            .locks
            .map
            .iter()
            .filter(|(_, q)| q.holding.as_ref().is_some_and(|h| h.expires_ms <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.end_holding(&name, EventKind::LockExpire, "expired", None);
        }
    }

    /// A process died: its holdings end (and pass to their queues), and its
    /// queued requests are answered.
    pub(crate) fn locks_process_exited(&mut self, p: ProcessId) {
        let owned: Vec<String> = self
            .locks
            .map
            .iter()
            .filter(|(_, q)| {
                q.holding
                    .as_ref()
                    .is_some_and(|h| h.owner == LockOwner::Process(p))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in owned {
            self.end_holding(&name, EventKind::LockRelease, "owner_died", None);
        }
    }

    /// An agent is gone: the locks it holds end.
    pub(crate) fn locks_agent_gone(&mut self, agent: &str, reason: &str) -> Vec<String> {
        let names = self.locks.held_by_agent(agent);
        for name in &names {
            self.end_holding(name, EventKind::LockRelease, reason, None);
        }
        names
    }
}
