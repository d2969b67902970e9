//! `pb portserver`: the protocol of Google's portserver, which Python's
//! `portpicker` (and test suites built on it) ask for ports when
//! PORTSERVER_ADDRESS is set. A client connects to a stream Unix socket (a
//! leading `@` is the abstract namespace), sends its pid and a newline, and
//! reads a port and a newline, `0` meaning none.
//!
//! Each answer is a pb lease: owned by that pid, so it ends the moment the
//! pid dies (or moves to a child of the caller's user still listening on
//! it), and `number_only`, so the broker holds no socket on the port and
//! the test binds it itself, with or without SO_REUSEADDR. The broker's
//! exclusive bind of both families is the check a portserver makes before
//! it hands a port out; other pb clients never get the port meanwhile.
//!
//! The rules are the broker's: the pid must be a live process of the
//! caller's user (checked by the core, as for `pb claim --pid`). This
//! process only refuses callers of another user (abstract sockets have no
//! file modes to keep them out) and lines that are not a pid.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use pb_proto::paths::Paths;
use pb_proto::{ClaimArgs, ClaimReply, Op, Owner};

use crate::{connect, Format};

/// portpicker's default address.
const DEFAULT_ADDRESS: &str = "@unittest-portserver";
/// The longest request line: a pid is at most 10 digits.
const MAX_LINE: usize = 32;
/// Requests served at once; more are answered `0` at once.
const MAX_CLIENTS: usize = 64;
/// How long a client may take to send its line.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Ids tried per request when earlier ones are still leased.
const MAX_ID_TRIES: u32 = 64;

#[derive(Args)]
pub struct PortserverCmd {
    /// Where to listen: a socket path, or `@NAME` in the abstract
    /// namespace (what PORTSERVER_ADDRESS says).
    #[arg(long, default_value = DEFAULT_ADDRESS)]
    address: String,
}

/// Why a request got `0`.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("the request is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("the request {0:?} is not a pid")]
    NotAPid(String),
    #[error("pid {0} cannot own a port (portserver refuses pids 0 and 1)")]
    BadPid(u32),
    #[error("the caller is uid {0}, not this portserver's user")]
    OtherUser(u32),
    #[error("{0}")]
    Broker(String),
    #[error("reading the request: {0}")]
    Io(#[from] std::io::Error),
}

pub fn run(paths: &Paths, cmd: PortserverCmd, fmt: Format) -> Result<i32> {
    let listener = listen(&cmd.address)?;
    // Reach the broker before saying we serve: a broker that cannot start
    // is this command's error, not a stream of zeros.
    connect::connect(paths)?;
    if fmt != Format::Quiet {
        eprintln!(
            "pb: portserver on {} (PORTSERVER_ADDRESS={})",
            cmd.address, cmd.address
        );
    }
    let busy = Arc::new(AtomicUsize::new(0));
    let me = pb_platform::os::effective_uid();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.write_all(b"0\n");
            continue;
        }
        let (busy, paths) = (busy.clone(), paths.clone());
        std::thread::spawn(move || {
            let answer = serve(&mut conn, &paths, me);
            let line = match &answer {
                Ok((pid, port)) => {
                    if fmt != Format::Quiet {
                        eprintln!("pb: portserver: port {port} for pid {pid}");
                    }
                    format!("{port}\n")
                }
                Err(why) => {
                    eprintln!("pb: portserver: refused: {why}");
                    "0\n".to_string()
                }
            };
            let _ = conn.write_all(line.as_bytes());
            drain(&mut conn);
            busy.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(0)
}

/// Ends the answer, then reads (a bounded amount of) what the client sent
/// beyond its line: a Unix socket closed with unread data resets the
/// connection, and the client would lose the `0` it was sent.
fn drain(conn: &mut UnixStream) {
    let _ = conn.shutdown(std::net::Shutdown::Write);
    let _ = conn.set_read_timeout(Some(Duration::from_millis(100)));
    let mut left: usize = 64 * 1024;
    let mut buf = [0u8; 4096];
    while left > 0 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Binds the portserver's socket: abstract, or a path that is free (a
/// socket file nobody listens on any more is replaced; anything else that
/// exists is refused).
fn listen(address: &str) -> Result<UnixListener> {
    if let Some(name) = address.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        anyhow::ensure!(!name.is_empty(), "--address @ needs a name after the @");
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        return UnixListener::bind_addr(&addr)
            .with_context(|| format!("listening on {address} (another portserver?)"));
    }
    pb_platform::os::bind_unix_replacing_stale(std::path::Path::new(address)).with_context(|| {
        format!("listening on {address} (only a dead portserver socket of this user is replaced; choose another --address)")
    })
}

/// Reads one request and claims its port: `(pid, port)`.
fn serve(conn: &mut UnixStream, paths: &Paths, me: u32) -> Result<(u32, u16), Refusal> {
    let peer = pb_platform::PeerIdentity::of_unix_peer(conn)?;
    if peer.uid != me {
        return Err(Refusal::OtherUser(peer.uid));
    }
    let pid = read_pid(conn)?;
    let mut client = connect::connect(paths).map_err(|e| Refusal::Broker(format!("{e:#}")))?;
    // One lease per request: an id still leased (an earlier port of the
    // same pid) moves on to the next.
    for n in 0..MAX_ID_TRIES {
        let args = ClaimArgs {
            id: format!("portserver:{pid}:{}", n + 1),
            owner: Owner::Pid(pid),
            number_only: true,
            ..Default::default()
        };
        let (reply, _): (ClaimReply, _) = client
            .call_as(Op::Claim(args))
            .map_err(|e| Refusal::Broker(e.to_string()))?;
        if !reply.existing {
            return Ok((pid, reply.lease.port));
        }
    }
    Err(Refusal::Broker(format!(
        "pid {pid} already holds {MAX_ID_TRIES} ports"
    )))
}

/// The request: a decimal pid and a newline (or the end of the stream).
fn read_pid(conn: &mut UnixStream) -> Result<u32, Refusal> {
    conn.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut buf = Vec::with_capacity(MAX_LINE);
    let mut byte = [0u8; 64];
    while !buf.contains(&b'\n') {
        let n = conn.read(&mut byte)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&byte[..n]);
        if buf.len() > MAX_LINE {
            return Err(Refusal::TooLong);
        }
    }
    let line = buf.split(|b| *b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line).trim().to_string();
    parse_pid(&text)
}

fn parse_pid(text: &str) -> Result<u32, Refusal> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::NotAPid(text.to_string()));
    }
    let pid: u32 = text
        .parse()
        .map_err(|_| Refusal::NotAPid(text.to_string()))?;
    if pid <= 1 {
        return Err(Refusal::BadPid(pid));
    }
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_are_decimal_and_above_one() {
        assert_eq!(parse_pid("4242").unwrap(), 4242);
        for bad in ["", "-5", "12a", "0x10", "99999999999", " 4"] {
            assert!(parse_pid(bad).is_err(), "{bad:?}");
        }
        assert!(matches!(parse_pid("1"), Err(Refusal::BadPid(1))));
        assert!(matches!(parse_pid("0"), Err(Refusal::BadPid(0))));
    }
}
