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

    /// When the process started, in ms since the epoch.
    pub fn started_at_ms(&self) -> Option<u64> {
        crate::sys::started_at_ms(self.start_time)
    }

    /// The process that started this one (its parent now, if it was
    /// reparented), or `None` when either is gone.
    pub fn parent(&self) -> Option<ProcessId> {
        let ppid = crate::sys::process_parent(self.pid)?;
        // The child must still be the same process for its parent to mean
        // anything.
        self.is_alive().then(|| ProcessId::of(ppid)).flatten()
    }

    /// What should own what this short-lived process takes for whoever ran
    /// it (a lock from `pb lock`, or from `curl` in a script): the nearest
    /// ancestor that is not a forked copy of its own parent. A `$(…)`
    /// subshell is such a copy, same program and same arguments, and exits
    /// the moment the command does; the script's shell that forked it lasts.
    /// `None` when this process's parent is gone.
    pub fn lasting_ancestor(&self) -> Option<ProcessId> {
        let mut p = self.parent()?;
        // Forks of forks are rare; 64 levels is any real tree.
        for _ in 0..64 {
            let Some(up) = p.parent().filter(|u| u.pid > 1) else {
                return Some(p);
            };
            if !is_fork_of(p.pid, up.pid) {
                return Some(p);
            }
            p = up;
        }
        Some(p)
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

/// The file this process runs, opened for reading: the running binary even
/// when an upgrade has since replaced the file at its path.
pub fn own_executable() -> std::io::Result<std::fs::File> {
    crate::sys::own_executable()
}

/// This process's resident memory in bytes, where the kernel says
/// (`pb metrics`' `pb_resident_memory_bytes`).
pub fn own_resident_bytes() -> Option<u64> {
    crate::sys::own_resident_bytes()
}

/// Every live process below `root` in the process tree, parents before
/// their children.
pub fn descendants(root: u32) -> Vec<u32> {
    crate::sys::descendants(root)
}

/// The uid owning process `pid`, if it exists.
pub fn uid_of(pid: u32) -> Option<u32> {
    crate::sys::process_uid(pid)
}

/// Sends signal `sig` to this exact process; `false` if it is gone (or
/// its pid now names another process).
pub fn signal(p: ProcessId, sig: i32) -> bool {
    let (Ok(pid), Ok(sig)) = (
        i32::try_from(p.pid),
        nix::sys::signal::Signal::try_from(sig),
    ) else {
        return false;
    };
    p.is_alive() && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).is_ok()
}

/// A process's command line as one string (arguments joined by spaces),
/// from a single read; `None` if it is gone or unreadable.
pub fn command_of(pid: u32) -> Option<String> {
    // Empty while a process is between fork and exec, or a kernel thread:
    // no command to tell.
    crate::sys::process_cmdline(pid)
        .filter(|c| !c.is_empty())
        .map(|c| c.join(" "))
}

/// What pb shows about a process: who it is and what it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub id: ProcessId,
    pub uid: u32,
    pub cmdline: Vec<String>,
    pub exe: Option<std::path::PathBuf>,
    pub cwd: Option<std::path::PathBuf>,
}

impl ProcessInfo {
    /// `None` if the process is gone (or unreadable).
    pub fn of(pid: u32) -> Option<ProcessInfo> {
        let id = ProcessId::of(pid)?;
        let uid = uid_of(pid)?;
        let (cmdline, exe, cwd) = crate::sys::process_details(pid)?;
        Some(ProcessInfo {
            id,
            uid,
            cmdline,
            exe,
            cwd,
        })
    }

    /// The command line as one string, or the executable's name.
    pub fn command(&self) -> String {
        if self.cmdline.is_empty() {
            return self
                .exe
                .as_ref()
                .and_then(|e| e.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
        }
        self.cmdline.join(" ")
    }
}

/// A descriptor that becomes readable when a process exits.
#[derive(Debug)]
pub struct ExitWatch {
    pub fd: std::os::fd::OwnedFd,
}

impl ExitWatch {
    /// Watches `p`, or `None` where the kernel offers no pidfd (the caller
    /// then polls `ProcessId::is_alive`). Fails if `p` is already gone.
    /// The start time is checked after the pidfd is open, so the watch is
    /// on `p` itself, never on a process that reused its pid.
    pub fn open(p: ProcessId) -> std::io::Result<Option<ExitWatch>> {
        let Some(fd) = crate::sys::pidfd_open(p.pid)? else {
            return Ok(None);
        };
        if !p.is_alive() {
            return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
        }
        Ok(Some(ExitWatch { fd }))
    }

    /// The peer of a Unix socket, from SO_PEERPIDFD where the kernel has it:
    /// no window for pid reuse between connect and watch.
    pub fn of_unix_peer(sock: &impl AsFd) -> Option<ExitWatch> {
        crate::sys::peer_pidfd(sock.as_fd()).map(|fd| ExitWatch { fd })
    }
}

/// `child` runs what `parent` runs, with the same arguments: it was forked
/// and never exec'd something else.
fn is_fork_of(child: u32, parent: u32) -> bool {
    match (
        crate::sys::process_details(child),
        crate::sys::process_details(parent),
    ) {
        (Some((c_args, c_exe, _)), Some((p_args, p_exe, _))) => {
            c_exe.is_some() && c_exe == p_exe && c_args == p_args
        }
        _ => false,
    }
}
