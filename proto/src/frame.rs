//! Framing: a 4-byte big-endian payload length, then that many bytes of
//! UTF-8 JSON. Descriptors ride as SCM_RIGHTS on the first byte of the frame
//! that announces them.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use sendfd::RecvWithFd;

use crate::{MAX_FDS, MAX_REPLY};

/// The bytes of one frame for `payload`.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks a frame header against a size limit; `Err` carries the reason
/// the frame is refused.
pub fn payload_len(header: [u8; 4], limit: usize) -> Result<usize, String> {
    let len = u32::from_be_bytes(header) as usize;
    if len == 0 {
        return Err("empty frame".into());
    }
    if len > limit {
        return Err(format!("frame of {len} bytes exceeds the limit of {limit}"));
    }
    Ok(len)
}

/// Reads one reply frame from a blocking stream, collecting any descriptors that
/// arrive with it (a plain read would silently close them).
pub fn read_blocking(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let mut header = [0u8; 4];
    read_exact_with_fds(stream, &mut header, &mut fds)?;
    let len = payload_len(header, MAX_REPLY)
        .map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
    let mut payload = vec![0u8; len];
    read_exact_with_fds(stream, &mut payload, &mut fds)?;
    Ok((payload, fds))
}

fn read_exact_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let mut raw: [RawFd; MAX_FDS] = [-1; MAX_FDS];
        let (n, nfds) = match stream.recv_with_fd(&mut buf[filled..], &mut raw) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for fd in &raw[..nfds] {
            // SAFETY: the kernel just installed these descriptors for us.
            let owned = unsafe { OwnedFd::from_raw_fd(*fd) };
            set_cloexec(*fd);
            fds.push(owned);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-frame",
            ));
        }
        filled += n;
    }
    Ok(())
}

fn set_cloexec(fd: RawFd) {
    // SAFETY: fd is open and ours. sendfd may not ask for MSG_CMSG_CLOEXEC,
    // and a listener leaking into unrelated children would hold the port.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFD);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
        }
    }
}
