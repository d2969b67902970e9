//! The Relay: makes one listening socket answer `localhost:P` in both
//! address families.
//!
//! A lease holds `127.0.0.1:P` and `[::1]:P`. A client that can serve only
//! one socket (the preload shim, which swaps the app's own socket for the
//! broker's) takes the family the app asked for; the broker then accepts on
//! the other family's socket and splices each connection to the served one.
//! Linux has no way to listen on both loopback addresses with one socket
//! short of the wildcard, which would expose the app to the network.
//!
//! A relay lives exactly as long as its [`Relay`] handle, which the lease
//! keeps: when the lease ends, the handle drops and the accept loop stops.
//! Connections already relayed end when either side closes.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Semaphore};

/// Most connections one relay carries at once; more wait in the backlog.
pub const MAX_RELAYED: usize = 256;

/// A running relay; dropping it stops accepting.
#[derive(Debug)]
pub struct Relay {
    _stop: oneshot::Sender<()>,
    /// The address connections are relayed to.
    pub target: SocketAddr,
}

impl Relay {
    /// Accepts on (a duplicate of) `from`, which must be listening, and
    /// relays every connection to `target`. Needs the broker's runtime.
    pub fn start(from: BorrowedFd<'_>, target: SocketAddr) -> std::io::Result<Relay> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| std::io::Error::other(format!("no runtime to relay on: {e}")))?;
        let std_listener = std::net::TcpListener::from(from.as_fd().try_clone_to_owned()?);
        // The duplicate shares the open file with the lease's socket, which
        // nobody else accepts on, so making it non-blocking changes nothing
        // for anyone else.
        std_listener.set_nonblocking(true)?;
        let listener = {
            let _guard = runtime.enter();
            TcpListener::from_std(std_listener)?
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        runtime.spawn(accept_loop(listener, target, stop_rx));
        Ok(Relay {
            _stop: stop_tx,
            target,
        })
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, mut stop: oneshot::Receiver<()>) {
    let slots = Arc::new(Semaphore::new(MAX_RELAYED));
    loop {
        // Take a slot before accepting, so that past the limit connections
        // wait in the kernel's backlog instead of in broker memory.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = &mut stop => return,
        };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut stop => return,
        };
        match accepted {
            Ok((inbound, _)) => {
                tokio::spawn(async move {
                    let _permit = permit;
                    splice(inbound, target).await;
                });
            }
            Err(e) => {
                tracing::warn!("relay to {target}: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn splice(mut inbound: TcpStream, target: SocketAddr) {
    let Ok(mut outbound) = TcpStream::connect(target).await else {
        // Nobody serves the target (the app is gone): closing the inbound
        // connection tells the client as much.
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
}
