//! The broker core alone, without any transport: claim+release applied
//! directly, to separate the core's cost (sockets, SQLite) from the IPC
//! round trips. Run: `cargo bench -p pb-broker --bench core`.

use std::time::{Duration, Instant};

use pb_broker::core::{Caller, Core};
use pb_broker::store::Store;
use pb_broker::Config;
use pb_proto::{ClaimArgs, Op};

fn main() {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("PB_HOME", dir.path());
    std::env::set_var("PB_RANGE", "21000-21999");
    let cfg = Config::from_env().unwrap();
    let store = Store::open(&cfg.paths.database()).unwrap();
    let mut core = Core::open(cfg, store).unwrap();
    let caller = Caller {
        uid: pb_platform::os::effective_uid(),
        peer_uid: pb_platform::os::effective_uid(),
        process: None,
        session: None,
        command: None,
        exit_watch: None,
    };
    let n = 20_000;
    for (name, fds) in [("handed over", true), ("number only", false)] {
        let mut lat = Vec::with_capacity(n);
        for i in 0..n + n / 10 {
            let t = Instant::now();
            let out = core
                .apply(
                    &caller,
                    Op::Claim(ClaimArgs {
                        id: "bench:core".into(),
                        fds,
                        ..Default::default()
                    }),
                )
                .unwrap();
            drop(out);
            core.apply(
                &caller,
                Op::Release {
                    target: "bench:core".into(),
                    more: Vec::new(),
                },
            )
            .unwrap();
            if i >= n / 10 {
                lat.push(t.elapsed());
            }
            // As the IPC transport does once a reply is out.
            core.after_reply();
        }
        lat.sort();
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "core claim+release, {name:<12} p50 {:>6.1} µs  p99 {:>6.1} µs",
            us(lat[n / 2]),
            us(lat[n * 99 / 100])
        );
    }
}
