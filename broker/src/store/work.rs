//! Work sessions as stored (migration 4): one row a session, its notes in
//! order, its file claims. A change to a session, its note and its claims
//! is one transaction, so a session is never stored half-changed.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};

/// A work session as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub id: String,
    /// Never reused: the id is `s{seq}`.
    pub seq: u64,
    pub uid: u32,
    pub purpose: String,
    pub dir: Option<String>,
    pub phase: String,
    /// `active`, `abandoned` or `ended`.
    pub state: String,
    /// `process` or `agent`.
    pub owner_kind: String,
    pub owner_pid: Option<u32>,
    pub owner_start: Option<u64>,
    pub agent: Option<String>,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub abandoned_ms: Option<u64>,
    pub takeovers: u32,
    pub notes: u32,
}

/// A note as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct NoteRecord {
    pub session: String,
    pub n: u32,
    pub time_ms: u64,
    pub kind: String,
    pub text: String,
    pub agent: Option<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub command: Option<String>,
}

/// What a change does to a session's file claims.
pub enum FilesChange<'a> {
    Keep,
    Add(&'a [(String, u64)]),
    Remove(&'a [String]),
    RemoveAll,
}

impl Store {
    /// Every stored session with its claims (path, since), and the highest
    /// session number ever given.
    #[allow(clippy::type_complexity)]
    pub fn load_sessions(
        &self,
    ) -> Result<(Vec<(SessionRecord, Vec<(String, u64)>)>, u64), StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, seq, uid, purpose, dir, phase, state, owner_kind, owner_pid, owner_start,
                    agent, started_ms, ended_ms, abandoned_ms, takeovers, notes
             FROM work_sessions ORDER BY seq",
        )?;
        let rows = st.query_map([], |r| {
            Ok(SessionRecord {
                id: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                uid: r.get(2)?,
                purpose: r.get(3)?,
                dir: r.get(4)?,
                phase: r.get(5)?,
                state: r.get(6)?,
                owner_kind: r.get(7)?,
                owner_pid: r.get(8)?,
                owner_start: r.get::<_, Option<i64>>(9)?.map(|v| v as u64),
                agent: r.get(10)?,
                started_ms: r.get::<_, i64>(11)? as u64,
                ended_ms: r.get::<_, Option<i64>>(12)?.map(|v| v as u64),
                abandoned_ms: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
                takeovers: r.get(14)?,
                notes: r.get(15)?,
            })
        })?;
        let sessions: Vec<SessionRecord> = rows.collect::<Result<_, _>>()?;
        let mut files = self
            .conn
            .prepare("SELECT path, since_ms FROM file_claims WHERE session = ?1 ORDER BY path")?;
        let mut out = Vec::with_capacity(sessions.len());
        for s in sessions {
            let claims = files
                .query_map([&s.id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
                })?
                .collect::<Result<_, _>>()?;
            out.push((s, claims));
        }
        let counter: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'session_seq'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let highest = out.iter().map(|(s, _)| s.seq).max().unwrap_or(0);
        Ok((out, highest.max(counter.unwrap_or(0) as u64)))
    }

    /// Stores a session as it now is, with the note it gained and the
    /// change to its claims, in one transaction.
    pub fn save_session(
        &mut self,
        s: &SessionRecord,
        note: Option<&NoteRecord>,
        files: FilesChange<'_>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO work_sessions (id, seq, uid, purpose, dir, phase, state,
                owner_kind, owner_pid, owner_start, agent, started_ms, ended_ms, abandoned_ms,
                takeovers, notes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        )?
        .execute(params![
            s.id,
            s.seq as i64,
            s.uid,
            s.purpose,
            s.dir,
            s.phase,
            s.state,
            s.owner_kind,
            s.owner_pid,
            s.owner_start.map(|v| v as i64),
            s.agent,
            s.started_ms as i64,
            s.ended_ms.map(|v| v as i64),
            s.abandoned_ms.map(|v| v as i64),
            s.takeovers,
            s.notes,
        ])?;
        tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('session_seq', ?1)
             ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
        )?
        .execute([s.seq as i64])?;
        if let Some(n) = note {
            tx.prepare_cached(
                "INSERT INTO session_notes (session, n, time_ms, kind, text, agent, pid, uid, command)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                n.session,
                n.n,
                n.time_ms as i64,
                n.kind,
                n.text,
                n.agent,
                n.pid,
                n.uid,
                n.command
            ])?;
        }
        match files {
            FilesChange::Keep => {}
            FilesChange::Add(paths) => {
                let mut st = tx.prepare_cached(
                    "INSERT OR IGNORE INTO file_claims (session, path, since_ms) VALUES (?1, ?2, ?3)",
                )?;
                for (p, since) in paths {
                    st.execute(params![s.id, p, *since as i64])?;
                }
            }
            FilesChange::Remove(paths) => {
                let mut st =
                    tx.prepare_cached("DELETE FROM file_claims WHERE session = ?1 AND path = ?2")?;
                for p in paths {
                    st.execute(params![s.id, p])?;
                }
            }
            FilesChange::RemoveAll => {
                tx.prepare_cached("DELETE FROM file_claims WHERE session = ?1")?
                    .execute([&s.id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// A session's notes after number `after`, oldest first, at most `limit`.
    pub fn notes_of(
        &self,
        session: &str,
        after: u32,
        limit: usize,
    ) -> Result<Vec<NoteRecord>, StoreError> {
        let mut st = self.conn.prepare_cached(
            "SELECT session, n, time_ms, kind, text, agent, pid, uid, command FROM session_notes
             WHERE session = ?1 AND n > ?2 ORDER BY n LIMIT ?3",
        )?;
        let rows = st.query_map(params![session, after, limit as i64], |r| {
            Ok(NoteRecord {
                session: r.get(0)?,
                n: r.get(1)?,
                time_ms: r.get::<_, i64>(2)? as u64,
                kind: r.get(3)?,
                text: r.get(4)?,
                agent: r.get(5)?,
                pid: r.get(6)?,
                uid: r.get(7)?,
                command: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets ended sessions, their notes and claims.
    pub fn delete_sessions(&mut self, ids: &[String]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for id in ids {
            for table in ["session_notes", "file_claims"] {
                tx.prepare_cached(&format!("DELETE FROM {table} WHERE session = ?1"))?
                    .execute([id])?;
            }
            tx.prepare_cached("DELETE FROM work_sessions WHERE id = ?1")?
                .execute([id])?;
        }
        tx.commit()?;
        Ok(())
    }
}
