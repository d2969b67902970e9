//! Framing: a 4-byte big-endian payload length, then that many bytes of
//! UTF-8 JSON. Descriptors ride as SCM_RIGHTS on the first byte of the frame
//! that announces them.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::MAX_REPLY;

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

/// Reads frames from a blocking stream, collecting the descriptors that
/// arrive with them (a plain read would silently close them). Bytes are read
/// in chunks, so a reply usually takes one recvmsg.
///
/// Descriptors are credited to the frame being assembled when they arrive,
/// which is exact for a client with one request in flight at a time.
///
/// Before it sleeps in a read, a reader polls for up to [`AWAIT_AWAKE`]:
/// an answer usually comes within it, and a sleeping reader's wake-up can
/// cost more than the whole round trip (`broker/src/service/awake.rs`
/// keeps the broker's side awake the same way).
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn read(
        &mut self,
        stream: &UnixStream,
        limit: usize,
    ) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
        let mut fds = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if self.buf.len() >= 4 {
                let header = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
                let len = payload_len(header, limit)
                    .map_err(|m| io::Error::new(io::ErrorKind::InvalidData, m))?;
                if self.buf.len() >= 4 + len {
                    let payload = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    return Ok((payload, fds));
                }
            }
            let n = match receive_soon(stream, &mut chunk, &mut fds)? {
                Some(n) => n,
                None => pb_fdpass::recv_with_fds(stream, &mut chunk, &mut fds)?,
            };
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-frame",
                ));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// How long a reader polls before it sleeps in a read: the most CPU time
/// one wait for an answer spends polling. Long enough for a busy broker's
/// turn to come round to this client (ARCHITECTURE.md, "Both ends stay
/// awake a moment").
pub const AWAIT_AWAKE: Duration = Duration::from_micros(300);

/// A read of what arrives within [`AWAIT_AWAKE`], polling with the CPU
/// yielded between polls; `None` if nothing did.
fn receive_soon(
    stream: &UnixStream,
    chunk: &mut [u8],
    fds: &mut Vec<OwnedFd>,
) -> io::Result<Option<usize>> {
    let until = Instant::now() + AWAIT_AWAKE;
    while Instant::now() < until {
        match pb_fdpass::try_recv_with_fds(stream, chunk, fds) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
            r => return r.map(Some),
        }
    }
    Ok(None)
}

/// Reads one reply frame (for callers that read a single frame).
pub fn read_blocking(stream: &UnixStream) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    FrameReader::default().read(stream, MAX_REPLY)
}
