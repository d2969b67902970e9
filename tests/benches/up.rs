//! `pb up` against a sequential runner: the time from the command to every
//! service ready, for a stack of five services that each take a known time
//! to start (300 ms of sleep, then python's start-up and bind).
//!
//! - `own start`: one service alone, started without pb, until it answers
//!   HTTP: the slowest service's own start (all five are the same).
//! - `all at once`: the five started together without pb, until each
//!   answers: with fewer cores than services, the floor of any runner.
//! - `pb up`: `pb up` with the five (no `needs`: every port is bound before
//!   anything starts, so none waits for another), until it says the stack
//!   is up.
//! - `sequential`: how `pd up` and foreman-style runners start a stack:
//!   for each service in turn, claim a port (`pb claim -q`), start it, and
//!   poll its HTTP until it answers (every 10 ms), then the next.
//!
//! Run: `cargo build --release && cargo bench -p pb-tests --bench up`
//! (PB_BENCH_N rounds, default 5, the four interleaved; PB_BENCH_SERVICES
//! services, default 5).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_tests::bench::{interleaved, ms};
use pb_tests::{v4, wait_until, Broker, Proc};

const SLOW: &str = r#"import http.server, os, time
time.sleep(0.3)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

/// How many services (PB_BENCH_SERVICES, default 5).
fn services() -> usize {
    std::env::var("PB_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

fn answers(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&v4(port), Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut b = String::new();
    let _ = s.read_to_string(&mut b);
    b.starts_with("HTTP/1.")
}

/// One service on `port`, without pb.
fn slow(dir: &Path, port: u16) -> Proc {
    Proc(
        Command::new("python3")
            .arg(dir.join("slow.py"))
            .env("PORT", port.to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn until_answers(port: u16) {
    wait_until(Duration::from_secs(10), || answers(port).then_some(())).expect("answers");
}

fn own_start(dir: &Path, port: u16) -> Duration {
    let t = Instant::now();
    let _p = slow(dir, port);
    until_answers(port);
    t.elapsed()
}

/// All five at once, without pb, each on a port of its own: on a machine
/// with fewer cores than services, the floor any runner starts from.
fn parallel(dir: &Path, first: u16) -> Duration {
    let t = Instant::now();
    let _all: Vec<Proc> = (0..services() as u16)
        .map(|i| slow(dir, first + i))
        .collect();
    for i in 0..services() as u16 {
        until_answers(first + i);
    }
    t.elapsed()
}

fn pb_up(broker: &Broker, dir: &Path) -> Duration {
    let out = dir.join("up.out");
    let t = Instant::now();
    let mut up = Proc(
        broker
            .cmd()
            .arg("up")
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&out).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(" is up (")
            .then_some(())
    })
    .expect("the stack comes up");
    let took = t.elapsed();
    up.signal(libc::SIGINT);
    up.wait_for(Duration::from_secs(20));
    took
}

fn sequential(broker: &Broker, dir: &Path) -> Duration {
    let t = Instant::now();
    let mut running = Vec::new();
    for i in 0..services() {
        let id = format!("seq:s{i}");
        let port = broker.claim(&id, &[]);
        running.push(slow(dir, port));
        until_answers(port);
    }
    let took = t.elapsed();
    drop(running);
    broker.pb_ok(&["release", "seq:*"]);
    took
}

fn main() {
    let n: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slow.py"), SLOW).unwrap();
    let mut toml = String::from("project = \"bench\"\n");
    for i in 0..services() {
        toml.push_str(&format!("[services.s{i}]\ncmd = \"python3 slow.py\"\n"));
    }
    std::fs::write(dir.path().join("pb.toml"), toml).unwrap();
    let free = broker.range.0 + 190;
    let [own, all, up, seq] = interleaved(n, || {
        [
            own_start(dir.path(), free),
            parallel(dir.path(), free + 1),
            pb_up(&broker, dir.path()),
            sequential(&broker, dir.path()),
        ]
    });
    println!(
        "{} services, each 300 ms + python start-up; medians of {n} rounds",
        services()
    );
    println!("own start (one service, no pb)   {:8.1} ms", ms(own));
    println!("all at once, no pb               {:8.1} ms", ms(all));
    println!(
        "pb up, to every service ready    {:8.1} ms  (own start + {:.1} ms)",
        ms(up),
        ms(up) - ms(own)
    );
    println!(
        "sequential claim/start/wait      {:8.1} ms  ({:.2}x pb up)",
        ms(seq),
        ms(seq) / ms(up)
    );
}
