//! Linux answers to the questions in this crate: procfs for processes,
//! SO_PEERCRED for Unix-socket peers, sigwaitinfo for supervision.

use std::os::fd::BorrowedFd;

use nix::sys::socket::{getsockopt, sockopt};
use procfs::process::{ProcState, Process};

use crate::process::{PeerIdentity, ProcessId};

fn stat(pid: u32) -> Option<procfs::process::Stat> {
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    // A process can exit between any two reads: every error means "gone".
    Process::new(pid).ok()?.stat().ok()
}

pub fn process_start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.starttime)
}

pub fn process_start_time_if_running(pid: u32) -> Option<u64> {
    let s = stat(pid)?;
    match s.state() {
        Ok(ProcState::Zombie) | Ok(ProcState::Dead) => None,
        _ => Some(s.starttime),
    }
}

pub fn process_uid(pid: u32) -> Option<u32> {
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    Process::new(pid).ok()?.uid().ok()
}

pub fn unix_peer(fd: BorrowedFd<'_>) -> std::io::Result<PeerIdentity> {
    let cred = getsockopt(&fd, sockopt::PeerCredentials)?;
    let process = u32::try_from(cred.pid())
        .ok()
        .filter(|p| *p > 0)
        .and_then(ProcessId::of);
    Ok(PeerIdentity {
        uid: cred.uid(),
        gid: cred.gid(),
        process,
    })
}

/// The origin of a signal that `wait_signal` collected.
pub struct SignalInfo {
    pub signo: i32,
    /// Sent by a process with kill(2) or sigqueue(3), as opposed to the
    /// kernel on behalf of a terminal (which signals the whole foreground
    /// process group, the child included).
    pub from_process: bool,
}

/// Waits for one of the (blocked) signals in `set`.
pub fn wait_signal(set: &nix::sys::signal::SigSet) -> std::io::Result<SignalInfo> {
    loop {
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset and `info` a writable siginfo_t.
        let r = unsafe { libc::sigwaitinfo(set.as_ref(), &mut info) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        return Ok(SignalInfo {
            signo: r,
            from_process: matches!(
                info.si_code,
                libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL
            ),
        });
    }
}

/// Whether /proc/net/tcp or tcp6 lists a TIME_WAIT socket whose local port
/// is `port`. (Sockets that are only bound are not listed at all.)
pub fn time_wait_on(port: u16) -> bool {
    const TIME_WAIT: &str = "06";
    let needle = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|path| {
        std::fs::read_to_string(path).is_ok_and(|text| {
            text.lines().skip(1).any(|line| {
                let mut cols = line.split_whitespace();
                let local = cols.nth(1).unwrap_or("");
                let state = cols.nth(1).unwrap_or("");
                state == TIME_WAIT && local.ends_with(&needle)
            })
        })
    })
}
