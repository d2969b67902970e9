//! The webhook delivery worker: a tokio task of the daemon that takes due
//! deliveries from the core (`webhooks`), sends each over HTTP/1.1, and
//! reports the result back. Network I/O never runs under the core's mutex.
//!
//! Each webhook has at most one attempt in flight, and at most
//! `PB_WEBHOOK_CONCURRENCY` run at once overall, so a slow receiver holds
//! up only its own deliveries.
//!
//! One attempt: resolve the host (`Resolver`), judge every address with
//! the SSRF policy (`ssrf`), connect a TCP stream to an address that
//! passed, and run the request on that stream with hyper's HTTP/1.1
//! client (`conn::http1::handshake`): no second resolution can send it
//! elsewhere. Redirects are not followed; the whole attempt has a 10 s
//! limit. https runs TLS (rustls, with the Mozilla roots of webpki-roots
//! plus any PB_WEBHOOK_CA) over that same stream, verifying the
//! certificate against the URL's host. Each attempt is signed afresh
//! (`sign`): Port Daddy's
//! `X-PortDaddy-Signature` over the body, and Standard Webhooks'
//! `webhook-signature` over id, timestamp and body.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, Semaphore};
use tokio_rustls::rustls;

use crate::core::now_ms;
use crate::core::webhooks::{random_bytes, AttemptResult, Job};
use crate::core::{lock, SharedCore};
use crate::ssrf::{self, Host, Policy, Target};

/// The longest the worker sleeps without looking at the queue.
const IDLE: Duration = Duration::from_secs(1);
/// Bytes of a response body read (and discarded) so the exchange ends
/// cleanly.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

type HmacSha256 = Hmac<Sha256>;

/// The signature headers of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signatures {
    /// `X-PortDaddy-Signature`: `sha256=<hex HMAC-SHA256(secret, body)>`.
    pub portdaddy: String,
    /// `webhook-signature`: `v1,<base64 HMAC-SHA256(key, id.ts.body)>`.
    pub standard: String,
}

/// The Standard Webhooks key: a `whsec_` secret is base64 of the key;
/// any other secret is used as given.
fn standard_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// Signs one attempt. `timestamp_s` is the attempt's time in seconds.
pub fn sign(secret: &str, delivery_id: &str, timestamp_s: u64, body: &[u8]) -> Signatures {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(body);
    let hex = hex::encode(mac.finalize().into_bytes());
    let mut mac = HmacSha256::new_from_slice(&standard_key(secret)).expect("HMAC takes any key");
    mac.update(format!("{delivery_id}.{timestamp_s}.").as_bytes());
    mac.update(body);
    let b64 = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    Signatures {
        portdaddy: format!("sha256={hex}"),
        standard: format!("v1,{b64}"),
    }
}

/// Where host names come from: DNS, or, when PB_TEST_HOSTS names a file
/// (a test seam, read only when that variable is set), that file first,
/// in /etc/hosts format.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    pub test_hosts: Option<PathBuf>,
}

impl Resolver {
    pub async fn resolve(&self, name: &str, port: u16) -> Result<Vec<IpAddr>, String> {
        if let Some(path) = &self.test_hosts {
            // A small file, read only in tests.
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read PB_TEST_HOSTS {}: {e}", path.display()))?;
            let found: Vec<IpAddr> = text
                .lines()
                .map(|l| l.split('#').next().unwrap_or(""))
                .filter_map(|l| {
                    let mut words = l.split_whitespace();
                    let addr: IpAddr = words.next()?.parse().ok()?;
                    words.any(|w| w.eq_ignore_ascii_case(name)).then_some(addr)
                })
                .collect();
            if !found.is_empty() {
                return Ok(found);
            }
        }
        let addrs = tokio::net::lookup_host((name, port))
            .await
            .map_err(|e| format!("cannot resolve {name}: {e}"))?;
        let mut v: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
        v.dedup();
        if v.is_empty() {
            return Err(format!("{name} resolves to no address"));
        }
        Ok(v)
    }
}

/// The addresses an attempt may connect to: every one the host resolves
/// to must pass the policy, so a name that mixes an allowed address with
/// a forbidden one is refused as a whole.
pub async fn checked_addresses(
    target: &Target,
    resolver: &Resolver,
    policy: Policy,
) -> Result<Vec<IpAddr>, AttemptResult> {
    let addrs = match &target.host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => resolver
            .resolve(name, target.port)
            .await
            .map_err(AttemptResult::Failed)?,
    };
    for ip in &addrs {
        if let Err(r) = ssrf::judge(*ip, policy) {
            let name = match &target.host {
                Host::Name(n) => format!("{n} resolves to {ip}"),
                Host::Ip(_) => ip.to_string(),
            };
            return Err(AttemptResult::Refused(format!(
                "refused by the SSRF policy: {name}, which is {}",
                r.describe()
            )));
        }
    }
    Ok(addrs)
}

fn retry_after(headers: &hyper::HeaderMap) -> Option<u64> {
    let v = headers.get(hyper::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(|s| s.saturating_mul(1000))
}

/// The TLS client settings: the Mozilla roots, plus the certificates of
/// `extra_ca` (PEM; PB_WEBHOOK_CA) when given.
pub fn tls_config(extra_ca: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut added = 0;
        for c in certs {
            let c = c.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("unusable CA certificate in {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("no PEM certificate in {}", path.display()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Sends one request to exactly `addr`, over TLS for https.
async fn send(
    addr: SocketAddr,
    job: &Job,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<AttemptResult, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    if !job.target.https {
        return exchange(stream, addr, job).await;
    }
    let name = match &job.target.host {
        Host::Ip(ip) => rustls_pki_types::ServerName::IpAddress((*ip).into()),
        Host::Name(n) => rustls_pki_types::ServerName::try_from(n.clone())
            .map_err(|e| format!("{n} is not a TLS server name: {e}"))?,
    };
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS with {addr}: {e}"))?;
    exchange(stream, addr, job).await
}

/// One HTTP/1.1 exchange on an established stream.
async fn exchange<S>(stream: S, addr: SocketAddr, job: &Job) -> Result<AttemptResult, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    let conn = tokio::spawn(conn);
    let d = &job.delivery;
    let now = now_ms();
    let sig = sign(&job.secret, &d.id, now / 1000, d.body.as_bytes());
    let req = hyper::Request::post(job.target.path.as_str())
        .header(hyper::header::HOST, job.target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("pb/", env!("CARGO_PKG_VERSION")),
        )
        .header("X-PortDaddy-Event", d.event.as_str())
        .header("X-PortDaddy-Delivery", d.id.as_str())
        .header("X-PortDaddy-Timestamp", now.to_string())
        .header("X-PortDaddy-Signature", sig.portdaddy)
        .header("webhook-id", d.id.as_str())
        .header("webhook-timestamp", (now / 1000).to_string())
        .header("webhook-signature", sig.standard)
        .body(Full::new(Bytes::from(d.body.clone())))
        .map_err(|e| format!("cannot build the request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP exchange with {addr}: {e}"))?;
    let code = resp.status().as_u16();
    let retry_after_ms = retry_after(resp.headers());
    // Read a bounded part of the body so the receiver sees a clean end;
    // its content does not matter.
    let mut body = resp.into_body();
    let mut read = 0usize;
    while read < MAX_RESPONSE_BODY {
        match body.frame().await {
            Some(Ok(f)) => read += f.data_ref().map_or(0, |b| b.len()),
            _ => break,
        }
    }
    drop(sender);
    conn.abort();
    Ok(AttemptResult::Status {
        code,
        retry_after_ms,
    })
}

/// One attempt, resolution to status, within `timeout`.
pub async fn attempt(
    job: &Job,
    resolver: &Resolver,
    policy: Policy,
    timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
) -> AttemptResult {
    let run = async {
        let addrs = match checked_addresses(&job.target, resolver, policy).await {
            Ok(a) => a,
            Err(r) => return r,
        };
        let mut errors = Vec::new();
        for ip in addrs {
            match send(SocketAddr::new(ip, job.target.port), job, tls).await {
                Ok(r) => return r,
                Err(e) => errors.push(e),
            }
        }
        AttemptResult::Failed(errors.join("; "))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => AttemptResult::Failed(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// The worker: runs for the life of the daemon. `tls` is `tls_config`'s,
/// made by the daemon before it starts (a bad PB_WEBHOOK_CA stops it).
pub async fn run(core: SharedCore, tls: Arc<rustls::ClientConfig>) {
    let (notify, cfg): (Arc<Notify>, _) = {
        let c = lock(&core);
        (c.webhook_notify(), c.config().webhooks.clone())
    };
    let resolver = Arc::new(Resolver {
        test_hosts: cfg.test_hosts.clone(),
    });
    let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let timeout = Duration::from_millis(cfg.timeout_ms);
    loop {
        let free = slots.available_permits();
        let mut wait = IDLE;
        if free > 0 {
            let (jobs, next) = lock(&core).webhook_jobs(now_ms(), free);
            for job in jobs {
                // `jobs` is at most the free permits, and only this loop
                // takes permits, so this never waits.
                let permit = slots.clone().acquire_owned().await.expect("never closed");
                let core = core.clone();
                let notify = notify.clone();
                let resolver = resolver.clone();
                let policy = cfg.policy;
                let tls = tls.clone();
                tokio::spawn(async move {
                    let started_ms = now_ms();
                    let t0 = Instant::now();
                    let result = attempt(&job, &resolver, policy, timeout, &tls).await;
                    let took = t0.elapsed().as_millis() as u64;
                    let jitter = random_bytes::<2>().map(u16::from_ne_bytes).unwrap_or(0);
                    lock(&core).webhook_attempted(job, started_ms, took, result, jitter);
                    drop(permit);
                    notify.notify_one();
                });
            }
            if let Some(at) = next {
                wait = Duration::from_millis(at.saturating_sub(now_ms())).min(IDLE);
            }
        }
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_known_values() {
        // HMAC-SHA256("secret", "body"), checked with Python's hmac module.
        let s = sign("secret", "msg_1", 1700000000, b"body");
        assert_eq!(
            s.portdaddy,
            "sha256=dc46983557fea127b43af721467eb9b3fde2338fe3e14f51952aa8478c13d355"
        );
        assert!(s.standard.starts_with("v1,"));
        // A whsec_ secret signs with its decoded key.
        let k = sign("whsec_c2VjcmV0", "msg_1", 1700000000, b"body");
        let raw = sign("secret", "msg_1", 1700000000, b"body");
        assert_eq!(k.standard, raw.standard);
        assert_ne!(k.portdaddy, raw.portdaddy);
    }
}
