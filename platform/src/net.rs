//! Reserving a TCP port in the kernel: the pair of loopback sockets the
//! broker binds for every lease.
//!
//! A lease holds `127.0.0.1:P` and `[::1]:P`, so `localhost:P` reaches the
//! claimant whichever family the resolver returns first. Both sockets carry
//! SO_REUSEADDR (so an app that also sets it may bind over a placeholder that
//! is not listening) and never SO_REUSEPORT (which would let any process of
//! the same user share a listening port).
//!
//! SO_REUSEADDR is set only *after* an exclusive bind succeeded. Set before,
//! the bind would also succeed beside another process's non-listening
//! SO_REUSEADDR socket (another broker's placeholder, say), and two claimants
//! would share a port. The exclusive bind also fails on a port that still has
//! TIME_WAIT connections, which is why `BindMode::AllowTimeWait` exists for
//! ports a caller wants back specifically.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrIn, SockaddrIn6,
};

/// The backlog of a listening lease socket. The kernel caps it at
/// net.core.somaxconn.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Some other socket holds the port in this family.
    #[error("port {port} is in use on {addr}")]
    InUse { port: u16, addr: SocketAddr },
    #[error("cannot bind {addr}: {source}")]
    Other {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Unbound sockets made ahead of need. socket(2) is the costliest call in a
/// claim (an inode and a file each time), so the broker makes them after it
/// has replied, and a claim only binds. A socket whose exclusive bind failed
/// is still unbound and option-free, so it goes back for the next port.
#[derive(Debug, Default)]
pub struct SocketPool {
    v4: Vec<OwnedFd>,
    v6: Vec<OwnedFd>,
    /// socket(AF_INET6) failed: this machine has no IPv6.
    no_v6: bool,
}

/// How many spare sockets of each family the pool keeps.
pub const POOL_SIZE: usize = 16;

impl SocketPool {
    pub fn needs_refill(&self) -> bool {
        self.v4.len() < POOL_SIZE || (!self.no_v6 && self.v6.len() < POOL_SIZE)
    }

    /// Tops the pool up. Failures (out of descriptors) just leave it short:
    /// `take` then makes sockets on demand and reports the error there.
    pub fn refill(&mut self) {
        while self.v4.len() < POOL_SIZE {
            match fresh_socket(false) {
                Ok(fd) => self.v4.push(fd),
                Err(_) => break,
            }
        }
        while !self.no_v6 && self.v6.len() < POOL_SIZE {
            match fresh_socket(true) {
                Ok(fd) => self.v6.push(fd),
                Err(nix::Error::EAFNOSUPPORT) => self.no_v6 = true,
                Err(_) => break,
            }
        }
    }

    fn take(&mut self, v6: bool) -> nix::Result<OwnedFd> {
        let spare = if v6 { self.v6.pop() } else { self.v4.pop() };
        spare.map_or_else(|| fresh_socket(v6), Ok)
    }

    fn give_back(&mut self, fd: OwnedFd, v6: bool) {
        let list = if v6 { &mut self.v6 } else { &mut self.v4 };
        if list.len() < POOL_SIZE {
            list.push(fd);
        }
    }
}

/// A new TCP socket: close-on-exec, and for IPv6 never dual-stack (the
/// IPv4 side is reserved by its own socket).
fn fresh_socket(v6: bool) -> nix::Result<OwnedFd> {
    let family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    if v6 {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    Ok(fd)
}

/// Whether the kernel lists TIME_WAIT connections on local port `port`:
/// the usual reason an exclusive bind of a just-released port fails.
pub fn time_wait_on(port: u16) -> bool {
    crate::sys::time_wait_on(port)
}

/// How strictly to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// Only if no socket at all is bound to the port.
    Exclusive,
    /// Also beside TIME_WAIT remnants of earlier connections. This cannot
    /// tell them from another process's non-listening SO_REUSEADDR socket,
    /// so it is for ports asked for by number or remembered for an id.
    AllowTimeWait,
}

/// The sockets that reserve one port: always IPv4 loopback, and IPv6
/// loopback unless the machine has no IPv6.
#[derive(Debug)]
pub struct LoopbackSockets {
    pub port: u16,
    pub v4: OwnedFd,
    pub v6: Option<OwnedFd>,
    listening: std::sync::atomic::AtomicBool,
    /// Which of them went to a client (`HANDED_V4`, `HANDED_V6`): only
    /// those can be held by any process but the broker.
    handed: std::sync::atomic::AtomicU8,
    /// The sockets' inodes, IPv4 first, read (fstat) once, when first
    /// asked: the reaper's every scan asks, a claim never does.
    inodes: std::sync::OnceLock<Vec<u64>>,
}

const HANDED_V4: u8 = 1;
const HANDED_V6: u8 = 2;

impl LoopbackSockets {
    /// Binds `127.0.0.1:port` and `[::1]:port`. With `listen`, both listen;
    /// otherwise they are placeholders: bound, not listening, which blocks
    /// every bind without SO_REUSEADDR and every other listener.
    pub fn bind(
        port: u16,
        listen: bool,
        mode: BindMode,
        pool: &mut SocketPool,
    ) -> Result<LoopbackSockets, BindError> {
        let v4addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let v4 = bind_one(v4addr, mode, pool)?;
        let v6addr = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
        let v6 = match bind_one(v6addr, mode, pool) {
            Ok(fd) => Some(fd),
            // No IPv6 on this machine (disabled, or no ::1): IPv4 alone is
            // then all that localhost can mean.
            Err(BindError::Other { source, .. })
                if matches!(
                    source.raw_os_error(),
                    Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
                ) =>
            {
                None
            }
            Err(e) => return Err(e),
        };
        let sockets = LoopbackSockets {
            port,
            v4,
            v6,
            listening: std::sync::atomic::AtomicBool::new(false),
            handed: std::sync::atomic::AtomicU8::new(0),
            inodes: std::sync::OnceLock::new(),
        };
        if listen {
            sockets.listen()?;
        }
        Ok(sockets)
    }

    /// The sockets of `port` again, from copies of listeners the broker had
    /// handed out (IPv4 first), taken back from the process that held
    /// them: listening, and handed, as they were.
    pub fn from_listeners(port: u16, v4: OwnedFd, v6: Option<OwnedFd>) -> LoopbackSockets {
        let handed = HANDED_V4 | if v6.is_some() { HANDED_V6 } else { 0 };
        LoopbackSockets {
            port,
            v4,
            v6,
            listening: std::sync::atomic::AtomicBool::new(true),
            handed: std::sync::atomic::AtomicU8::new(handed),
            inodes: std::sync::OnceLock::new(),
        }
    }

    /// Turns placeholders into listeners. Fails with `InUse` when an app has
    /// meanwhile bound over the placeholder and listens itself.
    pub fn listen(&self) -> Result<(), BindError> {
        use std::sync::atomic::Ordering;
        if self.listening.load(Ordering::Acquire) {
            return Ok(());
        }
        for fd in self.fds() {
            listen(&fd, Backlog::new(LISTEN_BACKLOG).expect("valid backlog"))
                .map_err(|e| classify(self.addr_of(fd), e))?;
        }
        self.listening.store(true, Ordering::Release);
        Ok(())
    }

    pub fn is_listening(&self) -> bool {
        self.listening.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The inodes the kernel's socket tables list these sockets under,
    /// IPv4 first (0 for one whose fstat failed, which no socket has).
    pub fn inodes(&self) -> &[u64] {
        self.inodes.get_or_init(|| {
            self.fds()
                .map(|fd| crate::sockets::inode_of(fd).unwrap_or(0))
                .collect()
        })
    }

    /// Records that a client is being sent the IPv4 and/or IPv6 socket.
    pub fn mark_handed(&self, v4: bool, v6: bool) {
        let bits = if v4 { HANDED_V4 } else { 0 } | if v6 { HANDED_V6 } else { 0 };
        self.handed
            .fetch_or(bits, std::sync::atomic::Ordering::AcqRel);
    }

    /// The inodes of the sockets that ever went to a client, IPv4 first.
    pub fn handed_inodes(&self) -> impl Iterator<Item = u64> + '_ {
        let bits = self.handed.load(std::sync::atomic::Ordering::Acquire);
        self.inodes()
            .iter()
            .zip([HANDED_V4, HANDED_V6])
            .filter(move |(i, b)| bits & b != 0 && **i != 0)
            .map(|(i, _)| *i)
    }

    /// The sockets, IPv4 first.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        std::iter::once(self.v4.as_fd()).chain(self.v6.as_ref().map(|f| f.as_fd()))
    }

    fn addr_of(&self, fd: BorrowedFd<'_>) -> SocketAddr {
        if fd.as_raw_fd() == self.v4.as_raw_fd() {
            SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
        } else {
            SocketAddr::from((Ipv6Addr::LOCALHOST, self.port))
        }
    }
}

fn bind_one(addr: SocketAddr, mode: BindMode, pool: &mut SocketPool) -> Result<OwnedFd, BindError> {
    let v6 = addr.is_ipv6();
    let fd = pool.take(v6).map_err(|e| classify(addr, e))?;
    if mode == BindMode::AllowTimeWait {
        setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| classify(addr, e))?;
    }
    let bound = match addr {
        SocketAddr::V4(a) => bind(fd.as_raw_fd(), &SockaddrIn::from(a)),
        SocketAddr::V6(a) => bind(fd.as_raw_fd(), &SockaddrIn6::from(a)),
    };
    if let Err(e) = bound {
        if mode == BindMode::Exclusive {
            pool.give_back(fd, v6);
        }
        return Err(classify(addr, e));
    }
    // Now that the port is ours alone, let an app with SO_REUSEADDR bind
    // over this socket while it is not listening.
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| classify(addr, e))?;
    Ok(fd)
}

fn classify(addr: SocketAddr, e: nix::Error) -> BindError {
    if e == nix::Error::EADDRINUSE {
        BindError::InUse {
            port: addr.port(),
            addr,
        }
    } else {
        BindError::Other {
            addr,
            source: e.into(),
        }
    }
}

/// Whether this machine's loopback serves IPv6, which pb holds every port
/// on: `Err` says why not (turned off on the interface, or `[::1]` cannot
/// be bound).
pub fn loopback_ipv6() -> Result<(), String> {
    if crate::sys::loopback_ipv6_disabled() {
        return Err("IPv6 is off on loopback".into());
    }
    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
        .map(drop)
        .map_err(|e| format!("cannot bind [::1]: {e}"))
}

/// The lowest port a process without privileges may bind
/// (`net.ipv4.ip_unprivileged_port_start`), when the kernel says.
pub fn unprivileged_port_start() -> Option<u32> {
    crate::sys::unprivileged_port_start()
}
