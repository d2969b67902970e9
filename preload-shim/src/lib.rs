//! The preload shim: loaded with LD_PRELOAD by `pb exec --shim`, it makes
//! an unmodified app's own `bind()` land on the broker's pre-bound socket.
//!
//! When the app binds a TCP port that `PB_SHIM_MAP` maps to a service, the
//! shim asks the broker for that service's listener (a claim with `fds`),
//! `dup3()`s it over the app's descriptor and reports success. The app then
//! calls `listen()` on a socket that already listens, which Linux allows,
//! and `getsockname()` answers the brokered port.
//!
//! The socket is fetched from the broker at bind time rather than inherited
//! from `pb exec`: only the environment has to survive the exec chain
//! (`npm run dev` → sh → node), and programs that close stray descriptors,
//! or never pass them to their children, cannot lose it.
//!
//! The app gets one socket, of the family it created; the broker relays the
//! other loopback family to it, so `localhost:P` answers over IPv4 and IPv6.
//!
//! Every other bind passes through to the real one untouched. On any
//! failure the shim falls back to the real bind and says why: to `pb exec`
//! over a datagram socket (`PB_SHIM_REPORT`), and on stderr when
//! `PB_SHIM_DEBUG` is set. It never panics across the C boundary.
//!
//! Limits: programs that make raw syscalls (Go binaries, static binaries)
//! and setuid programs bypass LD_PRELOAD altogether.

use std::cell::Cell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use libc::{c_int, sockaddr, socklen_t};
use pb_proto::shim::{PortMap, ShimReport, ENV_DEBUG, ENV_MAP, ENV_REPORT, ENV_SOCKET};
use pb_proto::{ClaimArgs, ClaimReply, Client, IpFamily, Op, Owner};

/// How long a bind waits for the broker before falling back.
const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// What `pb exec` asked of this process, read once from the environment.
struct Settings {
    map: PortMap,
    socket: PathBuf,
    report: Option<PathBuf>,
    debug: bool,
}

static SETTINGS: OnceLock<Option<Settings>> = OnceLock::new();
/// With `PortMap::First`, the port of the process's first bind (0 before
/// it): later binds of that port are the app's too (a probe bind closed and
/// bound again, one socket per family, SO_REUSEPORT workers), others pass.
static FIRST_PORT: AtomicU32 = AtomicU32::new(0);
/// A bind of a port the map does not name has been reported.
static UNMAPPED_SAID: AtomicBool = AtomicBool::new(false);
/// libc's bind, found once.
static REAL_BIND: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Set while the shim works, so nothing it calls is intercepted again.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// The interposed bind(2).
///
/// # Safety
/// Called by C code with the arguments of bind(2).
#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if let Some(rc) = intercept(fd, addr, len) {
        return rc;
    }
    real_bind(fd, addr, len)
}

unsafe fn real_bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    type BindFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
    let mut f = REAL_BIND.load(Ordering::Acquire);
    if f == 0 {
        f = libc::dlsym(libc::RTLD_NEXT, c"bind".as_ptr()) as usize;
        REAL_BIND.store(f, Ordering::Release);
    }
    if f == 0 {
        return libc::syscall(libc::SYS_bind, fd, addr, len) as c_int;
    }
    // SAFETY: dlsym found libc's bind, whose signature this is.
    let real: BindFn = std::mem::transmute::<usize, BindFn>(f);
    real(fd, addr, len)
}

/// `Some(rc)` when the shim handled the bind, `None` to pass it through.
///
/// # Safety
///
/// `addr` and `len` as the app passed them to bind(2): null, or `len`
/// readable bytes.
unsafe fn intercept(fd: c_int, addr: *const sockaddr, len: socklen_t) -> Option<c_int> {
    let asked = socket_addr(addr, len)?;
    if asked.port() == 0 || BUSY.with(|b| b.replace(true)) {
        return None;
    }
    let handled = std::panic::catch_unwind(|| swap_if_mapped(fd, asked))
        .ok()
        .flatten();
    BUSY.with(|b| b.set(false));
    handled
}

/// Reads an IPv4 or IPv6 address; anything else is not the shim's.
///
/// # Safety
///
/// `addr` is null or points at `len` readable bytes.
unsafe fn socket_addr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() {
        return None;
    }
    let len = len as usize;
    match c_int::from((*addr).sa_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            let a = std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>());
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            let a = std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in6>());
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn settings() -> Option<&'static Settings> {
    SETTINGS
        .get_or_init(|| {
            let text = std::env::var(ENV_MAP).ok()?;
            let debug = std::env::var_os(ENV_DEBUG).is_some_and(|v| !v.is_empty());
            let map = match PortMap::from_env(&text) {
                Ok(m) => m,
                Err(why) => {
                    if debug {
                        eprintln!("pb-shim: ignoring {ENV_MAP}: {why}");
                    }
                    return None;
                }
            };
            let socket = std::env::var_os(ENV_SOCKET)
                .map(PathBuf::from)
                .unwrap_or_else(|| pb_proto::paths::Paths::from_env().socket());
            let report = std::env::var_os(ENV_REPORT)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from);
            Some(Settings {
                map,
                socket,
                report,
                debug,
            })
        })
        .as_ref()
}

fn int_option(fd: RawFd, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: v and len are valid for getsockopt to write.
    let rc = unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut c_int).cast(), &mut len) };
    (rc == 0).then_some(v)
}

fn set_int_option(fd: RawFd, level: c_int, name: c_int, v: c_int) {
    // SAFETY: a c_int option, passed by pointer with its size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&v as *const c_int).cast(),
            std::mem::size_of::<c_int>() as socklen_t,
        );
    }
}

/// The socket's family when it is a TCP stream socket.
fn tcp_family(fd: RawFd) -> Option<IpFamily> {
    if int_option(fd, libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM
        || int_option(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
    {
        return None;
    }
    match int_option(fd, libc::SOL_SOCKET, libc::SO_DOMAIN)? {
        libc::AF_INET => Some(IpFamily::V4),
        libc::AF_INET6 => Some(IpFamily::V6),
        _ => None,
    }
}

fn swap_if_mapped(fd: RawFd, asked: SocketAddr) -> Option<c_int> {
    let settings = settings()?;
    let family = tcp_family(fd)?;
    let port = asked.port();
    let Some(id) = settings.map.id_for(port).map(str::to_string) else {
        if !UNMAPPED_SAID.swap(true, Ordering::AcqRel) {
            report_unmapped(settings, asked);
        }
        return None;
    };
    if let PortMap::First(_) = settings.map {
        let first = match FIRST_PORT.compare_exchange(
            0,
            u32::from(port),
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => u32::from(port),
            Err(first) => first,
        };
        if first != u32::from(port) {
            return None;
        }
    }
    // Every bind of a mapped port gets the service's listener of the
    // socket's family: a duplicate of one listening socket accepts from
    // the same queue, so however many times the app binds, every socket it
    // listens on is served.
    match swap(fd, &id, family, settings) {
        Ok(brokered) => {
            report(settings, &id, asked, Ok(brokered));
            Some(0)
        }
        Err(why) => {
            report(settings, &id, asked, Err(why));
            None
        }
    }
}

/// Fetches `id`'s listener of `family` and puts it in place of `fd`.
fn swap(fd: RawFd, id: &str, family: IpFamily, settings: &Settings) -> Result<u16, String> {
    let mut client = Client::connect(&settings.socket).map_err(|e| {
        format!(
            "cannot reach the broker at {}: {e}",
            settings.socket.display()
        )
    })?;
    let _ = client.stream().set_read_timeout(Some(BROKER_TIMEOUT));
    let _ = client.stream().set_write_timeout(Some(BROKER_TIMEOUT));
    let args = ClaimArgs {
        id: id.to_string(),
        fds: true,
        family: Some(family),
        // A lease that `pb exec` did not make ends with this process.
        owner: Owner::Caller,
        ..Default::default()
    };
    let (reply, fds): (ClaimReply, Vec<OwnedFd>) = client
        .call_as(Op::Claim(args))
        .map_err(|e| format!("the broker did not give {id}'s socket: {e}"))?;
    let listener = fds
        .into_iter()
        .next()
        .ok_or_else(|| format!("the broker sent no socket for {id}"))?;
    put_in_place(fd, listener)?;
    Ok(reply.lease.port)
}

/// Replaces `fd` with `listener`, keeping what the app set on `fd`: its
/// descriptor and status flags, and the options accepted connections
/// inherit.
fn put_in_place(fd: RawFd, listener: OwnedFd) -> Result<(), String> {
    let os_err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    // SAFETY: fcntl on a descriptor the app passed to bind.
    let status = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let fd_flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if status < 0 || fd_flags < 0 {
        return Err(os_err("reading the app's socket flags"));
    }
    let new = listener.as_raw_fd();
    for (level, name) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    ] {
        if let Some(v) = int_option(fd, level, name).filter(|v| *v != 0) {
            set_int_option(new, level, name, v);
        }
    }
    let cloexec = if fd_flags & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // SAFETY: both descriptors are open; dup3 replaces fd atomically, so
    // the app's descriptor number never dangles.
    if unsafe { libc::dup3(new, fd, cloexec) } < 0 {
        return Err(os_err("dup3"));
    }
    // SAFETY: F_SETFL with flags read from this descriptor before.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, status) } < 0 {
        return Err(os_err("restoring the app's status flags"));
    }
    Ok(())
}

/// The app bound a port of its own choosing: worth one line from `pb
/// exec` when its URL is pb's port.
fn report_unmapped(settings: &Settings, asked: SocketAddr) {
    let id = settings
        .map
        .ids()
        .first()
        .map(|s| s.to_string())
        .unwrap_or_default();
    send(
        settings,
        &ShimReport {
            pid: std::process::id(),
            id,
            asked: asked.to_string(),
            wildcard: asked.ip().is_unspecified(),
            port: None,
            error: None,
            unmapped: true,
        },
    );
}

fn report(settings: &Settings, id: &str, asked: SocketAddr, outcome: Result<u16, String>) {
    let (port, error) = match outcome {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e)),
    };
    let r = ShimReport {
        pid: std::process::id(),
        id: id.to_string(),
        asked: asked.to_string(),
        wildcard: asked.ip().is_unspecified(),
        port,
        error,
        unmapped: false,
    };
    if settings.debug {
        match (&r.port, &r.error) {
            (Some(p), _) => eprintln!("pb-shim: bind({}) → {id} on port {p}", r.asked),
            (_, Some(e)) => eprintln!("pb-shim: bind({}) is the app's own: {e}", r.asked),
            _ => {}
        }
    }
    send(settings, &r);
}

fn send(settings: &Settings, r: &ShimReport) {
    if let Some(path) = &settings.report {
        if let (Ok(sock), Ok(bytes)) = (UnixDatagram::unbound(), serde_json::to_vec(r)) {
            let _ = sock.send_to(&bytes, path);
        }
    }
}
