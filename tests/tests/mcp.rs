//! `pb mcp` with a real MCP client: the official Python SDK (`mcp`, from
//! PyPI, installed by tests/realapps/install.sh) starts `pb mcp` as its
//! stdio server, as Claude Code or any agent does, and calls its tools.
//! What an agent claims and locks is its own process's, freed when it exits.

use std::io::{BufRead, BufReader, Write};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

use pb_tests::{can_bind, pb_bin, tests_dir, v4, wait_until, Broker, Proc};
use serde_json::{json, Value};

/// An agent process (tests/clients/mcp_agent.py) driving `pb mcp`.
struct Agent {
    proc: Proc,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

impl Agent {
    fn start(broker: &Broker) -> Agent {
        let python = tests_dir().join("realapps/.venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run `bash tests/realapps/install.sh` (the README's test command does)",
            python.display()
        );
        let mut child = Command::new(python)
            .arg(tests_dir().join("clients/mcp_agent.py"))
            .envs(broker.env().iter().map(|(k, v)| (k, v)))
            .env("PB", pb_bin())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        let mut a = Agent {
            proc: Proc(child),
            stdin,
            lines,
        };
        assert_eq!(a.read()["server"], "pb");
        a
    }

    fn send(&mut self, step: Value) {
        writeln!(self.stdin, "{step}").unwrap();
    }

    fn read(&mut self) -> Value {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the agent answers within 30 s");
        serde_json::from_str(&line).unwrap()
    }

    /// Calls `tool` and returns its structured result, asserting it is not
    /// a tool error.
    fn call(&mut self, tool: &str, args: Value) -> Value {
        let r = self.answer(tool, args);
        assert_eq!(r["error"], false, "{tool}: {r}");
        r["result"].clone()
    }

    fn answer(&mut self, tool: &str, args: Value) -> Value {
        self.send(json!({ "tool": tool, "args": args }));
        self.read()
    }

    /// Ends the agent (and with it its `pb mcp`).
    fn exit(mut self) {
        writeln!(self.stdin).unwrap();
        assert!(self.proc.wait_for(Duration::from_secs(20)).is_some());
    }
}

#[test]
fn an_agent_claims_locks_and_talks_through_pb_mcp_and_its_exit_frees_all() {
    let broker = Broker::start();
    let mut a = Agent::start(&broker);
    a.send(json!({ "list": true }));
    let tools = a.read()["tools"].clone();
    for t in [
        "claim_port",
        "release_port",
        "list_services",
        "acquire_lock",
        "release_lock",
        "publish_message",
        "get_messages",
        "wait_for_service",
        "whoami",
    ] {
        assert!(
            tools.as_array().unwrap().iter().any(|x| x == t),
            "{t} not in {tools}"
        );
    }
    // A claim is kernel-held: nobody else can bind its port.
    let lease = a.call("claim_port", json!({ "id": "agent:api" }));
    let port = lease["lease"]["port"].as_u64().unwrap() as u16;
    assert!(!can_bind(v4(port)), "port {port} is not held");
    let found = a.call("list_services", json!({}));
    assert_eq!(found["services"][0]["id"], "agent:api", "{found}");
    // The agent is the MCP server's parent: the python process.
    let me = a.call("whoami", json!({}));
    assert_eq!(me["pid"], a.proc.pid(), "{me}");
    assert_eq!(found["services"][0]["pid"], a.proc.pid());

    // A lock, and a second agent queued for it, granted at the release.
    let held = a.call("acquire_lock", json!({ "name": "db" }));
    let first = held["lock"]["token"].as_u64().unwrap();
    let mut b = Agent::start(&broker);
    b.send(json!({ "tool": "acquire_lock", "args": { "name": "db", "wait_ms": 20000 } }));
    let queued = wait_until(Duration::from_secs(10), || {
        let locks = broker.pb_json(&["locks", "db"]);
        (locks["locks"][0]["waiters"] == 1).then_some(())
    });
    assert!(queued.is_some(), "b never queued");
    a.call("release_lock", json!({ "name": "db" }));
    let granted = b.read();
    assert_eq!(granted["error"], false, "{granted}");
    assert!(granted["result"]["lock"]["token"].as_u64().unwrap() > first);

    // Messages from one agent, read by the other.
    a.call(
        "publish_message",
        json!({ "channel": "build:api", "message": { "ok": true } }),
    );
    let got = b.call("get_messages", json!({ "channel": "build:api" }));
    assert_eq!(got["messages"][0]["data"], json!({ "ok": true }), "{got}");

    // Bad input is a tool error with pb's code; the server goes on.
    let bad = a.answer("claim_port", json!({ "id": "bad id!" }));
    assert_eq!(
        (&bad["error"], &bad["result"]["code"]),
        (&json!(true), &json!("invalid_id")),
        "{bad}"
    );
    let timeout = b.answer(
        "wait_for_service",
        json!({ "ids": ["agent:api"], "timeout_ms": 300 }),
    );
    assert_eq!(timeout["result"]["code"], "timeout", "{timeout}");
    // Calls refused before pb sees them (no such tool: a JSON-RPC error;
    // arguments against the schema: rmcp's tool error) change nothing.
    for (tool, args) in [
        ("no_such_tool", json!({})),
        ("claim_port", json!({ "id": 5 })),
        ("claim_port", json!({})),
        ("acquire_lock", json!({ "name": "x", "ttl_ms": "soon" })),
    ] {
        let r = a.answer(tool, args.clone());
        assert!(
            r["protocol_error"].is_i64() || r["error"] == true,
            "{tool} {args}: {r}"
        );
    }
    let huge = a.answer(
        "publish_message",
        json!({ "channel": "big", "message": "x".repeat(200_000) }),
    );
    assert_eq!(huge["result"]["code"], "invalid_frame", "{huge}");
    assert_eq!(broker.leases().len(), 1);
    let again = a.call("get_service", json!({ "id": "agent:api" }));
    assert_eq!(again["port"], port);

    // The agent exits: what it claimed is freed at once.
    a.exit();
    let freed = wait_until(Duration::from_secs(10), || {
        broker.leases().is_empty().then_some(())
    });
    assert!(freed.is_some(), "{:?}", broker.leases());
    assert!(can_bind(v4(port)));
    // ... and so is the other's lock when it exits.
    b.exit();
    let unlocked = wait_until(Duration::from_secs(10), || {
        broker.pb_json(&["locks"])["locks"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    });
    assert!(unlocked.is_some(), "{}", broker.pb_json(&["locks"]));
}
