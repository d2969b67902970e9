//! `wait`: returns when each named service is leased and accepts TCP
//! connections on loopback (and, with an HTTP path, answers it with a 2xx
//! or 3xx status).
//!
//! It is event-driven where the broker can know: a service not yet claimed
//! is waited for on the event bus (its `service.claim`), with no polling.
//! Whether an app has started listening has no kernel event to wait on,
//! so a leased port is probed with a TCP connect, backing off from 10 ms to
//! 250 ms. Everything runs outside the core's mutex.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use pb_proto::{ErrorCode, ReadyInfo, WaitReply, WireError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::broadcast;

use crate::core::events::EventKind;
use crate::core::Outcome;
use crate::core::{lock, SharedCore};
use crate::ids;

/// Most services in one wait.
pub const MAX_IDS: usize = 64;
/// The longest wait (1 h).
pub const MAX_TIMEOUT_MS: i64 = 3_600_000;
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

fn bad(why: String) -> WireError {
    WireError::new(ErrorCode::InvalidRequest, why)
}

/// Validates a wait request.
fn check(ids: &[String], timeout_ms: i64, http_path: Option<&str>) -> Result<(), WireError> {
    if ids.is_empty() || ids.len() > MAX_IDS {
        return Err(bad(format!("wait takes 1 to {MAX_IDS} service ids")));
    }
    for id in ids {
        ids::check_id(id)?;
    }
    if timeout_ms <= 0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(WireError::new(
            ErrorCode::InvalidDuration,
            format!("timeout of {timeout_ms} ms is out of range (1 ms to 1 h)"),
        ));
    }
    if let Some(p) = http_path {
        if !p.starts_with('/') || p.len() > 256 || !p.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(format!(
                "invalid health path {p:?}: it starts with / and has no spaces (at most 256 bytes)"
            )));
        }
    }
    Ok(())
}

pub async fn wait(
    core: &SharedCore,
    ids: Vec<String>,
    timeout_ms: i64,
    http_path: Option<String>,
) -> Result<Outcome, WireError> {
    check(&ids, timeout_ms, http_path.as_deref())?;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(timeout_ms as u64);
    let mut events = lock(core).bus.follow();
    let mut ready = Vec::with_capacity(ids.len());
    for id in &ids {
        let mut backoff = BACKOFF_START;
        loop {
            let lease = lock(core).lease_port(id);
            let last = match lease {
                None => {
                    if !claimed_or_deadline(&mut events, id, deadline).await {
                        return Err(timed_out(id, "not claimed", timeout_ms));
                    }
                    continue;
                }
                Some((port, _)) => match probe(port, http_path.as_deref()).await {
                    Ok(()) => {
                        ready.push(ReadyInfo {
                            id: id.clone(),
                            port,
                            waited_ms: started.elapsed().as_millis() as u64,
                        });
                        break;
                    }
                    Err(why) => why,
                },
            };
            let now = Instant::now();
            if now >= deadline {
                return Err(timed_out(id, last, timeout_ms));
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
    Ok(Outcome::of(WaitReply { services: ready }))
}

fn timed_out(id: &str, why: &str, timeout_ms: i64) -> WireError {
    WireError::new(
        ErrorCode::Timeout,
        format!("{id} was not ready within {timeout_ms} ms: {why}"),
    )
    .with_details(serde_json::json!({ "id": id, "state": why }))
}

/// Waits for a claim of `id` (or anything that may have changed it: a
/// lagging receiver re-checks). False at the deadline.
async fn claimed_or_deadline(
    events: &mut broadcast::Receiver<std::sync::Arc<crate::core::events::Event>>,
    id: &str,
    deadline: Instant,
) -> bool {
    let until = tokio::time::Instant::from_std(deadline);
    loop {
        match tokio::time::timeout_at(until, events.recv()).await {
            Err(_) => return false,
            Ok(Ok(ev)) if ev.kind == EventKind::ServiceClaim && ev.target == id => return true,
            Ok(Ok(_)) => continue,
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => return true,
            Ok(Err(broadcast::error::RecvError::Closed)) => return false,
        }
    }
}

/// Connects to the port on 127.0.0.1, then [::1]; with a path, asks it
/// over HTTP/1.0.
async fn probe(port: u16, http_path: Option<&str>) -> Result<(), &'static str> {
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    let mut last = "not accepting connections";
    for addr in addrs {
        let stream = match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            _ => continue,
        };
        let Some(path) = http_path else {
            return Ok(());
        };
        match tokio::time::timeout(PROBE_TIMEOUT, http_ok(stream, port, path)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(why)) => last = why,
            Err(_) => last = "the health check did not answer",
        }
    }
    Err(last)
}

async fn http_ok(mut s: TcpStream, port: u16, path: &str) -> Result<(), &'static str> {
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: localhost:{port}\r\nUser-Agent: pb-wait\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|_| "the health check connection failed")?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match s.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = std::str::from_utf8(&buf[..n]).unwrap_or("");
    let status: Option<u16> = head
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok());
    match status {
        Some(200..=399) => Ok(()),
        Some(_) => Err("the health path answers with an error status"),
        None => Err("the health path does not answer HTTP"),
    }
}
