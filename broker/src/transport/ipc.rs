//! The Unix-socket transport: frames in, typed ops to the core, frames (and
//! SCM_RIGHTS descriptors) out. It holds no rules of its own beyond framing.
//!
//! A streaming reply (a subscription, a followed log) is several frames
//! with the request's tag: the first reply with `more: true`, one frame per
//! item, then an end frame (docs/PROTOCOL.md, "Streams").

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use pb_platform::{ExitWatch, PeerIdentity};
use pb_proto::frame;
use pb_proto::{ErrorCode, Reply, Request, WireError, PROTOCOL_VERSION};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;

use crate::core::stream::{Stream, StreamNext};
use crate::core::{lock, Caller, Handover, SharedCore};
use crate::service;

/// How long the rest of a frame may take once its first byte arrived.
/// Between frames a connection may idle forever: it may carry session leases.
const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reply may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections until `stop` fires.
pub async fn serve(
    listener: UnixListener,
    core: SharedCore,
    shutdown: Arc<Notify>,
    stop: Arc<Notify>,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.notified() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, core.clone(), shutdown.clone()));
            }
            Err(e) => {
                // Out of descriptors, most likely: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(mut stream: UnixStream, core: SharedCore, shutdown: Arc<Notify>) {
    let Ok(peer) = PeerIdentity::of_unix_peer(&stream) else {
        return;
    };
    let opened = lock(&core).open_session(peer.uid);
    let session = match opened {
        Ok(s) => s,
        Err(e) => {
            let _ = write_reply(&mut stream, &Reply::err(None, e), None).await;
            return;
        }
    };
    let caller = Caller {
        uid: peer.uid,
        peer_uid: peer.uid,
        process: peer.process,
        // Read once for the connection, never under the core's mutex.
        command: peer
            .process
            .and_then(|p| pb_platform::process::command_of(p.pid))
            .map(Into::into),
        session: Some(session),
        exit_watch: ExitWatch::of_unix_peer(&stream).map(Arc::new),
    };
    let mut inbox = Inbox::default();
    loop {
        let payload = match inbox.next_frame(&mut stream).await {
            Incoming::Frame(p) => p,
            Incoming::Closed => break,
            Incoming::Bad(why) => {
                // The stream has lost its framing: say why, then hang up.
                let e = WireError::new(ErrorCode::InvalidFrame, why);
                let _ = write_reply(&mut stream, &Reply::err(None, e), None).await;
                break;
            }
        };
        let (tag, result) = match Request::from_json(&payload) {
            Err((tag, e)) => (tag, Err(e)),
            Ok(req) => {
                // A request may wait (a lock queue, a readiness probe):
                // meanwhile keep reading, so a client that hangs up is
                // noticed and its request abandoned.
                let fut = service::dispatch(&core, &caller, req.op);
                tokio::pin!(fut);
                let r = loop {
                    tokio::select! {
                        biased;
                        r = &mut fut => break Some(r),
                        open = inbox.fill_once(&mut stream), if inbox.has_room() => {
                            if !open {
                                break None;
                            }
                        }
                    }
                };
                match r {
                    Some(r) => (req.tag, r),
                    None => break,
                }
            }
        };
        let (reply, fds, stop, undo, mut more) = match result {
            Ok(out) => (
                Reply {
                    more: out.stream.is_some(),
                    ..Reply::ok(
                        tag,
                        out.result.to_json(),
                        out.sockets.as_ref().map_or(0, |s| s.fds().len()),
                    )
                },
                out.sockets,
                out.shutdown,
                out.undo,
                out.stream,
            ),
            Err(e) => (Reply::err(tag, e), None, false, None, None),
        };
        if write_reply(&mut stream, &reply, fds.as_ref())
            .await
            .is_err()
        {
            if let Some(undo) = undo {
                lock(&core).undo(undo);
            }
            break;
        }
        drop(fds);
        if stop {
            shutdown.notify_one();
        }
        lock(&core).after_reply();
        if let Some(items) = more.as_mut() {
            if !send_stream(&mut stream, &mut inbox, tag, items).await {
                break;
            }
        }
    }
    lock(&core).close_session(session);
}

/// Bytes received on a connection and not yet taken as frames. Reading in
/// chunks rather than header-then-payload saves a syscall per request.
#[derive(Default)]
struct Inbox {
    buf: Vec<u8>,
    /// When the frame whose first bytes are in `buf` must be complete.
    deadline: Option<tokio::time::Instant>,
}

enum Incoming {
    Frame(Vec<u8>),
    /// The header is unacceptable; framing is lost.
    Bad(String),
    /// EOF, an error, or a frame that stalled past its deadline.
    Closed,
}

impl Inbox {
    /// Whether more bytes may be buffered while a request is in progress:
    /// a pipelining client is read up to one full request ahead.
    fn has_room(&self) -> bool {
        self.buf.len() < 4 + pb_proto::MAX_REQUEST
    }

    /// Reads once into the buffer; false when the peer closed.
    async fn fill_once(&mut self, stream: &mut UnixStream) -> bool {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                if self.buf.is_empty() {
                    self.deadline = Some(tokio::time::Instant::now() + FRAME_TIMEOUT);
                }
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    async fn next_frame(&mut self, stream: &mut UnixStream) -> Incoming {
        let mut chunk = [0u8; 8192];
        loop {
            if self.buf.len() >= 4 {
                let header = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
                let len = match frame::payload_len(header, pb_proto::MAX_REQUEST) {
                    Ok(len) => len,
                    Err(why) => return Incoming::Bad(why),
                };
                if self.buf.len() >= 4 + len {
                    let payload = self.buf[4..4 + len].to_vec();
                    self.buf.drain(..4 + len);
                    self.deadline =
                        (!self.buf.is_empty()).then(|| tokio::time::Instant::now() + FRAME_TIMEOUT);
                    return Incoming::Frame(payload);
                }
            }
            // Between frames a connection may idle; within one it may not.
            let n = match self.deadline {
                None => stream.read(&mut chunk).await,
                Some(d) => match tokio::time::timeout_at(d, stream.read(&mut chunk)).await {
                    Ok(r) => r,
                    Err(_) => return Incoming::Closed,
                },
            };
            match n {
                Ok(0) | Err(_) => return Incoming::Closed,
                Ok(n) => {
                    if self.buf.is_empty() {
                        self.deadline = Some(tokio::time::Instant::now() + FRAME_TIMEOUT);
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
            }
        }
    }
}

/// Most bytes of items sent in one write.
const STREAM_BATCH: usize = 256 * 1024;

/// Sends a stream's items, each as a frame with the request's tag and
/// `more: true`, then its end. Items ready together go out in one write.
/// Returns false when the connection is gone.
async fn send_stream(
    stream: &mut UnixStream,
    inbox: &mut Inbox,
    tag: Option<u64>,
    items: &mut Stream,
) -> bool {
    let head = match tag {
        Some(t) => {
            format!("{{\"v\":{PROTOCOL_VERSION},\"tag\":{t},\"ok\":true,\"more\":true,\"item\":")
        }
        None => format!("{{\"v\":{PROTOCOL_VERSION},\"ok\":true,\"more\":true,\"item\":"),
    };
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            n = items.next() => n,
            open = inbox.fill_once(stream), if inbox.has_room() => {
                if !open {
                    return false;
                }
                continue;
            }
        };
        batch.clear();
        let mut next = Some(first);
        let mut end = None;
        while let Some(n) = next.take() {
            match n {
                StreamNext::Item { json, .. } => {
                    let len = head.len() + json.len() + 1;
                    batch.extend_from_slice(&(len as u32).to_be_bytes());
                    batch.extend_from_slice(head.as_bytes());
                    batch.extend_from_slice(json.as_bytes());
                    batch.push(b'}');
                    if batch.len() < STREAM_BATCH {
                        next = items.try_next();
                    }
                }
                StreamNext::End(e) => end = Some(e),
            }
        }
        let sent = tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&batch)).await;
        if !matches!(sent, Ok(Ok(()))) {
            return false;
        }
        if let Some(e) = end {
            let reply = match e {
                None => Reply::ok(
                    tag,
                    RawValue::from_string(r#"{"end":true}"#.into()).expect("valid JSON"),
                    0,
                ),
                Some(e) => Reply::err(tag, e),
            };
            return write_reply(stream, &reply, None).await.is_ok();
        }
    }
}

async fn write_reply(
    stream: &mut UnixStream,
    reply: &Reply,
    sockets: Option<&Handover>,
) -> std::io::Result<()> {
    let bytes = frame::encode(&serde_json::to_vec(reply).expect("replies serialize"));
    tokio::time::timeout(WRITE_TIMEOUT, async {
        let mut sent = 0;
        if let Some(sockets) = sockets {
            let raw: Vec<RawFd> = sockets.fds().iter().map(|f| f.as_raw_fd()).collect();
            // The descriptors ride on the first byte of the frame.
            sent = stream
                .async_io(Interest::WRITABLE, || {
                    pb_platform::fdpass::send_with_fds(stream, &bytes, &raw)
                })
                .await?;
        }
        stream.write_all(&bytes[sent..]).await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read"))?
}
