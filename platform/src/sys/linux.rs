//! Linux answers to the questions in this crate: procfs for processes,
//! SO_PEERCRED for Unix-socket peers, sigwaitinfo and the
//! process tree for supervision.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use nix::sys::socket::{getsockopt, sockopt};
use procfs::net::TcpState;
use procfs::process::{FDTarget, ProcState, Process};

use crate::process::{PeerIdentity, ProcessId};
use crate::sockets::{SocketEntry, SocketState};

fn stat(pid: u32) -> Option<procfs::process::Stat> {
    let pid = i32::try_from(pid).ok().filter(|p| *p > 0)?;
    // A process can exit between any two reads: every error means "gone".
    Process::new(pid).ok()?.stat().ok()
}

pub fn process_start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.starttime)
}

pub fn process_parent(pid: u32) -> Option<u32> {
    stat(pid)
        .and_then(|s| u32::try_from(s.ppid).ok())
        .filter(|p| *p > 0)
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
        // SAFETY: siginfo_t is plain data, for which all zeroes is valid.
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
        return Ok(SignalInfo::new(r, &info));
    }
}

impl SignalInfo {
    fn new(signo: i32, info: &libc::siginfo_t) -> SignalInfo {
        SignalInfo {
            signo,
            from_process: matches!(
                info.si_code,
                libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL
            ),
        }
    }
}

/// Waits like [`wait_signal`], but at most `limit`; `None` when it passed.
pub fn wait_signal_for(
    set: &nix::sys::signal::SigSet,
    limit: std::time::Duration,
) -> std::io::Result<Option<SignalInfo>> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let ts = libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        };
        // SAFETY: siginfo_t is plain data, for which all zeroes is valid.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: valid sigset, writable siginfo_t and timespec.
        let r = unsafe { libc::sigtimedwait(set.as_ref(), &mut info, &ts) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) => return Ok(None),
                _ => return Err(e),
            }
        }
        return Ok(Some(SignalInfo::new(r, &info)));
    }
}

/// Every live process below `root` in the process tree, parents before
/// their children. One pass over /proc/*/stat.
pub fn descendants(root: u32) -> Vec<u32> {
    let Ok(all) = procfs::process::all_processes() else {
        return Vec::new();
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for p in all.flatten() {
        let Ok(s) = p.stat() else { continue };
        if matches!(s.state(), Ok(ProcState::Zombie) | Ok(ProcState::Dead)) {
            continue;
        }
        if let (Ok(pid), Ok(ppid)) = (u32::try_from(s.pid), u32::try_from(s.ppid)) {
            children.entry(ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut next = vec![root];
    // A pid seen twice would mean a cycle in a torn read; bound by the table.
    let limit = children.values().map(Vec::len).sum::<usize>();
    while let Some(pid) = next.pop() {
        for c in children.remove(&pid).unwrap_or_default() {
            if out.len() >= limit {
                return out;
            }
            out.push(c);
            next.push(c);
        }
    }
    out
}

/// Makes this process the reaper of its orphaned descendants
/// (PR_SET_CHILD_SUBREAPER), so that a daemonizing grandchild stays in
/// its tree instead of moving to init.
pub fn become_subreaper() -> std::io::Result<()> {
    // SAFETY: a plain prctl with integer arguments.
    let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The TCP tables from sock_diag over netlink (netstat2): about three times
/// faster than parsing /proc/net/tcp{,6} (BENCHMARKS.md), which remains the
/// fallback where netlink is refused.
pub fn tcp_sockets() -> std::io::Result<Vec<SocketEntry>> {
    use netstat2::{AddressFamilyFlags, ProtocolFlags, ProtocolSocketInfo, TcpState as Ns};
    let families = AddressFamilyFlags::IPV4 | AddressFamilyFlags::IPV6;
    let Ok(iter) = netstat2::iterate_sockets_info_without_pids(families, ProtocolFlags::TCP) else {
        return tcp_sockets_procfs();
    };
    let mut out = Vec::new();
    for info in iter {
        let Ok(info) = info else {
            return tcp_sockets_procfs();
        };
        if let ProtocolSocketInfo::Tcp(t) = info.protocol_socket_info {
            out.push(SocketEntry {
                local: std::net::SocketAddr::new(t.local_addr, t.local_port),
                state: match t.state {
                    Ns::Listen => SocketState::Listen,
                    Ns::Established => SocketState::Established,
                    Ns::TimeWait => SocketState::TimeWait,
                    _ => SocketState::Other,
                },
                inode: info.inode as u64,
                uid: info.uid,
            });
        }
    }
    Ok(out)
}

pub fn tcp_sockets_procfs() -> std::io::Result<Vec<SocketEntry>> {
    let mut out = Vec::new();
    for table in [procfs::net::tcp(), procfs::net::tcp6()] {
        let entries = match table {
            Ok(e) => e,
            // No IPv6 in this kernel: no tcp6 table.
            Err(procfs::ProcError::NotFound(_)) => continue,
            Err(e) => return Err(std::io::Error::other(e.to_string())),
        };
        out.extend(entries.into_iter().map(|e| SocketEntry {
            local: e.local_address,
            state: match e.state {
                TcpState::Listen => SocketState::Listen,
                TcpState::Established => SocketState::Established,
                TcpState::TimeWait => SocketState::TimeWait,
                _ => SocketState::Other,
            },
            inode: e.inode,
            uid: e.uid,
        }));
    }
    Ok(out)
}

pub fn socket_holders(inodes: &HashSet<u64>) -> HashMap<u64, Vec<ProcessId>> {
    let mut found: HashMap<u64, Vec<ProcessId>> = HashMap::new();
    let Ok(all) = procfs::process::all_processes() else {
        return found;
    };
    for proc in all.flatten() {
        // Any step can fail because the process just exited: skip it.
        let Ok(fds) = proc.fd() else { continue };
        let mut mine = Vec::new();
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target {
                if inodes.contains(&inode) && !mine.contains(&inode) {
                    mine.push(inode);
                }
            }
        }
        if mine.is_empty() {
            continue;
        }
        let Some(id) = u32::try_from(proc.pid)
            .ok()
            .and_then(ProcessId::of)
            .filter(ProcessId::is_alive)
        else {
            continue;
        };
        for inode in mine {
            found.entry(inode).or_default().push(id);
        }
    }
    found
}

pub fn may_copy_descriptors() -> bool {
    static MAY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MAY.get_or_init(|| {
        // CAP_SYS_PTRACE, bit 19 of the effective set.
        let ptrace_cap = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                let hex = s
                    .lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))?
                    .trim()
                    .to_string();
                u64::from_str_radix(&hex, 16).ok()
            })
            .is_some_and(|caps| caps & (1 << 19) != 0);
        match std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope") {
            // No Yama: the classic rule, a user's own (dumpable) processes.
            Err(_) => true,
            Ok(s) => match s.trim() {
                "0" => true,
                "1" | "2" => ptrace_cap,
                _ => false,
            },
        }
    })
}

pub fn socket_copies(p: ProcessId, inodes: &HashSet<u64>) -> Vec<(u64, OwnedFd)> {
    let Ok(Some(pidfd)) = pidfd_open(p.pid) else {
        return Vec::new();
    };
    // Checked after the pidfd is open: it is then `p`'s, not a reused pid's.
    if !p.is_alive() {
        return Vec::new();
    }
    let Some(fds) = i32::try_from(p.pid)
        .ok()
        .and_then(|pid| Process::new(pid).ok())
        .and_then(|proc| proc.fd().ok())
    else {
        return Vec::new();
    };
    let mut copies: Vec<(u64, OwnedFd)> = Vec::new();
    for fd in fds.flatten() {
        let FDTarget::Socket(inode) = fd.target else {
            continue;
        };
        if !inodes.contains(&inode) || copies.iter().any(|(i, _)| *i == inode) {
            continue;
        }
        // SAFETY: a plain syscall; on success it returns a new descriptor
        // (close-on-exec) to the file `p` has at `fd.fd`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_getfd,
                pidfd.as_raw_fd(),
                fd.fd,
                0 as libc::c_uint,
            )
        };
        if r < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                // No rights over `p` (ptrace), or no such call: none will do.
                Some(libc::EPERM) | Some(libc::ENOSYS) => return Vec::new(),
                // That descriptor closed meanwhile.
                _ => continue,
            }
        }
        // SAFETY: the kernel just gave us this descriptor.
        let copy = unsafe { OwnedFd::from_raw_fd(r as i32) };
        // The number may have been reused between the read and the copy.
        if crate::sockets::inode_of(std::os::fd::AsFd::as_fd(&copy)).ok() == Some(inode) {
            copies.push((inode, copy));
        }
    }
    copies
}

pub fn holds_any(pid: u32, inodes: &HashSet<u64>) -> bool {
    let Some(p) = i32::try_from(pid).ok().and_then(|p| Process::new(p).ok()) else {
        return false;
    };
    let Ok(fds) = p.fd() else { return false };
    fds.flatten()
        .any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)))
}

pub fn process_details(pid: u32) -> Option<(Vec<String>, Option<PathBuf>, Option<PathBuf>)> {
    let p = Process::new(i32::try_from(pid).ok()?).ok()?;
    let cmdline = p.cmdline().ok()?;
    Some((cmdline, p.exe().ok(), p.cwd().ok()))
}

/// Only the command line: one read of /proc/PID/cmdline.
pub fn process_cmdline(pid: u32) -> Option<Vec<String>> {
    let p = Process::new(i32::try_from(pid).ok().filter(|p| *p > 0)?).ok()?;
    p.cmdline().ok()
}

/// A pidfd for `pid` (Linux 5.3+), or `None` where the kernel has none.
pub fn pidfd_open(pid: u32) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: a plain syscall; on success it returns a new descriptor.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0 as libc::c_uint) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOSYS) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel just gave us this descriptor, close-on-exec.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(r as i32) }))
}

/// SO_PEERPIDFD: the pidfd of a Unix socket's peer (Linux 6.5+), taken by
/// the kernel at connect time, so the pid cannot be reused in between.
pub fn peer_pidfd(fd: BorrowedFd<'_>) -> Option<OwnedFd> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut pidfd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `pidfd`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut pidfd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel installed a new descriptor for us.
    (r == 0 && pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// Whether the kernel lists a TIME_WAIT socket whose local port is `port`.
/// (Sockets that are only bound are not listed at all.) One sock_diag dump
/// per family of TIME_WAIT sockets only, which the kernel selects, rather
/// than of the whole TCP table; the whole table is the fallback.
pub fn time_wait_on(port: u16) -> bool {
    const TCP_TIME_WAIT: u32 = 6;
    let dumped = [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .try_fold(false, |found, family| {
            if found {
                return Ok(true);
            }
            let mut hit = false;
            diag_dump(family as u8, 1 << TCP_TIME_WAIT, |m| {
                hit |= u16::from_be(m.id.sport) == port;
            })?;
            Ok::<bool, std::io::Error>(hit)
        });
    match dumped {
        Ok(found) => found,
        Err(_) => tcp_sockets().is_ok_and(|all| {
            all.iter()
                .any(|s| s.state == SocketState::TimeWait && s.local.port() == port)
        }),
    }
}

pub fn listeners() -> std::io::Result<Vec<SocketEntry>> {
    const TCP_LISTEN: u32 = 10;
    let mut out = Vec::new();
    let dumped = [libc::AF_INET, libc::AF_INET6]
        .into_iter()
        .try_for_each(|family| {
            diag_dump(family as u8, 1 << TCP_LISTEN, |m| {
                let ip = if m.family == libc::AF_INET as u8 {
                    let [a, b, c, d, ..] = m.id.src;
                    std::net::IpAddr::from([a, b, c, d])
                } else {
                    std::net::IpAddr::from(m.id.src)
                };
                out.push(SocketEntry {
                    local: std::net::SocketAddr::new(ip, u16::from_be(m.id.sport)),
                    state: SocketState::Listen,
                    inode: u64::from(m.inode),
                    uid: m.uid,
                });
            })
        });
    match dumped {
        Ok(()) => Ok(out),
        Err(_) => Ok(tcp_sockets()?
            .into_iter()
            .filter(|s| s.state == SocketState::Listen)
            .collect()),
    }
}

/// Sends one sock_diag request (`flags`: NLM_F_REQUEST, and NLM_F_DUMP for
/// a dump) on a netlink socket of its own, which it returns for the
/// caller to read the answer from.
fn diag_send(flags: u16, body: InetDiagReqV2) -> std::io::Result<OwnedFd> {
    use std::io::Error;
    #[repr(C)]
    struct Request {
        header: libc::nlmsghdr,
        body: InetDiagReqV2,
    }
    let request = Request {
        header: libc::nlmsghdr {
            nlmsg_len: std::mem::size_of::<Request>() as u32,
            nlmsg_type: SOCK_DIAG_BY_FAMILY,
            nlmsg_flags: flags,
            nlmsg_seq: 1,
            nlmsg_pid: 0,
        },
        body,
    };
    // SAFETY: a netlink socket we own from here on (closed on drop), and a
    // request of plain data whose length we pass.
    unsafe {
        let fd = libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        );
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let sent = libc::send(
            fd.as_raw_fd(),
            (&request as *const Request).cast(),
            std::mem::size_of::<Request>(),
            0,
        );
        if sent < 0 {
            return Err(Error::last_os_error());
        }
        Ok(fd)
    }
}

/// A sock_diag dump of the TCP sockets of `family` in `states` (a bit per
/// TCP state), each message passed to `each`.
fn diag_dump(family: u8, states: u32, mut each: impl FnMut(&InetDiagMsg)) -> std::io::Result<()> {
    use std::io::Error;
    let fd = diag_send(
        (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states,
            id: InetDiagSockId::default(),
        },
    )?;
    let hdr_len = std::mem::size_of::<libc::nlmsghdr>();
    // SAFETY: a reply buffer whose length we pass; each message is read
    // (unaligned) only where its header says it lies within what arrived.
    unsafe {
        let mut buf = vec![0u64; 8192];
        // A dump of a busy machine's TIME_WAIT sockets: bounded all the same.
        for _ in 0..100_000 {
            let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len() * 8, 0);
            if n < 0 {
                return Err(Error::last_os_error());
            }
            let (base, n) = (buf.as_ptr() as *const u8, n as usize);
            let mut at = 0;
            while at + hdr_len <= n {
                let header: libc::nlmsghdr = std::ptr::read_unaligned(base.add(at).cast());
                let len = header.nlmsg_len as usize;
                if len < hdr_len || at + len > n {
                    return Err(Error::other("a torn sock_diag message"));
                }
                match header.nlmsg_type as i32 {
                    libc::NLMSG_DONE => return Ok(()),
                    libc::NLMSG_ERROR if len >= hdr_len + 4 => {
                        let code: i32 = std::ptr::read_unaligned(base.add(at + hdr_len).cast());
                        return Err(Error::from_raw_os_error(code.wrapping_neg()));
                    }
                    libc::NLMSG_ERROR => return Err(Error::other("a short netlink error")),
                    t if t == SOCK_DIAG_BY_FAMILY as i32
                        && len >= hdr_len + std::mem::size_of::<InetDiagMsg>() =>
                    {
                        let m: InetDiagMsg =
                            std::ptr::read_unaligned(base.add(at + hdr_len).cast());
                        each(&m);
                    }
                    _ => {}
                }
                // Messages are 4-byte aligned (NLMSG_ALIGN).
                at += (len + 3) & !3;
            }
        }
        Err(Error::other("a sock_diag dump that does not end"))
    }
}

/// When a process started, in ms since the epoch, from its start time in
/// clock ticks since boot.
pub fn started_at_ms(start_ticks: u64) -> Option<u64> {
    let boot = procfs::boot_time_secs().ok()?;
    let hz = procfs::ticks_per_second().max(1);
    Some(boot * 1000 + start_ticks * 1000 / hz)
}

/// `struct inet_diag_sockid` (linux/inet_diag.h). Ports and addresses are in
/// network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// `struct inet_diag_msg`.
#[repr(C)]
#[derive(Clone, Copy)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_NOCOOKIE: u32 = !0;

fn addr_bytes(ip: std::net::IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        std::net::IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        std::net::IpAddr::V6(a) => out = a.octets(),
    }
    out
}

/// One exact sock_diag request: the TCP socket whose local address is
/// `peer` and whose remote address is `ours`. The kernel looks it up in its
/// hash tables (inet_diag_find_one_icsk), so this costs two syscalls on a
/// netlink socket, not a dump of every socket.
pub fn tcp_peer_diag(
    ours: std::net::SocketAddr,
    peer: std::net::SocketAddr,
) -> std::io::Result<Option<crate::sockets::TcpPeer>> {
    use std::io::Error;
    // An IPv4 peer seen through an IPv6 socket is an IPv4 socket.
    let (ours, peer) = (canonical(ours), canonical(peer));
    let family = match (ours, peer) {
        (std::net::SocketAddr::V4(_), std::net::SocketAddr::V4(_)) => libc::AF_INET,
        (std::net::SocketAddr::V6(_), std::net::SocketAddr::V6(_)) => libc::AF_INET6,
        _ => return Ok(None),
    };
    let fd = diag_send(
        libc::NLM_F_REQUEST as u16,
        InetDiagReqV2 {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: InetDiagSockId {
                sport: peer.port().to_be(),
                dport: ours.port().to_be(),
                src: addr_bytes(peer.ip()),
                dst: addr_bytes(ours.ip()),
                interface: 0,
                cookie: [INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE],
            },
        },
    )?;
    // SAFETY: a reply buffer whose length we pass, read (unaligned) within
    // what arrived.
    unsafe {
        let mut buf = [0u64; 1024];
        let n = libc::recv(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            std::mem::size_of_val(&buf),
            0,
        );
        if n < 0 {
            return Err(Error::last_os_error());
        }
        let n = n as usize;
        let hdr_len = std::mem::size_of::<libc::nlmsghdr>();
        if n < hdr_len {
            return Err(Error::other("short sock_diag reply"));
        }
        let header: libc::nlmsghdr = std::ptr::read_unaligned(buf.as_ptr().cast());
        let payload = (buf.as_ptr() as *const u8).add(hdr_len);
        match header.nlmsg_type as i32 {
            libc::NLMSG_ERROR if n >= hdr_len + 4 => {
                let code: i32 = std::ptr::read_unaligned(payload.cast());
                if code == -libc::ENOENT {
                    Ok(None)
                } else {
                    Err(Error::from_raw_os_error(code.wrapping_neg()))
                }
            }
            t if t == SOCK_DIAG_BY_FAMILY as i32
                && n >= hdr_len + std::mem::size_of::<InetDiagMsg>() =>
            {
                let msg: InetDiagMsg = std::ptr::read_unaligned(payload.cast());
                Ok(Some(crate::sockets::TcpPeer {
                    uid: msg.uid,
                    inode: msg.inode as u64,
                }))
            }
            _ => Err(Error::other("unexpected sock_diag reply")),
        }
    }
}

fn canonical(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::new(v4.into(), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// The fallback: /proc/net/tcp{,6}, searched for the same socket.
pub fn tcp_peer_procfs(
    ours: std::net::SocketAddr,
    peer: std::net::SocketAddr,
) -> std::io::Result<Option<crate::sockets::TcpPeer>> {
    let (ours, peer) = (canonical(ours), canonical(peer));
    let table = if peer.is_ipv4() {
        procfs::net::tcp()
    } else {
        procfs::net::tcp6()
    };
    let entries = table.map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(entries
        .into_iter()
        .find(|e| e.local_address == peer && e.remote_address == ours)
        .map(|e| crate::sockets::TcpPeer {
            uid: e.uid,
            inode: e.inode,
        }))
}

/// The process of `uid` holding socket `inode`: /proc is walked from the
/// highest pid down (a connecting client is usually recent) and only
/// processes of `uid` are opened, stopping at the first holder.
pub fn socket_holder(uid: u32, inode: u64) -> Option<ProcessId> {
    use std::os::unix::fs::MetadataExt;
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable_by(|a, b| b.cmp(a));
    let want = std::path::PathBuf::from(format!("socket:[{inode}]"));
    for pid in pids {
        // /proc/PID belongs to the process's effective uid (root for
        // non-dumpable ones, which a non-root broker cannot read anyway).
        match std::fs::metadata(format!("/proc/{pid}")) {
            Ok(m) if m.uid() == uid => {}
            _ => continue,
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|t| t == want) {
                return u32::try_from(pid)
                    .ok()
                    .and_then(ProcessId::of)
                    .filter(ProcessId::is_alive);
            }
        }
    }
    None
}

pub fn own_executable() -> std::io::Result<std::fs::File> {
    std::fs::File::open("/proc/self/exe")
}

/// This process's resident set, in bytes (/proc/self/statm).
pub fn own_resident_bytes() -> Option<u64> {
    let statm = procfs::process::Process::myself().ok()?.statm().ok()?;
    Some(statm.resident * procfs::page_size())
}

/// Whether loopback's IPv6 is turned off (net.ipv6.conf.lo.disable_ipv6).
pub fn loopback_ipv6_disabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
        .is_ok_and(|v| v.trim() == "1")
}

/// net.ipv4.ip_unprivileged_port_start, where it can be read.
pub fn unprivileged_port_start() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn a_time_wait_socket_is_seen_on_its_port_and_only_there() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (server, _) = listener.accept().unwrap();
        // The side that closes first keeps TIME_WAIT: here the server's,
        // on the listener's port.
        drop(server);
        let mut end = [0u8; 1];
        assert_eq!(client.read(&mut end).unwrap(), 0);
        drop(client);
        drop(listener);
        // The whole table shows it (the kernel settles the close at once on
        // loopback; a few tries all the same)...
        let seen = (0..100).any(|_| {
            let all = super::tcp_sockets().unwrap();
            let tw = all.iter().any(|s| {
                s.state == crate::sockets::SocketState::TimeWait && s.local.port() == port
            });
            if !tw {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            tw
        });
        assert!(seen, "the table lists TIME_WAIT on {port}");
        // ... and so does the filtered dump itself (not its fallback).
        let mut ports = Vec::new();
        super::diag_dump(libc::AF_INET as u8, 1 << 6, |m| {
            ports.push(u16::from_be(m.id.sport))
        })
        .expect("a sock_diag dump");
        assert!(ports.contains(&port), "{port} in {ports:?}");
        assert!(super::time_wait_on(port), "TIME_WAIT on {port}");
        let quiet = TcpListener::bind("127.0.0.1:0").unwrap();
        let unused = quiet.local_addr().unwrap().port();
        drop(quiet);
        assert!(!super::time_wait_on(unused));
    }
}
