//! The agent registry: agents register, send heartbeats and unregister;
//! each may carry limits (`max_services`, `max_locks`) that the core
//! enforces on the claims and locks made in its name.
//!
//! An agent is stale after `agent_stale_ms` without a heartbeat; one
//! registered with an owning process is gone the moment that process dies
//! (the reaper's exit watch). Either way its services and locks are
//! released and `agent.stale` is emitted. Agents are stored in SQLite; on
//! a restart each gets a fresh stale period, since it could not send
//! heartbeats to a broker that was down.

use std::collections::HashMap;

use pb_platform::ProcessId;
use pb_proto::{
    Actor, AgentArgs, AgentInfo, AgentReply, AgentsReply, ErrorCode, Owner, UnregisterReply,
    WireError,
};
use serde_json::json;

use crate::core::events::EventKind;
use crate::core::jobs::ReaperJob;
use crate::core::{now_ms, Caller, Core, Outcome};
use crate::names;
use crate::rules;
use crate::store::{AgentRecord, StoreError};

/// The largest `max_services` / `max_locks` an agent may declare.
pub const MAX_LIMIT: i64 = 100_000;

pub struct Agent {
    rec: AgentRecord,
    command: Option<String>,
}

impl Agent {
    fn process(&self) -> Option<ProcessId> {
        match (self.rec.pid, self.rec.pid_start) {
            (Some(pid), Some(start_time)) => Some(ProcessId { pid, start_time }),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct Agents {
    map: HashMap<String, Agent>,
}

impl Agents {
    pub fn has(&self, id: &str) -> bool {
        self.map.contains_key(id)
    }

    pub fn processes(&self) -> Vec<ProcessId> {
        self.map.values().filter_map(Agent::process).collect()
    }
}

fn check_text(what: &str, v: Option<String>, max: usize) -> Result<Option<String>, WireError> {
    match v {
        Some(s) if s.len() > max || s.chars().any(char::is_control) => Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("{what} is at most {max} bytes of printable text"),
        )),
        v => Ok(v),
    }
}

fn check_max(what: &str, v: Option<i64>) -> Result<Option<u64>, WireError> {
    match v {
        None => Ok(None),
        Some(n) if (0..=MAX_LIMIT).contains(&n) => Ok(Some(n as u64)),
        Some(n) => Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("{what} {n} is out of range (0 to {MAX_LIMIT})"),
        )),
    }
}

impl Core {
    /// Loads stored agents; those whose process died meanwhile are gone.
    pub(crate) fn load_agents(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let mut dead = Vec::new();
        for mut rec in self.store.load_agents()? {
            rec.last_seen_ms = rec.last_seen_ms.max(now);
            let command = rec.pid.and_then(pb_platform::process::command_of);
            let a = Agent { rec, command };
            if a.process().is_some_and(|p| !p.is_alive()) {
                dead.push(a.rec.id.clone());
            }
            self.agents.map.insert(a.rec.id.clone(), a);
        }
        for id in dead {
            self.agent_gone(&id, EventKind::AgentStale, "process_exited", None);
        }
        Ok(())
    }

    /// The agent a request names must exist and be the caller's user's.
    pub(crate) fn check_agent(
        &self,
        caller: &Caller,
        agent: Option<&str>,
    ) -> Result<(), WireError> {
        let Some(id) = agent else {
            return Ok(());
        };
        names::check_agent(id)?;
        let a = self.agents.map.get(id).ok_or_else(|| {
            WireError::new(
                ErrorCode::NotFound,
                format!("no agent {id} is registered (pb agent register {id})"),
            )
        })?;
        if a.rec.uid != caller.uid {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                format!("agent {id} belongs to another user"),
            ));
        }
        Ok(())
    }

    pub(crate) fn agent_max_locks(&self, id: &str) -> Option<u64> {
        self.agents.map.get(id).and_then(|a| a.rec.max_locks)
    }

    /// `Limit` when the agent already has its `max_services` leases.
    pub(crate) fn check_service_limit(&self, agent: Option<&str>) -> Result<(), WireError> {
        let Some(id) = agent else {
            return Ok(());
        };
        let Some(max) = self.agents.map.get(id).and_then(|a| a.rec.max_services) else {
            return Ok(());
        };
        let has = self.leases_of_agent(id).len() as u64;
        if has >= max {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("agent {id} has {has} services, its limit (max_services {max})"),
            ));
        }
        Ok(())
    }

    fn agent_info(&self, a: &Agent) -> AgentInfo {
        let mut services = self.leases_of_agent(&a.rec.id);
        services.sort();
        AgentInfo {
            id: a.rec.id.clone(),
            name: a.rec.name.clone(),
            kind: a.rec.kind.clone(),
            uid: a.rec.uid,
            pid: a.rec.pid,
            command: a.command.clone(),
            registered_ms: a.rec.registered_ms,
            last_seen_ms: a.rec.last_seen_ms,
            stale_at_ms: a.rec.last_seen_ms + self.cfg.coord.agent_stale_ms,
            max_services: a.rec.max_services,
            max_locks: a.rec.max_locks,
            services,
            locks: self.locks.held_by_agent(&a.rec.id),
            metadata: a.rec.metadata.clone(),
        }
    }

    /// The agent named `id`, after checking the name.
    fn named_agent(&self, id: &str) -> Result<&Agent, WireError> {
        names::check_agent(id)?;
        self.agents
            .map
            .get(id)
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no agent {id}")))
    }

    fn agent_of_caller(&self, caller: &Caller, id: &str) -> Result<&Agent, WireError> {
        let a = self.named_agent(id)?;
        if a.rec.uid != caller.uid {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                format!("agent {id} belongs to another user"),
            ));
        }
        Ok(a)
    }

    pub(crate) fn agent_register(
        &mut self,
        caller: &Caller,
        a: AgentArgs,
    ) -> Result<Outcome, WireError> {
        names::check_agent(&a.id)?;
        let name = check_text("name", a.name, 128)?;
        let kind = check_text("kind", a.kind, 64)?;
        let max_services = check_max("max_services", a.max_services)?;
        let max_locks = check_max("max_locks", a.max_locks)?;
        let metadata = rules::check_metadata(a.metadata)?;
        let process = self.resolve_owner(caller, a.owner)?;
        let existing = match self.agents.map.get(&a.id) {
            Some(old) if old.rec.uid != caller.uid => {
                return Err(WireError::new(
                    ErrorCode::Forbidden,
                    format!("agent {} belongs to another user", a.id),
                ))
            }
            Some(old) => Some(old.rec.registered_ms),
            None => None,
        };
        if existing.is_none() && self.agents.map.len() >= self.cfg.coord.max_agents {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("too many agents (limit {})", self.cfg.coord.max_agents),
            ));
        }
        let now = now_ms();
        let rec = AgentRecord {
            id: a.id.clone(),
            uid: caller.uid,
            name,
            kind,
            pid: process.map(|p| p.pid),
            pid_start: process.map(|p| p.start_time),
            max_services,
            max_locks,
            registered_ms: existing.unwrap_or(now),
            last_seen_ms: now,
            metadata,
        };
        self.store.put_agent(&rec)?;
        let command = process.and_then(|p| self.command_of(caller, p));
        if let Some(p) = process {
            let watch = (a.owner == Owner::Caller)
                .then(|| caller.exit_watch.clone())
                .flatten();
            self.send_to_reaper(ReaperJob::Watch(p, watch));
        }
        let agent = Agent {
            rec,
            command: command.as_deref().map(str::to_string),
        };
        let info = self.agent_info(&agent);
        self.agents.map.insert(a.id.clone(), agent);
        self.emit_by(
            EventKind::AgentRegister,
            &a.id,
            caller,
            Some(&a.id),
            json!({ "name": info.name, "kind": info.kind, "pid": info.pid,
                    "max_services": info.max_services, "max_locks": info.max_locks,
                    "existing": existing.is_some() }),
        );
        Ok(Outcome::of(AgentReply {
            agent: info,
            existing: existing.is_some(),
        }))
    }

    pub(crate) fn agent_heartbeat(
        &mut self,
        caller: &Caller,
        id: &str,
    ) -> Result<Outcome, WireError> {
        self.agent_of_caller(caller, id)?;
        let now = now_ms();
        self.store.touch_agent(id, now)?;
        let a = self.agents.map.get_mut(id).expect("checked above");
        a.rec.last_seen_ms = now;
        let a = &self.agents.map[id];
        let info = self.agent_info(a);
        self.emit_by(EventKind::AgentHeartbeat, id, caller, Some(id), json!({}));
        Ok(Outcome::of(info))
    }

    pub(crate) fn agent_unregister(
        &mut self,
        caller: &Caller,
        id: &str,
    ) -> Result<Outcome, WireError> {
        let info = self.agent_info(self.agent_of_caller(caller, id)?);
        let actor = self.bus.actor(caller, Some(id));
        self.agent_gone(id, EventKind::AgentUnregister, "unregistered", Some(actor));
        Ok(Outcome::of(UnregisterReply { unregistered: info }))
    }

    pub(crate) fn agents_list(&self) -> Outcome {
        let mut agents: Vec<AgentInfo> = self
            .agents
            .map
            .values()
            .map(|a| self.agent_info(a))
            .collect();
        agents.sort_by(|a, b| a.id.cmp(&b.id));
        Outcome::of(AgentsReply { agents })
    }

    pub(crate) fn agent_info_op(&self, id: &str) -> Result<Outcome, WireError> {
        let a = self.named_agent(id)?;
        Ok(Outcome::of(self.agent_info(a)))
    }

    /// Removes an agent and releases what it held: its services and locks.
    pub(crate) fn agent_gone(
        &mut self,
        id: &str,
        kind: EventKind,
        reason: &str,
        actor: Option<Actor>,
    ) {
        if self.agents.map.remove(id).is_none() {
            return;
        }
        if let Err(e) = self.store.delete_agent(id) {
            tracing::error!("cannot forget agent {id}: {e}");
        }
        self.sessions_agent_gone(id);
        let why = format!("agent_{reason}");
        let locks = self.locks_agent_gone(id, &why);
        let ids = self.leases_of_agent(id);
        let services = match self.end_leases(&ids) {
            Ok(ended) => ended,
            Err(e) => {
                tracing::error!("cannot release the services of agent {id}: {}", e.message);
                Vec::new()
            }
        };
        for l in &services {
            self.emit(
                EventKind::ServiceRelease,
                &l.id,
                None,
                json!({ "port": l.port, "reason": why, "agent": id }),
            );
        }
        let services: Vec<String> = services.into_iter().map(|l| l.id).collect();
        tracing::info!(
            "agent {id} is gone ({reason}); released services {services:?} and locks {locks:?}"
        );
        self.emit(
            kind,
            id,
            actor,
            json!({ "reason": reason, "services": services, "locks": locks }),
        );
    }

    /// Agents without a heartbeat for too long go stale.
    pub(crate) fn expire_agents(&mut self, now: u64) {
        let stale_ms = self.cfg.coord.agent_stale_ms;
        let stale: Vec<String> = self
            .agents
            .map
            .values()
            .filter(|a| a.rec.last_seen_ms + stale_ms <= now)
            .map(|a| a.rec.id.clone())
            .collect();
        for id in stale {
            self.agent_gone(&id, EventKind::AgentStale, "no_heartbeat", None);
        }
    }

    /// A process died: agents living with it are gone.
    pub(crate) fn agents_process_exited(&mut self, p: ProcessId) {
        let gone: Vec<String> = self
            .agents
            .map
            .values()
            .filter(|a| a.process() == Some(p))
            .map(|a| a.rec.id.clone())
            .collect();
        for id in gone {
            self.agent_gone(&id, EventKind::AgentStale, "process_exited", None);
        }
    }
}
