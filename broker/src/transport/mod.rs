//! The transports: they turn bytes into typed ops for `service::dispatch`
//! and its outcomes back into bytes (and descriptors). No rule lives here.

pub mod http;
pub mod ipc;
pub mod mcp;
pub mod proxy;

use std::net::SocketAddr;

/// Binds every address of a loopback listener setting (`what` names it in
/// the error). Failing to bind one is an error: a broker that silently
/// lacks a listener would surprise its clients.
pub async fn bind_all(
    what: &str,
    addrs: &[SocketAddr],
) -> anyhow::Result<Vec<tokio::net::TcpListener>> {
    let mut out = Vec::new();
    for a in addrs {
        let l = tokio::net::TcpListener::bind(a)
            .await
            .map_err(|e| anyhow::anyhow!("binding {what} on {a}: {e}"))?;
        out.push(l);
    }
    Ok(out)
}

/// The socket at the other end of the loopback connection `ours`-`theirs`,
/// as the kernel names it: the exact sock_diag lookup costs microseconds;
/// its /proc fallback, a table scan, goes to a blocking thread.
pub async fn tcp_peer(
    ours: SocketAddr,
    theirs: SocketAddr,
) -> std::io::Result<Option<pb_platform::sockets::TcpPeer>> {
    match pb_platform::sockets::tcp_peer_exact(ours, theirs) {
        Ok(found) => Ok(found),
        Err(_) => tokio::task::spawn_blocking(move || {
            pb_platform::sockets::tcp_peer_from_proc(ours, theirs)
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e))),
    }
}
