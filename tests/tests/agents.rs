//! Agents: limits enforced on claims and locks made in an agent's name; an
//! agent that stops sending heartbeats, and an agent whose process dies,
//! both have their services and locks released and `agent.stale`
//! announced; the activity log names the agent and the real process; bad
//! input.

use std::process::Command;
use std::time::Duration;

use pb_proto::{AgentArgs, ErrorCode, Op, Owner};
use pb_tests::*;
use serde_json::Value;

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until(Duration::from_secs(20), f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

fn agents(broker: &Broker) -> Vec<String> {
    broker.pb_json(&["agent", "ls"])["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

fn locks(broker: &Broker) -> Vec<String> {
    broker.pb_json(&["locks"])["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap().to_string())
        .collect()
}

fn stale_event(broker: &Broker, id: &str) -> Value {
    let out = broker.pb_ok(&["-j", "log", "--action", "agent.stale", "--target", id]);
    let line = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no agent.stale for {id}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn limits_apply_to_claims_and_locks_made_in_an_agents_name() {
    let broker = Broker::start();
    broker.pb_ok(&[
        "agent",
        "register",
        "bot",
        "--max-services",
        "2",
        "--max-locks",
        "1",
    ]);
    let as_bot = |args: &[&str]| {
        let mut c = broker.cmd();
        c.env("PB_AGENT", "bot").args(args);
        c.output().unwrap()
    };
    assert!(as_bot(&["claim", "bot:a"]).status.success());
    assert!(as_bot(&["claim", "bot:b"]).status.success());
    let out = as_bot(&["-j", "claim", "bot:c"]);
    assert_eq!(out.status.code(), Some(6));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], "limit");
    // The same id again is not a new service.
    assert!(as_bot(&["claim", "bot:a"]).status.success());
    assert!(as_bot(&["lock", "one"]).status.success());
    assert_eq!(as_bot(&["lock", "two"]).status.code(), Some(6));
    // A lock taken as the agent is the agent's.
    let v = broker.pb_json(&["locks", "one"]);
    assert_eq!(v["locks"][0]["owner"], "agent");
    assert_eq!(v["locks"][0]["owner_name"], "bot");
    let info = broker.pb_json(&["agent", "info", "bot"]);
    assert_eq!(info["services"], serde_json::json!(["bot:a", "bot:b"]));
    assert_eq!(info["locks"], serde_json::json!(["one"]));
    // Releasing makes room again.
    assert!(as_bot(&["unlock", "one"]).status.success());
    assert!(as_bot(&["lock", "two"]).status.success());
    // Unregistering releases what it held.
    broker.pb_ok(&["agent", "unregister", "bot"]);
    assert!(locks(&broker).is_empty());
    assert!(broker.leases().is_empty());
    // The log names the agent and the real process behind each action.
    let out = broker.pb_ok(&[
        "-j",
        "log",
        "--by-agent",
        "bot",
        "--action",
        "service.claim",
    ]);
    let e: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(e["actor"]["agent"], "bot");
    assert!(e["actor"]["pid"].as_u64().is_some());
    assert!(e["actor"]["command"].as_str().unwrap().contains("claim"));
}

#[test]
fn an_agent_without_heartbeats_goes_stale_and_its_things_are_released() {
    let broker = Broker::start_with(&[("PB_AGENT_STALE", "2s")]);
    broker.pb_ok(&["agent", "register", "sleepy"]);
    broker.pb_ok(&["agent", "register", "alive"]);
    let port = broker.claim("sleepy:web", &["--agent", "sleepy"]);
    broker.pb_ok(&["--agent", "sleepy", "lock", "sleepy-lock"]);
    broker.pb_ok(&["--agent", "alive", "lock", "alive-lock"]);
    // "alive" keeps sending heartbeats; "sleepy" does not.
    wait_for("sleepy to go stale", || {
        broker.pb_ok(&["agent", "heartbeat", "alive"]);
        (!agents(&broker).contains(&"sleepy".to_string())).then_some(())
    });
    assert!(agents(&broker).contains(&"alive".to_string()));
    assert_eq!(locks(&broker), vec!["alive-lock".to_string()]);
    assert!(broker.leases().is_empty());
    wait_for("its port to be free", || {
        (can_bind(v4(port)) && can_bind(v6(port))).then_some(())
    });
    let e = stale_event(&broker, "sleepy");
    assert_eq!(e["details"]["reason"], "no_heartbeat");
    assert_eq!(e["details"]["services"], serde_json::json!(["sleepy:web"]));
    assert_eq!(e["details"]["locks"], serde_json::json!(["sleepy-lock"]));
    // A stale agent is gone: its heartbeats are refused.
    assert_eq!(
        broker.pb(&["agent", "heartbeat", "sleepy"]).status.code(),
        Some(4)
    );
}

#[test]
fn an_agent_whose_process_dies_is_cleaned_up_at_once() {
    let broker = Broker::start();
    let (holder, held) = broker.holder(&["agent", "worker", "worker:api", "worker-lock"]);
    assert_eq!(held["agent"]["agent"]["pid"], holder.pid());
    let port = held["service"]["lease"]["port"].as_u64().unwrap() as u16;
    assert_eq!(locks(&broker), vec!["worker-lock".to_string()]);
    // A waiter in line for its lock gets it when the agent is gone.
    let mut waiter = Proc(
        broker
            .cmd()
            .args([
                "lock",
                "worker-lock",
                "--wait",
                "--timeout",
                "60s",
                "--owner",
                "heir",
            ])
            .spawn()
            .unwrap(),
    );
    holder.signal(libc::SIGKILL);
    let st = waiter
        .wait_for(Duration::from_secs(30))
        .expect("waiter ends");
    assert!(st.success());
    wait_for("the agent to be gone", || {
        agents(&broker).is_empty().then_some(())
    });
    assert!(broker.leases().is_empty());
    wait_for("its port to be free", || can_bind(v4(port)).then_some(()));
    let e = stale_event(&broker, "worker");
    assert_eq!(e["details"]["reason"], "process_exited");
    assert_eq!(broker.pb_json(&["locks"])["locks"][0]["owner_name"], "heir");
}

#[test]
fn bad_agent_requests_get_clear_errors_and_change_nothing() {
    let mut broker = Broker::start();
    broker.pb_ok(&["agent", "register", "keep", "--name", "Keeper"]);
    broker.kill9();
    let db = broker.home.path().join("pb.db");
    let st = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"insert into agents (id, uid, registered_ms, last_seen_ms) values ('theirs', 4242, 1, 1)\"); c.commit()"])
        .arg(&db)
        .status()
        .unwrap();
    assert!(st.success());
    broker.restart();
    let before = broker.pb_json(&["agent", "ls"]);
    // Another user's agent: no heartbeat, no unregister, no re-register,
    // and it cannot be acted as.
    let out = broker.pb(&["-j", "agent", "heartbeat", "theirs"]);
    assert_eq!(out.status.code(), Some(5));
    assert_eq!(
        broker.pb(&["agent", "unregister", "theirs"]).status.code(),
        Some(5)
    );
    assert_eq!(
        broker.pb(&["agent", "register", "theirs"]).status.code(),
        Some(5)
    );
    assert_eq!(
        broker
            .pb(&["--agent", "theirs", "claim", "x"])
            .status
            .code(),
        Some(5)
    );
    // Unknown agents.
    assert_eq!(
        broker.pb(&["agent", "heartbeat", "ghost"]).status.code(),
        Some(4)
    );
    assert_eq!(
        broker.pb(&["--agent", "ghost", "claim", "x"]).status.code(),
        Some(4)
    );
    assert_eq!(
        broker.pb(&["--agent", "ghost", "lock", "x"]).status.code(),
        Some(4)
    );
    // Bad fields.
    let mut c = broker.client();
    let mut reg = |a: AgentArgs| match c.call(Op::AgentRegister(a)).unwrap_err() {
        pb_proto::client::ClientError::Wire(w) => w.code,
        other => panic!("{other}"),
    };
    assert_eq!(
        reg(AgentArgs {
            id: "bad id".into(),
            ..Default::default()
        }),
        ErrorCode::InvalidName
    );
    assert_eq!(
        reg(AgentArgs {
            id: "neg".into(),
            max_services: Some(-1),
            ..Default::default()
        }),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        reg(AgentArgs {
            id: "huge".into(),
            max_locks: Some(1 << 40),
            ..Default::default()
        }),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        reg(AgentArgs {
            id: "name".into(),
            name: Some("x".repeat(500)),
            ..Default::default()
        }),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        reg(AgentArgs {
            id: "dead".into(),
            owner: Owner::Pid(999_999_999),
            ..Default::default()
        }),
        ErrorCode::InvalidRequest
    );
    assert!(broker.leases().is_empty());
    assert_eq!(before, broker.pb_json(&["agent", "ls"]));
}
