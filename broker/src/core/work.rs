//! Work sessions (Port Daddy's agent hand-off): an agent's unit of work,
//! with a purpose and a phase, immutable notes in order, and advisory
//! claims on files of its project.
//!
//! A session belongs to a process or a registered agent. When that owner
//! dies (or the agent goes away) the session is `abandoned`: its notes and
//! claims stay, so nobody tramples the work, until another agent of the
//! same user takes it over (`session_takeover`, Port Daddy's salvage) or
//! ends it. Ending releases its claims. A claim that overlaps another live
//! session's (`filepaths::overlap`) is refused with `held` and the list of
//! conflicts: reported, never silently granted. Everything is stored
//! before it is answered; notes live only in SQLite and are read on
//! request.

use std::collections::{BTreeMap, HashMap};

use pb_platform::ProcessId;
use pb_proto::{
    Actor, ErrorCode, FileClaimInfo, FilesReleaseReply, FilesReply, FilesWhoReply, LockOwnerArg,
    NoteInfo, NoteReply, NotesReply, SessionArgs, SessionEndReply, SessionInfo, SessionReply,
    SessionsReply, WireError,
};
use serde_json::json;

use crate::core::events::EventKind;
use crate::core::jobs::ReaperJob;
use crate::core::locks::LockOwner;
use crate::core::{now_ms, Caller, Core, Outcome};
use crate::filepaths::{self, Claim};
use crate::store::{FilesChange, NoteRecord, SessionRecord, StoreError};

/// Sessions not ended (active or abandoned), per user.
pub const MAX_LIVE: usize = 256;
/// File claims of a user's live sessions together: what one claim is
/// checked against, under the core's mutex.
pub const MAX_CLAIMS_PER_USER: usize = 2048;
/// Takeovers of one session: each writes a `handoff` note, which (like the
/// `end` note) is not refused at `MAX_NOTES`, so this bounds them.
pub const MAX_TAKEOVERS: u32 = 100;
/// Ended sessions kept, with their notes, for reading back.
pub const KEEP_ENDED: usize = 500;
pub const MAX_NOTES: u32 = 1000;
pub const MAX_NOTE: usize = 4096;
pub const MAX_PURPOSE: usize = 256;
pub const MAX_PHASE: usize = 32;
/// Claims a session may hold, and paths one request may name.
pub const MAX_FILES: usize = 256;
pub const MAX_FILES_A_REQUEST: usize = 64;
/// An abandoned session nobody took over ends after this long.
pub const ABANDONED_FOR_MS: u64 = 7 * 24 * 3600 * 1000;
/// Notes one read returns at most.
pub const MAX_NOTES_A_READ: usize = 1000;

pub struct WorkSession {
    rec: SessionRecord,
    command: Option<String>,
    /// Claimed paths (absolute, normalised), since when, compiled.
    files: BTreeMap<String, Held>,
}

/// One claim of a session's.
pub struct Held {
    since: u64,
    claim: Claim,
}

fn held((path, since): (String, u64)) -> (String, Held) {
    let claim = Claim::new(&path);
    (path, Held { since, claim })
}

impl WorkSession {
    fn process(&self) -> Option<ProcessId> {
        match (self.rec.owner_pid, self.rec.owner_start) {
            (Some(pid), Some(start_time)) => Some(ProcessId { pid, start_time }),
            _ => None,
        }
    }

    fn live(&self) -> bool {
        self.rec.state != "ended"
    }

    fn info(&self) -> SessionInfo {
        let r = &self.rec;
        SessionInfo {
            id: r.id.clone(),
            purpose: r.purpose.clone(),
            dir: r.dir.clone(),
            phase: r.phase.clone(),
            state: r.state.clone(),
            uid: r.uid,
            owner: r.owner_kind.clone(),
            pid: r.owner_pid,
            agent: r.agent.clone(),
            command: self.command.clone(),
            started_ms: r.started_ms,
            ended_ms: r.ended_ms,
            abandoned_ms: r.abandoned_ms,
            takeovers: r.takeovers,
            notes: r.notes,
            files: self.files.keys().cloned().collect(),
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("session {} ({:?}", self.rec.id, self.rec.purpose);
        if let Some(a) = &self.rec.agent {
            s += &format!(", agent {a}");
        }
        if let Some(p) = self.rec.owner_pid {
            s += &format!(", pid {p}");
        }
        if self.rec.state == "abandoned" {
            s += ", abandoned: take it over to go on";
        }
        s + ")"
    }
}

#[derive(Default)]
pub struct WorkSessions {
    map: HashMap<String, WorkSession>,
    last_seq: u64,
}

impl WorkSessions {
    pub fn processes(&self) -> Vec<ProcessId> {
        self.map
            .values()
            .filter(|s| s.rec.state == "active")
            .filter_map(WorkSession::process)
            .collect()
    }

    fn live_of(&self, uid: u32) -> impl Iterator<Item = &WorkSession> {
        self.map
            .values()
            .filter(move |s| s.live() && s.rec.uid == uid)
    }
}

fn check_text(what: &str, v: &str, max: usize, lines: bool) -> Result<(), WireError> {
    let bad_char = |c: char| c.is_control() && !(lines && (c == '\n' || c == '\t'));
    if v.trim().is_empty() || v.len() > max || v.chars().any(bad_char) {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "{what} must be 1 to {max} bytes of {}text",
                if lines { "" } else { "single-line " }
            ),
        ));
    }
    Ok(())
}

fn check_phase(p: &str) -> Result<(), WireError> {
    let ok = !p.is_empty()
        && p.len() <= MAX_PHASE
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !ok {
        return Err(WireError::new(
            ErrorCode::InvalidName,
            format!("phase {p:?} must be 1 to {MAX_PHASE} of a-z, A-Z, 0-9, '-', '_' and '.'"),
        ));
    }
    Ok(())
}

fn note_info(n: NoteRecord) -> NoteInfo {
    let from = (n.agent.is_some() || n.pid.is_some()).then_some(Actor {
        agent: n.agent,
        pid: n.pid,
        uid: n.uid,
        command: n.command.map(Into::into),
    });
    NoteInfo {
        session: n.session,
        n: n.n,
        time_ms: n.time_ms,
        kind: n.kind,
        text: n.text,
        from,
    }
}

impl Core {
    /// Loads stored sessions: an active one whose owner died meanwhile is
    /// abandoned now.
    pub(crate) fn load_sessions(&mut self) -> Result<(), StoreError> {
        let (rows, last_seq) = self.store.load_sessions()?;
        self.work.last_seq = last_seq;
        let mut dead = Vec::new();
        for (rec, files) in rows {
            let command = rec.owner_pid.and_then(pb_platform::process::command_of);
            let s = WorkSession {
                rec,
                command,
                files: files.into_iter().map(held).collect(),
            };
            let gone = match s.rec.owner_kind.as_str() {
                "agent" => s.rec.agent.as_ref().is_some_and(|a| !self.agents.has(a)),
                _ => s.process().is_some_and(|p| !p.is_alive()),
            };
            if s.rec.state == "active" && gone {
                dead.push(s.rec.id.clone());
            }
            self.work.map.insert(s.rec.id.clone(), s);
        }
        for id in dead {
            self.abandon(&id, "owner_gone");
        }
        Ok(())
    }

    /// The session `id`, the caller's user's.
    fn session_of(&self, caller: &Caller, id: &str) -> Result<&WorkSession, WireError> {
        let s = self
            .work
            .map
            .get(id)
            .ok_or_else(|| WireError::new(ErrorCode::NotFound, format!("no session {id}")))?;
        if s.rec.uid != caller.uid {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                format!("session {id} belongs to another user"),
            ));
        }
        Ok(s)
    }

    /// The session `id`, the caller's user's, not ended (active or
    /// abandoned).
    fn live_session(&self, caller: &Caller, id: &str) -> Result<&WorkSession, WireError> {
        let s = self.session_of(caller, id)?;
        if !s.live() {
            return Err(WireError::new(
                ErrorCode::Closed,
                format!("session {id} has ended"),
            ));
        }
        Ok(s)
    }

    /// The session `id`, open for work: the caller's user's, and active.
    fn active_session(&self, caller: &Caller, id: &str) -> Result<&WorkSession, WireError> {
        let s = self.session_of(caller, id)?;
        match s.rec.state.as_str() {
            "active" => Ok(s),
            "abandoned" => Err(WireError::new(
                ErrorCode::Closed,
                format!("session {id} is abandoned (its owner is gone): take it over first"),
            )),
            _ => Err(WireError::new(
                ErrorCode::Closed,
                format!("session {id} has ended"),
            )),
        }
    }

    /// The owner a session request names: a process or an agent.
    fn session_owner(
        &mut self,
        caller: &Caller,
        owner: Option<LockOwnerArg>,
        agent: Option<&str>,
    ) -> Result<(LockOwner, Option<std::sync::Arc<pb_platform::ExitWatch>>), WireError> {
        self.check_agent(caller, agent)?;
        let arg = owner.unwrap_or(match agent {
            Some(a) => LockOwnerArg::Agent(a.to_string()),
            None => LockOwnerArg::Caller,
        });
        let (owner, watch) = self.lock_owner(caller, arg, agent)?;
        if let LockOwner::Name(n) = &owner {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("a session is owned by a process or an agent, not a name ({n})"),
            ));
        }
        Ok((owner, watch))
    }

    fn note_record(
        &self,
        s: &SessionRecord,
        caller: Option<&Caller>,
        agent: Option<&str>,
        kind: &str,
        text: String,
    ) -> NoteRecord {
        let actor = caller.map(|c| self.bus.actor(c, agent));
        NoteRecord {
            session: s.id.clone(),
            n: s.notes + 1,
            time_ms: now_ms(),
            kind: kind.to_string(),
            text,
            agent: actor.as_ref().and_then(|a| a.agent.clone()),
            pid: actor.as_ref().and_then(|a| a.pid),
            uid: actor.as_ref().and_then(|a| a.uid),
            command: actor.and_then(|a| a.command).as_deref().map(str::to_string),
        }
    }

    /// Conflicts of `paths` with other live sessions of the caller's user.
    fn file_conflicts(&self, uid: u32, session: &str, paths: &[String]) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        let wanted: Vec<Claim> = paths.iter().map(|p| Claim::new(p)).collect();
        for other in self.work.map.values() {
            if other.rec.id == session || other.rec.uid != uid || !other.live() {
                continue;
            }
            for (p, want) in paths.iter().zip(&wanted) {
                let hits = other
                    .files
                    .iter()
                    .filter(|(_, h)| filepaths::overlap(want, &h.claim));
                for (c, _) in hits {
                    out.push(json!({
                        "path": p, "claimed": c, "session": other.rec.id,
                        "agent": other.rec.agent, "pid": other.rec.owner_pid,
                        "state": other.rec.state, "purpose": other.rec.purpose,
                    }));
                }
            }
        }
        out
    }

    /// The checked, normalised claims `paths` would add to session `s`.
    fn check_claims(&self, s: &WorkSession, paths: &[String]) -> Result<Vec<String>, WireError> {
        let Some(dir) = &s.rec.dir else {
            return Err(WireError::new(
                ErrorCode::InvalidPath,
                format!(
                    "session {} has no project directory to claim files in",
                    s.rec.id
                ),
            ));
        };
        if paths.is_empty() || paths.len() > MAX_FILES_A_REQUEST {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("name 1 to {MAX_FILES_A_REQUEST} paths"),
            ));
        }
        let mut claims = Vec::new();
        for p in paths {
            let c = filepaths::claim_path(dir, p)?;
            if !s.files.contains_key(&c) && !claims.contains(&c) {
                claims.push(c);
            }
        }
        let of_user: usize = self.work.live_of(s.rec.uid).map(|o| o.files.len()).sum();
        if of_user + claims.len() > MAX_CLAIMS_PER_USER {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!(
                    "your live sessions would claim {} paths (limit {MAX_CLAIMS_PER_USER})",
                    of_user + claims.len()
                ),
            ));
        }
        if s.files.len() + claims.len() > MAX_FILES {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!(
                    "session {} would claim {} paths (limit {MAX_FILES})",
                    s.rec.id,
                    s.files.len() + claims.len()
                ),
            ));
        }
        let conflicts = self.file_conflicts(s.rec.uid, &s.rec.id, &claims);
        if let Some(first) = conflicts.first() {
            let holder = &self.work.map[first["session"].as_str().unwrap_or_default()];
            return Err(WireError::new(
                ErrorCode::Held,
                format!(
                    "{} overlaps {} of {}{}",
                    first["path"].as_str().unwrap_or_default(),
                    first["claimed"].as_str().unwrap_or_default(),
                    holder.describe(),
                    match conflicts.len() {
                        1 => String::new(),
                        n => format!(", and {} more conflicts", n - 1),
                    }
                ),
            )
            .with_details(json!({ "conflicts": conflicts })));
        }
        Ok(claims)
    }

    pub(crate) fn session_begin(
        &mut self,
        caller: &Caller,
        a: SessionArgs,
    ) -> Result<Outcome, WireError> {
        check_text("purpose", &a.purpose, MAX_PURPOSE, false)?;
        let phase = a.phase.unwrap_or_else(|| "started".into());
        check_phase(&phase)?;
        let dir = a.dir.as_deref().map(filepaths::project_dir).transpose()?;
        if let Some(n) = &a.note {
            check_text("a note", n, MAX_NOTE, true)?;
        }
        if self.work.live_of(caller.uid).count() >= MAX_LIVE {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("you have {MAX_LIVE} sessions not ended, the limit; end some"),
            ));
        }
        let (owner, watch) = self.session_owner(caller, a.owner, a.agent.as_deref())?;
        let agent = match &owner {
            LockOwner::Agent(x) => Some(x.clone()),
            _ => a.agent,
        };
        let process = owner.process();
        let seq = self.work.last_seq + 1;
        let now = now_ms();
        let mut s = WorkSession {
            rec: SessionRecord {
                id: format!("s{seq}"),
                seq,
                uid: caller.uid,
                purpose: a.purpose,
                dir,
                phase,
                state: "active".into(),
                owner_kind: owner.kind().into(),
                owner_pid: process.map(|p| p.pid),
                owner_start: process.map(|p| p.start_time),
                agent,
                started_ms: now,
                ended_ms: None,
                abandoned_ms: None,
                takeovers: 0,
                notes: 0,
            },
            command: process
                .and_then(|p| self.command_of(caller, p))
                .as_deref()
                .map(str::to_string),
            files: BTreeMap::new(),
        };
        let claims = if a.files.is_empty() {
            Vec::new()
        } else {
            self.check_claims(&s, &a.files)?
        };
        let note = a.note.map(|t| {
            let n = self.note_record(&s.rec, Some(caller), s.rec.agent.as_deref(), "note", t);
            s.rec.notes = 1;
            n
        });
        let added: Vec<(String, u64)> = claims.iter().map(|c| (c.clone(), now)).collect();
        self.store
            .save_session(&s.rec, note.as_ref(), FilesChange::Add(&added))?;
        s.files.extend(added.into_iter().map(held));
        self.work.last_seq = seq;
        if let Some(p) = process {
            self.send_to_reaper(ReaperJob::Watch(p, watch));
        }
        let info = s.info();
        let agent = s.rec.agent.clone();
        self.work.map.insert(s.rec.id.clone(), s);
        self.emit_by(
            EventKind::SessionBegin,
            &info.id,
            caller,
            agent.as_deref(),
            json!({ "purpose": info.purpose, "dir": info.dir, "phase": info.phase,
                    "files": info.files }),
        );
        Ok(Outcome::of(SessionReply { session: info }))
    }

    /// Stores `rec` (a changed copy of session `id`'s record) with `note`
    /// and `files`, then makes it the session's.
    fn commit_session(
        &mut self,
        rec: SessionRecord,
        note: Option<&NoteRecord>,
        files: FilesChange<'_>,
    ) -> Result<(), WireError> {
        self.store.save_session(&rec, note, files)?;
        let s = self.work.map.get_mut(&rec.id).expect("a known session");
        s.rec = rec;
        Ok(())
    }

    pub(crate) fn session_end(
        &mut self,
        caller: &Caller,
        id: &str,
        note: Option<String>,
        agent: Option<String>,
    ) -> Result<Outcome, WireError> {
        let s = self.live_session(caller, id)?;
        if let Some(n) = &note {
            check_text("a note", n, MAX_NOTE, true)?;
        }
        self.check_agent(caller, agent.as_deref())?;
        let mut rec = s.rec.clone();
        let released: Vec<String> = s.files.keys().cloned().collect();
        let agent = agent.or(rec.agent.clone());
        let note = note.map(|t| self.note_record(&rec, Some(caller), agent.as_deref(), "end", t));
        if note.is_some() {
            rec.notes += 1;
        }
        rec.state = "ended".into();
        rec.ended_ms = Some(now_ms());
        self.commit_session(rec, note.as_ref(), FilesChange::RemoveAll)?;
        let s = self.work.map.get_mut(id).expect("checked above");
        s.files.clear();
        let info = s.info();
        self.emit_by(
            EventKind::SessionEnd,
            id,
            caller,
            agent.as_deref(),
            json!({ "released": released, "note": note.is_some() }),
        );
        self.trim_ended();
        Ok(Outcome::of(SessionEndReply {
            session: info,
            released,
        }))
    }

    pub(crate) fn session_phase(
        &mut self,
        caller: &Caller,
        id: &str,
        phase: String,
    ) -> Result<Outcome, WireError> {
        check_phase(&phase)?;
        let s = self.active_session(caller, id)?;
        let mut rec = s.rec.clone();
        let from = std::mem::replace(&mut rec.phase, phase);
        let agent = rec.agent.clone();
        self.commit_session(rec, None, FilesChange::Keep)?;
        let info = self.work.map[id].info();
        self.emit_by(
            EventKind::SessionPhase,
            id,
            caller,
            agent.as_deref(),
            json!({ "from": from, "to": info.phase }),
        );
        Ok(Outcome::of(SessionReply { session: info }))
    }

    /// Another owner takes an abandoned session over, with its notes and
    /// claims; a `handoff` note records it.
    pub(crate) fn session_takeover(
        &mut self,
        caller: &Caller,
        id: &str,
        owner: Option<LockOwnerArg>,
        agent: Option<String>,
    ) -> Result<Outcome, WireError> {
        let s = self.session_of(caller, id)?;
        match s.rec.state.as_str() {
            "abandoned" => {}
            "active" => {
                return Err(WireError::new(
                    ErrorCode::Held,
                    format!(
                        "{} is active; it can be taken over once abandoned",
                        s.describe()
                    ),
                ))
            }
            _ => {
                return Err(WireError::new(
                    ErrorCode::Closed,
                    format!("session {id} has ended"),
                ))
            }
        }
        if s.rec.takeovers >= MAX_TAKEOVERS {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("session {id} was taken over {MAX_TAKEOVERS} times, the limit; end it"),
            ));
        }
        let (owner, watch) = self.session_owner(caller, owner, agent.as_deref())?;
        let s = &self.work.map[id];
        let before = s.describe();
        let mut rec = s.rec.clone();
        let process = owner.process();
        let agent = match &owner {
            LockOwner::Agent(x) => Some(x.clone()),
            _ => agent,
        };
        rec.state = "active".into();
        rec.abandoned_ms = None;
        rec.owner_kind = owner.kind().into();
        rec.owner_pid = process.map(|p| p.pid);
        rec.owner_start = process.map(|p| p.start_time);
        rec.agent = agent.clone();
        rec.takeovers += 1;
        let text = format!("taken over from {before}");
        let note = self.note_record(&rec, Some(caller), agent.as_deref(), "handoff", text);
        rec.notes += 1;
        let command = process.and_then(|p| self.command_of(caller, p));
        self.commit_session(rec, Some(&note), FilesChange::Keep)?;
        if let Some(p) = process {
            self.send_to_reaper(ReaperJob::Watch(p, watch));
        }
        let s = self.work.map.get_mut(id).expect("checked above");
        s.command = command.as_deref().map(str::to_string);
        let info = s.info();
        self.emit_by(
            EventKind::SessionTakeover,
            id,
            caller,
            agent.as_deref(),
            json!({ "from": before, "files": info.files }),
        );
        Ok(Outcome::of(SessionReply { session: info }))
    }

    /// The caller's user's sessions: `live` (active and abandoned, the
    /// default), `active`, `abandoned`, `ended` or `all`; newest first.
    pub(crate) fn sessions_list(
        &self,
        caller: &Caller,
        state: Option<&str>,
    ) -> Result<Outcome, WireError> {
        let state = state.unwrap_or("live");
        let want: fn(&WorkSession, &str) -> bool = match state {
            "live" => |s, _| s.live(),
            "all" => |_, _| true,
            "active" | "abandoned" | "ended" => |s, st| s.rec.state == st,
            other => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("state {other:?} is not one of live, active, abandoned, ended, all"),
                ))
            }
        };
        let mut sessions: Vec<&WorkSession> = self
            .work
            .map
            .values()
            .filter(|s| s.rec.uid == caller.uid && want(s, state))
            .collect();
        sessions.sort_by_key(|s| std::cmp::Reverse(s.rec.seq));
        Ok(Outcome::of(SessionsReply {
            sessions: sessions.into_iter().map(WorkSession::info).collect(),
        }))
    }

    pub(crate) fn session_get(&self, caller: &Caller, id: &str) -> Result<Outcome, WireError> {
        Ok(Outcome::of(SessionReply {
            session: self.session_of(caller, id)?.info(),
        }))
    }

    pub(crate) fn note_add(
        &mut self,
        caller: &Caller,
        session: &str,
        text: String,
        agent: Option<String>,
    ) -> Result<Outcome, WireError> {
        check_text("a note", &text, MAX_NOTE, true)?;
        self.check_agent(caller, agent.as_deref())?;
        let s = self.active_session(caller, session)?;
        if s.rec.notes >= MAX_NOTES {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("session {session} has {MAX_NOTES} notes, its limit"),
            ));
        }
        let mut rec = s.rec.clone();
        let agent = agent.or(rec.agent.clone());
        let note = self.note_record(&rec, Some(caller), agent.as_deref(), "note", text);
        rec.notes += 1;
        self.commit_session(rec, Some(&note), FilesChange::Keep)?;
        self.emit_by(
            EventKind::SessionNote,
            session,
            caller,
            agent.as_deref(),
            json!({ "n": note.n, "bytes": note.text.len() }),
        );
        Ok(Outcome::of(NoteReply {
            note: note_info(note),
        }))
    }

    pub(crate) fn notes_list(
        &self,
        caller: &Caller,
        session: &str,
        after: Option<u32>,
        limit: Option<i64>,
    ) -> Result<Outcome, WireError> {
        self.session_of(caller, session)?;
        let limit = match limit {
            None => MAX_NOTES_A_READ,
            Some(n) if n >= 1 && n as usize <= MAX_NOTES_A_READ => n as usize,
            Some(n) => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("limit {n} is out of range (1 to {MAX_NOTES_A_READ})"),
                ))
            }
        };
        let notes = self.store.notes_of(session, after.unwrap_or(0), limit)?;
        Ok(Outcome::of(NotesReply {
            session: session.to_string(),
            notes: notes.into_iter().map(note_info).collect(),
        }))
    }

    pub(crate) fn files_claim(
        &mut self,
        caller: &Caller,
        session: &str,
        paths: Vec<String>,
    ) -> Result<Outcome, WireError> {
        let s = self.active_session(caller, session)?;
        let claims = self.check_claims(s, &paths)?;
        let rec = s.rec.clone();
        let now = now_ms();
        let added: Vec<(String, u64)> = claims.iter().map(|c| (c.clone(), now)).collect();
        self.commit_session(rec, None, FilesChange::Add(&added))?;
        let s = self.work.map.get_mut(session).expect("checked above");
        s.files.extend(added.into_iter().map(held));
        let files: Vec<String> = s.files.keys().cloned().collect();
        let agent = s.rec.agent.clone();
        self.emit_by(
            EventKind::FilesClaim,
            session,
            caller,
            agent.as_deref(),
            json!({ "paths": claims }),
        );
        Ok(Outcome::of(FilesReply {
            session: session.to_string(),
            claimed: claims,
            files,
        }))
    }

    /// Releases the named claims (as claimed, or relative to the project),
    /// or every claim when `paths` is empty.
    pub(crate) fn files_release(
        &mut self,
        caller: &Caller,
        session: &str,
        paths: Vec<String>,
    ) -> Result<Outcome, WireError> {
        let s = self.live_session(caller, session)?;
        let released: Vec<String> = if paths.is_empty() {
            s.files.keys().cloned().collect()
        } else {
            let dir = s.rec.dir.clone().unwrap_or_else(|| "/".into());
            let mut out = Vec::new();
            for p in &paths {
                let c = filepaths::claim_path(&dir, p)?;
                if !s.files.contains_key(&c) {
                    return Err(WireError::new(
                        ErrorCode::NotFound,
                        format!("session {session} does not claim {c}"),
                    ));
                }
                if !out.contains(&c) {
                    out.push(c);
                }
            }
            out
        };
        let rec = s.rec.clone();
        let agent = rec.agent.clone();
        self.commit_session(rec, None, FilesChange::Remove(&released))?;
        let s = self.work.map.get_mut(session).expect("checked above");
        for c in &released {
            s.files.remove(c);
        }
        self.emit_by(
            EventKind::FilesRelease,
            session,
            caller,
            agent.as_deref(),
            json!({ "paths": released }),
        );
        Ok(Outcome::of(FilesReleaseReply {
            session: session.to_string(),
            released,
        }))
    }

    /// Every live claim of the caller's user that covers `path`.
    pub(crate) fn files_who(&self, caller: &Caller, path: &str) -> Result<Outcome, WireError> {
        let path = filepaths::query_path(path)?;
        let query = Claim::new(&path);
        let mut claims = Vec::new();
        for s in self.work.map.values() {
            if s.rec.uid != caller.uid || !s.live() {
                continue;
            }
            for (c, h) in &s.files {
                if filepaths::overlap(&h.claim, &query) {
                    claims.push(FileClaimInfo {
                        path: c.clone(),
                        session: s.rec.id.clone(),
                        state: s.rec.state.clone(),
                        agent: s.rec.agent.clone(),
                        pid: s.rec.owner_pid,
                        purpose: s.rec.purpose.clone(),
                        since_ms: h.since,
                    });
                }
            }
        }
        claims.sort_by(|a, b| (&a.session, &a.path).cmp(&(&b.session, &b.path)));
        Ok(Outcome::of(FilesWhoReply { path, claims }))
    }

    /// Marks an active session abandoned: its owner is gone.
    fn abandon(&mut self, id: &str, reason: &str) {
        let Some(s) = self.work.map.get(id).filter(|s| s.rec.state == "active") else {
            return;
        };
        let mut rec = s.rec.clone();
        rec.state = "abandoned".into();
        rec.abandoned_ms = Some(now_ms());
        if let Err(e) = self.commit_session(rec, None, FilesChange::Keep) {
            tracing::error!("cannot mark session {id} abandoned: {}", e.message);
            return;
        }
        let files: Vec<String> = self.work.map[id].files.keys().cloned().collect();
        self.emit(
            EventKind::SessionAbandon,
            id,
            None,
            json!({ "reason": reason, "files": files }),
        );
    }

    pub(crate) fn sessions_process_exited(&mut self, p: ProcessId) {
        let gone: Vec<String> = self
            .work
            .map
            .values()
            .filter(|s| s.rec.state == "active" && s.process() == Some(p))
            .map(|s| s.rec.id.clone())
            .collect();
        for id in gone {
            self.abandon(&id, "process_exited");
        }
    }

    pub(crate) fn sessions_agent_gone(&mut self, agent: &str) {
        let gone: Vec<String> = self
            .work
            .map
            .values()
            .filter(|s| {
                s.rec.state == "active"
                    && s.rec.owner_kind == "agent"
                    && s.rec.agent.as_deref() == Some(agent)
            })
            .map(|s| s.rec.id.clone())
            .collect();
        for id in gone {
            self.abandon(&id, "agent_gone");
        }
    }

    /// Ends sessions abandoned too long ago, and forgets the oldest ended
    /// sessions beyond `KEEP_ENDED`.
    pub(crate) fn expire_sessions(&mut self, now: u64) {
        let old: Vec<(String, SessionRecord)> = self
            .work
            .map
            .values()
            .filter(|s| {
                s.rec
                    .abandoned_ms
                    .is_some_and(|t| s.rec.state == "abandoned" && t + ABANDONED_FOR_MS <= now)
            })
            .map(|s| (s.rec.id.clone(), s.rec.clone()))
            .collect();
        for (id, mut rec) in old {
            rec.state = "ended".into();
            rec.ended_ms = Some(now);
            if let Err(e) = self.commit_session(rec, None, FilesChange::RemoveAll) {
                tracing::error!("cannot end abandoned session {id}: {}", e.message);
                continue;
            }
            let released: Vec<String> =
                std::mem::take(&mut self.work.map.get_mut(&id).expect("listed").files)
                    .into_keys()
                    .collect();
            self.emit(
                EventKind::SessionEnd,
                &id,
                None,
                json!({ "released": released, "reason": "abandoned_too_long" }),
            );
        }
        self.trim_ended();
    }

    /// Forgets the sessions that ended longest ago beyond `KEEP_ENDED`.
    fn trim_ended(&mut self) {
        let mut ended: Vec<(u64, u64, String)> = self
            .work
            .map
            .values()
            .filter(|s| !s.live())
            .map(|s| (s.rec.ended_ms.unwrap_or(0), s.rec.seq, s.rec.id.clone()))
            .collect();
        if ended.len() <= KEEP_ENDED {
            return;
        }
        ended.sort();
        let drop: Vec<String> = ended[..ended.len() - KEEP_ENDED]
            .iter()
            .map(|(_, _, id)| id.clone())
            .collect();
        if let Err(e) = self.store.delete_sessions(&drop) {
            tracing::error!("cannot forget ended sessions: {e}");
            return;
        }
        for id in drop {
            self.work.map.remove(&id);
        }
    }
}
