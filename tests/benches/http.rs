//! The HTTP API against the Unix socket, measured in the same run on the
//! same broker. Run: `cargo build --release && cargo bench -p pb-tests --bench http`.
//!
//! Sequential claim+release over one keep-alive HTTP connection (Port
//! Daddy's `POST /claim/:id` and `DELETE /release/:id`), claim alone, and
//! 8 concurrent clients for 3 s, next to the same operations over the Unix
//! socket (number-only claims: HTTP cannot pass descriptors). Then what
//! identifying the caller costs on each new connection: the exact
//! sock_diag lookup the broker makes, the /proc/net/tcp fallback, and a
//! whole request on a fresh connection against one on a kept-alive one;
//! and the /proc walk that finds the caller's pid, which the broker makes
//! once per connection, for its first request that changes state.
//! The benchmark broker's rate limit is raised (PB_HTTP_RATE) so that the
//! limiter, not the broker, is not what is measured.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use pb_proto::{ClaimArgs, Client, Op};
use pb_tests::{v4, Broker};

/// A minimal keep-alive HTTP/1.1 client: one request, one response.
struct Http {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

impl Http {
    fn connect(port: u16) -> Http {
        let stream = TcpStream::connect(v4(port)).unwrap();
        stream.set_nodelay(true).unwrap();
        Http {
            stream,
            host: format!("127.0.0.1:{port}"),
            buf: Vec::with_capacity(4096),
        }
    }

    fn call(&mut self, method: &str, path: &str) -> u16 {
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.stream.write_all(req.as_bytes()).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])
                    .unwrap()
                    .to_ascii_lowercase();
                let len: usize = head
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.stream.read(&mut chunk).unwrap();
                    assert!(n > 0, "connection closed");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return head[9..12].parse().unwrap();
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(name: &str, lat: &mut [Duration]) -> Duration {
    lat.sort();
    let (p50, p99) = (pct(lat, 0.5), pct(lat, 0.99));
    println!(
        "{name:<52} p50 {:>7.1} µs   p99 {:>7.1} µs   (n={})",
        us(p50),
        us(p99),
        lat.len()
    );
    p50
}

fn sequential(name: &str, n: usize, mut op: impl FnMut()) -> Duration {
    for _ in 0..n / 10 {
        op();
    }
    let mut lat: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            op();
            t.elapsed()
        })
        .collect();
    report(name, &mut lat)
}

fn throughput(name: &str, clients: usize, make: impl Fn(usize) -> Box<dyn FnMut() + Send>) -> f64 {
    let run_for = Duration::from_secs(3);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let mut op = make(t);
            std::thread::spawn(move || {
                let mut pairs = 0u64;
                while start.elapsed() < run_for {
                    op();
                    pairs += 1;
                }
                pairs
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let rate = total as f64 / start.elapsed().as_secs_f64();
    println!("{name:<52} {rate:>8.0} pairs/s");
    rate
}

fn main() {
    let n: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let broker = Broker::start_with(&[("PB_HTTP_RATE", "10000000")]);
    let port = broker.http_port().unwrap();

    // The Unix socket, as a baseline in the same run.
    let mut c = broker.client();
    let ipc_status = sequential("IPC: status round trip", n, || {
        c.call(Op::Status).unwrap();
    });
    let ipc_pair = sequential("IPC: claim+release, number only", n, || {
        ipc_claim_release(&mut c, "bench:ipc")
    });

    let mut h = Http::connect(port);
    let http_health = sequential("HTTP: GET /health, kept alive", n, || {
        assert_eq!(h.call("GET", "/health"), 200);
    });
    let http_pair = sequential(
        "HTTP: claim+release (POST /claim, DELETE /release)",
        n,
        || {
            assert_eq!(h.call("POST", "/claim/bench:http"), 200);
            assert_eq!(h.call("DELETE", "/release/bench:http"), 200);
        },
    );
    let mut claims = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        assert_eq!(h.call("POST", "/claim/bench:one"), 200);
        if i >= n / 10 {
            claims.push(t.elapsed());
        }
        assert_eq!(h.call("DELETE", "/release/bench:one"), 200);
    }
    let http_claim = report("HTTP: claim alone (target p50 < 200 µs)", &mut claims);
    println!(
        "ratios (p50): HTTP pair / IPC pair {:.2}x; HTTP /health / IPC status {:.2}x",
        us(http_pair) / us(ipc_pair),
        us(http_health) / us(ipc_status)
    );
    let _ = http_claim;

    let sock = broker.socket();
    let ipc_rate = throughput("IPC: 8 clients, claim+release number only", 8, |t| {
        let mut c = Client::connect(&sock).unwrap();
        Box::new(move || ipc_claim_release(&mut c, &format!("bench:ipc{t}")))
    });
    let http_rate = throughput("HTTP: 8 clients, claim+release", 8, |t| {
        let mut h = Http::connect(port);
        let claim = format!("/claim/bench:http{t}");
        let release = format!("/release/bench:http{t}");
        Box::new(move || {
            assert_eq!(h.call("POST", &claim), 200);
            assert_eq!(h.call("DELETE", &release), 200);
        })
    });
    println!("ratio (8 clients): HTTP / IPC {:.2}", http_rate / ipc_rate);

    // Identifying the caller of a new connection.
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let ours = server.local_addr().unwrap();
    let _client = TcpStream::connect(ours).unwrap();
    let (_conn, peer) = server.accept().unwrap();
    let diag = sequential(
        "peer uid: sock_diag exact lookup (what pb uses)",
        5000,
        || {
            pb_platform::sockets::tcp_peer(ours, peer).unwrap().unwrap();
        },
    );
    let proc_ = sequential("peer uid: /proc/net/tcp scan (fallback)", 1000, || {
        pb_platform::sockets::tcp_peer_from_proc(ours, peer)
            .unwrap()
            .unwrap();
    });
    println!("ratio: /proc / sock_diag {:.1}x", us(proc_) / us(diag));
    let me = unsafe { libc::geteuid() };
    let inode = pb_platform::sockets::tcp_peer(ours, peer)
        .unwrap()
        .unwrap()
        .inode;
    sequential(
        "caller pid: /proc walk, newest first (state changes only)",
        1000,
        || {
            pb_platform::sockets::holder_of(me, inode).unwrap();
        },
    );
    let fresh = sequential(
        "HTTP: GET /health on a new connection each time",
        n / 4,
        || {
            let mut h = Http::connect(port);
            assert_eq!(h.call("GET", "/health"), 200);
        },
    );
    println!(
        "a new connection adds {:.1} µs (p50) to a kept-alive request, of which identifying the caller is {:.1} µs",
        us(fresh) - us(http_health),
        us(diag)
    );
    assert!(broker.leases().is_empty());
}

fn ipc_claim_release(c: &mut Client, id: &str) {
    c.call(Op::Claim(ClaimArgs {
        id: id.into(),
        ..Default::default()
    }))
    .unwrap();
    c.call(Op::Release {
        target: id.into(),
        more: Vec::new(),
    })
    .unwrap();
}
