//! The preload shim's cost at start-up: the whole-process time of a small
//! server that binds its hard-coded port, listens and exits, without the
//! shim (the baseline, in the same run), with the shim loaded but nothing
//! mapped (the cost of loading it), and with the shim swapping the bind for
//! the broker's socket (load, one claim round trip, dup3).
//!
//! Run: `cargo build --release && cargo bench -p pb-tests --bench shim`.
//! Two servers: a C program (compiled here with cc; it starts in about a
//! millisecond, so the shim's own cost shows) and python3 (a typical dev
//! server's interpreter start-up). The three variants are interleaved, so
//! the machine's noise falls on each alike.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_proto::{ClaimArgs, Op};
use pb_tests::bench::{cc, interleaved, ms, C_SERVER};
use pb_tests::{Broker, PortBlock};

const PY_SERVER: &str = "import socket,sys\n\
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(16)\n\
print(s.getsockname()[1]); s.close()\n";

/// Runs the server once; returns how long it took and the port it got.
fn run_once(cmd: &[&str], port: u16, env: &[(&str, String)]) -> (Duration, u16) {
    let t = Instant::now();
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .arg(port.to_string())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("server");
    let took = t.elapsed();
    assert!(out.status.success(), "{cmd:?} failed");
    let got = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a port");
    (took, got)
}

fn main() {
    let n: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let c_bin = cc(dir.path(), C_SERVER);
    let py = dir.path().join("server.py");
    std::fs::write(&py, PY_SERVER).unwrap();

    // The lease the swapping runs take their socket from, as `pb exec
    // --shim` would have claimed it.
    let mut client = broker.client();
    client
        .call(Op::Claim(ClaimArgs {
            id: "bench".into(),
            ..Default::default()
        }))
        .expect("claim");
    let lib = broker.pb_ok(&["shim-path"]).trim().to_string();
    let free = PortBlock::take(10).range.0;

    let loaded = vec![("LD_PRELOAD", lib.clone())];
    let swapping = vec![
        ("LD_PRELOAD", lib.clone()),
        ("PB_SHIM_MAP", "*=bench".to_string()),
        ("PB_SHIM_SOCKET", broker.socket().display().to_string()),
    ];
    println!(
        "shim: {lib} ({} bytes)",
        std::fs::metadata(&lib).unwrap().len()
    );
    let c_cmd = [c_bin.to_str().unwrap()];
    let py_cmd = ["python3", py.to_str().unwrap()];
    for (name, cmd) in [("C server", &c_cmd[..]), ("python3 server", &py_cmd[..])] {
        let [p, l, s] = interleaved(n, || {
            let (a, pa) = run_once(cmd, free, &[]);
            let (b, pl) = run_once(cmd, free, &loaded);
            let (c, ps) = run_once(cmd, free, &swapping);
            assert_eq!((pa, pl), (free, free), "unmapped binds are the app's own");
            assert!(
                (broker.range.0..=broker.range.1).contains(&ps),
                "the swapped bind got the brokered port, not {ps}"
            );
            [a, b, c]
        });
        println!(
            "{name:<16} without shim {:>7.2} ms | shim loaded, unmapped {:>7.2} ms (+{:.2} ms, {:.2}×) | shim swapping the bind {:>7.2} ms (+{:.2} ms, {:.2}×)   (medians, n={n})",
            ms(p),
            ms(l),
            ms(l.saturating_sub(p)),
            l.as_secs_f64() / p.as_secs_f64(),
            ms(s),
            ms(s.saturating_sub(p)),
            s.as_secs_f64() / p.as_secs_f64(),
        );
    }
}
