//! A claim_port + release_port round trip over `pb mcp` (stdio MCP, each
//! tool one request to the broker over its kept connection), over `/mcp`
//! (streamable HTTP MCP on a keep-alive connection, each call one POST
//! answered as an event stream), and the same pair over the Unix socket (a
//! kept connection), interleaved in one run. Run:
//! `cargo build --release && cargo bench -p pb-tests --bench mcp`
//! (PB_BENCH_N pairs, default 2000).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_proto::{ClaimArgs, Op};
use pb_tests::bench::{median, us};
use pb_tests::{pb_bin, v4, Broker, Proc};

/// One keep-alive connection to `/mcp`: a JSON-RPC request a POST, its
/// answer the one event of a chunked event stream.
struct HttpMcp {
    stream: TcpStream,
    port: u16,
    buf: Vec<u8>,
    id: u64,
}

impl HttpMcp {
    fn connect(port: u16) -> HttpMcp {
        let stream = TcpStream::connect(v4(port)).unwrap();
        stream.set_nodelay(true).unwrap();
        HttpMcp {
            stream,
            port,
            buf: Vec::with_capacity(4096),
            id: 0,
        }
    }

    fn call(&mut self, tool: &str, id: &str) -> Value {
        self.id += 1;
        let body = json!({"jsonrpc": "2.0", "id": self.id, "method": "tools/call",
                          "params": {"name": tool, "arguments": {"id": id}}})
        .to_string();
        let req = format!(
            "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.stream.write_all(req.as_bytes()).unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        // The stream ends with the last chunk (`0`, then an empty line).
        while !self.buf.ends_with(b"\r\n0\r\n\r\n") {
            let n = self.stream.read(&mut chunk).unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&self.buf);
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_else(|| panic!("no event in {text}"));
        serde_json::from_str(data).unwrap()
    }
}
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
    let mut http = HttpMcp::connect(broker.http_port().unwrap());
    let (mut over_mcp, mut over_ipc) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut over_http = Vec::with_capacity(n);
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
        let t = Instant::now();
        let r = http.call("claim_port", "bench:http");
        assert_eq!(r["result"]["isError"], false, "{r}");
        let r = http.call("release_port", "bench:http");
        assert_eq!(r["result"]["isError"], false, "{r}");
        let over = t.elapsed();
        if i >= n / 10 {
            over_mcp.push(mcp);
            over_ipc.push(ipc);
            over_http.push(over);
        }
    }
    let p99 = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() * 99 / 100]
    };
    let (m50, i50) = (median(over_mcp.clone()), median(over_ipc.clone()));
    let h50 = median(over_http.clone());
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
    println!(
        "claim_port+release_port over HTTP MCP /mcp  p50 {:8.1} µs  p99 {:8.1} µs  ({:.1}x IPC)",
        us(h50),
        us(p99(over_http)),
        us(h50) / us(i50)
    );
}
