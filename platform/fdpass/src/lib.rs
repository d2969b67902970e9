//! Passing descriptors over a Unix socket (SCM_RIGHTS), the kernel call
//! the wire protocol rests on. A crate of its own inside platform/, so that
//! pb-proto, and the preload shim built on it, need nothing else of the
//! platform layer (procfs, netstat2 and their build tools stay out of every
//! app the shim is loaded into).
//!
//! pb sends with the `sendfd` crate, but receives here: `sendfd` calls
//! recvmsg without MSG_CMSG_CLOEXEC, which leaves each received listener
//! inheritable until a separate fcntl, a window in which a concurrent fork
//! would leak it (and the port) into an unrelated child. On Linux the flag
//! makes it atomic, and saves two syscalls per descriptor.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

/// The most descriptors one read accepts; more are closed by the kernel
/// (MSG_CTRUNC) and reported as an error.
pub const MAX_FDS: usize = 8;

/// Sends `bytes` with `fds` riding on them; returns how many bytes went.
/// A socket that would block says so (`WouldBlock`), for an async caller to
/// wait on.
pub fn send_with_fds<S: sendfd::SendWithFd>(
    stream: &S,
    bytes: &[u8],
    fds: &[RawFd],
) -> io::Result<usize> {
    stream.send_with_fd(bytes, fds)
}

/// Reads into `buf`, appending any descriptors that arrive to `fds`.
/// Returns the number of bytes read (0 at end of stream).
pub fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    recv(stream, buf, fds, MsgFlags::empty())
}

/// [`recv_with_fds`], but `WouldBlock` instead of waiting when nothing has
/// arrived, on a blocking stream too.
pub fn try_recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<usize> {
    recv(stream, buf, fds, MsgFlags::MSG_DONTWAIT)
}

fn recv(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    wait: MsgFlags,
) -> io::Result<usize> {
    let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(buf)];
    let cloexec = cloexec_flag();
    let msg = loop {
        match recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            cloexec | wait,
        ) {
            Err(nix::Error::EINTR) => continue,
            r => break r?,
        }
    };
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = c {
            for fd in raw {
                // SAFETY: the kernel just installed this descriptor for us.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                if cloexec.is_empty() {
                    set_cloexec(&owned)?;
                }
                fds.push(owned);
            }
        }
    }
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors in one message",
        ));
    }
    Ok(msg.bytes)
}

#[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
fn cloexec_flag() -> MsgFlags {
    MsgFlags::MSG_CMSG_CLOEXEC
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
fn cloexec_flag() -> MsgFlags {
    MsgFlags::empty()
}

fn set_cloexec(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    let flags = FdFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFD)?);
    fcntl(
        fd.as_raw_fd(),
        FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC),
    )?;
    Ok(())
}
