//! Durable state in SQLite: leases and each id's last port; held locks and
//! every lock's last fencing token; registered agents; work sessions with
//! their notes and file claims (`work.rs`); the activity log;
//! the reserved range of event ids; webhooks and their delivery queue. The
//! activity log has its own database file (`ActivityDb`), written by its
//! own thread, so that logging never holds up the core.
//!
//! WAL with synchronous=NORMAL: a committed transaction survives a crash of
//! the broker (kill -9), which is what "acknowledged" promises; only a crash
//! of the whole machine can lose the last commits, and that also ends every
//! process and socket the leases describe. Schema changes are numbered
//! migrations tracked in `PRAGMA user_version`.
//!
//! The broker is the database's only user (it holds the instance lock), so
//! the connection takes SQLite's exclusive locking mode: no fcntl lock and
//! unlock around every transaction, no shared-memory index. Other programs
//! cannot read the file while the broker runs; they ask the broker.

mod work;

use std::path::Path;

pub use work::{FilesChange, NoteRecord, SessionRecord};

use rusqlite::{params, Connection};

use crate::fingerprint::{self, Fingerprint, WitnessFile};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this pb ({known}); upgrade pb")]
    TooNew { found: i64, known: i64 },
    #[error("starting the activity log's writer: {0}")]
    Thread(#[from] std::io::Error),
    #[error("{0}: {1}")]
    File(std::path::PathBuf, std::io::Error),
    #[error("{db} holds {found} live leases, but {witness} says {said} were acknowledged: its write-ahead log was lost or cut short, or the file was zeroed or replaced. The broker will not start on it, so that no acknowledged lease is lost unsaid. `pb repair` starts it with what the database holds (the leases it lacks are gone) and keeps the old fingerprint beside it; by hand: mv {witness} {witness}.old")]
    Damaged {
        db: std::path::PathBuf,
        witness: std::path::PathBuf,
        found: u64,
        said: u64,
    },
    #[error("{db} is damaged ({problem}). The broker will not start on it. `pb repair` moves it aside and copies into a new database every table that can still be read; or restore it from a backup")]
    Corrupt {
        db: std::path::PathBuf,
        problem: String,
    },
    #[error("writing {0}: {1}")]
    Witness(std::path::PathBuf, std::io::Error),
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    pub id: String,
    pub port: u16,
    pub uid: u32,
    pub owner_pid: Option<u32>,
    pub owner_start: Option<u64>,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
    pub ttl_ms: Option<u64>,
    pub metadata: Option<Value>,
    /// The agent that claimed it.
    pub agent: Option<String>,
    /// The proxy's extra names for it (full hosts, `docs.localhost`).
    pub aliases: Vec<String>,
    /// The number is reserved, and the broker holds no socket on it, so
    /// that its owner can bind it without SO_REUSEADDR (a portserver
    /// client's lease).
    pub number_only: bool,
}

/// A lock row: its last token, and the holding when `held`.
#[derive(Debug, Clone, PartialEq)]
pub struct LockRecord {
    pub name: String,
    pub token: u64,
    pub uid: u32,
    /// `process`, `name` or `agent`.
    pub owner_kind: String,
    /// The owner name or agent id.
    pub owner_name: Option<String>,
    pub owner_pid: Option<u32>,
    pub owner_start: Option<u64>,
    pub since_ms: u64,
    pub expires_ms: u64,
    pub ttl_ms: u64,
}

/// An agent as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    pub id: String,
    pub uid: u32,
    pub name: Option<String>,
    pub kind: Option<String>,
    pub pid: Option<u32>,
    pub pid_start: Option<u64>,
    pub max_services: Option<u64>,
    pub max_locks: Option<u64>,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    pub metadata: Option<Value>,
}

/// An activity row as stored (the bus's event, flattened).
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityRow {
    pub id: u64,
    pub time_ms: u64,
    pub action: String,
    pub target: String,
    pub agent: Option<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub command: Option<String>,
    /// The actor is absent (the broker acted on its own).
    pub no_actor: bool,
    pub details: String,
}

/// What the activity log is asked for.
#[derive(Debug, Clone, Default)]
pub struct ActivityQuery {
    pub action: Option<String>,
    /// `action` ends in `*`: match it as a prefix.
    pub action_prefix: bool,
    pub target: Option<String>,
    pub agent: Option<String>,
    pub since_ms: Option<u64>,
    pub limit: usize,
}

const MIGRATIONS: &[&str] = &[
    // 1: one row per id ever claimed. While `active`, the row is a lease;
    // after release it keeps `port` as the id's sticky memory. One table
    // and no secondary index keep a claim or a release to one statement that
    // writes one page. (One live lease per port is the core's invariant,
    // kept in memory where every claim checks it.)
    "CREATE TABLE services (
        id TEXT PRIMARY KEY,
        port INTEGER NOT NULL,
        active INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        owner_pid INTEGER,
        owner_start INTEGER,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        ttl_ms INTEGER,
        metadata TEXT,
        port_since_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
",
    // 2: coordination. Lock rows stay after release to keep their token
    // (tokens are one counter across all locks, so the newest row always
    // carries the highest). `meta` holds the ceiling of reserved event ids.
    "ALTER TABLE services ADD COLUMN agent TEXT;
    CREATE TABLE locks (
        name TEXT PRIMARY KEY,
        token INTEGER NOT NULL,
        held INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        owner_kind TEXT NOT NULL,
        owner_name TEXT,
        owner_pid INTEGER,
        owner_start INTEGER,
        since_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        ttl_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE agents (
        id TEXT PRIMARY KEY,
        uid INTEGER NOT NULL,
        name TEXT,
        kind TEXT,
        pid INTEGER,
        pid_start INTEGER,
        max_services INTEGER,
        max_locks INTEGER,
        registered_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        metadata TEXT
    ) WITHOUT ROWID;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
",
    // 3: webhooks and their delivery queue. A delivery row is the queue
    // entry and the log of its attempts at once (`log`, a JSON array bounded
    // by the attempt limit); finished rows are trimmed per webhook.
    "CREATE TABLE webhooks (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        events TEXT NOT NULL,
        filter TEXT,
        secret TEXT NOT NULL,
        active INTEGER NOT NULL,
        disabled_reason TEXT,
        created_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE deliveries (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        webhook TEXT NOT NULL,
        event TEXT NOT NULL,
        body TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_ms INTEGER,
        log TEXT NOT NULL
    );
    CREATE INDEX deliveries_queue ON deliveries(webhook, state, next_ms, seq);
",
    // 4: work sessions, their notes and file claims (store/work.rs).
    // `meta.session_seq` keeps the highest session number ever given, so
    // an id is never reused after ended sessions are forgotten.
    "CREATE TABLE work_sessions (
        id TEXT PRIMARY KEY,
        seq INTEGER NOT NULL,
        uid INTEGER NOT NULL,
        purpose TEXT NOT NULL,
        dir TEXT,
        phase TEXT NOT NULL,
        state TEXT NOT NULL,
        owner_kind TEXT NOT NULL,
        owner_pid INTEGER,
        owner_start INTEGER,
        agent TEXT,
        started_ms INTEGER NOT NULL,
        ended_ms INTEGER,
        abandoned_ms INTEGER,
        takeovers INTEGER NOT NULL,
        notes INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE session_notes (
        session TEXT NOT NULL,
        n INTEGER NOT NULL,
        time_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        text TEXT NOT NULL,
        agent TEXT,
        pid INTEGER,
        uid INTEGER,
        command TEXT,
        PRIMARY KEY (session, n)
    ) WITHOUT ROWID;
    CREATE TABLE file_claims (
        session TEXT NOT NULL,
        path TEXT NOT NULL,
        since_ms INTEGER NOT NULL,
        PRIMARY KEY (session, path)
    ) WITHOUT ROWID;
",
    // 5: the proxy's extra names of a lease (a JSON array of hosts), kept
    // with the row so that a restart routes them again.
    "ALTER TABLE services ADD COLUMN names TEXT;",
    // 6: a lease whose number alone is reserved (portpicker's portserver):
    // a restart must not bind a placeholder its owner's bind would hit.
    "ALTER TABLE services ADD COLUMN number_only INTEGER NOT NULL DEFAULT 0;",
];

/// A webhook as stored (the secret too: it signs every delivery).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookRecord {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub filter: Option<String>,
    pub secret: String,
    pub active: bool,
    pub disabled_reason: Option<String>,
    pub created_ms: u64,
}

/// A delivery: one event's payload for one webhook, and its attempts.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub id: String,
    pub webhook: String,
    pub event: String,
    pub body: String,
    pub created_ms: u64,
    /// `pending`, `delivered` or `failed`.
    pub state: String,
    pub attempts: u32,
    pub next_ms: Option<u64>,
    /// The attempts, as a JSON array of `AttemptInfo`.
    pub log: String,
}

const DELIVERY_COLUMNS: &str =
    "id, webhook, event, body, created_ms, state, attempts, next_ms, log";

fn delivery_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRecord> {
    Ok(DeliveryRecord {
        id: r.get(0)?,
        webhook: r.get(1)?,
        event: r.get(2)?,
        body: r.get(3)?,
        created_ms: r.get::<_, i64>(4)? as u64,
        state: r.get(5)?,
        attempts: r.get(6)?,
        next_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
        log: r.get(8)?,
    })
}

pub struct Store {
    conn: Connection,
    /// The live set as committed, and the file that witnesses it
    /// (`fingerprint.rs`); no file for an in-memory store.
    live: Fingerprint,
    witness: Option<(WitnessFile, std::path::PathBuf)>,
}

impl Store {
    /// Opens the database after proving it whole: SQLite's own check, then
    /// the live leases against the fingerprint kept outside it.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        // Damage is what SQLite calls corruption or not a database; any
        // other failure (busy, I/O, permissions) is an error, not damage.
        let problem: String = match conn.query_row("PRAGMA quick_check", [], |r| r.get(0)) {
            Ok(p) => p,
            Err(rusqlite::Error::SqliteFailure(f, msg))
                if matches!(
                    f.code,
                    rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
                ) =>
            {
                msg.unwrap_or_else(|| f.to_string())
            }
            Err(e) => return Err(e.into()),
        };
        if problem != "ok" {
            return Err(StoreError::Corrupt {
                db: path.to_path_buf(),
                problem,
            });
        }
        let has_services: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'services'",
            [],
            |r| r.get(0),
        )?;
        let live = if has_services {
            let mut st = conn.prepare("SELECT id FROM services WHERE active = 1")?;
            let ids: Vec<String> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
            Fingerprint::of(ids.iter().map(String::as_str))
        } else {
            Fingerprint::default()
        };
        let witness_path = fingerprint::path_of(path);
        let (witness, said) = WitnessFile::open(&witness_path)
            .map_err(|e| StoreError::Witness(witness_path.clone(), e))?;
        if let Some(said) = said.filter(|w| !w.accepts(live)) {
            return Err(StoreError::Damaged {
                db: path.to_path_buf(),
                witness: witness_path,
                found: live.count,
                said: said.after.count,
            });
        }
        witness
            .record(live, live)
            .map_err(|e| StoreError::Witness(witness_path.clone(), e))?;
        let mut store = Self::init(conn)?;
        store.live = live;
        store.witness = Some((witness, witness_path));
        Ok(store)
    }

    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    /// Says, before the commit that makes it, that the live set becomes
    /// `next`.
    fn witness(&self, next: Fingerprint) -> Result<(), StoreError> {
        match &self.witness {
            Some((w, path)) => w
                .record(self.live, next)
                .map_err(|e| StoreError::Witness(path.clone(), e)),
            None => Ok(()),
        }
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        // Rows are small; small pages mean fewer bytes written a commit.
        conn.pragma_update(None, "page_size", 1024)?;
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints fsync; fewer, larger ones keep that off most requests.
        conn.pragma_update(None, "wal_autocheckpoint", 1000)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store {
            conn,
            live: Fingerprint::default(),
            witness: None,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        migrate(&mut self.conn, MIGRATIONS)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn load_leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, port, uid, owner_pid, owner_start, created_ms, expires_ms, ttl_ms, metadata, agent, names, number_only
             FROM services WHERE active = 1",
        )?;
        let rows = st.query_map([], |r| {
            let metadata: Option<String> = r.get(8)?;
            Ok(LeaseRecord {
                id: r.get(0)?,
                port: r.get(1)?,
                uid: r.get(2)?,
                owner_pid: r.get(3)?,
                owner_start: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
                created_ms: r.get::<_, i64>(5)? as u64,
                expires_ms: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                ttl_ms: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
                agent: r.get(9)?,
                aliases: r
                    .get::<_, Option<String>>(10)?
                    .and_then(|n| serde_json::from_str(&n).ok())
                    .unwrap_or_default(),
                number_only: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every id's last port, newest first.
    pub fn load_sticky(&self) -> Result<Vec<(String, u16)>, StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT id, port FROM services ORDER BY port_since_ms DESC")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records a lease; its port becomes the id's sticky port. An id's
    /// sticky age is the time it was last given a *different* port. The
    /// core inserts only ids that have no live lease.
    pub fn insert_lease(&mut self, l: &LeaseRecord) -> Result<(), StoreError> {
        let next = self.live.with(&l.id, true);
        self.witness(next)?;
        self.conn
            .prepare_cached(
                "INSERT INTO services (id, port, active, uid, owner_pid, owner_start, created_ms,
                                       expires_ms, ttl_ms, metadata, port_since_ms, agent, names,
                                       number_only)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?6, ?10, ?11, ?12)
                 ON CONFLICT(id) DO UPDATE SET
                    port = excluded.port, active = 1, uid = excluded.uid,
                    owner_pid = excluded.owner_pid, owner_start = excluded.owner_start,
                    created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,
                    ttl_ms = excluded.ttl_ms, metadata = excluded.metadata, agent = excluded.agent,
                    names = excluded.names, number_only = excluded.number_only,
                    port_since_ms = CASE WHEN services.port = excluded.port
                                         THEN services.port_since_ms ELSE excluded.port_since_ms END",
            )?
            .execute(params![
                l.id,
                l.port,
                l.uid,
                l.owner_pid,
                l.owner_start.map(|v| v as i64),
                l.created_ms as i64,
                l.expires_ms.map(|v| v as i64),
                l.ttl_ms.map(|v| v as i64),
                l.metadata.as_ref().map(|m| m.to_string()),
                l.agent,
                (!l.aliases.is_empty()).then(|| serde_json::json!(l.aliases).to_string()),
                l.number_only,
            ])?;
        self.live = next;
        Ok(())
    }

    /// Ends leases; their ids keep their ports as sticky memory.
    pub fn end_leases(&mut self, ids: &[&str]) -> Result<(), StoreError> {
        let end = "UPDATE services SET active = 0 WHERE id = ?1 AND active = 1";
        let tx = self.conn.transaction()?;
        let mut next = self.live;
        {
            let mut st = tx.prepare_cached(end)?;
            for id in ids {
                if st.execute([id])? == 1 {
                    next = next.with(id, false);
                }
            }
        }
        if let Some((w, path)) = &self.witness {
            w.record(self.live, next)
                .map_err(|e| StoreError::Witness(path.clone(), e))?;
        }
        tx.commit()?;
        self.live = next;
        Ok(())
    }

    /// Puts an ended lease's id back to the sticky port it had before
    /// (`None`: the id was never claimed, so it is forgotten).
    pub fn restore_sticky(&mut self, id: &str, port: Option<u16>) -> Result<(), StoreError> {
        match port {
            Some(p) => self
                .conn
                .prepare_cached("UPDATE services SET port = ?2 WHERE id = ?1 AND active = 0")?
                .execute(params![id, p])?,
            None => self
                .conn
                .prepare_cached("DELETE FROM services WHERE id = ?1 AND active = 0")?
                .execute([id])?,
        };
        Ok(())
    }

    pub fn set_owner(
        &mut self,
        id: &str,
        pid: Option<u32>,
        start: Option<u64>,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE services SET owner_pid = ?2, owner_start = ?3 WHERE id = ?1 AND active = 1",
            )?
            .execute(params![id, pid, start.map(|v| v as i64)])?;
        Ok(())
    }

    pub fn set_expiry(&mut self, id: &str, expires_ms: u64, ttl_ms: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE services SET expires_ms = ?2, ttl_ms = ?3 WHERE id = ?1 AND active = 1",
            )?
            .execute(params![id, expires_ms as i64, ttl_ms as i64])?;
        Ok(())
    }

    /// Forgets the oldest sticky ports beyond `keep`, never those of live
    /// leases. Returns the ids forgotten.
    pub fn trim_sticky(&mut self, keep: usize) -> Result<Vec<String>, StoreError> {
        let tx = self.conn.transaction()?;
        let doomed: Vec<String> = {
            let mut st = tx.prepare(
                "SELECT id FROM services WHERE active = 0
                 ORDER BY port_since_ms DESC LIMIT -1 OFFSET ?1",
            )?;
            let rows = st.query_map([keep as i64], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        for id in &doomed {
            tx.execute("DELETE FROM services WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        Ok(doomed)
    }
}

/// Coordination: locks, agents, the activity log, event ids.
impl Store {
    /// Held locks, and the highest token ever handed out.
    pub fn load_locks(&self) -> Result<(Vec<LockRecord>, u64), StoreError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT MAX(token) FROM locks", [], |r| r.get(0))?;
        let mut st = self.conn.prepare(
            "SELECT name, token, uid, owner_kind, owner_name, owner_pid, owner_start, since_ms,
                    expires_ms, ttl_ms FROM locks WHERE held = 1",
        )?;
        let rows = st.query_map([], |r| {
            Ok(LockRecord {
                name: r.get(0)?,
                token: r.get::<_, i64>(1)? as u64,
                uid: r.get(2)?,
                owner_kind: r.get(3)?,
                owner_name: r.get(4)?,
                owner_pid: r.get(5)?,
                owner_start: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                since_ms: r.get::<_, i64>(7)? as u64,
                expires_ms: r.get::<_, i64>(8)? as u64,
                ttl_ms: r.get::<_, i64>(9)? as u64,
            })
        })?;
        let held = rows.collect::<Result<_, _>>()?;
        Ok((held, max.unwrap_or(0) as u64))
    }

    /// Records a holding (and its token): one statement.
    pub fn hold_lock(&mut self, l: &LockRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO locks (name, token, held, uid, owner_kind, owner_name,
                    owner_pid, owner_start, since_ms, expires_ms, ttl_ms)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                l.name,
                l.token as i64,
                l.uid,
                l.owner_kind,
                l.owner_name,
                l.owner_pid,
                l.owner_start.map(|v| v as i64),
                l.since_ms as i64,
                l.expires_ms as i64,
                l.ttl_ms as i64,
            ])?;
        Ok(())
    }

    /// Ends a holding; the row keeps its token.
    pub fn free_lock(&mut self, name: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE locks SET held = 0 WHERE name = ?1")?
            .execute([name])?;
        Ok(())
    }

    pub fn set_lock_expiry(
        &mut self,
        name: &str,
        expires_ms: u64,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE locks SET expires_ms = ?2, ttl_ms = ?3 WHERE name = ?1")?
            .execute(params![name, expires_ms as i64, ttl_ms as i64])?;
        Ok(())
    }

    /// Forgets the free lock rows beyond the newest `keep`. The row with
    /// the highest token is the newest, so the token counter survives.
    pub fn trim_locks(&mut self, keep: usize) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM locks WHERE held = 0 AND name IN (
                SELECT name FROM locks WHERE held = 0 ORDER BY token DESC LIMIT -1 OFFSET ?1)",
            [keep as i64],
        )?)
    }

    pub fn load_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, uid, name, kind, pid, pid_start, max_services, max_locks, registered_ms,
                    last_seen_ms, metadata FROM agents",
        )?;
        let rows = st.query_map([], |r| {
            let metadata: Option<String> = r.get(10)?;
            Ok(AgentRecord {
                id: r.get(0)?,
                uid: r.get(1)?,
                name: r.get(2)?,
                kind: r.get(3)?,
                pid: r.get(4)?,
                pid_start: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
                max_services: r.get::<_, Option<i64>>(6)?.map(|v| v as u64),
                max_locks: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
                registered_ms: r.get::<_, i64>(8)? as u64,
                last_seen_ms: r.get::<_, i64>(9)? as u64,
                metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn put_agent(&mut self, a: &AgentRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO agents (id, uid, name, kind, pid, pid_start, max_services,
                    max_locks, registered_ms, last_seen_ms, metadata)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                a.id,
                a.uid,
                a.name,
                a.kind,
                a.pid,
                a.pid_start.map(|v| v as i64),
                a.max_services.map(|v| v as i64),
                a.max_locks.map(|v| v as i64),
                a.registered_ms as i64,
                a.last_seen_ms as i64,
                a.metadata.as_ref().map(|m| m.to_string()),
            ])?;
        Ok(())
    }

    pub fn touch_agent(&mut self, id: &str, last_seen_ms: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("UPDATE agents SET last_seen_ms = ?2 WHERE id = ?1")?
            .execute(params![id, last_seen_ms as i64])?;
        Ok(())
    }

    pub fn delete_agent(&mut self, id: &str) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM agents WHERE id = ?1")?
            .execute([id])?;
        Ok(())
    }

    /// The end of the reserved range of event ids (0 when none was).
    pub fn event_id_ceiling(&self) -> Result<u64, StoreError> {
        let v: Option<i64> = self
            .conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'event_id_ceiling'",
                [],
                |r| r.get(0),
            )
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        Ok(v.unwrap_or(0) as u64)
    }

    pub fn load_webhooks(&self) -> Result<Vec<WebhookRecord>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, url, events, filter, secret, active, disabled_reason, created_ms
             FROM webhooks ORDER BY created_ms, id",
        )?;
        let rows = st.query_map([], |r| {
            let events: String = r.get(2)?;
            Ok(WebhookRecord {
                id: r.get(0)?,
                url: r.get(1)?,
                events: serde_json::from_str(&events).unwrap_or_default(),
                filter: r.get(3)?,
                secret: r.get(4)?,
                active: r.get(5)?,
                disabled_reason: r.get(6)?,
                created_ms: r.get::<_, i64>(7)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn put_webhook(&mut self, w: &WebhookRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO webhooks (id, url, events, filter, secret, active,
                    disabled_reason, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                w.id,
                w.url,
                serde_json::to_string(&w.events).expect("strings serialize"),
                w.filter,
                w.secret,
                w.active,
                w.disabled_reason,
                w.created_ms as i64,
            ])?;
        Ok(())
    }

    /// Removes a webhook with its queue and log.
    pub fn delete_webhook(&mut self, id: &str) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM deliveries WHERE webhook = ?1", [id])?;
        tx.execute("DELETE FROM webhooks WHERE id = ?1", [id])?;
        tx.commit()?;
        Ok(())
    }

    pub fn insert_deliveries(&mut self, rows: &[DeliveryRecord]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO deliveries (id, webhook, event, body, created_ms, state, attempts,
                    next_ms, log) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for d in rows {
                st.execute(params![
                    d.id,
                    d.webhook,
                    d.event,
                    d.body,
                    d.created_ms as i64,
                    d.state,
                    d.attempts,
                    d.next_ms.map(|v| v as i64),
                    d.log,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The pending delivery of `webhook` due first (oldest on a tie).
    pub fn first_pending(&self, webhook: &str) -> Result<Option<DeliveryRecord>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook = ?1 AND state = 'pending'
             ORDER BY next_ms, seq LIMIT 1"
        );
        let mut st = self.conn.prepare_cached(&sql)?;
        let mut rows = st.query_map([webhook], delivery_row)?;
        Ok(rows.next().transpose()?)
    }

    /// Pending deliveries per webhook.
    pub fn pending_counts(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT webhook, COUNT(*) FROM deliveries WHERE state = 'pending' GROUP BY webhook",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn update_delivery(&mut self, d: &DeliveryRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE deliveries SET state = ?2, attempts = ?3, next_ms = ?4, log = ?5
                 WHERE id = ?1",
            )?
            .execute(params![
                d.id,
                d.state,
                d.attempts,
                d.next_ms.map(|v| v as i64),
                d.log
            ])?;
        Ok(())
    }

    /// The newest `limit` deliveries of `webhook`, newest first.
    pub fn deliveries_of(
        &self,
        webhook: &str,
        limit: usize,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE webhook = ?1
             ORDER BY seq DESC LIMIT ?2"
        );
        let mut st = self.conn.prepare_cached(&sql)?;
        let rows = st.query_map(params![webhook, limit as i64], delivery_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Keeps the newest `keep` finished deliveries of `webhook`.
    pub fn trim_deliveries(&mut self, webhook: &str, keep: usize) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "DELETE FROM deliveries WHERE webhook = ?1 AND state != 'pending' AND seq <=
                 (SELECT seq FROM deliveries WHERE webhook = ?1 AND state != 'pending'
                  ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![webhook, keep as i64])?)
    }

    pub fn set_event_id_ceiling(&mut self, ceiling: u64) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('event_id_ceiling', ?1)",
            )?
            .execute([ceiling as i64])?;
        Ok(())
    }
}

const ACTIVITY_MIGRATIONS: &[&str] = &["CREATE TABLE activity (
        id INTEGER PRIMARY KEY,
        time_ms INTEGER NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        agent TEXT,
        pid INTEGER,
        uid INTEGER,
        command TEXT,
        no_actor INTEGER NOT NULL,
        details TEXT NOT NULL
    );
"];

/// The activity log's database (`activity.db` beside `pb.db`): WAL in
/// normal locking mode, so queries read through their own connections
/// while the log's writer thread appends.
pub struct ActivityDb {
    conn: Connection,
}

/// What `repair` found and did.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Repair {
    /// The store passed every check; nothing was changed.
    Sound { leases: u64 },
    /// The database is whole but holds fewer leases than were
    /// acknowledged: it is kept as it is, the old fingerprint beside it.
    Accepted {
        leases: u64,
        lost: u64,
        old_fingerprint: std::path::PathBuf,
    },
    /// The database was damaged: moved aside, and each table that could
    /// still be read copied into a new one.
    Salvaged {
        damaged: std::path::PathBuf,
        saved: Vec<(String, u64)>,
        lost: Vec<(String, String)>,
        leases: u64,
    },
}

/// Brings the store at `path` back to one the broker starts on, keeping
/// all it can (`pb repair`). The broker must not be running: the caller
/// holds its instance lock.
pub fn repair(path: &Path) -> Result<Repair, StoreError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    // Seconds and nanoseconds: two repairs never take the same name.
    let stamp = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    let witness = fingerprint::path_of(path);
    let renamed = |from: &Path, to: std::path::PathBuf| -> Result<std::path::PathBuf, StoreError> {
        std::fs::rename(from, &to).map_err(|e| StoreError::File(from.to_path_buf(), e))?;
        Ok(to)
    };
    let aside = |p: &Path, what: &str| {
        renamed(
            p,
            std::path::PathBuf::from(format!("{}.{what}-{stamp}", p.display())),
        )
    };
    match Store::open(path) {
        Ok(s) => Ok(Repair::Sound {
            leases: s.live.count,
        }),
        Err(StoreError::Damaged { found, said, .. }) => {
            let old_fingerprint = aside(&witness, "old")?;
            let s = Store::open(path)?;
            debug_assert_eq!(s.live.count, found);
            Ok(Repair::Accepted {
                leases: found,
                lost: said.saturating_sub(found),
                old_fingerprint,
            })
        }
        Err(StoreError::Corrupt { .. }) => {
            let damaged = std::path::PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
            // Its log and index first, under the names SQLite looks for, so
            // that no stale log is ever left beside a new database.
            for suffix in ["-wal", "-shm"] {
                let from = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
                if from.exists() {
                    renamed(&from, format!("{}{suffix}", damaged.display()).into())?;
                }
            }
            renamed(path, damaged.clone())?;
            if witness.exists() {
                aside(&witness, "old")?;
            }
            drop(Store::open(path)?);
            let (saved, lost) = salvage(path, &damaged)?;
            // The new fingerprint says what the copy holds.
            std::fs::remove_file(&witness).map_err(|e| StoreError::File(witness.clone(), e))?;
            let s = Store::open(path)?;
            Ok(Repair::Salvaged {
                damaged,
                saved,
                lost,
                leases: s.live.count,
            })
        }
        Err(e) => Err(e),
    }
}

/// Copies into the new database at `path` each table of `damaged` that can
/// still be read: the columns both have, row by row in key order, so a bad
/// page costs only the rows behind it. The damaged file is only read.
/// Counters the lost rows carried (fencing tokens, event ids) are raised
/// past anything they can have reached, so neither ever goes back.
#[allow(clippy::type_complexity)]
fn salvage(
    path: &Path,
    damaged: &Path,
) -> Result<(Vec<(String, u64)>, Vec<(String, String)>), StoreError> {
    let mut conn = Connection::open(path)?;
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let (mut saved, mut lost) = (Vec::new(), Vec::new());
    let uri = format!("file:{}?mode=ro", damaged.display());
    if let Err(e) = conn.execute("ATTACH DATABASE ?1 AS old", [uri]) {
        lost.extend(tables.into_iter().map(|t| (t, e.to_string())));
    } else {
        for t in tables {
            match copy_table(&mut conn, &t) {
                Ok((rows, None)) => saved.push((t, rows)),
                Ok((rows, Some(why))) => {
                    saved.push((t.clone(), rows));
                    lost.push((t, format!("rows after the first {rows}: {why}")));
                }
                Err(e) => lost.push((t, e.to_string())),
            }
        }
    }
    // Time-based floors: far above any counter, and still rising.
    let floor = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    conn.execute(
        "INSERT OR REPLACE INTO locks (name, token, held, uid, owner_kind, since_ms, expires_ms, ttl_ms) \
         SELECT 'pb:repair', ?1, 0, 0, 'name', ?1, 0, 0 \
         WHERE COALESCE((SELECT MAX(token) FROM locks), 0) < ?1",
        [floor],
    )?;
    conn.execute(
        "INSERT OR REPLACE INTO meta (key, value) SELECT 'event_id_ceiling', ?1 \
         WHERE COALESCE((SELECT value FROM meta WHERE key = 'event_id_ceiling'), 0) < ?1",
        [floor],
    )?;
    Ok((saved, lost))
}

/// One table's readable rows, by the columns both databases have; the
/// number copied, and why it stopped early, if it did.
fn copy_table(conn: &mut Connection, t: &str) -> Result<(u64, Option<String>), StoreError> {
    let columns = |schema: &str| -> Result<Vec<String>, StoreError> {
        let mut st = conn.prepare(&format!("PRAGMA {schema}.table_info(\"{t}\")"))?;
        let names = st.query_map([], |r| r.get::<_, String>(1))?;
        Ok(names.collect::<Result<_, _>>()?)
    };
    let old = columns("old")?;
    if old.is_empty() {
        return Ok((0, Some("the damaged database has no such table".into())));
    }
    let shared: Vec<String> = columns("main")?
        .into_iter()
        .filter(|c| old.contains(c))
        .map(|c| format!("\"{c}\""))
        .collect();
    let list = shared.join(", ");
    let marks = vec!["?"; shared.len()].join(", ");
    let tx = conn.transaction()?;
    let mut copied = 0u64;
    let stopped = {
        let mut read = tx.prepare(&format!("SELECT {list} FROM old.\"{t}\""))?;
        let mut write = tx.prepare(&format!(
            "INSERT OR IGNORE INTO main.\"{t}\" ({list}) VALUES ({marks})"
        ))?;
        let mut rows = read.query([])?;
        loop {
            match rows.next() {
                Ok(Some(row)) => {
                    let values: Vec<rusqlite::types::Value> = (0..shared.len())
                        .map(|i| row.get(i))
                        .collect::<Result<_, _>>()?;
                    write.execute(rusqlite::params_from_iter(values))?;
                    copied += 1;
                }
                Ok(None) => break None,
                // A bad page: what came before it is kept.
                Err(e) => break Some(e.to_string()),
            }
        }
    };
    tx.commit()?;
    Ok((copied, stopped))
}

/// Brings a database to the newest of `migrations`, one transaction each,
/// its version in `PRAGMA user_version`; a newer database than this
/// broker knows is refused.
fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), StoreError> {
    let known = migrations.len() as i64;
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > known {
        return Err(StoreError::TooNew { found, known });
    }
    for (i, sql) in migrations.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

/// A store failure inside a request: the request fails as `internal`.
impl From<StoreError> for pb_proto::WireError {
    fn from(e: StoreError) -> pb_proto::WireError {
        pb_proto::WireError::new(pb_proto::ErrorCode::Internal, e.to_string())
    }
}

impl ActivityDb {
    pub fn open(path: &Path) -> Result<ActivityDb, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut db = ActivityDb { conn };
        migrate(&mut db.conn, ACTIVITY_MIGRATIONS)?;
        Ok(db)
    }

    /// A read-only connection for one query.
    pub fn reader(path: &Path) -> Result<ActivityDb, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(ActivityDb { conn })
    }

    /// Appends activity rows in one transaction, calling `after_row` after
    /// each.
    pub fn append_activity(
        &mut self,
        rows: impl IntoIterator<Item = ActivityRow>,
        mut after_row: impl FnMut(),
    ) -> Result<(), StoreError> {
        let mut rows = rows.into_iter().peekable();
        if rows.peek().is_none() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO activity (id, time_ms, action, target, agent, pid, uid,
                    command, no_actor, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for r in rows {
                st.execute(params![
                    r.id as i64,
                    r.time_ms as i64,
                    r.action,
                    r.target,
                    r.agent,
                    r.pid,
                    r.uid,
                    r.command,
                    r.no_actor,
                    r.details,
                ])?;
                after_row();
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes entries older than `before_ms` and beyond the newest `keep`.
    pub fn trim_activity(&mut self, keep: usize, before_ms: u64) -> Result<usize, StoreError> {
        let old = self.conn.execute(
            "DELETE FROM activity WHERE time_ms < ?1",
            [before_ms as i64],
        )?;
        let over = self.conn.execute(
            "DELETE FROM activity WHERE id <= (SELECT id FROM activity ORDER BY id DESC
                LIMIT 1 OFFSET ?1)",
            [keep as i64],
        )?;
        Ok(old + over)
    }

    /// The newest `q.limit` matching entries, oldest first.
    pub fn query_activity(&self, q: &ActivityQuery) -> Result<Vec<ActivityRow>, StoreError> {
        let mut sql = String::from(
            "SELECT id, time_ms, action, target, agent, pid, uid, command, no_actor, details
             FROM activity WHERE 1=1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(a) = &q.action {
            if q.action_prefix {
                sql.push_str(" AND substr(action, 1, length(?)) = ?");
                args.push(a.clone().into());
                args.push(a.clone().into());
            } else {
                sql.push_str(" AND action = ?");
                args.push(a.clone().into());
            }
        }
        if let Some(t) = &q.target {
            sql.push_str(" AND target = ?");
            args.push(t.clone().into());
        }
        if let Some(a) = &q.agent {
            sql.push_str(" AND agent = ?");
            args.push(a.clone().into());
        }
        if let Some(s) = q.since_ms {
            sql.push_str(" AND time_ms >= ?");
            args.push((s as i64).into());
        }
        sql.push_str(" ORDER BY id DESC LIMIT ?");
        args.push((q.limit as i64).into());
        let mut st = self.conn.prepare(&sql)?;
        let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
            Ok(ActivityRow {
                id: r.get::<_, i64>(0)? as u64,
                time_ms: r.get::<_, i64>(1)? as u64,
                action: r.get(2)?,
                target: r.get(3)?,
                agent: r.get(4)?,
                pid: r.get(5)?,
                uid: r.get(6)?,
                command: r.get(7)?,
                no_actor: r.get(8)?,
                details: r.get(9)?,
            })
        })?;
        let mut out: Vec<ActivityRow> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, port: u16) -> LeaseRecord {
        LeaseRecord {
            id: id.into(),
            port,
            uid: 1000,
            owner_pid: Some(5),
            owner_start: Some(77),
            created_ms: 1,
            expires_ms: Some(99),
            ttl_ms: Some(98),
            metadata: Some(serde_json::json!({"k": "v"})),
            agent: None,
            aliases: vec![format!("{id}-docs.localhost")],
            number_only: port % 2 == 1,
        }
    }

    #[test]
    fn leases_round_trip_and_unique_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let mut s = Store::open(&path).unwrap();
            s.insert_lease(&rec("a", 3100)).unwrap();
            s.insert_lease(&rec("b", 3101)).unwrap();
            s.end_leases(&["b"]).unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(s.load_leases().unwrap(), vec![rec("a", 3100)]);
        let sticky = s.load_sticky().unwrap();
        assert!(sticky.contains(&("b".into(), 3101)) && sticky.contains(&("a".into(), 3100)));
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        Store::open(&path).unwrap();
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }

    #[test]
    fn trims_oldest_sticky_but_not_live() {
        let mut s = Store::open_in_memory().unwrap();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            let mut r = rec(id, 3100 + i as u16);
            r.created_ms = i as u64;
            s.insert_lease(&r).unwrap();
        }
        s.end_leases(&["a", "b", "c"]).unwrap();
        // d is live; of a, b, c keep the newest one (c).
        let gone = s.trim_sticky(1).unwrap();
        assert_eq!(gone.len(), 2);
        let ids: Vec<String> = s
            .load_sticky()
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(ids, vec!["d".to_string(), "c".to_string()]);
    }
}
