//! The machine's TCP sockets as the kernel lists them, and which processes
//! hold them.
//!
//! Listing the socket tables is cheap (one read of a few /proc files); the
//! walk over every process's descriptors that maps a socket inode to its
//! holders is the expensive part, so it is a separate call that takes the
//! inodes it should look for and is made only when an answer needs it.
//! Processes and descriptors that vanish mid-walk are skipped, never errors.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::process::ProcessId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketState {
    Listen,
    Established,
    TimeWait,
    Other,
}

/// One TCP socket from the kernel's tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketEntry {
    pub local: SocketAddr,
    pub state: SocketState,
    /// The socket's inode: how descriptors in /proc/PID/fd name it.
    pub inode: u64,
    /// The uid that created the socket.
    pub uid: u32,
}

impl SocketEntry {
    /// Whether this socket's address covers loopback, where pb's ports live:
    /// a wildcard (0.0.0.0, ::) or a loopback address (127.0.0.0/8, ::1,
    /// ::ffff:127.x).
    pub fn covers_loopback(&self) -> bool {
        match self.local.ip() {
            std::net::IpAddr::V4(a) => a.is_unspecified() || a.is_loopback(),
            std::net::IpAddr::V6(a) => {
                a.is_unspecified()
                    || a.is_loopback()
                    || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        }
    }
}

/// Every TCP socket (IPv4 and IPv6) in this network namespace.
pub fn tcp_sockets() -> std::io::Result<Vec<SocketEntry>> {
    crate::sys::tcp_sockets()
}

/// The same, always from /proc/net/tcp{,6}: the fallback, kept callable so
/// benchmarks can compare it with the netlink path.
pub fn tcp_sockets_from_proc() -> std::io::Result<Vec<SocketEntry>> {
    crate::sys::tcp_sockets_procfs()
}

/// Listening sockets only, which the kernel selects (a sock_diag dump of
/// the LISTEN state): the reaper asks after every owner's death, and a
/// machine with tens of thousands of TIME_WAIT sockets made the whole
/// table cost 11 ms to read (BENCHMARKS.md, `reclaim`).
pub fn listeners() -> std::io::Result<Vec<SocketEntry>> {
    crate::sys::listeners()
}

/// For each of `inodes`, the live processes that hold a descriptor to it.
/// Only processes whose /proc entries this process may read are seen
/// (its own user's, or all for root).
pub fn holders(inodes: &HashSet<u64>) -> HashMap<u64, Vec<ProcessId>> {
    if inodes.is_empty() {
        return HashMap::new();
    }
    crate::sys::socket_holders(inodes)
}

/// Whether this process may, as far as it can tell, copy other processes'
/// descriptors ([`copies_from`]): pidfd_getfd needs the rights to ptrace
/// them, which Yama's ptrace_scope 1 and 2 keep to CAP_SYS_PTRACE (a
/// user's process may otherwise copy from its own user's). A seccomp
/// filter, or a holder that is not dumpable, can still refuse.
pub fn may_copy_descriptors() -> bool {
    crate::sys::may_copy_descriptors()
}

/// Copies of the descriptors through which live process `p` holds the
/// sockets `inodes`, one per inode, each checked to be that socket
/// (pidfd_getfd, Linux 5.6+). Empty when the kernel refuses (see
/// [`may_copy_descriptors`]).
pub fn copies_from(p: ProcessId, inodes: &HashSet<u64>) -> Vec<(u64, OwnedFd)> {
    if inodes.is_empty() {
        return Vec::new();
    }
    crate::sys::socket_copies(p, inodes)
}

/// Whether process `pid` holds a descriptor to any of `inodes`: the cheap
/// question, one process's descriptors instead of every process's.
pub fn held_by(pid: u32, inodes: &HashSet<u64>) -> bool {
    crate::sys::holds_any(pid, inodes)
}

/// The inode of a socket descriptor.
pub fn inode_of(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd;
    let st = nix::sys::stat::fstat(fd.as_raw_fd())?;
    Ok(st.st_ino)
}

/// The kernel's record of one end of a TCP connection on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpPeer {
    /// The uid that created the socket.
    pub uid: u32,
    /// The socket's inode, to find the process that holds it when needed
    /// ([`holders`]).
    pub inode: u64,
}

/// Who made the socket at the other end of a loopback TCP connection: the
/// socket whose local address is `peer` and whose remote address is
/// `ours`. One exact sock_diag request (no table dump), so cheap enough to
/// make for every accepted connection; /proc/net/tcp{,6} is the fallback.
/// `None` when no such socket exists (the peer is gone, or not on this
/// machine).
pub fn tcp_peer(ours: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<TcpPeer>> {
    match crate::sys::tcp_peer_diag(ours, peer) {
        Ok(found) => Ok(found),
        Err(_) => crate::sys::tcp_peer_procfs(ours, peer),
    }
}

/// Whether the server has accepted our connection from `ours` to `server`
/// (on this machine): a connection still in the listen queue has no file,
/// so the kernel shows its server end with inode 0. `None` when the kernel
/// shows no server end (it was accepted and closed, or never existed).
pub fn accepted(ours: SocketAddr, server: SocketAddr) -> Option<bool> {
    tcp_peer(ours, server).ok().flatten().map(|p| p.inode != 0)
}

/// The kernel's exact lookup alone (sock_diag, microseconds); an error
/// where the kernel cannot answer, for the caller to fall back to
/// [`tcp_peer_from_proc`] where it may block.
pub fn tcp_peer_exact(ours: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<TcpPeer>> {
    crate::sys::tcp_peer_diag(ours, peer)
}

/// The same, always from /proc/net/tcp{,6} (milliseconds: a scan of the
/// whole table).
pub fn tcp_peer_from_proc(ours: SocketAddr, peer: SocketAddr) -> std::io::Result<Option<TcpPeer>> {
    crate::sys::tcp_peer_procfs(ours, peer)
}

/// The process of `uid` that holds socket `inode` (the peer found by
/// [`tcp_peer`], say). A walk of /proc, newest processes first, opening
/// only `uid`'s and stopping at the first holder: far cheaper than
/// [`holders`], still too dear for every request, so callers make it only
/// when a pid is needed.
pub fn holder_of(uid: u32, inode: u64) -> Option<ProcessId> {
    crate::sys::socket_holder(uid, inode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn finds_the_peer_of_a_loopback_connection() {
        let me = crate::os::effective_uid();
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(server) = TcpListener::bind(host) else {
                continue; // no IPv6 on this machine
            };
            let ours = server.local_addr().unwrap();
            let client = TcpStream::connect(ours).unwrap();
            let (_conn, peer) = server.accept().unwrap();
            let inode = {
                use std::os::fd::AsFd;
                inode_of(client.as_fd()).unwrap()
            };
            let want = Some(TcpPeer { uid: me, inode });
            assert_eq!(tcp_peer(ours, peer).unwrap(), want, "{host} sock_diag");
            assert_eq!(
                tcp_peer_from_proc(ours, peer).unwrap(),
                want,
                "{host} /proc"
            );
            // The server's own end is not mistaken for the peer's.
            assert_eq!(
                tcp_peer(peer, ours).unwrap().map(|p| p.inode == inode),
                Some(false)
            );
            drop(client);
        }
    }

    #[test]
    fn listeners_are_the_listening_part_of_the_whole_table() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = server.local_addr().unwrap();
        let six = TcpListener::bind("[::1]:0").ok();
        let _conn = TcpStream::connect(ours).unwrap();
        let inode = {
            use std::os::fd::AsFd;
            inode_of(server.as_fd()).unwrap()
        };
        let listening = listeners().unwrap();
        assert!(listening.iter().all(|s| s.state == SocketState::Listen));
        let found = listening.iter().find(|s| s.inode == inode);
        assert_eq!(
            found,
            Some(&SocketEntry {
                local: ours,
                state: SocketState::Listen,
                inode,
                uid: crate::os::effective_uid(),
            })
        );
        if let Some(six) = six {
            let at = six.local_addr().unwrap();
            assert!(listening.iter().any(|s| s.local == at), "{at} listed");
        }
        // The same sockets as the whole table's listening ones (sockets
        // made or closed by other tests in between aside: ours are there).
        let whole: Vec<_> = tcp_sockets()
            .unwrap()
            .into_iter()
            .filter(|s| s.state == SocketState::Listen)
            .collect();
        assert!(whole.iter().any(|s| s.inode == inode));
    }

    #[test]
    fn an_absent_peer_is_none() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = server.local_addr().unwrap();
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(tcp_peer(ours, nobody).unwrap(), None);
        assert_eq!(tcp_peer_from_proc(ours, nobody).unwrap(), None);
    }
}
