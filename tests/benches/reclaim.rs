//! How fast a dead claimant's port is free again, and what the kernel scans
//! cost. Run: `cargo build --release && cargo bench -p pb-tests --bench reclaim`.
//!
//! Reclaim: a python3 claimant takes a lease with its sockets and holds
//! them; it is SIGKILLed, and the time until a plain bind(2) of the port
//! succeeds on both 127.0.0.1 and ::1 is measured (polled every 100 µs),
//! on the machine as it is and then with 1 000 extra (sleeping) processes
//! on it, in one run, with the ratio of the two medians.
//! Scans: the socket tables and the /proc/*/fd walk, timed as they are,
//! then again with the 1 000 extra processes.

use std::process::Command;
use std::time::{Duration, Instant};

use pb_platform::sockets;
use pb_tests::*;

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The median SIGKILL-to-free.
fn reclaim(broker: &Broker, rounds: usize, label: &str) -> Duration {
    let mut lat = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let (mut child, _out, port) = claimant(broker, &format!("victim:{i}"), "");
        assert!(!can_bind(v4(port)));
        let t = Instant::now();
        child.signal(libc::SIGKILL);
        let free = wait_until_fine(Duration::from_secs(5), || {
            can_bind(v4(port)) && can_bind(v6(port))
        });
        assert!(free, "port {port} was not freed");
        lat.push(t.elapsed());
        child.wait_for(Duration::from_secs(5));
    }
    let p50 = pct(&mut lat, 0.5);
    let p99 = pct(&mut lat, 0.99);
    println!(
        "SIGKILL to port free, {label}: median {:.2} ms, p99 {:.2} ms (n={rounds})",
        ms(p50),
        ms(p99)
    );
    p50
}

/// Polls every 100 µs, at most `limit`.
fn wait_until_fine(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    false
}

fn scans(label: &str) {
    let procs = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
        })
        .count();
    let mut table = Vec::new();
    let mut proc_table = Vec::new();
    let mut walk = Vec::new();
    let mut sockets_seen = 0;
    for _ in 0..30 {
        let t = Instant::now();
        let _ = sockets::tcp_sockets_from_proc().unwrap();
        proc_table.push(t.elapsed());
        let t = Instant::now();
        let all = sockets::tcp_sockets().unwrap();
        table.push(t.elapsed());
        sockets_seen = all.len();
        let inodes = all.iter().map(|s| s.inode).collect();
        let t = Instant::now();
        let _ = sockets::holders(&inodes);
        walk.push(t.elapsed());
    }
    println!(
        "{label}: {procs} processes, {sockets_seen} TCP sockets: socket tables (sock_diag) median {:.2} ms, \
         baseline /proc/net/tcp{{,6}} median {:.2} ms, fd walk median {:.2} ms",
        ms(pct(&mut table, 0.5)),
        ms(pct(&mut proc_table, 0.5)),
        ms(pct(&mut walk, 0.5))
    );
}

fn main() {
    let rounds: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let broker = Broker::start();
    let quiet = reclaim(&broker, rounds, "as the machine is");
    scans("scan, as the machine is");
    let mut extra: Vec<_> = (0..1000)
        .map(|_| Command::new("sleep").arg("120").spawn().unwrap())
        .collect();
    let crowded = reclaim(&broker, rounds, "with 1000 extra processes");
    println!(
        "SIGKILL to port free, with 1000 extra processes / as the machine is: {:.2}x",
        crowded.as_secs_f64() / quiet.as_secs_f64()
    );
    scans("scan, with 1000 extra processes");
    for c in &mut extra {
        let _ = c.kill();
        let _ = c.wait();
    }
}
