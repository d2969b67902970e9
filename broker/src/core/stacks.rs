//! Stacks (`pb up`) as their supervisors report them. The broker runs no
//! service itself: a supervisor (a pb process of its own) reports its
//! stack's state over its connection, and what happened, which becomes a
//! `stack.*` event (the activity log, webhooks, pub/sub); the stack is
//! known for as long as that connection lives. A restart asked by any
//! client (`pb restart`, HTTP, the dashboard) is one event,
//! `stack.restart_requested`, which the supervisor follows on pub/sub.

use std::collections::HashMap;

use pb_proto::{
    ErrorCode, StackEvent, StackEventKind, StackInfo, StackLogLine, StackLogReply,
    StackRestartReply, StackStatus, StacksReply, WireError,
};

use crate::core::events::EventKind;
use crate::core::{Caller, Core, Outcome, SessionId};
use crate::ids;

/// At most this many stacks at once, and services in one.
pub const MAX_STACKS: usize = 256;
pub const MAX_STACK_SERVICES: usize = 64;
/// At most this many lines in one `stack_log`, and bytes of one line
/// (longer ones are cut, at a character boundary).
pub const MAX_LOG_LINES: usize = 512;
pub const MAX_LOG_LINE: usize = 4096;

#[derive(Default)]
pub(crate) struct Stacks {
    map: HashMap<(u32, String), Registered>,
    /// Whose service each lease is, (uid, lease id) to stack id: `find`
    /// asks for every lease.
    by_lease: HashMap<(u32, String), String>,
}

struct Registered {
    info: StackInfo,
    session: SessionId,
}

impl Stacks {
    /// The stack a lease belongs to, for listings.
    pub(crate) fn of_lease(&self, uid: u32, lease_id: &str) -> Option<&str> {
        self.by_lease
            .get(&(uid, lease_id.to_string()))
            .map(String::as_str)
    }

    fn put(&mut self, key: (u32, String), r: Registered) {
        self.take(&key);
        for s in &r.info.services {
            self.by_lease.insert((key.0, s.id.clone()), key.1.clone());
        }
        self.map.insert(key, r);
    }

    fn take(&mut self, key: &(u32, String)) -> Option<Registered> {
        let r = self.map.remove(key)?;
        for s in &r.info.services {
            self.by_lease.remove(&(key.0, s.id.clone()));
        }
        Some(r)
    }
}

fn kind_of(k: StackEventKind) -> EventKind {
    match k {
        StackEventKind::Up => EventKind::StackUp,
        StackEventKind::Down => EventKind::StackDown,
        StackEventKind::Restart => EventKind::StackRestart,
        StackEventKind::Crash => EventKind::StackCrash,
    }
}

impl Core {
    pub(crate) fn stack_report(
        &mut self,
        caller: &Caller,
        info: StackInfo,
        event: Option<StackEvent>,
    ) -> Result<Outcome, WireError> {
        let session = caller.session.ok_or_else(|| {
            WireError::new(
                ErrorCode::InvalidRequest,
                "a stack is reported over the Unix socket, by its supervisor",
            )
        })?;
        ids::IDS.check("stack id", &info.id, false)?;
        if info.services.len() > MAX_STACK_SERVICES {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("at most {MAX_STACK_SERVICES} services a stack"),
            ));
        }
        for s in &info.services {
            ids::check_id(&s.id)?;
        }
        let key = (caller.uid, info.id.clone());
        match self.stacks.map.get(&key) {
            Some(r) if r.session != session => {
                return Err(WireError::new(
                    ErrorCode::IdConflict,
                    format!(
                        "{} is reported by another supervisor (pid {})",
                        info.id, r.info.supervisor
                    ),
                ))
            }
            None if self.stacks.map.len() >= MAX_STACKS => {
                return Err(WireError::new(
                    ErrorCode::Limit,
                    format!("at most {MAX_STACKS} stacks"),
                ))
            }
            _ => {}
        }
        if let Some(ev) = &event {
            if let Some(name) = &ev.service {
                if !info.services.iter().any(|s| &s.name == name) {
                    return Err(WireError::new(
                        ErrorCode::InvalidRequest,
                        format!("{} has no service {name:?}", info.id),
                    ));
                }
            }
        }
        let id = info.id.clone();
        let status = info.status;
        self.post_stack_state(&id, status);
        if matches!(status, StackStatus::Down | StackStatus::Failed) {
            self.stacks.take(&key);
        } else {
            self.stacks.put(
                key,
                Registered {
                    info: info.clone(),
                    session,
                },
            );
        }
        if let Some(ev) = event {
            let details = serde_json::json!({
                "service": ev.service,
                "detail": ev.detail,
                "status": status,
                "supervisor": info.supervisor,
            });
            self.emit_by(kind_of(ev.kind), &id, caller, None, details);
        }
        Ok(Outcome::of(info))
    }

    pub(crate) fn stacks_list(&self, caller: &Caller) -> Outcome {
        let mut stacks: Vec<StackInfo> = self
            .stacks
            .map
            .iter()
            .filter(|((uid, _), _)| *uid == caller.uid)
            .map(|(_, r)| r.info.clone())
            .collect();
        stacks.sort_by(|a, b| a.id.cmp(&b.id));
        Outcome::of(StacksReply { stacks })
    }

    pub(crate) fn stack_restart(
        &mut self,
        caller: &Caller,
        stack: &str,
        service: &str,
    ) -> Result<Outcome, WireError> {
        ids::IDS.check("stack id", stack, false)?;
        let r = self
            .stacks
            .map
            .get(&(caller.uid, stack.to_string()))
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("{stack} is not up")))?;
        if !r.info.services.iter().any(|s| s.name == service) {
            let names: Vec<&str> = r.info.services.iter().map(|s| s.name.as_str()).collect();
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!(
                    "{stack} has no service {service:?} (it has {})",
                    names.join(", ")
                ),
            ));
        }
        let details = serde_json::json!({ "service": service });
        self.emit_by(
            EventKind::StackRestartRequested,
            stack,
            caller,
            None,
            details,
        );
        Ok(Outcome::of(StackRestartReply {
            stack: stack.to_string(),
            service: service.to_string(),
            requested: true,
        }))
    }

    pub(crate) fn stack_log(
        &mut self,
        caller: &Caller,
        stack: &str,
        lines: Vec<StackLogLine>,
    ) -> Result<Outcome, WireError> {
        if lines.len() > MAX_LOG_LINES {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!("at most {MAX_LOG_LINES} lines a stack_log"),
            ));
        }
        let r = self
            .stacks
            .map
            .get(&(caller.uid, stack.to_string()))
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("{stack} is not up")))?;
        if let Some(l) = lines
            .iter()
            .find(|l| !r.info.services.iter().any(|s| s.name == l.service))
        {
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!("{stack} has no service {:?}", l.service),
            ));
        }
        let posted = lines.len();
        for mut l in lines {
            if l.line.len() > MAX_LOG_LINE {
                let mut end = MAX_LOG_LINE;
                while !l.line.is_char_boundary(end) {
                    end -= 1;
                }
                l.line.truncate(end);
            }
            let id = self.bus.allocate(&mut self.store);
            let channel = format!("pb:log:{stack}:{}", l.service);
            let data = serde_json::json!({ "service": l.service, "line": l.line });
            self.pubsub
                .post(id, channel, l.time_ms, data, &self.cfg.coord);
        }
        Ok(Outcome::of(StackLogReply { posted }))
    }

    /// Posts a stack's status on channel `pb:stacks`, for followers of
    /// states (the dashboard): a message, not an event, so the log keeps
    /// only what happened.
    fn post_stack_state(&mut self, stack: &str, status: StackStatus) {
        let id = self.bus.allocate(&mut self.store);
        let data = serde_json::json!({ "stack": stack, "status": status });
        let now = crate::core::now_ms();
        self.pubsub
            .post(id, "pb:stacks".into(), now, data, &self.cfg.coord);
    }

    /// A connection closed: the stacks it reported are gone with their
    /// supervisor (a clean stop has reported `down` already).
    pub(crate) fn stacks_session_closed(&mut self, session: SessionId) {
        let gone: Vec<(u32, String)> = self
            .stacks
            .map
            .iter()
            .filter(|(_, r)| r.session == session)
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            if let Some(r) = self.stacks.take(&key) {
                self.post_stack_state(&key.1, StackStatus::Down);
                let details = serde_json::json!({
                    "detail": "its supervisor went away",
                    "supervisor": r.info.supervisor,
                });
                self.emit(EventKind::StackDown, &key.1, None, details);
            }
        }
    }
}
