//! Durable state in SQLite: leases and each id's last port.
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

use std::path::Path;

use rusqlite::{params, Connection};
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database schema version {found} is newer than this pb ({known}); upgrade pb")]
    TooNew { found: i64, known: i64 },
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
];

pub struct Store {
    conn: Connection,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    pub fn open_in_memory() -> Result<Store, StoreError> {
        Self::init(Connection::open_in_memory()?)
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
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::TooNew { found, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    pub fn load_leases(&self) -> Result<Vec<LeaseRecord>, StoreError> {
        let mut st = self.conn.prepare(
            "SELECT id, port, uid, owner_pid, owner_start, created_ms, expires_ms, ttl_ms, metadata
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
    /// sticky age is the time it was last given a *different* port.
    pub fn insert_lease(&mut self, l: &LeaseRecord) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO services (id, port, active, uid, owner_pid, owner_start, created_ms,
                                       expires_ms, ttl_ms, metadata, port_since_ms)
                 VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?6)
                 ON CONFLICT(id) DO UPDATE SET
                    port = excluded.port, active = 1, uid = excluded.uid,
                    owner_pid = excluded.owner_pid, owner_start = excluded.owner_start,
                    created_ms = excluded.created_ms, expires_ms = excluded.expires_ms,
                    ttl_ms = excluded.ttl_ms, metadata = excluded.metadata,
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
            ])?;
        Ok(())
    }

    /// Ends leases; their ids keep their ports as sticky memory.
    pub fn end_leases(&mut self, ids: &[&str]) -> Result<(), StoreError> {
        let end = "UPDATE services SET active = 0 WHERE id = ?1";
        if let [id] = ids {
            self.conn.prepare_cached(end)?.execute([id])?;
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare_cached(end)?;
            for id in ids {
                st.execute([id])?;
            }
        }
        tx.commit()?;
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
