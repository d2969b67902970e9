//! Process identity: a pid plus its start time, so a reused pid is never
//! mistaken for the process that made a claim.

use std::os::fd::AsFd;

/// A process as the kernel knows it. Two values are the same process only if
/// both the pid and the start time match: pids are recycled, start times are
/// not (for the life of the boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot, as in field 22 of /proc/PID/stat.
    pub start_time: u64,
}

impl ProcessId {
    /// The identity of the live process `pid`, or `None` if there is none.
    pub fn of(pid: u32) -> Option<ProcessId> {
        crate::sys::process_start_time(pid).map(|start_time| ProcessId { pid, start_time })
    }

    /// The identity of the calling process.
    pub fn current() -> ProcessId {
        ProcessId::of(std::process::id()).expect("the current process exists")
    }

    /// Whether this exact process (not merely this pid) is still alive.
    /// A zombie counts as dead: it can no longer use any port.
    pub fn is_alive(&self) -> bool {
        crate::sys::process_start_time_if_running(self.pid) == Some(self.start_time)
    }
}

/// Who is on the other end of a Unix socket, as the kernel reports it
/// (SO_PEERCRED), never as the client claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: u32,
    pub gid: u32,
    /// `None` when the peer has already exited or the pid is not visible
    /// (another pid namespace).
    pub process: Option<ProcessId>,
}

impl PeerIdentity {
    /// The credentials of the peer of a connected Unix stream socket.
    pub fn of_unix_peer(sock: &impl AsFd) -> std::io::Result<PeerIdentity> {
        crate::sys::unix_peer(sock.as_fd())
    }
}

/// The uid owning process `pid`, if it exists.
pub fn uid_of(pid: u32) -> Option<u32> {
    crate::sys::process_uid(pid)
}
