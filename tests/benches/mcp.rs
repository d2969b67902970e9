//! A claim_port + release_port round trip over `pb mcp` (stdio MCP, each
//! tool one request to the broker over a fresh connection), against the
//! same pair over the Unix socket (a kept connection), interleaved in one
//! run. Run: `cargo build --release && cargo bench -p pb-tests --bench mcp`
//! (PB_BENCH_N pairs, default 2000).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_proto::{ClaimArgs, Op};
use pb_tests::bench::{median, us};
use pb_tests::{pb_bin, Broker, Proc};
use serde_json::{json, Value};

fn main() {
    let n: usize = std::env::var("PB_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let broker = Broker::start();
    let mut server = Proc(
        Command::new(pb_bin())
            .arg("mcp")
            .envs(broker.env().iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut to = server.0.stdin.take().unwrap();
    let mut from = BufReader::new(server.0.stdout.take().unwrap());
    let mut id = 0u64;
    let mut rpc = |method: &str, params: Value| -> Value {
        id += 1;
        writeln!(
            to,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        )
        .unwrap();
        let mut line = String::new();
        from.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], id, "{v}");
        v
    };
    rpc(
        "initialize",
        json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}),
    );
    println!("pb mcp initialized");
    let mut client = broker.client();
    let (mut over_mcp, mut over_ipc) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + n / 10 {
        let t = Instant::now();
        let r = rpc(
            "tools/call",
            json!({"name": "claim_port", "arguments": {"id": "bench:mcp"}}),
        );
        assert_eq!(r["result"]["isError"], false, "{r}");
        let r = rpc(
            "tools/call",
            json!({"name": "release_port", "arguments": {"id": "bench:mcp"}}),
        );
        assert_eq!(r["result"]["isError"], false, "{r}");
        let mcp = t.elapsed();
        let t = Instant::now();
        client
            .call(Op::Claim(ClaimArgs {
                id: "bench:ipc".into(),
                ..Default::default()
            }))
            .unwrap();
        client
            .call(Op::Release {
                target: "bench:ipc".into(),
                more: Vec::new(),
            })
            .unwrap();
        let ipc = t.elapsed();
        if i >= n / 10 {
            over_mcp.push(mcp);
            over_ipc.push(ipc);
        }
    }
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() * 99 / 100]
    };
    let (m50, i50) = (median(over_mcp.clone()), median(over_ipc.clone()));
    println!(
        "claim+release over IPC (kept connection)   p50 {:8.1} µs  p99 {:8.1} µs  (n={n})",
        us(i50),
        us(p99(over_ipc))
    );
    println!(
        "claim_port+release_port over stdio MCP     p50 {:8.1} µs  p99 {:8.1} µs  ({:.1}x IPC)",
        us(m50),
        us(p99(over_mcp)),
        us(m50) / us(i50)
    );
}
