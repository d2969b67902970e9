//! What webhooks cost a request, and how fast deliveries drain, against a
//! real broker and a real receiver on loopback.
//!
//! Run: `cargo build --release && cargo bench -p pb-tests --bench webhooks`.
//! Reports claim+release p50/p99 with no webhook (the baseline, same run),
//! with a webhook whose filter matches nothing (the matching cost alone),
//! and with one that wants every claim (a stored delivery per claim, plus
//! the worker sending it meanwhile); then the time from the last claim
//! until every delivery has reached the receiver.

use std::time::{Duration, Instant};

use pb_proto::{ClaimArgs, Client, Op, WebhookArgs};
use pb_tests::*;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn claim_release(c: &mut Client, id: &str) {
    c.call(Op::Claim(ClaimArgs {
        id: id.into(),
        ..Default::default()
    }))
    .expect("claim");
    c.call(Op::Release {
        target: id.into(),
        more: Vec::new(),
    })
    .expect("release");
}

fn sequential(name: &str, n: usize, c: &mut Client, id: &str) -> Duration {
    for _ in 0..n / 10 {
        claim_release(c, id);
    }
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        claim_release(c, id);
        lat.push(t.elapsed());
    }
    lat.sort();
    let (p50, p99) = (pct(&lat, 0.50), pct(&lat, 0.99));
    println!(
        "{name:<52} p50 {:>7.1} µs   p99 {:>7.1} µs   (n={n})",
        us(p50),
        us(p99)
    );
    p50
}

fn add(c: &mut Client, url: &str, filter: &str) -> String {
    let (v, _) = c
        .call(Op::WebhookAdd(WebhookArgs {
            url: url.into(),
            events: vec!["service.claim".into()],
            secret: None,
            filter: Some(filter.into()),
        }))
        .expect("webhook_add");
    v["webhook"]["id"].as_str().unwrap().to_string()
}

fn main() {
    let n: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let broker = Broker::start();
    let ports = PortBlock::take(10);
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(dir.path(), ports.range.0, "r", &[]);
    let url = receiver.url();
    let mut c = broker.client();

    let base = sequential("baseline: claim+release, no webhook", n, &mut c, "bench:a");
    add(&mut c, &url, "nomatch:*");
    let miss = sequential(
        "claim+release, a webhook that filters it out",
        n,
        &mut c,
        "bench:a",
    );
    let hook = add(&mut c, &url, "bench:*");
    let t_hit = Instant::now();
    let hit = sequential(
        "claim+release, a webhook that wants each claim",
        n,
        &mut c,
        "bench:a",
    );
    println!(
        "ratio to baseline p50: filtered out {:.2}x, delivered {:.2}x",
        us(miss) / us(base),
        us(hit) / us(base)
    );
    let claims_done = Instant::now();
    let want = n + n / 10;
    let drained = wait_until(Duration::from_secs(600), || {
        let (v, _) = c
            .call(Op::WebhookGet { id: hook.clone() })
            .expect("webhook_get");
        (v["pending"].as_u64() == Some(0)).then_some(())
    });
    assert!(drained.is_some(), "deliveries did not drain");
    let lines = std::fs::read_to_string(&receiver.record)
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, want, "every claim delivered once");
    let total = t_hit.elapsed().as_secs_f64();
    println!(
        "{want} deliveries to a python receiver: {:.0}/s overall, queue empty {:.2} s after the last claim",
        want as f64 / total,
        claims_done.elapsed().as_secs_f64()
    );
}
