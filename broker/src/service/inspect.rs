//! Answers about the whole machine: every listener with the processes
//! behind it (`pb ps --all`), followed live if asked (the dashboard), and
//! who holds one port (`pb who`). The core contributes what it knows of its
//! leases; the kernel the rest.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pb_platform::sockets::{self, SocketEntry};
use pb_platform::ProcessInfo;
use pb_proto::{ErrorCode, Holder, ListenerInfo, ListenersReply, WhoReply, WireError};
use tokio::sync::{broadcast, watch};

use crate::core::jobs::LeaseView;
use crate::core::stream::{ListenerFeed, ListenerFollow, Reading, Stream};
use crate::core::Outcome;
use crate::core::{lock, SharedCore};
use crate::rules;

pub async fn who(core: &SharedCore, port: i64) -> Result<Outcome, WireError> {
    let port = rules::check_any_port(port)?;
    let (service, views) = {
        let c = lock(core);
        (c.lease_on_port(port), c.views(None))
    };
    let listeners = blocking(move || describe(|s| s.local.port() == port, &views)).await?;
    Ok(Outcome::of(WhoReply {
        port,
        service,
        listeners,
    }))
}

pub async fn listeners(core: &SharedCore, follow: bool) -> Result<Outcome, WireError> {
    if !follow {
        return Ok(Outcome::of(ListenersReply {
            listeners: all_listeners(core).await?,
            generation: None,
        }));
    }
    let feed = core.listener_feed.clone();
    let mut rx = feed.follow(core);
    let first = tokio::time::timeout(FIRST_READ, rx.wait_for(Option::is_some))
        .await
        .ok()
        .and_then(|r| r.ok().and_then(|s| s.clone()))
        .ok_or_else(|| {
            WireError::new(
                ErrorCode::Internal,
                format!("the socket tables could not be read within {FIRST_READ:?}"),
            )
        })?;
    Ok(Outcome {
        stream: Some(Stream::Listeners(ListenerFollow { rx })),
        ..Outcome::of(ListenersReply::clone(&first.reply))
    })
}

async fn all_listeners(core: &SharedCore) -> Result<Vec<ListenerInfo>, WireError> {
    let views = lock(core).views(None);
    blocking(move || describe(|_| true, &views)).await
}

/// How long a new follower waits for the feed's first reading.
const FIRST_READ: Duration = Duration::from_secs(10);
/// The least time between two readings, however many service events come:
/// a reading walks every process's descriptors.
const MIN_GAP: Duration = Duration::from_millis(200);

impl ListenerFeed {
    fn follow(self: &Arc<Self>, core: &SharedCore) -> watch::Receiver<Option<Reading>> {
        let rx = self.tx.subscribe();
        if !self.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(self.clone().run(core.clone()));
        }
        rx
    }

    async fn run(self: Arc<Self>, core: SharedCore) {
        // A panic here must not leave the feed marked running with no task.
        struct Unwinding<'a>(&'a AtomicBool);
        impl Drop for Unwinding<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0.store(false, Ordering::SeqCst);
                }
            }
        }
        let _unwinding = Unwinding(&self.running);
        let (interval, mut events) = {
            let c = lock(&core);
            (c.cfg.scan_interval, c.bus.follow())
        };
        loop {
            match all_listeners(&core).await {
                Ok(listeners) => self.publish(listeners),
                Err(e) => tracing::warn!("reading the listeners for followers: {}", e.message),
            }
            tokio::time::sleep(MIN_GAP).await;
            let next_scan = tokio::time::sleep(interval.saturating_sub(MIN_GAP));
            tokio::pin!(next_scan);
            loop {
                tokio::select! {
                    _ = &mut next_scan => break,
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.kind.moves_sockets() => break,
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            (&mut next_scan).await;
                            break;
                        }
                    },
                }
            }
            if self.tx.receiver_count() == 0 {
                // Nobody follows: stop, and forget the reading, which would
                // be stale for the next follower.
                self.tx.send_replace(None);
                self.running.store(false, Ordering::SeqCst);
                // A follower that came meanwhile saw the task running.
                if self.tx.receiver_count() == 0 || self.running.swap(true, Ordering::SeqCst) {
                    return;
                }
            }
        }
    }

    fn publish(&self, listeners: Vec<ListenerInfo>) {
        self.tx.send_if_modified(|cur| {
            if cur.as_ref().is_some_and(|r| r.reply.listeners == listeners) {
                return false;
            }
            let reply = ListenersReply {
                listeners,
                generation: Some(self.generation.fetch_add(1, Ordering::SeqCst) + 1),
            };
            let json = serde_json::to_string(&reply).expect("listeners serialize");
            *cur = Some(Reading {
                reply: Arc::new(reply),
                json: json.into(),
            });
            true
        });
    }
}

/// Who listens on `port`, as one line per process ("pid 42 (python3 -m
/// http.server)"); blocking, for the daemon's start-up, outside the core.
pub fn port_holders(port: u16) -> Vec<String> {
    describe(|s| s.local.port() == port, &[])
        .unwrap_or_default()
        .into_iter()
        .flat_map(|l| l.holders)
        .map(|h| format!("pid {} ({})", h.pid, h.command))
        .fold(Vec::new(), |mut out, h| {
            if !out.contains(&h) {
                out.push(h);
            }
            out
        })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, WireError> + Send + 'static,
) -> Result<T, WireError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WireError::new(ErrorCode::Internal, e.to_string()))?
}

/// The listening sockets `wanted` selects, sorted by port, with holders.
fn describe(
    wanted: impl Fn(&SocketEntry) -> bool,
    views: &[LeaseView],
) -> Result<Vec<ListenerInfo>, WireError> {
    let mut socks: Vec<SocketEntry> = sockets::listeners()
        .map_err(|e| {
            WireError::new(
                ErrorCode::Internal,
                format!("reading the socket tables: {e}"),
            )
        })?
        .into_iter()
        .filter(|s| wanted(s))
        .collect();
    socks.sort_by_key(|s| (s.local.port(), s.local.is_ipv6(), s.local.ip()));
    let inodes: HashSet<u64> = socks.iter().map(|s| s.inode).collect();
    let held = sockets::holders(&inodes);
    let me = std::process::id();
    Ok(socks
        .into_iter()
        .map(|s| {
            let lease = views.iter().find(|v| v.port == s.local.port());
            let brokered = lease.is_some_and(|v| v.inodes.contains(&s.inode));
            // The broker holds every lease's socket; it is named only for
            // sockets of its own (its HTTP API), so `pb who 9876` says so.
            let holders = held
                .get(&s.inode)
                .into_iter()
                .flatten()
                .filter(|p| p.pid != me || !brokered)
                .filter_map(|p| ProcessInfo::of(p.pid).filter(|i| i.id == *p))
                .map(|i| Holder {
                    pid: i.id.pid,
                    uid: i.uid,
                    command: i.command(),
                    since_ms: i.id.started_at_ms(),
                })
                .collect();
            ListenerInfo {
                port: s.local.port(),
                addr: s.local.to_string(),
                uid: s.uid,
                holders,
                service: lease.map(|v| v.id.clone()),
                brokered,
            }
        })
        .collect())
}
