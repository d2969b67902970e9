//! The activity log: every event on the bus, kept in SQLite with bounded
//! retention (count and age), queried with filters, or followed live.
//!
//! The log has its own database file (`activity.db`) and its own writer
//! thread: the bus hands it batches of events (every 100 ms from the
//! coordination tick, or every 512 events), and the core never waits for
//! a log write. A query first asks the writer to catch up (a barrier in
//! its queue), then reads through its own connection, both outside the
//! core's mutex. A crash of the broker (kill -9) can lose the last 100 ms
//! of entries, never any state they describe.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pb_proto::{
    ActivityArgs, ActivityEntry, ActivityReply, Actor, ErrorCode, FollowReply, WireError,
};
use tokio::sync::{broadcast, oneshot};

use crate::core::events::Event;
use crate::core::stream::{Stream, StreamNext};
use crate::core::{lock, SharedCore};
use crate::core::{Core, Outcome};
use crate::names;
use crate::store::{ActivityDb, ActivityQuery, ActivityRow, StoreError};

/// Batches queued for the writer; past that, batches are dropped (and
/// counted) rather than holding up the core.
const WRITER_QUEUE: usize = 1024;

enum Job {
    Append(Vec<Arc<Event>>),
    /// Answered once everything queued before it is written.
    Sync(oneshot::Sender<()>),
    /// The same, for a caller that cannot await (shutdown).
    Barrier(std::sync::mpsc::Sender<()>),
    Trim {
        keep: usize,
        before_ms: u64,
    },
}

/// The core's handle on the log's writer thread.
pub struct ActivityLog {
    tx: SyncSender<Job>,
    path: PathBuf,
    dropped: u64,
}

impl ActivityLog {
    pub fn open(path: &Path) -> Result<ActivityLog, StoreError> {
        let db = ActivityDb::open(path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(WRITER_QUEUE);
        std::thread::Builder::new()
            .name("pb-activity".into())
            .spawn(move || writer(db, rx))?;
        Ok(ActivityLog {
            tx,
            path: path.to_path_buf(),
            dropped: 0,
        })
    }

    pub fn append(&mut self, batch: Vec<Arc<Event>>) {
        match self.tx.try_send(Job::Append(batch)) {
            Ok(()) => {}
            Err(TrySendError::Full(Job::Append(b)))
            | Err(TrySendError::Disconnected(Job::Append(b))) => {
                self.dropped += b.len() as u64;
                tracing::warn!(
                    "the activity log cannot keep up; {} entries dropped so far",
                    self.dropped
                );
            }
            Err(_) => {}
        }
    }

    fn sync(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        // A full queue: the query reads what is written so far.
        let _ = self.tx.try_send(Job::Sync(tx));
        rx
    }

    /// Waits (at most 5 s) until everything queued is written.
    pub fn barrier(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        if self.tx.send(Job::Barrier(tx)).is_ok() {
            let _ = rx.recv_timeout(Duration::from_secs(5));
        }
    }

    pub fn trim(&self, keep: usize, before_ms: u64) {
        let _ = self.tx.try_send(Job::Trim { keep, before_ms });
    }
}

/// How long the writer works before it yields the CPU. Where the
/// scheduler packs threads onto one CPU (the KVM guest of BENCHMARKS.md
/// does), a batch written in one go holds a request up for its whole
/// length: a batch of 512 rows ran 0.4 ms on the CPU the broker and its
/// client shared, 146 times a second under the `claim` bench. Steps of 32
/// rows (about 48 µs) took the claim pair's p99 down but the lock pair's
/// (25 µs at p50) up, 68 → 137 µs; steps of 5 µs keep both short.
const STEP: Duration = Duration::from_micros(5);

/// The writer thread: everything queued at once goes into one
/// transaction, row by row, with the CPU yielded every [`STEP`] of work;
/// barriers are answered after it.
fn writer(mut db: ActivityDb, rx: Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut events: Vec<Arc<Event>> = Vec::new();
        let mut done: Vec<Job> = Vec::new();
        let mut trims = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Append(evs) => events.extend(evs),
                Job::Trim { keep, before_ms } => trims.push((keep, before_ms)),
                j => done.push(j),
            }
            if events.len() < 50_000 {
                next = rx.try_recv().ok();
            }
        }
        let mut worked_since = Instant::now();
        let yield_each_step = || {
            if worked_since.elapsed() >= STEP {
                std::thread::yield_now();
                worked_since = Instant::now();
            }
        };
        if let Err(e) = db.append_activity(events.iter().map(|e| e.row()), yield_each_step) {
            tracing::error!("cannot write the activity log: {e}");
        }
        for (keep, before_ms) in trims {
            match db.trim_activity(keep, before_ms) {
                Ok(0) => {}
                Ok(n) => tracing::info!("activity log retention removed {n} entries"),
                Err(e) => tracing::error!("cannot trim the activity log: {e}"),
            }
        }
        for j in done {
            match j {
                Job::Sync(tx) => {
                    let _ = tx.send(());
                }
                Job::Barrier(tx) => {
                    let _ = tx.send(());
                }
                _ => {}
            }
        }
    }
}

/// Most entries one query returns.
pub const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Default)]
struct Filter {
    action: Option<String>,
    prefix: bool,
    target: Option<String>,
    agent: Option<String>,
}

impl Filter {
    fn matches(&self, ev: &Event) -> bool {
        let action_ok = match &self.action {
            None => true,
            Some(a) if self.prefix => ev.kind.name().starts_with(a.as_str()),
            Some(a) => ev.kind.name() == a,
        };
        action_ok
            && self.target.as_ref().is_none_or(|t| *t == ev.target)
            && self
                .agent
                .as_ref()
                .is_none_or(|a| ev.actor.as_ref().and_then(|x| x.agent.as_ref()) == Some(a))
    }
}

/// `pb log --follow`: the matching entries, then new ones as they happen.
pub struct Follow {
    backlog: VecDeque<(u64, Arc<str>)>,
    rx: broadcast::Receiver<Arc<Event>>,
    filter: Filter,
    /// Events up to this id were in the backlog's query.
    after_id: u64,
}

impl Follow {
    fn lagged(n: u64) -> StreamNext {
        StreamNext::End(Some(WireError::new(
            ErrorCode::Lagged,
            format!("follower dropped: it fell {n} events behind; query again with since"),
        )))
    }

    fn accept(&self, ev: &Event) -> Option<StreamNext> {
        (ev.id > self.after_id && self.filter.matches(ev)).then(|| StreamNext::Item {
            id: ev.id,
            json: serde_json::to_string(&ev.entry())
                .expect("entries serialize")
                .into(),
        })
    }

    pub async fn next(&mut self) -> StreamNext {
        if let Some((id, json)) = self.backlog.pop_front() {
            return StreamNext::Item { id, json };
        }
        loop {
            match self.rx.recv().await {
                Ok(ev) => {
                    if let Some(item) = self.accept(&ev) {
                        return item;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => return Self::lagged(n),
                Err(broadcast::error::RecvError::Closed) => return StreamNext::End(None),
            }
        }
    }

    pub fn try_next(&mut self) -> Option<StreamNext> {
        if let Some((id, json)) = self.backlog.pop_front() {
            return Some(StreamNext::Item { id, json });
        }
        loop {
            match self.rx.try_recv() {
                Ok(ev) => {
                    if let Some(item) = self.accept(&ev) {
                        return Some(item);
                    }
                }
                Err(broadcast::error::TryRecvError::Empty) => return None,
                Err(broadcast::error::TryRecvError::Lagged(n)) => return Some(Self::lagged(n)),
                Err(broadcast::error::TryRecvError::Closed) => return Some(StreamNext::End(None)),
            }
        }
    }
}

fn entry(r: ActivityRow) -> ActivityEntry {
    ActivityEntry {
        id: r.id,
        time_ms: r.time_ms,
        actor: (!r.no_actor).then_some(Actor {
            agent: r.agent,
            pid: r.pid,
            uid: r.uid,
            command: r.command.map(Into::into),
        }),
        action: r.action,
        target: r.target,
        details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
    }
}

fn bad(why: String) -> WireError {
    WireError::new(ErrorCode::InvalidRequest, why)
}

/// A checked activity request, ready to run outside the core.
struct Prepared {
    query: ActivityQuery,
    follow: Option<Follow>,
    synced: oneshot::Receiver<()>,
    path: PathBuf,
}

impl Core {
    /// Validates an activity request, hands the writer what is pending and
    /// asks it to catch up; a follower starts listening here, so nothing
    /// between the query and the live entries is missed.
    fn activity_prepare(&mut self, a: ActivityArgs) -> Result<Prepared, WireError> {
        let mut filter = Filter::default();
        if let Some(action) = a.action {
            let (stem, prefix) = match action.strip_suffix('*') {
                Some(stem) => (stem.to_string(), true),
                None => (action.clone(), false),
            };
            if action.len() > 64
                || !stem
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_')
            {
                return Err(bad(format!(
                    "invalid action filter {action:?}: an action such as lock.acquire, or a prefix ending in * (lock.*)"
                )));
            }
            filter.action = Some(stem);
            filter.prefix = prefix;
        }
        if let Some(t) = a.target {
            if t.is_empty() || t.len() > 255 {
                return Err(bad("a target filter is 1 to 255 characters".into()));
            }
            filter.target = Some(t);
        }
        if let Some(agent) = a.agent {
            names::check_agent(&agent)?;
            filter.agent = Some(agent);
        }
        let since_ms = match a.since_ms {
            None => None,
            Some(s) if s >= 0 => Some(s as u64),
            Some(s) => return Err(bad(format!("since_ms {s} is negative"))),
        };
        let limit = match a.limit {
            None => 100,
            Some(n) if n >= 1 && n as u64 <= MAX_LIMIT as u64 => n as usize,
            Some(n) => return Err(bad(format!("limit {n} is out of range (1 to {MAX_LIMIT})"))),
        };
        let query = ActivityQuery {
            action: filter.action.clone(),
            action_prefix: filter.prefix,
            target: filter.target.clone(),
            agent: filter.agent.clone(),
            since_ms,
            limit,
        };
        self.bus.flush();
        let follow = a.follow.then(|| Follow {
            backlog: VecDeque::new(),
            rx: self.bus.follow(),
            filter,
            after_id: self.bus.last_id(),
        });
        Ok(Prepared {
            query,
            follow,
            synced: self.bus.log().sync(),
            path: self.bus.log().path.clone(),
        })
    }
}

/// `activity`: the query runs on a blocking thread with its own
/// connection, after the writer caught up; the core's mutex is not held.
pub async fn query(core: &SharedCore, a: ActivityArgs) -> Result<Outcome, WireError> {
    let p = lock(core).activity_prepare(a)?;
    let _ = p.synced.await;
    let (path, q) = (p.path, p.query);
    let rows = tokio::task::spawn_blocking(move || ActivityDb::reader(&path)?.query_activity(&q))
        .await
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
    let entries: Vec<ActivityEntry> = rows.into_iter().map(entry).collect();
    let Some(mut follow) = p.follow else {
        return Ok(Outcome::of(ActivityReply { entries }));
    };
    follow.backlog = entries
        .iter()
        .map(|e| {
            let json: Arc<str> = serde_json::to_string(e).expect("entries serialize").into();
            (e.id, json)
        })
        .collect();
    Ok(Outcome {
        stream: Some(Stream::Activity(follow)),
        ..Outcome::of(FollowReply {
            following: true,
            backlog: entries.len(),
        })
    })
}
