//! Coordination over the Unix socket, against a real broker: uncontended
//! lock acquire+release, the hand-off from a release to the next waiter,
//! publish-to-delivery latency, and fan-out throughput to 10 subscribers,
//! next to a baseline measured in the same run (a `status` round trip).
//!
//! Run: `cargo build --release && cargo bench -p pb-tests --bench coord`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use pb_proto::{frame, Client, LockArgs, LockOwnerArg, Op, Request};
use pb_tests::Broker;
use serde_json::json;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(name: &str, mut lat: Vec<Duration>) -> Duration {
    lat.sort();
    let (p50, p99) = (pct(&lat, 0.50), pct(&lat, 0.99));
    println!(
        "{name:<44} p50 {:>7.1} µs   p99 {:>7.1} µs   (n={})",
        us(p50),
        us(p99),
        lat.len()
    );
    p50
}

fn acquire(owner: &str, wait: bool) -> Op {
    Op::LockAcquire(LockArgs {
        name: "bench".into(),
        wait_ms: wait.then_some(60_000),
        owner: Some(LockOwnerArg::Name(owner.into())),
        ..Default::default()
    })
}

fn release(owner: &str) -> Op {
    Op::LockRelease {
        name: "bench".into(),
        owner: Some(LockOwnerArg::Name(owner.into())),
        agent: None,
        force: false,
    }
}

/// Two threads pass one lock back and forth: the holder waits until the
/// other is queued, then releases; the time from just before the release
/// request is sent to the waiter's grant arriving is one hand-off.
fn handoffs(broker: &Broker, n: usize) -> Vec<Duration> {
    let epoch = Instant::now();
    let released_at = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(2));
    // Thread 0 starts as the holder (owners are names, so any connection
    // may take or let go for them).
    broker.client().call(acquire("t0", false)).unwrap();
    let holders: Vec<_> = (0..2)
        .map(|t| {
            let mut client = broker.client();
            let mut probe = broker.client();
            let (released_at, barrier) = (released_at.clone(), barrier.clone());
            std::thread::spawn(move || {
                let me = format!("t{t}");
                let mut lat = Vec::new();
                barrier.wait();
                for round in 0..n {
                    // Thread 1 waits on even rounds, thread 0 on odd ones.
                    let waiting = (round % 2 == 0) == (t == 1);
                    if waiting {
                        client.call(acquire(&me, true)).unwrap();
                        let at = epoch.elapsed().as_nanos() as u64;
                        let from = released_at.load(Ordering::Acquire);
                        lat.push(Duration::from_nanos(at.saturating_sub(from)));
                    } else {
                        // Hold until the other is queued, then let go.
                        loop {
                            let (v, _) = probe
                                .call(Op::LockInfo {
                                    name: "bench".into(),
                                })
                                .unwrap();
                            if v["waiters"] == 1 {
                                break;
                            }
                        }
                        released_at.store(epoch.elapsed().as_nanos() as u64, Ordering::Release);
                        client.call(release(&me)).unwrap();
                    }
                    barrier.wait();
                }
                lat
            })
        })
        .collect();
    holders
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

/// A publisher that pipelines `window` publishes at a time.
fn publish_pipelined(c: &mut Client, channel: &str, n: usize, window: usize) {
    let mut sent = 0;
    let mut tag = 1_000_000u64;
    while sent < n {
        let k = window.min(n - sent);
        let mut bytes = Vec::new();
        for _ in 0..k {
            tag += 1;
            let req = Request {
                tag: Some(tag),
                op: Op::Publish {
                    channel: channel.into(),
                    data: json!({"seq": sent}),
                    agent: None,
                },
            };
            bytes.extend_from_slice(&frame::encode(&req.to_json()));
        }
        c.send_raw(&bytes).unwrap();
        for _ in 0..k {
            let (reply, _) = c.read_reply().unwrap();
            assert!(reply.ok, "publish failed: {reply:?}");
        }
        sent += k;
    }
}

fn main() {
    let n: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let broker = Broker::start_with(&[("PB_SUB_QUEUE", "1000000"), ("PB_MSG_RETAIN", "1000")]);
    let mut c = broker.client();

    // Baseline.
    let mut lat = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let t = Instant::now();
        c.call(Op::Status).unwrap();
        if i >= n / 10 {
            lat.push(t.elapsed());
        }
    }
    let base = report("baseline: status round trip", lat);

    // Uncontended acquire + release (owner: this connection's process).
    let mine = || {
        Op::LockAcquire(LockArgs {
            name: "solo".into(),
            ..Default::default()
        })
    };
    let unlock = || Op::LockRelease {
        name: "solo".into(),
        owner: None,
        agent: None,
        force: false,
    };
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n + n / 10 {
        let t = Instant::now();
        c.call(mine()).unwrap();
        c.call(unlock()).unwrap();
        if i >= n / 10 {
            lat.push(t.elapsed());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let pair = report("uncontended acquire+release", lat);
    println!(
        "uncontended acquire+release rate: {:.0} pairs/s; p50 {:.1}x the baseline",
        (n + n / 10) as f64 / secs,
        us(pair) / us(base)
    );

    // Hand-off: release to the next waiter's grant.
    let h = report("hand-off, release to next waiter", handoffs(&broker, 4000));
    println!("hand-off p50 {:.1}x the baseline", us(h) / us(base));

    // Publish to delivery: one message in flight at a time.
    let mut sub = broker.client();
    sub.open_stream(Op::Subscribe {
        patterns: vec!["lat".into()],
        since_id: None,
    })
    .unwrap();
    let mut lat = Vec::with_capacity(n / 4);
    for i in 0..n / 4 + 500 {
        let t = Instant::now();
        c.call(Op::Publish {
            channel: "lat".into(),
            data: json!({"i": i}),
            agent: None,
        })
        .unwrap();
        sub.next_item().unwrap().expect("a message");
        if i >= 500 {
            lat.push(t.elapsed());
        }
    }
    drop(sub);
    let d = report("publish to delivery (incl. publish reply)", lat);
    println!(
        "publish to delivery p50 {:.1}x the baseline",
        us(d) / us(base)
    );

    // Fan-out: 10 subscribers, a pipelining publisher.
    let subs = 10;
    let msgs = 50_000;
    let ready = Arc::new(Barrier::new(subs + 1));
    let failed = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..subs)
        .map(|_| {
            let mut s = broker.client();
            s.open_stream(Op::Subscribe {
                patterns: vec!["fan:*".into()],
                since_id: None,
            })
            .unwrap();
            s.stream()
                .set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            let (ready, failed) = (ready.clone(), failed.clone());
            std::thread::spawn(move || {
                ready.wait();
                for _ in 0..msgs {
                    match s.next_item() {
                        Ok(Some(_)) => {}
                        _ => {
                            failed.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                Instant::now()
            })
        })
        .collect();
    ready.wait();
    let start = Instant::now();
    publish_pipelined(&mut c, "fan:out", msgs, 64);
    let published = start.elapsed();
    let ends: Vec<Instant> = readers.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(
        !failed.load(Ordering::Relaxed),
        "a subscriber lost its stream"
    );
    let all = ends.iter().max().unwrap().duration_since(start);
    println!(
        "fan-out to {subs} subscribers: {:.0} msgs/s delivered ({} messages each in {:.2} s; publishing took {:.2} s, {:.0} publishes/s)",
        (subs * msgs) as f64 / all.as_secs_f64(),
        msgs,
        all.as_secs_f64(),
        published.as_secs_f64(),
        msgs as f64 / published.as_secs_f64()
    );
}
