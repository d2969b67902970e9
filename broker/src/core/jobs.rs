//! What the core asks of the reaper task: the jobs it queues (watch this
//! owner, reclaim these leases) and the copy of a lease the reaper judges
//! outside the core's mutex; and the copy of a lease the proxy connects to
//! (`Route`). Defined with the core, so that the core needs nothing of the
//! tasks that use them.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use pb_platform::{ExitWatch, ProcessId};

use crate::core::facts::ProcessFacts;

#[derive(Debug)]
pub enum ReaperJob {
    /// Watch this owner; with a pidfd already taken from its connection.
    Watch(ProcessId, Option<Arc<ExitWatch>>),
    /// These leases lost their owner (`gone`, or their session): move or end.
    Reclaim {
        ids: Vec<String>,
        gone: Option<ProcessId>,
    },
}

/// What the reaper needs to know of a lease, copied out of the core.
#[derive(Debug, Clone)]
pub struct LeaseView {
    pub id: String,
    pub port: u16,
    pub owner: Option<ProcessId>,
    /// Inodes of the broker's own sockets for the lease.
    pub inodes: Vec<u64>,
    /// Those of them that went to a client: the only ones another process
    /// can hold.
    pub handed: Vec<u64>,
    pub adopted: bool,
    /// The broker's sockets listen: they were handed to a client.
    pub listening: bool,
    pub session: bool,
    pub created_ms: u64,
    /// Since when an adopted lease has waited for its app's next run.
    pub orphaned_ms: Option<u64>,
    /// Whose exit ends the lease while no app has adopted it.
    pub claimant: Option<ProcessId>,
    /// The broker holds sockets on the port (false only for a lease reloaded
    /// after a restart whose port someone else held, and for a number-only
    /// reservation).
    pub held: bool,
    /// Only the number is reserved: the broker never holds the port.
    pub number_only: bool,
}

/// Copies of a lease's listeners, taken back from the process that holds
/// them once the broker let go of its own (`Core::let_go`).
#[derive(Debug)]
pub struct Listeners {
    pub v4: OwnedFd,
    pub v6: Option<OwnedFd>,
}

/// The reaper's word on a lease whose owner it looked at.
#[derive(Debug)]
pub struct Verdict {
    /// Who holds it now; `None`: nobody, it ends.
    pub holder: Option<ProcessFacts>,
    /// The broker's copies of its sockets, taken back from the holder.
    pub back: Option<Listeners>,
    /// From the reclaim that let go of the broker's copies
    /// (`Core::let_go`): until it settles, no other verdict applies.
    pub let_go: bool,
}

impl Verdict {
    pub fn of(holder: Option<ProcessFacts>) -> Verdict {
        Verdict {
            holder,
            back: None,
            let_go: false,
        }
    }
}

/// Where the proxy sends a request for one of a lease's names, copied out
/// of the core so that no connection is made under its mutex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub id: String,
    pub port: u16,
    /// The lease's user: the only one whose listener may answer.
    pub uid: u32,
    /// The owner the lease expects to serve it, for a 502 that says who.
    pub pid: Option<u32>,
    pub command: Option<String>,
    /// With `id`, tells one lease from a later one of the same id and port
    /// (a connection kept for one is never used for the other).
    pub created_ms: u64,
}
