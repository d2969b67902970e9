//! Coordination glue: runs the periodic work of the coordination modules
//! (`locks`, `pubsub`, `agents`, `work`, `activity`: expiry, staleness,
//! abandonment, retention,
//! activity flushes) and tells them when a process dies.

use std::time::Duration;

use pb_platform::ProcessId;

use crate::core::events::EventKind;
use crate::core::{lock, SharedCore};
use crate::core::{now_ms, Core};
use crate::store::StoreError;

/// How often the coordination tick runs: the resolution of lock expiry
/// and the longest an activity entry waits to be written.
pub const TICK: Duration = Duration::from_millis(100);
/// Ticks between the slower chores: owner liveness checks (10 = 1 s),
/// retention trims (100 = 10 s).
const LIVENESS_EVERY: u64 = 10;
const TRIM_EVERY: u64 = 100;
/// Free lock rows kept for their names (their tokens are not needed: the
/// counter is global and the newest row keeps it).
const KEEP_FREE_LOCK_ROWS: usize = 10_000;

impl Core {
    pub(crate) fn load_coord(&mut self) -> Result<(), StoreError> {
        self.load_locks()?;
        self.load_agents()?;
        self.load_sessions()?;
        Ok(())
    }

    /// Processes whose death ends a lock or an agent.
    pub(crate) fn coord_processes(&self) -> Vec<ProcessId> {
        let mut v = self.locks.owner_processes();
        v.extend(self.agents.processes());
        v.extend(self.work.processes());
        // Many locks often share one owner (a script's shell).
        v.sort_by_key(|p| (p.pid, p.start_time));
        v.dedup();
        v
    }

    /// A process died (the reaper saw its exit watch fire, or a liveness
    /// check found it gone).
    pub fn process_exited(&mut self, p: ProcessId) {
        self.locks_process_exited(p);
        self.agents_process_exited(p);
        self.sessions_process_exited(p);
    }

    /// One tick of periodic work; `n` counts ticks.
    pub fn coord_tick(&mut self, n: u64) {
        let now = now_ms();
        self.expire_locks(now);
        self.expire_agents(now);
        let trim = n.is_multiple_of(TRIM_EVERY);
        if trim {
            let removed = self.pubsub.trim(now, &self.cfg.coord);
            if removed > 0 {
                self.emit(
                    EventKind::Cleanup,
                    "messages",
                    None,
                    serde_json::json!({ "removed": removed, "reason": "retention" }),
                );
            }
            self.expire_sessions(now);
            if let Err(e) = self.store.trim_locks(KEEP_FREE_LOCK_ROWS) {
                tracing::error!("cannot trim lock rows: {e}");
            }
        }
        self.bus.flush();
        self.flush_webhooks();
        if trim {
            let c = &self.cfg.coord;
            let before = now.saturating_sub(c.activity_max_age_ms);
            self.bus.log().trim(c.activity_retain, before);
        }
    }

    /// Announces the broker's start.
    pub fn daemon_started(&mut self) {
        let details = serde_json::json!({
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "leases": self.lease_count(),
        });
        self.emit(EventKind::DaemonStart, "daemon", None, details);
        self.bus.flush();
        self.flush_webhooks();
    }

    /// Announces the broker's stop and writes what the log still holds.
    pub fn daemon_stopping(&mut self) {
        let details = serde_json::json!({ "pid": std::process::id() });
        self.emit(EventKind::DaemonStop, "daemon", None, details);
        self.bus.flush();
        self.flush_webhooks();
        self.bus.log().barrier();
    }
}

/// The daemon's coordination timer.
pub async fn ticker(core: SharedCore) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u64 = 0;
    loop {
        tick.tick().await;
        n += 1;
        lock(&core).coord_tick(n);
        if n.is_multiple_of(LIVENESS_EVERY) {
            // Exit watches see deaths at once; this catches kernels without
            // pidfds and watches that could not be queued. Asked with the
            // mutex released.
            let owners = lock(&core).coord_processes();
            let dead: Vec<ProcessId> = tokio::task::spawn_blocking(move || {
                owners.into_iter().filter(|p| !p.is_alive()).collect()
            })
            .await
            .unwrap_or_default();
            let mut core = lock(&core);
            for p in dead {
                core.process_exited(p);
            }
        }
    }
}
