//! How a starting daemon tells the client that started it whether it came
//! up: a pipe whose write end the daemon inherits (its number in
//! `PB_READY_FD`). The daemon writes `ok` once it serves, or the reason it
//! cannot start; a daemon that dies first closes the pipe unsaid. So a
//! client learns of a failed start the moment it happens, with its cause,
//! instead of waiting out a timeout and pointing at a log.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The variable that names the inherited write end.
pub const ENV: &str = "PB_READY_FD";
/// Most bytes of a reason the client reads.
const MAX_REASON: usize = 4096;

/// What a starting daemon said.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    /// It serves.
    Ready,
    /// It cannot start, for this reason.
    Failed(String),
    /// Another daemon holds the instance: it is the one to wait for.
    Busy,
    /// It closed the pipe without a word (it died).
    Exited,
    /// Nothing within the limit.
    Silent,
}

/// The client's end, and the write end to hand to the daemon.
pub struct Starting {
    read: File,
}

impl Starting {
    /// A pipe whose write end (returned) is inheritable, and whose read end
    /// stays here; the caller passes the write end's number in [`ENV`] and
    /// drops it once the daemon is started.
    pub fn pipe() -> std::io::Result<(Starting, OwnedFd)> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        // SAFETY: clearing close-on-exec on a descriptor we own.
        if unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETFD, 0) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((
            Starting {
                read: File::from(r),
            },
            w,
        ))
    }

    /// Waits up to `limit` for the daemon's word.
    pub fn wait(mut self, limit: Duration) -> Started {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Started::Silent;
            }
            let mut pfd = libc::pollfd {
                fd: self.read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms.max(1)) };
            if r < 0 {
                if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                    continue;
                }
                return Started::Silent;
            }
            if r == 0 {
                continue;
            }
            match self.read.read(&mut buf) {
                Ok(0) | Err(_) => return judge(&got),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.starts_with(b"ok\n") {
                        return Started::Ready;
                    }
                    if got.len() >= MAX_REASON {
                        return judge(&got);
                    }
                }
            }
        }
    }
}

fn judge(said: &[u8]) -> Started {
    let text = String::from_utf8_lossy(said);
    if said.starts_with(b"busy\n") {
        return Started::Busy;
    }
    match text.strip_prefix("error: ") {
        Some(why) => Started::Failed(why.trim_end().to_string()),
        None if said.starts_with(b"ok\n") => Started::Ready,
        None => Started::Exited,
    }
}

/// The daemon's end: says once whether it came up.
pub struct Notifier(Mutex<Option<File>>);

impl Notifier {
    /// Takes the write end named in [`ENV`] (and removes the variable, so
    /// nothing the daemon starts inherits it). Without one, saying does
    /// nothing: a daemon started by hand has nobody waiting.
    pub fn from_env() -> Notifier {
        let fd: Option<RawFd> = std::env::var(ENV).ok().and_then(|v| v.parse().ok());
        std::env::remove_var(ENV);
        let file = fd.filter(|fd| *fd > 2).and_then(|fd| {
            // SAFETY: F_GETFD only asks whether the descriptor is open.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return None;
            }
            // SAFETY: open, handed to us by our starter, owned from now on.
            let f = unsafe { File::from_raw_fd(fd) };
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            Some(f)
        });
        Notifier(Mutex::new(file))
    }

    /// Whether a starter waits to hear (the daemon was started by a
    /// client, not by hand or by a service manager).
    pub fn has_waiter(&self) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// The daemon serves. A service manager that asked to hear it
    /// (systemd's `Type=notify`: NOTIFY_SOCKET) hears it too.
    pub fn ready(&self) {
        self.say(b"ok\n");
        notify_service_manager("READY=1");
    }

    /// Another daemon is starting or running for the same home.
    pub fn busy(&self) {
        self.say(b"busy\n");
    }

    /// The daemon cannot start, because of `why`.
    pub fn failed(&self, why: &str) {
        let mut text = format!("error: {why}\n").into_bytes();
        text.truncate(MAX_REASON);
        self.say(&text);
    }

    /// The daemon stops: a service manager that waits to hear learns it.
    pub fn stopping(&self) {
        notify_service_manager("STOPPING=1");
    }

    fn say(&self, what: &[u8]) {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut f) = taken {
            let _ = f.write_all(what);
        }
    }
}

/// Tells the service manager `state` (sd_notify(3)): one datagram to the
/// socket NOTIFY_SOCKET names, a leading `@` meaning the abstract
/// namespace. Unset, or unreachable, it says nothing: a broker not started
/// by systemd has no one to tell, and a lost word must not stop it.
fn notify_service_manager(state: &str) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET").filter(|p| !p.is_empty()) else {
        return;
    };
    let addr = {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_bytes();
        match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name)
            }
            None => SocketAddr::from_pathname(std::path::Path::new(&path)),
        }
    };
    if let (Ok(sock), Ok(addr)) = (UnixDatagram::unbound(), addr) {
        let _ = sock.send_to_addr(state.as_bytes(), &addr);
    }
}
