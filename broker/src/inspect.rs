//! Answers about the whole machine: every listener with the processes
//! behind it (`pb ps --all`), and who holds one port (`pb who`). The core
//! contributes what it knows of its leases; the kernel the rest.

use std::collections::HashSet;

use pb_platform::sockets::{self, SocketEntry};
use pb_platform::ProcessInfo;
use pb_proto::{ErrorCode, Holder, ListenerInfo, ListenersReply, WhoReply, WireError};

use crate::core::Outcome;
use crate::ipc::{lock, SharedCore};
use crate::reaper::LeaseView;
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

pub async fn listeners(core: &SharedCore) -> Result<Outcome, WireError> {
    let views = lock(core).views(None);
    let listeners = blocking(move || describe(|_| true, &views)).await?;
    Ok(Outcome::of(ListenersReply { listeners }))
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
            let holders = held
                .get(&s.inode)
                .into_iter()
                .flatten()
                .filter(|p| p.pid != me)
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
                brokered: lease.is_some_and(|v| v.inodes.contains(&s.inode)),
            }
        })
        .collect())
}
