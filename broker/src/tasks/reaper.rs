//! The Reaper: it learns from the kernel that a lease's owner died, and
//! frees the port at once, or moves the lease to whoever still holds its
//! socket; it adopts number-only leases for the app that binds their port,
//! and keeps such a lease for a grace period after that app stops
//! listening, for the next run of a reloader to bind and be adopted.
//!
//! Each owner gets an exit watch (a pidfd, readable when the process ends),
//! so a death is seen the moment it happens. A periodic scan catches what
//! watches cannot: kernels without pidfd, a full job queue, an owner that
//! closed its listener (or the sockets it was handed) without exiting, and
//! apps that start listening on a reserved port. The expensive question, "who holds this socket?",
//! is asked on a blocking thread, outside the core's lock; the core then
//! settles the lease only if it has not changed meanwhile.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pb_platform::sockets::{self, SocketEntry};
use pb_platform::{ExitWatch, ProcessId};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::core::facts::ProcessFacts;
use crate::core::jobs::{LeaseView, Listeners, ReaperJob, Verdict};
use crate::core::now_ms;
use crate::core::{lock, SharedCore};

/// Most jobs queued for the reaper; past that the scan catches up.
pub const QUEUE: usize = 4096;

pub async fn run(core: SharedCore, mut jobs: mpsc::Receiver<ReaperJob>, interval: Duration) {
    let watching: Arc<Mutex<HashSet<ProcessId>>> = Arc::default();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            job = jobs.recv() => match job {
                None => return,
                Some(ReaperJob::Watch(p, fd)) => {
                    if watching.lock().unwrap_or_else(|e| e.into_inner()).insert(p) {
                        tokio::spawn(watch(core.clone(), p, fd, watching.clone()));
                    }
                }
                Some(ReaperJob::Reclaim { ids, gone }) => {
                    tokio::spawn(reclaim(core.clone(), ids, gone, None));
                }
            },
            _ = tick.tick() => {
                let core = core.clone();
                let _ = tokio::task::spawn_blocking(move || scan(&core, interval)).await;
            }
        }
    }
}

/// Waits for `p` to exit, then reclaims its leases.
async fn watch(
    core: SharedCore,
    p: ProcessId,
    given: Option<Arc<ExitWatch>>,
    watching: Arc<Mutex<HashSet<ProcessId>>>,
) {
    let own = match given {
        Some(_) => None,
        None => match ExitWatch::open(p) {
            Ok(Some(w)) => Some(w),
            // No pidfd on this kernel: the periodic scan polls instead.
            Ok(None) => {
                watching
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&p);
                return;
            }
            // Already gone.
            Err(_) => None,
        },
    };
    let fd = given
        .as_ref()
        .map(|w| w.fd.as_fd())
        .or(own.as_ref().map(|w| w.fd.as_fd()));
    if let Some(fd) = fd {
        if let Ok(dup) = fd.try_clone_to_owned() {
            // SAFETY: the AsyncFd owns `dup` and deregisters it before the
            // descriptor closes on drop.
            if let Ok(afd) = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) } {
                let _ = afd.readable().await;
            }
        }
    }
    // The kernel has just said the owner is gone: death-to-free counts
    // from here.
    let died = Instant::now();
    watching
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&p);
    let ids = {
        let mut c = lock(&core);
        // Locks and agents tied to the process end now.
        c.process_exited(p);
        c.leases_owned_by(p)
    };
    reclaim(core, ids, Some(p), Some(died)).await;
}

/// Decides, off the core's thread, who (if anyone) holds each lease now.
/// With `died`, when the owner's death was seen, each lease that ends is
/// one death-to-free observation.
async fn reclaim(
    core: SharedCore,
    ids: Vec<String>,
    gone: Option<ProcessId>,
    died: Option<Instant>,
) {
    if ids.is_empty() {
        return;
    }
    let views = lock(&core).views(Some(&ids));
    // Whose owner is known to be dead: the kernel said so (`gone`), or its
    // process is gone (a session that closed with it), asked here, outside
    // the core's mutex. Only where the broker may take its copies back from
    // whoever still holds the sockets; else it keeps them and walks.
    let may_let_go = sockets::may_copy_descriptors();
    let dead: Vec<(String, ProcessId)> = views
        .iter()
        .filter(|_| may_let_go)
        .filter_map(|v| {
            let o = v.owner?;
            (Some(o) == gone || !o.is_alive()).then(|| (v.id.clone(), o))
        })
        .collect();
    // Their sockets' broker copies close first (`Core::let_go`): what the
    // kernel still lists as listening then is what someone else holds, so
    // a lease nobody holds ends without a walk of every process.
    let let_go: HashSet<String> = if dead.is_empty() {
        HashSet::new()
    } else {
        let mut c = lock(&core);
        dead.into_iter()
            .filter(|(id, o)| c.let_go(id, *o))
            .map(|(id, _)| id)
            .collect()
    };
    let pending = let_go.clone();
    let decided = tokio::task::spawn_blocking(move || {
        let listening = sockets::listeners().ok();
        views
            .into_iter()
            .map(|v| {
                let closed = let_go.contains(&v.id);
                let holder = holder(&v, listening.as_deref(), gone, closed);
                // The copies the broker closed, taken back from the holder.
                let back = holder.filter(|_| closed).and_then(|p| taken_back(&v, p));
                let verdict = Verdict {
                    holder: holder.and_then(ProcessFacts::of),
                    back,
                    let_go: closed,
                };
                (v.id, v.owner, verdict)
            })
            .collect::<Vec<_>>()
    })
    .await;
    let mut core = lock(&core);
    let Ok(decided) = decided else {
        core.keep_after_let_go(&pending);
        return;
    };
    for (id, owner, verdict) in decided {
        if core.settle(&id, owner, verdict) {
            if let Some(died) = died {
                core.metrics
                    .death_to_free
                    .observe(died.elapsed().as_secs_f64());
            }
        }
    }
}

/// Sockets listening on `port` on an address that covers loopback, other
/// than the broker's own.
fn foreign_listeners<'a>(
    listening: &'a [SocketEntry],
    v: &'a LeaseView,
) -> impl Iterator<Item = u64> + 'a {
    listening
        .iter()
        .filter(move |s| {
            s.local.port() == v.port && s.covers_loopback() && !v.inodes.contains(&s.inode)
        })
        .map(|s| s.inode)
}

/// The live process (not the broker, not `gone`) that holds the lease's
/// sockets or listens on its port; the oldest, so a pre-forking server's
/// master is chosen over its workers. Only sockets that someone else can
/// hold are looked for: of the broker's own, those that went to a client
/// (placeholders and relayed sockets never leave the broker), and once
/// its copies are `closed`, only those the kernel still lists; then any
/// other listener on the port (`listening`: `None` when the table could
/// not be read). With nothing to look for, no process is read at all.
fn holder(
    v: &LeaseView,
    listening: Option<&[SocketEntry]>,
    gone: Option<ProcessId>,
    closed: bool,
) -> Option<ProcessId> {
    let listed = |i: &u64| listening.is_none_or(|l| l.iter().any(|s| s.inode == *i));
    let mut inodes: HashSet<u64> = v
        .handed
        .iter()
        .filter(|i| !closed || listed(i))
        .copied()
        .collect();
    if let Some(l) = listening {
        inodes.extend(foreign_listeners(l, v));
    }
    if inodes.is_empty() {
        return None;
    }
    let me = std::process::id();
    sockets::holders(&inodes)
        .into_values()
        .flatten()
        .filter(|p| p.pid != me && Some(*p) != gone && p.is_alive())
        .min_by_key(|p| (p.start_time, p.pid))
}

/// Copies of every socket of `v` from `holder`, IPv4 first; `None` unless
/// it holds them all and the kernel lets the broker take them.
fn taken_back(v: &LeaseView, holder: ProcessId) -> Option<Listeners> {
    let mut copies = sockets::copies_from(holder, &v.inodes.iter().copied().collect());
    let mut take = |inode: u64| {
        let i = copies.iter().position(|(c, _)| *c == inode)?;
        Some(copies.swap_remove(i).1)
    };
    let v4 = take(*v.inodes.first()?)?;
    let v6 = match v.inodes.get(1) {
        Some(i) => Some(take(*i)?),
        None => None,
    };
    Some(Listeners { v4, v6 })
}

/// The periodic pass: dead owners the watches missed, adopted owners that
/// stopped listening, number-only leases whose app started, and whether
/// each port is served.
fn scan(core: &SharedCore, interval: Duration) {
    let (views, grace_ms) = {
        let c = lock(core);
        (c.views(None), c.cfg.reload_grace.as_millis() as u64)
    };
    if views.is_empty() {
        return;
    }
    let Ok(listening) = sockets::listeners() else {
        return;
    };
    let settled_before = now_ms().saturating_sub(interval.as_millis() as u64);
    let mut served = Vec::with_capacity(views.len());
    let mut verdicts = Vec::new();
    let mut adoptions = Vec::new();
    let mut expired_orphans = Vec::new();
    let mut unheld = Vec::new();
    let now = now_ms();
    for v in &views {
        if !v.held && !v.number_only {
            unheld.push((v.id.clone(), pb_platform::net::time_wait_on(v.port)));
        }
        let foreign: Vec<u64> = foreign_listeners(&listening, v).collect();
        let owner_alive = v.owner.is_some_and(|o| o.is_alive());
        served.push((v.id.clone(), !foreign.is_empty() || owner_alive));
        if v.session {
            continue;
        }
        match v.owner {
            Some(o) if !owner_alive => verdicts.push((
                v.id.clone(),
                v.owner,
                holder(v, Some(&listening), Some(o), false).and_then(ProcessFacts::of),
            )),
            Some(_) if v.adopted && foreign.is_empty() && v.created_ms < settled_before => {
                // Alive but no longer listening: the port is free to go.
                verdicts.push((v.id.clone(), v.owner, None))
            }
            Some(o)
                if v.listening
                    && !v.inodes.is_empty()
                    && v.created_ms < settled_before
                    && !sockets::held_by(o.pid, &v.inodes.iter().copied().collect()) =>
            {
                // The owner closed the sockets it was handed, without
                // exiting: they follow whoever else holds them, or end.
                verdicts.push((
                    v.id.clone(),
                    v.owner,
                    holder(v, Some(&listening), Some(o), false).and_then(ProcessFacts::of),
                ))
            }
            None if !foreign.is_empty() => adoptions.push((v.id.clone(), foreign)),
            // Its claimant is gone and no app ever took it (a watch that
            // saw the exit has already settled it; this is for kernels
            // without pidfds).
            None if v.claimant.is_some_and(|c| !c.is_alive()) => {
                verdicts.push((v.id.clone(), None, None))
            }
            None => {
                if let Some(since) = v.orphaned_ms.filter(|t| now.saturating_sub(*t) >= grace_ms) {
                    expired_orphans.push((v.id.clone(), since));
                }
            }
            _ => {}
        }
    }
    let adopters: HashMap<String, ProcessFacts> = if adoptions.is_empty() {
        HashMap::new()
    } else {
        let wanted: HashSet<u64> = adoptions
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect();
        let held = sockets::holders(&wanted);
        adoptions
            .into_iter()
            .filter_map(|(id, foreign)| {
                foreign
                    .iter()
                    .filter_map(|i| held.get(i))
                    .flatten()
                    .filter(|p| p.is_alive())
                    .min_by_key(|p| (p.start_time, p.pid))
                    .and_then(|p| ProcessFacts::of(*p))
                    .map(|p| (id, p))
            })
            .collect()
    };
    let mut core = lock(core);
    for (id, s) in served {
        core.set_served(&id, s);
    }
    for (id, owner, holder) in verdicts {
        core.settle(&id, owner, Verdict::of(holder));
    }
    for (id, p) in adopters {
        core.adopt(&id, p);
    }
    for (id, since) in expired_orphans {
        core.end_orphan(&id, since);
    }
    for (id, time_wait) in unheld {
        core.hold_again(&id, time_wait);
    }
}
