//! Claim+release round trips over the Unix socket, with the listening
//! sockets handed over (SCM_RIGHTS), against a real broker.
//!
//! Run: `cargo build --release && cargo bench -p pb-tests --bench claim`.
//! Reports sequential p50/p99 and the throughput of 8 concurrent clients,
//! next to a baseline measured in the same run: a `status` round trip,
//! the floor any request over this socket pays.

use std::time::{Duration, Instant};

use pb_proto::{ClaimArgs, Client, Op};
use pb_tests::Broker;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn claim_release(c: &mut Client, id: &str, fds: bool) {
    let (_, got) = c
        .call(Op::Claim(ClaimArgs {
            id: id.into(),
            fds,
            ..Default::default()
        }))
        .expect("claim");
    assert_eq!(got.len(), if fds { 2 } else { 0 });
    drop(got);
    c.call(Op::Release {
        target: id.into(),
        more: Vec::new(),
    })
    .expect("release");
}

fn sequential(name: &str, n: usize, mut op: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..n / 10 {
        op(); // warm-up
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        op();
        lat.push(t.elapsed());
    }
    lat.sort();
    let (p50, p99) = (pct(&lat, 0.50), pct(&lat, 0.99));
    println!(
        "{name:<44} p50 {:>7.1} µs   p99 {:>7.1} µs   (n={n})",
        us(p50),
        us(p99)
    );
    (p50, p99)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let n: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let broker = Broker::start();
    let mut c = broker.client();

    let (base50, _) = sequential("baseline: status round trip", n, || {
        c.call(Op::Status).expect("status");
    });
    let (fd50, _) = sequential("claim+release, sockets handed over", n, || {
        claim_release(&mut c, "bench:seq", true)
    });
    let (num50, _) = sequential("claim+release, number only", n, || {
        claim_release(&mut c, "bench:num", false)
    });
    println!(
        "ratio to baseline p50: handed over {:.1}x, number only {:.1}x",
        us(fd50) / us(base50),
        us(num50) / us(base50)
    );

    let clients = 8;
    let run_for = Duration::from_secs(3);
    let start = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|t| {
            let mut c = broker.client();
            std::thread::spawn(move || {
                let id = format!("bench:par{t}");
                let mut pairs = 0u64;
                while start.elapsed() < run_for {
                    claim_release(&mut c, &id, true);
                    pairs += 1;
                }
                pairs
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{clients} concurrent clients, sockets handed over: {:.0} claim+release pairs/s ({total} in {secs:.2} s)",
        total as f64 / secs
    );
    assert!(broker.leases().is_empty());
}
