//! Sockets this process was started with, the way systemd's socket
//! activation passes them (sd_listen_fds(3)): descriptors from 3 on,
//! `LISTEN_FDS` of them, for the process `LISTEN_PID` names, each named in
//! `LISTEN_FDNAMES`. Read once, at start-up; the variables are then removed
//! so that no child mistakes them for its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::supervise::LISTEN_FDS_START;

/// Most sockets taken from the environment; more is a mistake upstream.
const MAX_FDS: usize = 64;

/// One passed socket and its name (`LISTEN_FDNAMES`, or `unknown`, as
/// systemd names an unnamed one).
#[derive(Debug)]
pub struct Passed {
    pub name: String,
    pub fd: OwnedFd,
}

/// Takes the sockets passed to this process, if any were, and removes the
/// variables. Descriptors are marked close-on-exec. Must run before any
/// other thread exists (it changes the environment).
pub fn take_listen_fds() -> Vec<Passed> {
    let pid = std::env::var("LISTEN_PID").ok();
    let count = std::env::var("LISTEN_FDS").ok();
    let names = std::env::var("LISTEN_FDNAMES").ok();
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let ours = pid
        .and_then(|p| p.trim().parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let Some(n) = count.and_then(|c| c.trim().parse::<usize>().ok()) else {
        return Vec::new();
    };
    if !ours || n == 0 || n > MAX_FDS {
        return Vec::new();
    }
    let names: Vec<String> = names
        .map(|s| s.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    (0..n)
        .filter_map(|i| {
            let raw = LISTEN_FDS_START + i as RawFd;
            // A descriptor that is not open is skipped, never adopted.
            let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
            if flags < 0 {
                return None;
            }
            unsafe { libc::fcntl(raw, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
            // SAFETY: the descriptor is open and, by the protocol, ours
            // alone from here on.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // Only a listening stream socket is of use; anything else is
            // closed here, never accepted on.
            if !listening_stream(&fd) {
                return None;
            }
            Some(Passed {
                name: names.get(i).cloned().unwrap_or_else(|| "unknown".into()),
                fd,
            })
        })
        .collect()
}

/// Whether `fd` is a stream socket that listens (SO_TYPE, SO_ACCEPTCONN).
fn listening_stream(fd: &OwnedFd) -> bool {
    let int_opt = |opt: libc::c_int| -> Option<libc::c_int> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: v and len are valid for the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    int_opt(libc::SO_TYPE) == Some(libc::SOCK_STREAM) && int_opt(libc::SO_ACCEPTCONN) == Some(1)
}
