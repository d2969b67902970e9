//! The named-URL proxy against the same backend reached directly, and
//! portless (npm `portless`, on loopback) against its own backend reached
//! directly, in one run. Run:
//! `cargo build --release && cargo bench -p pb-tests --bench proxy`
//! (needs `npm install --prefix /tmp/pb-bench-portless portless@0.15.6`,
//! which the bench does when it is missing, and openssl for portless's
//! certificate).
//!
//! Each backend is the same Node http server (tests/servers/hello.js).
//! For each way in (direct, proxy over HTTP/1.1, proxy over TLS), on one
//! keep-alive connection: p50 and p99 of 2 000 sequential GETs; then 8
//! connections in 8 threads for 2 s, requests per second. Three rounds,
//! interleaved; medians. portless runs with TLS (its default, here with a
//! certificate the bench makes, so that it neither makes nor installs a CA
//! of its own) and without (`--no-tls`), on ports of the bench's block.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pb_tests::bench::{median, us};
use pb_tests::{v4, wait_until, Broker, PortBlock, Proc};

const SEQUENTIAL: usize = 2_000;
const CLIENTS: usize = 8;
const LOAD: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// Where a request goes: the port, the name in Host (and SNI), TLS roots.
#[derive(Clone)]
struct Target {
    label: &'static str,
    port: u16,
    host: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    fn connect(&self) -> Box<dyn Stream> {
        self.try_connect().unwrap()
    }

    fn try_connect(&self) -> std::io::Result<Box<dyn Stream>> {
        let tcp = TcpStream::connect(v4(self.port))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(match &self.tls {
            None => Box::new(tcp),
            Some(cfg) => {
                let name = self.host.split(':').next().unwrap().to_string();
                let server = rustls_pki_types::ServerName::try_from(name).unwrap();
                let conn = rustls::ClientConnection::new(cfg.clone(), server).unwrap();
                Box::new(rustls::StreamOwned::new(conn, tcp))
            }
        })
    }
}

/// One GET to `t` on the kept-alive connection `s`, its whole answer read;
/// when the server says `Connection: close` (portless over HTTP/1.1 does),
/// the next request gets a new connection, as any client would, and that
/// time counts.
fn get(s: &mut Box<dyn Stream>, t: &Target, buf: &mut Vec<u8>) {
    match try_get(&mut **s, &t.host, buf) {
        Ok(true) => {}
        Ok(false) => *s = t.connect(),
        Err(e) => panic!("{}: {e}", t.label),
    }
}

/// One GET; whether the connection stays open.
fn try_get(s: &mut dyn Stream, host: &str, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    let bad = |m: String| std::io::Error::other(m);
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n")?;
    s.flush()?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad("closed".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            if !head.starts_with("http/1.1 200") {
                return Err(bad(head));
            }
            let len: usize = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| bad("no length".into()))?;
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(bad("closed in the body".into()));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(!head.split("\r\n").any(|l| l == "connection: close"));
        }
    }
}

/// p50 and p99 of sequential GETs on one connection.
fn latency(t: &Target) -> (Duration, Duration) {
    let mut s = t.connect();
    let mut buf = Vec::new();
    for _ in 0..100 {
        get(&mut s, t, &mut buf);
    }
    let mut all: Vec<Duration> = (0..SEQUENTIAL)
        .map(|_| {
            let t0 = Instant::now();
            get(&mut s, t, &mut buf);
            t0.elapsed()
        })
        .collect();
    all.sort();
    (all[all.len() / 2], all[all.len() * 99 / 100])
}

/// Requests per second from 8 connections at once.
fn throughput(t: &Target) -> f64 {
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let t = t.clone();
            std::thread::spawn(move || {
                let mut s = t.connect();
                let mut buf = Vec::new();
                let mut n = 0u64;
                while start.elapsed() < LOAD {
                    get(&mut s, &t, &mut buf);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn roots(ca_pem: &Path) -> Arc<rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca_pem).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    // HTTP/1.1 over TLS, asked for by ALPN as browsers do (portless's
    // server answers only clients that name a protocol).
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// portless from npm, installed once beside the bench.
fn portless_bin() -> PathBuf {
    let dir = PathBuf::from("/tmp/pb-bench-portless");
    let bin = dir.join("node_modules/.bin/portless");
    if !bin.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg("portless@0.15.6")
            .status()
            .unwrap();
        assert!(ok.success(), "npm install portless");
    }
    bin
}

/// A portless proxy, stopped however the bench ends: portless runs it as
/// a daemon of its own, which outlives the command that started it.
struct PortlessProxy(PathBuf);

impl Drop for PortlessProxy {
    fn drop(&mut self) {
        let _ = Command::new(portless_bin())
            .args(["proxy", "stop"])
            .env("PORTLESS_STATE_DIR", &self.0)
            .output();
        // And by its pid file, should `stop` not find it.
        if let Some(pid) = std::fs::read_to_string(self.0.join("proxy.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// A portless proxy on `port` (`--no-tls`, or TLS with `cert`), in its own
/// state directory.
fn portless_proxy(state: &Path, port: u16, cert: Option<(&Path, &Path)>) -> PortlessProxy {
    let mut c = Command::new(portless_bin());
    c.args(["proxy", "start", "-p", &port.to_string()]);
    match cert {
        None => c.arg("--no-tls"),
        Some((cert, key)) => c.arg("--cert").arg(cert).arg("--key").arg(key),
    };
    let out = c
        .env("PORTLESS_STATE_DIR", state)
        .env("PORTLESS_SYNC_HOSTS", "0")
        .env("CI", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PortlessProxy(state.to_path_buf())
}

fn main() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let node_app = pb_tests::tests_dir().join("servers/hello.js");
    let (_pb_app, pb_port) =
        broker.exec(&["web.bench", "--", "node", &node_app.display().to_string()]);
    let pb_host = "web-bench.localhost".to_string();
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(v4(pb_port)).ok()
    })
    .unwrap();
    let ca: String = broker.pb_json(&["status"])["proxy"]["ca"]
        .as_str()
        .unwrap()
        .into();

    // portless: two proxies (HTTP and TLS) on ports of our block, one app.
    let block = PortBlock::take(10);
    let (pl_http, pl_tls) = (block.range.0, block.range.0 + 1);
    let state = tempfile::tempdir().unwrap();
    let (cert, key) = (state.path().join("cert.pem"), state.path().join("key.pem"));
    pb_tests::self_signed_cert(
        "/CN=benchapp.localhost",
        &cert,
        &key,
        &[
            "-addext",
            "subjectAltName=DNS:benchapp.localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ],
    );
    let http_state = state.path().join("http");
    let tls_state = state.path().join("tls");
    let _pl_proxies = [
        portless_proxy(&http_state, pl_http, None),
        portless_proxy(&tls_state, pl_tls, Some((&cert, &key))),
    ];
    // One app per portless proxy (each keeps its own routes), the same
    // server as pb's.
    let start_app = |st: &Path, port: u16, tls: bool, log: PathBuf| {
        let mut c = Command::new(portless_bin());
        c.args(["benchapp", "node"])
            .arg(&node_app)
            .env("PORTLESS_STATE_DIR", st)
            .env("PORTLESS_PORT", port.to_string())
            .env("PORTLESS_SYNC_HOSTS", "0")
            .env("CI", "1");
        if !tls {
            c.env("PORTLESS_HTTPS", "0");
        }
        let app = Proc(
            c.stdout(std::fs::File::create(&log).unwrap())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let port: u16 = wait_until(Duration::from_secs(20), || {
            let text = std::fs::read_to_string(&log).ok()?;
            text.split("listening on port ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("portless started the app");
        (app, port)
    };
    let (_pl_app, pl_port) = start_app(&http_state, pl_http, false, state.path().join("http.log"));
    let (_pl_tls_app, _) = start_app(&tls_state, pl_tls, true, state.path().join("tls.log"));

    let plain = |label, port, host: String| Target {
        label,
        port,
        host,
        tls: None,
    };
    let pb_tls = roots(Path::new(&ca));
    let pl_roots = roots(&cert);
    let targets = [
        plain("pb: direct", pb_port, format!("127.0.0.1:{pb_port}")),
        plain("pb: proxy, HTTP/1.1", proxy, format!("{pb_host}:{proxy}")),
        Target {
            label: "pb: proxy, TLS",
            port: proxy,
            host: format!("{pb_host}:{proxy}"),
            tls: Some(pb_tls),
        },
        plain("portless: direct", pl_port, format!("127.0.0.1:{pl_port}")),
        plain(
            "portless: HTTP/1.1",
            pl_http,
            format!("benchapp.localhost:{pl_http}"),
        ),
        Target {
            label: "portless: TLS",
            port: pl_tls,
            host: format!("benchapp.localhost:{pl_tls}"),
            tls: Some(pl_roots),
        },
    ];
    // Every way in answers before anything is timed.
    for t in &targets {
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(10), || {
            let r = t
                .try_connect()
                .and_then(|mut s| try_get(&mut *s, &t.host, &mut Vec::new()));
            r.map_err(|e| last = e.to_string()).ok()
        });
        assert!(ok.is_some(), "{} does not answer: {last}", t.label);
    }
    let mut p50 = vec![Vec::new(); targets.len()];
    let mut p99 = vec![Vec::new(); targets.len()];
    let mut rps = vec![Vec::new(); targets.len()];
    for _ in 0..ROUNDS {
        for (i, t) in targets.iter().enumerate() {
            let (a, b) = latency(t);
            p50[i].push(a);
            p99[i].push(b);
            rps[i].push(Duration::from_secs_f64(throughput(t)));
        }
    }
    let p50: Vec<Duration> = p50.into_iter().map(median).collect();
    let p99: Vec<Duration> = p99.into_iter().map(median).collect();
    let rps: Vec<f64> = rps.into_iter().map(|v| median(v).as_secs_f64()).collect();
    println!(
        "{:<22} {:>9} {:>9} {:>10}",
        "way in", "p50 µs", "p99 µs", "req/s (8)"
    );
    for (i, t) in targets.iter().enumerate() {
        println!(
            "{:<22} {:>9.1} {:>9.1} {:>10.0}",
            t.label,
            us(p50[i]),
            us(p99[i]),
            rps[i]
        );
    }
    println!(
        "pb adds at p50: {:.1} µs over HTTP/1.1, {:.1} µs over TLS; portless adds {:.1} µs and {:.1} µs",
        us(p50[1]) - us(p50[0]),
        us(p50[2]) - us(p50[0]),
        us(p50[4]) - us(p50[3]),
        us(p50[5]) - us(p50[3]),
    );
    println!(
        "requests per second, pb over portless: {:.2}x over HTTP/1.1, {:.2}x over TLS",
        rps[1] / rps[4],
        rps[2] / rps[5]
    );
}
