//! A connection's socket as hyper reads and writes it, shared with the
//! connection's task, so that a client whose request headers never finish
//! (a slow-loris) still gets a 408 `{error, code}` after hyper gives up on
//! it. An idle keep-alive connection, which started no request, is closed
//! without a word, as HTTP/1.1 servers do. The same for a TCP connection
//! and for one on the API's Unix socket.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// What the HTTP API is served over: a loopback TCP connection, or a Unix
/// socket's (PORT_DADDY_SOCK). The calls tokio gives both, by one name.
pub trait Socket: std::os::fd::AsFd + std::fmt::Debug + Send + Sync + 'static {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize>;
}

macro_rules! socket_of {
    ($t:ty) => {
        impl Socket for $t {
            fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_read_ready(self, cx)
            }
            fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                <$t>::poll_write_ready(self, cx)
            }
            fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
                <$t>::try_read(self, buf)
            }
            fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
                <$t>::try_write(self, buf)
            }
            fn try_write_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
                <$t>::try_write_vectored(self, bufs)
            }
        }
    };
}
socket_of!(TcpStream);
socket_of!(UnixStream);

/// The socket, and whether bytes of a request arrived since the last
/// response went out.
pub struct SharedStream<S> {
    inner: Arc<S>,
    started: Arc<AtomicBool>,
}

impl<S> Clone for SharedStream<S> {
    fn clone(&self) -> Self {
        SharedStream {
            inner: self.inner.clone(),
            started: self.started.clone(),
        }
    }
}

impl<S: Socket> SharedStream<S> {
    /// The socket itself, for looking at without reading.
    pub fn socket(&self) -> Arc<S> {
        self.inner.clone()
    }

    pub fn new(stream: S) -> SharedStream<S> {
        SharedStream {
            inner: Arc::new(stream),
            started: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether a request was begun and not answered.
    pub fn request_started(&self) -> bool {
        self.started.load(Ordering::Relaxed)
    }

    /// Writes `bytes` if the socket takes them now, then closes our side:
    /// for last words, never waited on.
    pub fn last_words(&self, bytes: &[u8]) {
        let _ = self.inner.try_write(bytes);
        let _ = pb_platform::os::shutdown_write(&*self.inner);
    }
}

impl<S: Socket> AsyncRead for SharedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.inner.poll_read_ready(cx))?;
            match self.inner.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    if n > 0 {
                        self.started.store(true, Ordering::Relaxed);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale; poll_read_ready waits again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl<S: Socket> AsyncWrite for SharedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_write(data) {
                Ok(n) => {
                    self.started.store(false, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.inner.poll_write_ready(cx))?;
            match self.inner.try_write_vectored(bufs) {
                Ok(n) => {
                    self.started.store(false, Ordering::Relaxed);
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket: nothing is buffered here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(pb_platform::os::shutdown_write(&*self.inner))
    }
}
