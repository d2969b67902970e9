//! `pb mcp` with a real MCP client: the official Python SDK (`mcp`, from
//! PyPI, installed by tests/realapps/install.sh) starts `pb mcp` as its
//! stdio server, as Claude Code or any agent does, and calls its tools.
//! What an agent claims and locks is its own process's, freed when it exits.
//! Its work sessions, notes and file claims outlive it, abandoned, until
//! another agent takes them over.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
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
        Agent::start_in(broker, &std::env::temp_dir(), &[])
    }

    /// An agent working in `dir` (its `pb mcp` too: the project of its
    /// sessions), with `env` besides the broker's.
    fn start_in(broker: &Broker, dir: &Path, env: &[(&str, &str)]) -> Agent {
        let python = tests_dir().join("realapps/.venv/bin/python");
        assert!(
            python.exists(),
            "{} is missing: run `bash tests/realapps/install.sh` (the README's test command does)",
            python.display()
        );
        let mut cmd = Command::new(python);
        cmd.arg(tests_dir().join("clients/mcp_agent.py"))
            .envs(broker.env().iter().map(|(k, v)| (k, v)))
            .env("PB", pb_bin())
            .envs(env.iter().copied())
            .current_dir(dir);
        let mut a = Agent::spawn(cmd);
        assert_eq!(a.read()["server"], "pb");
        a
    }

    /// An agent on the TypeScript SDK, over HTTP at the broker's `/mcp`,
    /// sending `headers` with every request; the broker's refusal, if it
    /// refuses the connection.
    fn start_http(broker: &Broker, headers: Value) -> Result<Agent, String> {
        let sdk = tests_dir().join("realapps/node_modules/@modelcontextprotocol/sdk");
        assert!(
            sdk.exists(),
            "{} is missing: run `bash tests/realapps/install.sh` (the README's test command does)",
            sdk.display()
        );
        let mut cmd = Command::new("node");
        cmd.arg(tests_dir().join("clients/mcp_http_agent.mjs"))
            .env("PB_MCP_URL", format!("{}/mcp", broker.http_url()))
            .env("PB_MCP_HEADERS", headers.to_string());
        let mut a = Agent::spawn(cmd);
        let hello = a.read();
        match hello["connect_error"].as_str() {
            Some(e) => Err(e.to_string()),
            None => {
                assert_eq!(hello["server"], "pb", "{hello}");
                Ok(a)
            }
        }
    }

    fn spawn(mut cmd: Command) -> Agent {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the agent starts");
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
        Agent {
            proc: Proc(child),
            stdin,
            lines,
        }
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
    // The default list is short: the essential tools and pd_discover,
    // which lists the rest; every tool can be called either way.
    a.send(json!({ "list": true }));
    let tools = a.read()["tools"].clone();
    let names: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    // The ones agents' prompts name first are there.
    for t in [
        "claim_port",
        "acquire_lock",
        "begin_session",
        "claim_files",
        "pd_discover",
    ] {
        assert!(names.contains(&t), "{t} not in {tools}");
    }
    assert!(!names.contains(&"webhook_add"), "{tools}");
    let discovered = a.call("pd_discover", json!({}));
    // What is listed is exactly what pd_discover calls essential.
    let mut essential: Vec<&str> = discovered["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["essential"] == true)
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    let mut listed = names.clone();
    essential.sort();
    listed.sort();
    assert_eq!(listed, essential);
    let all: Vec<&str> = discovered["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    // Port Daddy's names for the tools both have, so agents' prompts work.
    for t in [
        "list_locks",
        "list_channels",
        "clear_channel",
        "register_agent",
        "agent_heartbeat",
        "unregister_agent",
        "get_agent",
        "list_agents",
        "activity_log",
        "daemon_status",
        "get_version",
        "list_system_ports",
        "webhook_add",
        "webhook_list",
        "webhook_delete",
        "list_notes",
        "release_files",
        "list_sessions",
        "takeover_session",
        "list_stacks",
        "restart_service",
        "stack_logs",
        "service_url",
        "service_env",
        "who_holds_port",
        "wait_for_messages",
    ] {
        assert!(all.contains(&t), "{t} not in {all:?}");
    }
    assert!(all.len() > names.len() + 20, "{all:?}");
    // A claim is kernel-held: nobody else can bind its port.
    let lease = a.call("claim_port", json!({ "id": "agent:api" }));
    let port = lease["lease"]["port"].as_u64().unwrap() as u16;
    assert!(!can_bind(v4(port)), "port {port} is not held");
    let found = a.call("list_services", json!({}));
    assert_eq!(found["services"][0]["id"], "agent:api", "{found}");
    // The broker's state is also there to read, as resources.
    a.send(json!({ "resources": true }));
    let listed = a.read();
    for uri in [
        "pb://services",
        "pb://locks",
        "pb://sessions",
        "pb://status",
    ] {
        assert!(
            listed["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == uri),
            "{uri}: {listed}"
        );
    }
    assert!(
        listed["templates"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "pb://sessions/{id}/notes"),
        "{listed}"
    );
    a.send(json!({ "read": "pb://services" }));
    let read = a.read();
    assert_eq!(read["contents"]["services"][0]["id"], "agent:api", "{read}");
    a.send(json!({ "read": "pb://services/agent:api" }));
    assert_eq!(a.read()["contents"]["port"], port);
    for (uri, code) in [
        ("pb://nothing", "not_found"),
        ("pb://services/nobody:here", "not_found"),
    ] {
        a.send(json!({ "read": uri }));
        let r = a.read();
        assert_eq!(r["data"]["code"], code, "{uri}: {r}");
    }
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
    // Calls refused before pb sees them change nothing, and carry pb's
    // code too: no such tool is a JSON-RPC error whose data has it;
    // arguments against the schema, and too many bytes of them, are tool
    // errors.
    let none = a.answer("no_such_tool", json!({}));
    assert_eq!(none["data"]["code"], "invalid_request", "{none}");
    assert!(none["protocol_error"].is_i64(), "{none}");
    for (tool, args) in [
        ("claim_port", json!({ "id": 5 })),
        ("claim_port", json!({})),
        ("acquire_lock", json!({ "name": "x", "ttl_ms": "soon" })),
        ("add_note", json!({ "session": "s1" })),
    ] {
        let r = a.answer(tool, args.clone());
        assert_eq!(
            (&r["error"], &r["result"]["code"]),
            (&json!(true), &json!("invalid_request")),
            "{tool} {args}: {r}"
        );
    }
    let huge = a.answer(
        "publish_message",
        json!({ "channel": "big", "message": "x".repeat(200_000) }),
    );
    assert_eq!(huge["result"]["code"], "too_large", "{huge}");
    let versions = a.call("get_version", json!({}));
    assert_eq!(versions["protocol"], 1, "{versions}");
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

/// The session tools of one agent's answer.
fn session_of(v: &Value) -> String {
    v["session"]["id"].as_str().unwrap().to_string()
}

#[test]
fn sessions_notes_and_file_claims_pass_from_a_killed_agent_to_another_and_survive_a_restart() {
    let mut broker = Broker::start();
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(project.path().join("src/auth")).unwrap();
    let dir = project.path().canonicalize().unwrap();
    let mut a = Agent::start_in(&broker, &dir, &[]);
    let mut b = Agent::start_in(&broker, &dir, &[("PB_MCP_TOOLS", "all")]);
    let began = a.call(
        "begin_session",
        json!({ "purpose": "rework login", "phase": "planning", "files": ["src/auth"] }),
    );
    let s = session_of(&began);
    assert_eq!(began["session"]["dir"], dir.to_str().unwrap(), "{began}");
    assert_eq!(began["session"]["pid"], a.proc.pid(), "{began}");
    a.call(
        "add_note",
        json!({ "session": s, "text": "login form split out" }),
    );
    a.call(
        "add_note",
        json!({ "session": s, "text": "next: the token refresh" }),
    );

    // B's claim overlaps A's: refused, with who holds what, all or none.
    let other = session_of(&b.call("begin_session", json!({ "purpose": "api docs" })));
    let clash = b.answer(
        "claim_files",
        json!({ "session": other, "paths": ["docs/api.md", "src/auth/login.rs"] }),
    );
    assert_eq!(clash["result"]["code"], "held", "{clash}");
    let conflict = &clash["result"]["details"]["conflicts"][0];
    assert_eq!(conflict["session"], s.as_str(), "{clash}");
    assert_eq!(conflict["pid"], a.proc.pid(), "{clash}");
    let mine = b.call("get_session", json!({ "session": other }));
    assert_eq!(mine["session"]["files"], json!([]), "{mine}");
    b.call(
        "claim_files",
        json!({ "session": other, "paths": ["docs/*.md"] }),
    );
    let who = b.call("who_owns_file", json!({ "path": "src/auth/login.rs" }));
    assert_eq!(who["claims"][0]["session"], s.as_str(), "{who}");
    // Bad input: a path outside the project, a session of nobody's.
    let outside = b.answer(
        "claim_files",
        json!({ "session": other, "paths": ["../x"] }),
    );
    assert_eq!(outside["result"]["code"], "invalid_path", "{outside}");
    let nobody = b.answer("add_note", json!({ "session": "s999", "text": "x" }));
    assert_eq!(nobody["result"]["code"], "not_found", "{nobody}");

    // A is killed: its session is abandoned, its claims kept.
    a.proc.signal(libc::SIGKILL);
    a.proc.wait_for(Duration::from_secs(10));
    let abandoned = wait_until(Duration::from_secs(10), || {
        let got = b.call("get_session", json!({ "session": s }));
        (got["session"]["state"] == "abandoned").then_some(got)
    });
    let abandoned = abandoned.expect("the session is abandoned when its agent dies");
    assert_eq!(abandoned["session"]["files"].as_array().unwrap().len(), 1);
    let closed = b.answer("add_note", json!({ "session": s, "text": "mine now?" }));
    assert_eq!(closed["result"]["code"], "closed", "{closed}");

    // Everything survives a restart of the broker. The restart is a kill
    // -9, which may lose the activity log's last 100 ms (ARCHITECTURE.md);
    // a query hands the writer what is pending, so the abandonment is on
    // disk once a query has seen it.
    let logged = wait_until(Duration::from_secs(10), || {
        broker
            .activity(&["--target", &s])
            .iter()
            .any(|e| e["action"] == "session.abandoned")
            .then_some(())
    });
    logged.expect("the abandonment is in the activity log");
    b.exit();
    broker.restart();
    let mut b = Agent::start_in(&broker, &dir, &[("PB_MCP_TOOLS", "all")]);
    let listed = b.call("list_sessions", json!({}));
    let states: Vec<(&str, &str)> = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["id"].as_str().unwrap(), x["state"].as_str().unwrap()))
        .collect();
    assert!(states.contains(&(s.as_str(), "abandoned")), "{listed}");
    assert!(states.contains(&(other.as_str(), "abandoned")), "{listed}");

    // B takes A's over (salvage): notes and claims come along.
    let taken = b.call("takeover_session", json!({ "session": s }));
    assert_eq!(taken["session"]["state"], "active", "{taken}");
    assert_eq!(taken["session"]["pid"], b.proc.pid(), "{taken}");
    assert_eq!(taken["session"]["takeovers"], 1);
    let notes = b.call("list_notes", json!({ "session": s }));
    let texts: Vec<&str> = notes["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        texts[..2],
        ["login form split out", "next: the token refresh"]
    );
    assert_eq!(notes["notes"][2]["kind"], "handoff", "{notes}");
    b.call(
        "set_session_phase",
        json!({ "session": s, "phase": "testing" }),
    );
    let ended = b.call(
        "end_session_full",
        json!({ "session": s, "note": "token refresh done" }),
    );
    assert_eq!(ended["released"].as_array().unwrap().len(), 1, "{ended}");
    let again = b.answer("end_session_full", json!({ "session": s }));
    assert_eq!(again["result"]["code"], "closed", "{again}");
    let who = b.call("who_owns_file", json!({ "path": "src/auth/login.rs" }));
    assert_eq!(who["claims"], json!([]), "{who}");
    // The CLI sees the same sessions, and the activity log each step.
    let shown = broker.pb_json(&["session", "show", &s]);
    assert_eq!(shown["session"]["phase"], "testing", "{shown}");
    assert_eq!(shown["notes"].as_array().unwrap().len(), 4, "{shown}");
    let kinds: Vec<String> = broker
        .activity(&["--target", &s])
        .iter()
        .map(|e| e["action"].as_str().unwrap_or_default().to_string())
        .collect();
    for k in [
        "session.begin",
        "session.note",
        "session.abandoned",
        "session.takeover",
        "session.end",
    ] {
        assert!(
            kinds.iter().any(|x| x == k),
            "{k} not in {kinds:?}: {:?}",
            broker.activity(&[])
        );
    }
    b.exit();
}

#[test]
fn a_queued_lock_reports_progress_and_a_client_gone_mid_wait_is_granted_nothing() {
    let broker = Broker::start();
    let mut a = Agent::start(&broker);
    let mut b = Agent::start(&broker);
    a.call("acquire_lock", json!({ "name": "deploy" }));
    // B queues, asking for progress: it hears of its wait once a second.
    b.send(
        json!({ "tool": "acquire_lock", "args": { "name": "deploy", "wait_ms": 20000 },
                   "progress": true }),
    );
    std::thread::sleep(Duration::from_millis(2500));
    a.call("release_lock", json!({ "name": "deploy" }));
    let granted = b.read();
    assert_eq!(granted["error"], false, "{granted}");
    let progress = granted["progress"].as_array().unwrap();
    assert!(!progress.is_empty(), "{granted}");
    assert!(
        progress[0]
            .as_str()
            .unwrap()
            .contains("queued for lock deploy"),
        "{granted}"
    );
    // D queues, then cancels its call (notifications/cancelled): it leaves
    // the queue, and is granted nothing when B releases... later.
    let mut d = Agent::start(&broker);
    d.send(
        json!({ "tool": "acquire_lock", "args": { "name": "deploy", "wait_ms": 30000 },
                   "background": true }),
    );
    assert_eq!(d.read()["started"], "acquire_lock");
    let queued = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "deploy"])["locks"][0]["waiters"] == 1).then_some(())
    });
    assert!(queued.is_some(), "d never queued");
    d.send(json!({ "cancel": true }));
    assert!(d.read()["cancelled"].is_i64());
    let left = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "deploy"])["locks"][0]["waiters"] == 0).then_some(())
    });
    assert!(left.is_some(), "{}", broker.pb_json(&["locks", "deploy"]));
    let gave_up = d.read();
    assert_eq!(gave_up["result"]["code"], "timeout", "{gave_up}");
    assert!(
        gave_up["result"]["error"]
            .as_str()
            .unwrap()
            .contains("cancelled"),
        "{gave_up}"
    );
    // D's session goes on: it can still call tools.
    let me = d.call("whoami", json!({}));
    assert_eq!(me["pid"], d.proc.pid(), "{me}");

    // C queues behind B, then closes its MCP session while still queued
    // (its process lives on): the lock B releases goes to nobody.
    let mut c = Agent::start(&broker);
    c.send(
        json!({ "tool": "acquire_lock", "args": { "name": "deploy", "wait_ms": 30000 },
                   "background": true }),
    );
    assert_eq!(c.read()["started"], "acquire_lock");
    let queued = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "deploy"])["locks"][0]["waiters"] == 1).then_some(())
    });
    assert!(queued.is_some(), "c never queued");
    c.send(json!({ "disconnect": true }));
    assert_eq!(c.read()["disconnected"], true);
    b.call("release_lock", json!({ "name": "deploy" }));
    std::thread::sleep(Duration::from_millis(500));
    let locks = broker.pb_json(&["locks"]);
    assert_eq!(locks["locks"], json!([]), "{locks}");
    let info = broker.pb(&["locks", "deploy"]);
    assert!(info.status.success());
    let locks = broker.pb_json(&["locks"]);
    assert_eq!(locks["locks"], json!([]), "d was granted nothing: {locks}");
    c.exit();
    d.exit();
    a.exit();
    b.exit();
}

#[test]
fn the_typescript_sdk_over_http_claims_locks_talks_and_is_refused_like_any_http_client() {
    let broker = Broker::start();
    let mut a = Agent::start_http(&broker, json!({})).expect("the broker serves /mcp");
    a.send(json!({ "list": true }));
    let tools = a.read()["tools"].clone();
    assert!(tools.as_array().unwrap().len() >= 16, "{tools}");
    // A claim is kernel-held, and the HTTP caller's: the node process
    // whose socket the kernel names.
    let lease = a.call("claim_port", json!({ "id": "web:api" }));
    let port = lease["lease"]["port"].as_u64().unwrap() as u16;
    assert!(!can_bind(v4(port)), "port {port} is not held");
    assert_eq!(lease["lease"]["pid"], a.proc.pid(), "{lease}");
    let me = a.call("whoami", json!({}));
    assert_eq!(me["pid"], a.proc.pid(), "{me}");
    let found = a.call("list_services", json!({ "pattern": "web:*" }));
    assert_eq!(found["services"][0]["port"], port, "{found}");

    // A lock held by A; B queued (with progress) is granted at the release.
    a.call("acquire_lock", json!({ "name": "db" }));
    let mut b = Agent::start_http(&broker, json!({})).unwrap();
    b.send(
        json!({ "tool": "acquire_lock", "args": { "name": "db", "wait_ms": 20000 },
                   "progress": true }),
    );
    let queued = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "db"])["locks"][0]["waiters"] == 1).then_some(())
    });
    assert!(queued.is_some(), "b never queued");
    std::thread::sleep(Duration::from_millis(1500));
    a.call("release_lock", json!({ "name": "db" }));
    let granted = b.read();
    assert_eq!(granted["error"], false, "{granted}");
    assert_eq!(granted["result"]["lock"]["pid"], b.proc.pid(), "{granted}");
    assert!(
        !granted["progress"].as_array().unwrap().is_empty(),
        "{granted}"
    );

    // Messages across transports: published over HTTP, read by pb.
    a.call(
        "publish_message",
        json!({ "channel": "build:web", "message": { "status": "complete" } }),
    );
    let got = b.call("get_messages", json!({ "channel": "build:*" }));
    assert_eq!(got["messages"][0]["data"]["status"], "complete", "{got}");
    let seen = broker.pb_json_lines(&["history", "build:web"]);
    assert_eq!(seen[0]["status"], "complete", "{seen:?}");
    // Nothing serves web:api's port: the wait ends in pb's timeout.
    let waited = b.answer(
        "wait_for_service",
        json!({ "ids": ["web:api"], "timeout_ms": 200 }),
    );
    assert_eq!(waited["result"]["code"], "timeout", "{waited}");

    // Bad input carries pb's code here too.
    let bad = a.answer("claim_port", json!({ "id": "bad id!" }));
    assert_eq!(bad["result"]["code"], "invalid_id", "{bad}");
    let schema = a.answer("claim_port", json!({ "id": 7 }));
    assert_eq!(schema["result"]["code"], "invalid_request", "{schema}");
    let none = a.answer("no_such_tool", json!({}));
    assert_eq!(none["data"]["code"], "invalid_request", "{none}");

    // Sessions over HTTP name their project (there is no working directory).
    let began = a.call(
        "begin_session",
        json!({ "purpose": "web", "dir": "/srv/web", "files": ["src/a.rs"] }),
    );
    let s = began["session"]["id"].as_str().unwrap().to_string();
    let clash = b.answer(
        "begin_session",
        json!({ "purpose": "web too", "dir": "/srv/web", "files": ["src"] }),
    );
    assert_eq!(clash["result"]["code"], "held", "{clash}");
    assert_eq!(
        clash["result"]["details"]["conflicts"][0]["session"],
        s.as_str()
    );

    // B queues again and cancels (the SDK sends notifications/cancelled):
    // it leaves the queue, and the lock A releases goes to nobody.
    a.call("acquire_lock", json!({ "name": "cache" }));
    b.send(
        json!({ "tool": "acquire_lock", "args": { "name": "cache", "wait_ms": 30000 },
                   "background": true }),
    );
    assert_eq!(b.read()["started"], "acquire_lock");
    let queued = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "cache"])["locks"][0]["waiters"] == 1).then_some(())
    });
    assert!(queued.is_some(), "b never queued again");
    b.send(json!({ "cancel": true }));
    let mut said = vec![b.read(), b.read()];
    said.sort_by_key(|v| v.get("cancelled").is_none());
    assert_eq!(said[0]["cancelled"], true, "{said:?}");
    assert!(
        said[1]["protocol_error"].is_i64(),
        "the call ends as aborted: {said:?}"
    );
    let left = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "cache"])["locks"][0]["waiters"] == 0).then_some(())
    });
    assert!(left.is_some(), "{}", broker.pb_json(&["locks", "cache"]));
    a.call("release_lock", json!({ "name": "cache" }));
    std::thread::sleep(Duration::from_millis(300));
    let free = broker.pb_json(&["locks", "cache"]);
    assert_eq!(free["locks"], json!([]), "b was granted nothing: {free}");

    // The same with a raw client that keeps its connection open: its
    // notifications/cancelled, on a second connection, ends the call, which
    // answers on the first.
    a.call("acquire_lock", json!({ "name": "cache" }));
    let cancels = format!(
        "import socket,sys,time\n\
         def post(s,b):\n\
         \x20 b=b.encode()\n\
         \x20 s.sendall(b'POST /mcp HTTP/1.1\\r\\nHost: 127.0.0.1:{p}\\r\\nContent-Type: application/json\\r\\n'\n\
         \x20   b'Accept: application/json, text/event-stream\\r\\nContent-Length: '+str(len(b)).encode()+b'\\r\\n\\r\\n'+b)\n\
         one=socket.create_connection(('127.0.0.1',{p}))\n\
         post(one,sys.argv[1])\n\
         time.sleep(1.5)\n\
         two=socket.create_connection(('127.0.0.1',{p}))\n\
         post(two,sys.argv[2])\n\
         one.settimeout(10)\n\
         got=b''\n\
         while b'cancelled' not in got:\n\
         \x20 got+=one.recv(4096)\n\
         print('answered',flush=True)\n\
         time.sleep(30)\n",
        p = broker.http_port().unwrap()
    );
    let queue = json!({ "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": { "name": "acquire_lock", "arguments": { "name": "cache", "wait_ms": 30000 } } })
    .to_string();
    let cancel = json!({ "jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": { "requestId": 7, "reason": "test" } })
    .to_string();
    let mut raw = Proc(
        Command::new("python3")
            .args(["-c", &cancels, &queue, &cancel])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut said = String::new();
    BufReader::new(raw.0.stdout.as_mut().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(
        said.trim(),
        "answered",
        "the cancelled call answers on its stream"
    );
    let left = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "cache"])["locks"][0]["waiters"] == 0).then_some(())
    });
    assert!(left.is_some(), "{}", broker.pb_json(&["locks", "cache"]));
    a.call("release_lock", json!({ "name": "cache" }));
    std::thread::sleep(Duration::from_millis(300));
    let free = broker.pb_json(&["locks", "cache"]);
    assert_eq!(
        free["locks"],
        json!([]),
        "the raw client was granted nothing: {free}"
    );
    raw.signal(libc::SIGKILL);

    // A client that hangs up while queued (its process lives on) is
    // granted nothing: the lock A releases goes to nobody.
    a.call("acquire_lock", json!({ "name": "deploy" }));
    let call = json!({ "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": { "name": "acquire_lock",
                    "arguments": { "name": "deploy", "wait_ms": 30000 } } })
    .to_string();
    let hangup = format!(
        "import socket,sys,time\n\
         s=socket.create_connection(('127.0.0.1',{p}))\n\
         b=sys.argv[1].encode()\n\
         s.sendall(b'POST /mcp HTTP/1.1\\r\\nHost: 127.0.0.1:{p}\\r\\nContent-Type: application/json\\r\\n'\n\
           b'Accept: application/json, text/event-stream\\r\\nContent-Length: '+str(len(b)).encode()+b'\\r\\n\\r\\n'+b)\n\
         time.sleep(1.5)\n\
         s.close()\n\
         print('closed',flush=True)\n\
         time.sleep(30)\n",
        p = broker.http_port().unwrap()
    );
    let mut gone = Proc(
        Command::new("python3")
            .args(["-c", &hangup, &call])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let queued = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "deploy"])["locks"][0]["waiters"] == 1).then_some(())
    });
    assert!(queued.is_some(), "the raw client never queued");
    let mut said = String::new();
    BufReader::new(gone.0.stdout.as_mut().unwrap())
        .read_line(&mut said)
        .unwrap();
    assert_eq!(said.trim(), "closed");
    let left = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["locks", "deploy"])["locks"][0]["waiters"] == 0).then_some(())
    });
    assert!(left.is_some(), "{}", broker.pb_json(&["locks", "deploy"]));
    a.call("release_lock", json!({ "name": "deploy" }));
    std::thread::sleep(Duration::from_millis(300));
    let locks = broker.pb_json(&["locks", "deploy"]);
    assert_eq!(locks["locks"], json!([]), "{locks}");
    gone.signal(libc::SIGKILL);

    // A exits: its claim and its session are the node process's.
    a.exit();
    let freed = wait_until(Duration::from_secs(10), || {
        broker.leases().is_empty().then_some(())
    });
    assert!(freed.is_some(), "{:?}", broker.leases());
    let state = wait_until(Duration::from_secs(10), || {
        let got = b.call("get_session", json!({ "session": s }));
        (got["session"]["state"] == "abandoned").then_some(())
    });
    assert!(state.is_some());
    b.exit();

    // The guard of every route guards /mcp: a foreign Origin, a Host that
    // is not the broker's, another user without the token.
    let refused = Agent::start_http(&broker, json!({ "Origin": "http://evil.example" }))
        .err()
        .expect("a foreign Origin is refused");
    assert!(refused.contains("\"code\":\"forbidden\""), "{refused}");
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": { "protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": { "name": "curl", "version": "1" } } })
    .to_string();
    let url = format!("{}/mcp", broker.http_url());
    // A POST to /mcp as `user` with `headers` and `body`: (status, JSON).
    let post = |user, headers: &[&str], body: &str| {
        let mut args = vec!["-X", "POST", "-H", "Content-Type: application/json"];
        for h in headers {
            args.extend(["-H", h]);
        }
        args.extend(["--data", body, &url]);
        pb_tests::curl_json(user, 10, &args)
    };
    let accept = "Accept: application/json, text/event-stream";
    assert_eq!(post(None, &[accept], &init).0, 200);
    assert_eq!(post(None, &[accept, "Host: evil.example"], &init).0, 403);
    // What the MCP layer refuses is pb's JSON error, like any route's.
    let (st, v) = pb_tests::curl_json(None, 10, &[&url]);
    assert_eq!(
        (st, v["code"].as_str()),
        (405, Some("method_not_allowed")),
        "{v}"
    );
    for (headers, body) in [(&[][..], init.as_str()), (&[accept][..], "{\"x\":1}")] {
        let (st, v) = post(None, headers, body);
        assert_eq!(
            (st, v["code"].as_str()),
            (400, Some("invalid_request")),
            "{body}: {v}"
        );
    }
    let other = pb_tests::other_user();
    assert_eq!(post(Some(other), &[accept], &init).0, 401);
    let token = broker.pb_ok(&["token"]).trim().to_string();
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(post(Some(other), &[accept, &bearer], &init).0, 200);
}

#[test]
fn an_agent_brings_a_stack_up_waits_for_it_restarts_it_and_brings_it_down() {
    let broker = Broker::start();
    let project = tempfile::tempdir().unwrap();
    std::fs::copy(
        tests_dir().join("stacks/api.py"),
        project.path().join("api.py"),
    )
    .unwrap();
    std::fs::write(
        project.path().join("pb.toml"),
        "project = \"shop\"\n\n[services.api]\ncmd = \"python3 api.py\"\n",
    )
    .unwrap();
    let mut a = Agent::start_in(&broker, project.path(), &[("PB_MCP_TOOLS", "all")]);
    let up = a.call("stack_up", json!({}));
    assert_eq!(up["id"], "shop", "{up}");
    assert_eq!(up["services"][0]["ready"], true, "{up}");
    let port = up["services"][0]["port"].as_u64().unwrap();
    // The service answers: waiting for it succeeds.
    let ready = a.call(
        "wait_for_service",
        json!({ "ids": ["shop:api"], "timeout_ms": 10000 }),
    );
    assert_eq!(ready["services"][0]["port"], port, "{ready}");
    let listed = a.call("list_stacks", json!({}));
    assert_eq!(listed["stacks"][0]["id"], "shop", "{listed}");
    a.call(
        "restart_service",
        json!({ "stack": "shop", "service": "api" }),
    );
    let restarted = wait_until(Duration::from_secs(20), || {
        let s = a.call("list_stacks", json!({}));
        let svc = &s["stacks"][0]["services"][0];
        (svc["restarts"] == 1 && svc["ready"] == true).then_some(())
    });
    assert!(restarted.is_some(), "{}", a.call("list_stacks", json!({})));
    let logs = a.call("stack_logs", json!({ "stack": "shop" }));
    assert!(logs["messages"].is_array(), "{logs}");
    // Up twice is refused with the reason; the first stays up.
    let twice = a.answer("stack_up", json!({}));
    assert_eq!(twice["error"], true, "{twice}");
    assert!(
        twice["result"]["error"]
            .as_str()
            .unwrap()
            .contains("already up"),
        "{twice}"
    );
    let down = a.call("stack_down", json!({}));
    assert_eq!(down["down"], true, "{down}");
    let none = a.call("list_stacks", json!({}));
    assert_eq!(none["stacks"], json!([]), "{none}");
    // A directory without a stack file is the caller's mistake.
    let empty = tempfile::tempdir().unwrap();
    let missing = a.answer("stack_up", json!({ "dir": empty.path().to_str().unwrap() }));
    assert_eq!(missing["result"]["code"], "invalid_request", "{missing}");
    a.exit();
    // Over HTTP the broker starts no process for its caller.
    let mut h = Agent::start_http(&broker, json!({})).unwrap();
    let refused = h.answer(
        "stack_up",
        json!({ "dir": project.path().to_str().unwrap() }),
    );
    assert_eq!(refused["result"]["code"], "forbidden", "{refused}");
    h.exit();
}
