//! The activity log: every event on the bus, kept in SQLite with bounded
//! retention (count and age), queried with filters, or followed live.
//!
//! Entries are written in batches (the bus buffers them; the daemon's
//! coordination tick flushes every 100 ms, and every query flushes first),
//! so logging costs a claim no extra commit. A crash of the broker (kill
//! -9) can lose the last 100 ms of entries, never any state they describe.

use std::collections::VecDeque;
use std::sync::Arc;

use pb_proto::{ActivityArgs, ActivityEntry, ActivityReply, Actor, ErrorCode, WireError};
use tokio::sync::broadcast;

use crate::core::{Core, Outcome};
use crate::events::{Event, EventKind};
use crate::names;
use crate::store::{ActivityQuery, ActivityRow};
use crate::stream::{Stream, StreamNext};

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
    backlog: VecDeque<Arc<str>>,
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
        (ev.id > self.after_id && self.filter.matches(ev)).then(|| {
            StreamNext::Item(
                serde_json::to_string(&ev.entry())
                    .expect("entries serialize")
                    .into(),
            )
        })
    }

    pub async fn next(&mut self) -> StreamNext {
        if let Some(j) = self.backlog.pop_front() {
            return StreamNext::Item(j);
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
        if let Some(j) = self.backlog.pop_front() {
            return Some(StreamNext::Item(j));
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
            command: r.command,
        }),
        action: r.action,
        target: r.target,
        details: serde_json::from_str(&r.details).unwrap_or(serde_json::Value::Null),
    }
}

fn bad(why: String) -> WireError {
    WireError::new(ErrorCode::InvalidRequest, why)
}

impl Core {
    pub(crate) fn activity(&mut self, a: ActivityArgs) -> Result<Outcome, WireError> {
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
        self.bus
            .flush(&mut self.store)
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        let rows = self
            .store
            .query_activity(&ActivityQuery {
                action: filter.action.clone(),
                action_prefix: filter.prefix,
                target: filter.target.clone(),
                agent: filter.agent.clone(),
                since_ms,
                limit,
            })
            .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?;
        let entries: Vec<ActivityEntry> = rows.into_iter().map(entry).collect();
        if !a.follow {
            return Ok(Outcome::of(ActivityReply { entries }));
        }
        let backlog = entries
            .iter()
            .map(|e| Arc::from(serde_json::to_string(e).expect("entries serialize")))
            .collect::<VecDeque<Arc<str>>>();
        let follow = Follow {
            backlog,
            rx: self.bus.follow(),
            filter,
            after_id: self.bus.last_id(),
        };
        Ok(Outcome {
            stream: Some(Stream::Activity(follow)),
            ..Outcome::of(serde_json::json!({ "following": true, "backlog": entries.len() }))
        })
    }

    /// Writes buffered entries; every `trim` calls also applies retention.
    pub(crate) fn flush_activity(&mut self, trim: bool) {
        if let Err(e) = self.bus.flush(&mut self.store) {
            eprintln!("pb: cannot write the activity log: {e}");
        }
        self.flush_webhooks();
        if !trim {
            return;
        }
        let c = &self.cfg.coord;
        let before = crate::core::now_ms().saturating_sub(c.activity_max_age_ms);
        match self.store.trim_activity(c.activity_retain, before) {
            Ok(0) => {}
            Ok(n) => {
                self.emit(
                    EventKind::Cleanup,
                    "activity",
                    None,
                    serde_json::json!({ "removed": n, "reason": "retention" }),
                );
            }
            Err(e) => eprintln!("pb: cannot trim the activity log: {e}"),
        }
    }
}
