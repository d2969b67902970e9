//! What `pb exec`'s default mode costs, and what the relay of the other
//! loopback family costs.
//!
//! Run: `cargo build --release && cargo bench -p pb-tests --bench exec`.
//!
//! 1. Start-up. A server binds `$PORT` on 127.0.0.1, listens, prints the
//!    port it got and exits; the bench times the whole run, spawn to exit,
//!    three ways interleaved: the app alone (baseline, on a free port),
//!    `pb exec --port-only` (claim, fork, exec, release; the app binds over
//!    the placeholder) and `pb exec` by default (the same, plus one
//!    listener handed over at fd 3, the shim loaded and the app's own bind
//!    swapped for the broker's socket). A C server (built here with cc)
//!    shows pb's own cost; a node server shows it against a real runtime's
//!    start. The runs check the port each app got.
//! 2. The relay. One socket is handed over for 127.0.0.1 and served by a
//!    thread in this process; [::1] reaches it through the broker's relay.
//!    Per connection: connect, one byte each way, close, to 127.0.0.1
//!    (direct) and to [::1] (relayed), interleaved. Per MB: a 64 MiB
//!    download each way.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_proto::{ClaimArgs, IpFamily, Op};
use pb_tests::bench::{cc, interleaved, median, ms, us, C_SERVER};
use pb_tests::{Broker, PortBlock};

const NODE_SERVER: &str = "const s = require('net').createServer();\n\
s.listen(Number(process.env.PORT), '127.0.0.1', () => { console.log(s.address().port); s.close(); });";

/// Runs `cmd` (with $PORT = `port` when given); its time and printed port.
fn run_once(broker: &Broker, cmd: &[&str], port: Option<u16>) -> (Duration, u16) {
    let mut c = if cmd[0] == "exec" {
        broker.cmd()
    } else {
        Command::new(cmd[0])
    };
    c.args(if cmd[0] == "exec" { cmd } else { &cmd[1..] });
    if let Some(p) = port {
        c.env("PORT", p.to_string());
    }
    let t = Instant::now();
    let out = c
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("run");
    let took = t.elapsed();
    assert!(out.status.success(), "{cmd:?} failed");
    let got = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{cmd:?} printed no port"));
    (took, got)
}

fn startup(broker: &Broker, n: usize, name: &str, app: &[&str]) {
    let free = PortBlock::take(10).range.0;
    let with = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = vec!["exec".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.push("bench".into());
        v.push("--".into());
        v.extend(app.iter().map(|s| s.to_string()));
        v
    };
    let port_only = with(&["-q", "--port-only"]);
    let default = with(&["-q"]);
    let po: Vec<&str> = port_only.iter().map(String::as_str).collect();
    let de: Vec<&str> = default.iter().map(String::as_str).collect();
    let [a, b, c] = interleaved(n, || {
        let (a, pa) = run_once(broker, app, Some(free));
        let (b, pb) = run_once(broker, &po, None);
        let (c, pc) = run_once(broker, &de, None);
        assert_eq!(pa, free);
        let leased = broker.range.0..=broker.range.1;
        assert!(leased.contains(&pb), "port-only got {pb}");
        assert!(leased.contains(&pc), "default got {pc}");
        [a, b, c]
    });
    println!(
        "{name:<12} app alone {:>7.2} ms | pb exec --port-only {:>7.2} ms (+{:.2} ms, {:.2}×) | pb exec (default: fd 3 + shim swap) {:>7.2} ms (+{:.2} ms, {:.2}×; +{:.2} ms over --port-only)   (medians, n={n})",
        ms(a),
        ms(b),
        ms(b.saturating_sub(a)),
        b.as_secs_f64() / a.as_secs_f64(),
        ms(c),
        ms(c.saturating_sub(a)),
        c.as_secs_f64() / a.as_secs_f64(),
        ms(c.saturating_sub(b)),
    );
}

/// Serves the handed-over listener: a request is 8 bytes, the count of
/// bytes wanted back (1 for the latency runs).
fn serve(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut want = [0u8; 8];
                if conn.read_exact(&mut want).is_err() {
                    return;
                }
                let mut left = u64::from_le_bytes(want) as usize;
                let chunk = vec![7u8; 256 * 1024];
                while left > 0 {
                    let n = left.min(chunk.len());
                    if conn.write_all(&chunk[..n]).is_err() {
                        return;
                    }
                    left -= n;
                }
            });
        }
    });
}

fn fetch(addr: SocketAddr, bytes: u64) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_nodelay(true).unwrap();
    s.write_all(&bytes.to_le_bytes()).unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early");
        got += n as u64;
    }
    t.elapsed()
}

fn relay(broker: &Broker, n: usize) {
    let mut client = broker.client();
    let (reply, fds): (pb_proto::ClaimReply, _) = client
        .call_as(Op::Claim(ClaimArgs {
            id: "relayed".into(),
            fds: true,
            family: Some(IpFamily::V4),
            ..Default::default()
        }))
        .expect("claim");
    let port = reply.lease.port;
    let listener = TcpListener::from(fds.into_iter().next().expect("one socket"));
    serve(listener);
    let direct: SocketAddr = ([127, 0, 0, 1], port).into();
    let relayed: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
    let [d, r] = interleaved(n, || [fetch(direct, 1), fetch(relayed, 1)]);
    println!(
        "relay, one connection (connect, 1 byte each way, close): direct {:>6.1} µs | relayed {:>6.1} µs (+{:.1} µs, {:.2}×)   (medians, n={n})",
        us(d),
        us(r),
        us(r.saturating_sub(d)),
        r.as_secs_f64() / d.as_secs_f64()
    );
    const MIB: u64 = 1 << 20;
    let size = 64 * MIB;
    let (mut dm, mut rm) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        dm.push(fetch(direct, size));
        rm.push(fetch(relayed, size));
    }
    let (dm, rm) = (median(dm), median(rm));
    let per_mb = |t: Duration| us(t) / 64.0;
    println!(
        "relay, 64 MiB download: direct {:>6.1} ms ({:.0} MB/s, {:.1} µs/MB) | relayed {:>6.1} ms ({:.0} MB/s, {:.1} µs/MB; +{:.1} µs/MB, {:.2}×)   (medians of 7)",
        ms(dm),
        64.0 / dm.as_secs_f64(),
        per_mb(dm),
        ms(rm),
        64.0 / rm.as_secs_f64(),
        per_mb(rm),
        per_mb(rm) - per_mb(dm),
        rm.as_secs_f64() / dm.as_secs_f64()
    );
}

fn main() {
    let n: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let c_bin = cc(dir.path(), C_SERVER);
    startup(&broker, n, "C server", &[c_bin.to_str().unwrap()]);
    startup(&broker, n, "node server", &["node", "-e", NODE_SERVER]);
    relay(&broker, n * 50);
}
