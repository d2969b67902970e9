//! Coordination over HTTP (Port Daddy's lock, message, agent and activity
//! routes) against real brokers (its README's curl recipes run as written
//! in recipes.rs): what is done over one
//! transport is seen over the other, because both apply the same `Op`s in
//! the same core: a lock held over IPC is a 409 over HTTP and the reverse,
//! a waiting HTTP acquire is granted by an IPC release, an SSE subscriber
//! gets exactly its pattern's messages published over IPC and resumes
//! with Last-Event-ID, X-Agent-Id's limits apply, and bad input gets its
//! status and changes nothing.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use pb_tests::{curl_json, v4, wait_until, Broker};
use serde_json::{json, Value};

/// Runs curl with `args` (URLs already pointing at the test broker) and
/// returns (status, JSON body).
fn curl(args: &[&str]) -> (u16, Value) {
    pb_tests::curl_json(None, 30, args)
}

fn url(broker: &Broker, path: &str) -> String {
    format!("{}{path}", broker.http_url())
}

/// The channels /channels lists, without the broker's own (`pb:*`).
fn user_channels(v: &Value) -> Vec<String> {
    v["channels"]
        .as_array()
        .expect("a channel list")
        .iter()
        .map(|c| c["channel"].as_str().unwrap().to_string())
        .filter(|c| !c.starts_with("pb:"))
        .collect()
}

fn assert_error(r: &(u16, Value), status: u16, code: &str) {
    assert_eq!(r.0, status, "{r:?}");
    assert_eq!(r.1["code"], code, "{r:?}");
    assert!(
        r.1["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
}

#[test]
fn agents_and_the_activity_log_over_http_are_seen_over_ipc() {
    // The READMEs' recipes themselves are in recipes.rs.
    let broker = Broker::start();
    let (s, v) = curl(&[
        "-X",
        "POST",
        &url(&broker, "/agents/claude-session-1"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"name": "API Builder", "type": "claude"}"#,
    ]);
    assert_eq!(s, 200, "{v}");
    let ipc = broker.pb_json(&["agent", "info", "claude-session-1"]);
    assert_eq!(ipc["name"], "API Builder", "{ipc}");
    let (s, v) = curl(&[
        "-X",
        "PUT",
        &url(&broker, "/agents/claude-session-1/heartbeat"),
    ]);
    assert_eq!(s, 200, "{v}");
    // pb log's own names and filters work too.
    let (s, v) = curl(&[&url(
        &broker,
        "/activity?action=agent.*&agent=claude-session-1&since=10m",
    )]);
    assert_eq!(s, 200, "{v}");
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["agent.register", "agent.heartbeat"], "{v}");

    // Unregistering over HTTP is seen over IPC.
    let r = curl(&["-X", "DELETE", &url(&broker, "/agents/claude-session-1")]);
    assert_eq!(r.0, 200, "{r:?}");
    assert_eq!(r.1["unregistered"], true);
    assert_eq!(broker.pb_json(&["agent", "ls"])["agents"], json!([]));
}

#[test]
fn lock_and_message_routes_of_the_api_reference() {
    let broker = Broker::start();
    // POST /locks/:name with nothing else: the owner is the requesting
    // process's parent (this test), as `pb lock`'s is pb's.
    let (s, v) = curl(&["-X", "POST", &url(&broker, "/locks/db-migrations")]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["name"], "db-migrations");
    assert_eq!(v["lock"]["pid"], std::process::id());
    assert_eq!(v["existing"], false);
    let token = v["token"].as_u64().unwrap();
    // Taking it again from the same script renews it.
    let (s, v) = curl(&["-X", "POST", &url(&broker, "/locks/db-migrations")]);
    assert_eq!(
        (s, v["existing"].clone(), v["token"].as_u64()),
        (200, json!(true), Some(token)),
        "{v}"
    );
    let (s, v) = curl(&[&url(&broker, "/locks")]);
    assert_eq!(s, 200);
    assert_eq!(v["count"], 1);
    // The README's jq filter over `locks --json`: `.locks[] | .name`.
    assert_eq!(v["locks"][0]["name"], "db-migrations");
    let (s, v) = curl(&[&url(&broker, "/locks/db-migrations")]);
    assert_eq!((s, v["locked"].clone()), (200, json!(true)), "{v}");
    assert_eq!(v["lock"]["token"], token);
    let (s, v) = curl(&[
        "-X",
        "PUT",
        &url(&broker, "/locks/db-migrations"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"ttl": 600000}"#,
    ]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lock"]["ttl"], 600000);
    let (s, v) = curl(&["-X", "POST", &url(&broker, "/locks/db-migrations/extend")]);
    assert_eq!(s, 200, "{v}");
    // IPC sees the same holding.
    let ipc = broker.pb_json(&["locks"]);
    assert_eq!(ipc["locks"][0]["token"], token, "{ipc}");
    let (s, v) = curl(&["-X", "DELETE", &url(&broker, "/locks/db-migrations")]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["released"], true);
    let (s, v) = curl(&[&url(&broker, "/locks/db-migrations")]);
    assert_eq!((s, v["locked"].clone()), (200, json!(false)), "{v}");
    let r = curl(&["-X", "DELETE", &url(&broker, "/locks/db-migrations")]);
    assert_error(&r, 404, "not_found");

    // Messages: the body is the message, as Port Daddy's CLI sends it.
    let (s, v) = curl(&[
        "-X",
        "POST",
        &url(&broker, "/msg/build:api"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"status":"ready","port":3100}"#,
    ]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["channel"], "build:api");
    let id = v["id"].as_u64().unwrap();
    broker.pb_ok(&["pub", "build:web", r#"{"status":"ready","port":3101}"#]);
    let (s, v) = curl(&[&url(&broker, "/msg/build:api")]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["count"], 1);
    assert_eq!(v["messages"][0]["id"], id);
    assert_eq!(
        v["messages"][0]["data"],
        json!({"status":"ready","port":3100})
    );
    // A pattern reads both; `since` skips what was seen.
    let (_, v) = curl(&[&url(&broker, "/msg/build:*")]);
    assert_eq!(v["count"], 2, "{v}");
    let (_, v) = curl(&[&url(&broker, &format!("/msg/build:*?since={id}"))]);
    assert_eq!(v["messages"][0]["channel"], "build:web", "{v}");
    assert_eq!(v["count"], 1, "{v}");
    let (s, v) = curl(&[&url(&broker, "/channels")]);
    assert_eq!(s, 200);
    assert_eq!(v["count"], v["channels"].as_array().unwrap().len());
    assert_eq!(user_channels(&v), ["build:api", "build:web"], "{v}");
    let (s, v) = curl(&["-X", "DELETE", &url(&broker, "/msg/build:api")]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["removed"], 1);
    let ipc = broker.pb_json_lines(&["history", "build:*"]);
    assert_eq!(ipc.len(), 1, "{ipc:?}");
}

#[test]
fn a_lock_held_over_one_transport_is_a_conflict_over_the_other() {
    let broker = Broker::start();
    broker.pb_ok(&["lock", "db", "--owner", "ipc-holder"]);
    let r = curl(&["-X", "POST", &url(&broker, "/locks/db")]);
    assert_error(&r, 409, "held");
    assert_eq!(r.1["details"]["owner_name"], "ipc-holder", "{r:?}");
    assert!(r.1["details"]["expires_ms"].is_u64(), "{r:?}");
    // Nothing changed: the IPC holder still holds it, with no waiter.
    let v = broker.pb_json(&["locks"]);
    assert_eq!(v["locks"][0]["owner_name"], "ipc-holder");
    assert_eq!(v["locks"][0]["waiters"], 0);

    let (s, v) = curl(&[
        "-X",
        "POST",
        &url(&broker, "/locks/cache"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"owner": "web", "ttl": "2m"}"#,
    ]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["owner"], "web");
    assert_eq!(v["lock"]["ttl"], 120000);
    let out = broker.pb(&["-j", "lock", "cache"]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], "held");
    assert_eq!(e["details"]["owner_name"], "web", "{e}");
    // Only its owner lets it go; over IPC under the same name it does.
    let r = curl(&["-X", "DELETE", &url(&broker, "/locks/cache")]);
    assert_eq!(r.0, 409, "{r:?}");
    broker.pb_ok(&["unlock", "cache", "--owner", "web"]);
    assert_eq!(broker.pb_json(&["locks", "cache"])["locks"], json!([]));
    // Force over HTTP (query or body) releases an IPC holder of our user.
    let (s, v) = curl(&["-X", "DELETE", &url(&broker, "/locks/db?force=true")]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lock"]["owner"], "ipc-holder");
}

#[test]
fn a_waiting_http_acquire_is_granted_when_the_ipc_holder_releases() {
    let broker = Broker::start();
    broker.pb_ok(&["lock", "deploy", "--owner", "ipc"]);
    let waiter = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "60",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .arg(url(&broker, "/locks/deploy"))
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(r#"{"owner": "http", "timeout": 30000}"#)
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl");
    let queued = wait_until(Duration::from_secs(20), || {
        let v = broker.pb_json(&["locks", "deploy"]);
        (v["locks"][0]["waiters"] == 1).then_some(())
    });
    assert!(queued.is_some(), "the HTTP request never queued");
    broker.pb_ok(&["unlock", "deploy", "--owner", "ipc"]);
    let out = waiter.wait_with_output().unwrap();
    let (s, v) = pb_tests::curl_status_json(&out.stdout);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["owner"], "http");
    assert_eq!(broker.pb_json(&["locks"])["locks"][0]["owner_name"], "http");

    // A wait that runs out is a timeout, and leaves no waiter behind.
    let r = curl(&[
        "-X",
        "POST",
        &url(&broker, "/locks/deploy"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"owner": "late", "timeout": 200}"#,
    ]);
    assert_error(&r, 408, "timeout");
    assert_eq!(broker.pb_json(&["locks"])["locks"][0]["waiters"], 0);
}

/// An open SSE response: reads events one by one.
struct Sse {
    reader: BufReader<TcpStream>,
}

#[derive(Debug, Clone)]
struct SseEvent {
    id: Option<u64>,
    name: Option<String>,
    data: String,
}

impl Sse {
    fn open(port: u16, path: &str, last_id: Option<u64>) -> Sse {
        let mut s = TcpStream::connect(v4(port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut head = format!(
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        );
        if let Some(id) = last_id {
            head.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.contains(" 200 "), "{status}");
        // Headers, up to the blank line.
        for _ in 0..64 {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        Sse { reader }
    }

    /// The next event (chunked framing and heartbeats skipped).
    fn next(&mut self) -> SseEvent {
        let mut e = SseEvent {
            id: None,
            name: None,
            data: String::new(),
        };
        let mut any = false;
        for _ in 0..10_000 {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .expect("an event within 20 s");
            assert!(n > 0, "the stream ended");
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("id: ") {
                e.id = v.parse().ok();
                any = true;
            } else if let Some(v) = line.strip_prefix("event: ") {
                e.name = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("data: ") {
                e.data.push_str(v);
            } else if line.is_empty() && any {
                return e;
            }
            // Anything else is chunk framing or a heartbeat comment.
        }
        panic!("no event");
    }
}

#[test]
fn sse_subscription_gets_exactly_its_patterns_messages_and_resumes_without_loss() {
    let broker = Broker::start();
    let port = broker.http_port().unwrap();
    let mut sub = Sse::open(port, "/subscribe/build:*", None);
    let connected = sub.next();
    assert_eq!(
        connected.name.as_deref(),
        Some("connected"),
        "{connected:?}"
    );
    let c: Value = serde_json::from_str(&connected.data).unwrap();
    assert_eq!(c["patterns"], json!(["build:*"]));

    broker.pb_ok(&["pub", "build:api", r#"{"status":"ready","port":3100}"#]);
    broker.pb_ok(&["pub", "deploy:api", r#"{"not":"for us"}"#]);
    broker.pb_ok(&["pub", "build:frontend", r#"{"status":"ready","port":3101}"#]);
    let a = sub.next();
    let b = sub.next();
    let (ma, mb): (Value, Value) = (
        serde_json::from_str(&a.data).unwrap(),
        serde_json::from_str(&b.data).unwrap(),
    );
    assert_eq!(ma["channel"], "build:api");
    assert_eq!(ma["data"], json!({"status":"ready","port":3100}));
    assert_eq!(mb["channel"], "build:frontend");
    assert_eq!(a.id, ma["id"].as_u64(), "event ids are message ids");
    assert_eq!(b.id, mb["id"].as_u64());
    let subscribers = || {
        let (_, v) = curl(&[&url(&broker, "/channels")]);
        v["channels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["channel"] == "build:api")
            .map(|c| c["subscribers"].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(subscribers(), 1);
    drop(sub);
    // A client that goes away ends its subscription.
    let gone = wait_until(Duration::from_secs(20), || {
        (subscribers() == 0).then_some(())
    });
    assert!(gone.is_some(), "the closed subscription is still counted");

    // Published while the subscriber was away, over IPC and over HTTP.
    broker.pb_ok(&["pub", "build:docs", r#"{"n":1}"#]);
    broker.pb_ok(&["pub", "other", r#"{"n":2}"#]);
    let (s, _) = curl(&[
        "-X",
        "POST",
        &url(&broker, "/msg/build:tests"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"n":3}"#,
    ]);
    assert_eq!(s, 200);
    let mut sub = Sse::open(port, "/subscribe/build:*", b.id);
    let connected = sub.next();
    assert_eq!(connected.name.as_deref(), Some("connected"));
    assert_eq!(connected.id, b.id, "the resume position");
    let c = sub.next();
    let d = sub.next();
    let channels: Vec<Value> = [&c, &d]
        .iter()
        .map(|e| serde_json::from_str::<Value>(&e.data).unwrap()["channel"].clone())
        .collect();
    assert_eq!(channels, [json!("build:docs"), json!("build:tests")]);
    // And live again after the replay.
    broker.pb_ok(&["pub", "build:api", r#"{"n":4}"#]);
    let e = sub.next();
    let m: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(m["data"], json!({"n":4}));
    assert!(e.id > d.id);
}

#[test]
fn activity_follows_as_server_sent_events() {
    let broker = Broker::start();
    let port = broker.http_port().unwrap();
    broker.claim("before:api", &[]);
    let mut s = Sse::open(port, "/activity/stream?action=service.claim", None);
    let first = s.next();
    let e: Value = serde_json::from_str(&first.data).unwrap();
    assert_eq!(e["target"], "before:api");
    assert_eq!(first.id, e["id"].as_u64());
    broker.pb_ok(&["lock", "x", "--owner", "o"]);
    broker.claim("after:api", &[]);
    let next = s.next();
    let e: Value = serde_json::from_str(&next.data).unwrap();
    assert_eq!(
        (e["action"].clone(), e["target"].clone()),
        (json!("service.claim"), json!("after:api"))
    );
    drop(s);
    // Resuming leaves out what was seen.
    let mut s = Sse::open(port, "/activity?follow=1&action=service.claim", next.id);
    broker.claim("later:api", &[]);
    let e: Value = serde_json::from_str(&s.next().data).unwrap();
    assert_eq!(e["target"], "later:api");
}

#[test]
fn x_agent_id_limits_apply_to_http_claims_and_locks() {
    let broker = Broker::start();
    let (s, v) = curl(&[
        "-X",
        "POST",
        &url(&broker, "/agents/builder"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"maxServices": 1, "maxLocks": 1}"#,
    ]);
    assert_eq!(s, 200, "{v}");
    let agent = ["-H", "X-Agent-Id: builder"];
    let (s, v) = curl(&[&["-X", "POST", &url(&broker, "/claim/app:one")][..], &agent].concat());
    assert_eq!(s, 200, "{v}");
    let r = curl(&[&["-X", "POST", &url(&broker, "/claim/app:two")][..], &agent].concat());
    assert_error(&r, 429, "limit");
    assert!(broker.leases().iter().all(|(id, _)| id != "app:two"));
    // Without the header the agent's limit is not the caller's.
    let (s, _) = curl(&["-X", "POST", &url(&broker, "/claim/app:two")]);
    assert_eq!(s, 200);
    let info = broker.pb_json(&["agent", "info", "builder"]);
    assert_eq!(info["services"], json!(["app:one"]), "{info}");

    let (s, v) = curl(&[&["-X", "POST", &url(&broker, "/locks/l1")][..], &agent].concat());
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lock"]["ownerType"], "agent");
    assert_eq!(v["owner"], "builder");
    let r = curl(&[&["-X", "POST", &url(&broker, "/locks/l2")][..], &agent].concat());
    assert_error(&r, 429, "limit");
    // The agent releases its own lock over HTTP.
    let (s, v) = curl(&[&["-X", "DELETE", &url(&broker, "/locks/l1")][..], &agent].concat());
    assert_eq!(s, 200, "{v}");
    // An unknown agent is refused, and nothing is claimed.
    let r = curl(&[
        "-X",
        "POST",
        &url(&broker, "/claim/app:three"),
        "-H",
        "X-Agent-Id: nobody",
    ]);
    assert_error(&r, 404, "not_found");
    assert!(broker.leases().iter().all(|(id, _)| id != "app:three"));
}

#[test]
fn bad_input_gets_its_status_and_changes_nothing() {
    let broker = Broker::start();
    let json_h = ["-H", "Content-Type: application/json"];
    let r = curl(&["-X", "POST", &url(&broker, "/locks/bad%20name")]);
    assert_error(&r, 400, "invalid_name");
    let r = curl(&["-X", "POST", &url(&broker, "/locks/a:*")]);
    assert_error(&r, 400, "invalid_name");
    let r = curl(
        &[
            &[
                "-X",
                "POST",
                &url(&broker, "/locks/ok"),
                "-d",
                r#"{"ttl": -5}"#,
            ][..],
            &json_h,
        ]
        .concat(),
    );
    assert_error(&r, 400, "invalid_duration");
    let r = curl(
        &[
            &[
                "-X",
                "POST",
                &url(&broker, "/locks/ok"),
                "-d",
                r#"{"bogus": 1}"#,
            ][..],
            &json_h,
        ]
        .concat(),
    );
    assert_error(&r, 400, "invalid_request");
    assert_eq!(broker.pb_json(&["locks"])["locks"], json!([]));

    let r = curl(
        &[
            &[
                "-X",
                "POST",
                &url(&broker, "/msg/bad%20channel"),
                "-d",
                "{}",
            ][..],
            &json_h,
        ]
        .concat(),
    );
    assert_error(&r, 400, "invalid_name");
    let r = curl(&["-X", "POST", &url(&broker, "/msg/empty")]);
    assert_error(&r, 400, "invalid_request");
    let big = format!("{{\"blob\":\"{}\"}}", "x".repeat(20 * 1024));
    let r = curl(
        &[
            &["-X", "POST", &url(&broker, "/msg/big"), "-d", &big][..],
            &json_h,
        ]
        .concat(),
    );
    assert_error(&r, 413, "too_large");
    let r = curl(&[
        "-X",
        "POST",
        &url(&broker, "/msg/plain"),
        "-H",
        "Content-Type: text/plain",
        "-d",
        "{}",
    ]);
    assert_error(&r, 415, "unsupported_media_type");
    assert_eq!(
        user_channels(&curl(&[&url(&broker, "/channels")]).1),
        Vec::<String>::new()
    );

    let r = curl(&["-X", "PUT", &url(&broker, "/agents/ghost/heartbeat")]);
    assert_error(&r, 404, "not_found");
    let r = curl(&["-X", "DELETE", &url(&broker, "/agents/ghost")]);
    assert_error(&r, 404, "not_found");
    let r = curl(&[&url(&broker, "/agents/ghost")]);
    assert_error(&r, 404, "not_found");
    let r = curl(
        &[
            &["-X", "POST", &url(&broker, "/agents/a%20b"), "-d", "{}"][..],
            &json_h,
        ]
        .concat(),
    );
    assert_error(&r, 400, "invalid_name");
    assert_eq!(curl(&[&url(&broker, "/agents")]).1["count"], 0);

    let r = curl(&[&url(&broker, "/activity?since=yesterday")]);
    assert_error(&r, 400, "invalid_duration");
    let r = curl(&[&url(&broker, "/activity?nope=1")]);
    assert_error(&r, 400, "invalid_request");
    let r = curl(&[&url(&broker, "/subscribe/bad%20pattern")]);
    assert_error(&r, 400, "invalid_name");
    let r = curl(&[&url(&broker, "/subscribe/x"), "-H", "Last-Event-ID: soon"]);
    assert_error(&r, 400, "invalid_request");
}

#[test]
fn another_users_request_must_name_a_lock_owner() {
    // Root only: another uid reaches the HTTP API with the token, and the
    // broker cannot give its process a lock (it is not the broker user's).
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root, to run curl as a second user (CI runs as root)"
    );
    let broker = Broker::start();
    let token = broker.pb_ok(&["token"]).trim().to_string();
    let auth = format!("Authorization: Bearer {token}");
    let run = |args: &[&str]| curl_json(Some((65534, 65534)), 10, args);
    let r = run(&["-X", "POST", &url(&broker, "/locks/shared"), "-H", &auth]);
    assert_error(&r, 400, "invalid_request");
    assert!(
        r.1["error"].as_str().unwrap().contains("name an owner"),
        "{r:?}"
    );
    let (s, v) = run(&[
        "-X",
        "POST",
        &url(&broker, "/locks/shared"),
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"owner": "ci"}"#,
    ]);
    assert_eq!(s, 200, "{v}");
}

#[test]
fn a_subscriber_that_does_not_read_is_dropped_with_an_end_event() {
    // A small core queue, so that a reader that stops is soon behind.
    let broker = Broker::start_with(&[("PB_SUB_QUEUE", "8")]);
    let port = broker.http_port().unwrap();
    let mut slow = Sse::open(port, "/subscribe/flood", None);
    assert_eq!(slow.next().name.as_deref(), Some("connected"));
    // More than the socket buffers, the HTTP buffer and the core's queue
    // hold together; publishing never waits for the subscriber.
    let blob = "x".repeat(8 * 1024);
    let mut client = broker.client();
    for i in 0..2000 {
        client
            .call(pb_proto::Op::Publish {
                channel: "flood".into(),
                data: json!({"i": i, "blob": blob}),
                agent: None,
            })
            .expect("publish");
    }
    // Now read: what was queued, then the end, naming `lagged`.
    let mut last = None;
    let mut end = None;
    for _ in 0..2001 {
        let e = slow.next();
        if e.name.as_deref() == Some("end") {
            end = Some(e);
            break;
        }
        last = e.id;
    }
    let end = end.expect("an end event before 2000 messages");
    let v: Value = serde_json::from_str(&end.data).unwrap();
    assert_eq!(v["code"], "lagged", "{v}");
    assert_eq!(
        end.id, last,
        "the end event's id is the last message delivered"
    );
    // The broker goes on; a new subscriber resumes from there.
    let mut again = Sse::open(port, "/subscribe/flood", last);
    assert_eq!(again.next().name.as_deref(), Some("connected"));
    let next: Value = serde_json::from_str(&again.next().data).unwrap();
    assert!(next["id"].as_u64() > last, "{next}");
}

#[test]
fn a_waiting_http_request_that_goes_away_leaves_the_queue() {
    let broker = Broker::start();
    broker.pb_ok(&["lock", "q", "--owner", "first"]);
    let mut waiter = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-X", "POST"])
        .arg(url(&broker, "/locks/q"))
        .args(["-H", "Content-Type: application/json", "-d"])
        .arg(r#"{"owner": "gone", "timeout": 60000}"#)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    let queued = wait_until(Duration::from_secs(20), || {
        (broker.pb_json(&["locks", "q"])["locks"][0]["waiters"] == 1).then_some(())
    });
    assert!(queued.is_some(), "the HTTP request never queued");
    waiter.kill().unwrap();
    waiter.wait().unwrap();
    let left = wait_until(Duration::from_secs(20), || {
        (broker.pb_json(&["locks", "q"])["locks"][0]["waiters"] == 0).then_some(())
    });
    assert!(left.is_some(), "the closed request still waits");
    // So the release does not hand the lock to nobody.
    broker.pb_ok(&["unlock", "q", "--owner", "first"]);
    assert_eq!(broker.pb_json(&["locks"])["locks"], json!([]));
}

#[test]
fn another_users_agent_cannot_be_kept_alive_or_removed_over_http() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root, to run the broker as a second user (CI runs as root)"
    );
    // The broker runs as nobody; curl as nobody is the broker's user, and
    // this test's curl (root) is another user, served as itself.
    let broker = Broker::start_as(65534, 65534, &[]);
    let as_nobody = |args: &[&str]| pb_tests::curl_json(Some((65534, 65534)), 10, args);
    let (s, v) = as_nobody(&[
        "-X",
        "POST",
        &url(&broker, "/agents/nobodys"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"name": "theirs"}"#,
    ]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["agent"]["uid"], 65534);
    let seen = v["agent"]["last_seen_ms"].clone();
    let r = curl(&["-X", "PUT", &url(&broker, "/agents/nobodys/heartbeat")]);
    assert_error(&r, 403, "forbidden");
    let r = curl(&["-X", "DELETE", &url(&broker, "/agents/nobodys")]);
    assert_error(&r, 403, "forbidden");
    let r = curl(&[
        "-X",
        "POST",
        &url(&broker, "/claim/mine:api"),
        "-H",
        "X-Agent-Id: nobodys",
    ]);
    assert_error(&r, 403, "forbidden");
    // Nothing changed.
    let (s, v) = curl(&[&url(&broker, "/agents/nobodys")]);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["agent"]["last_seen_ms"], seen);
    assert_eq!(v["agent"]["services"], json!([]));
    let (s, v) = as_nobody(&["-X", "PUT", &url(&broker, "/agents/nobodys/heartbeat")]);
    assert_eq!(s, 200, "its own user may: {v}");
}

#[test]
fn a_port_daddy_style_sdk_client_coordinates_over_http() {
    let broker = Broker::start();
    let v = pb_tests::node_json("port_daddy_coord.mjs", &[&broker.http_url(), "sdk-1"]);
    assert_eq!(v["registered"]["agent"]["id"], "sdk-1");
    assert_eq!(v["heartbeat"]["agent"]["id"], "sdk-1");
    // X-Agent-Id made the agent the lock's owner; X-Pid naming the client
    // itself changed nothing.
    assert_eq!(v["lock"]["owner"], "sdk-1");
    assert_eq!(v["lock"]["lock"]["ownerType"], "agent");
    assert_eq!(v["connected"]["event"], "connected");
    let received: Value = serde_json::from_str(v["received"]["data"].as_str().unwrap()).unwrap();
    assert_eq!(received["channel"], "build:sdk-1");
    assert_eq!(received["data"], json!({"status": "ready", "port": 3100}));
    assert_eq!(received["from"]["agent"], "sdk-1", "{received}");
    assert_eq!(v["received"]["id"], v["published"]["id"]);
    assert_eq!(v["unlocked"]["released"], true);
    assert_eq!(v["unregistered"]["unregistered"], true);
    // And the broker's log says who did it.
    let (_, log) = curl(&[&url(&broker, "/activity?agent=sdk-1")]);
    let actions: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert!(
        actions.contains(&"lock.acquire") && actions.contains(&"message.publish"),
        "{actions:?}"
    );
}

#[test]
fn a_bare_lock_ttl_means_the_same_over_http_and_on_the_cli() {
    let broker = Broker::start();
    let lock_over_http = |name: &str, body: &str| {
        curl(&[
            "-X",
            "POST",
            &url(&broker, &format!("/locks/{name}")),
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ])
    };
    // Milliseconds, as Port Daddy's `ttl` and `pb lock --ttl` both mean a
    // bare number; a number in a string and a JSON number alike.
    for (name, body) in [("a", r#"{"ttl": "30000"}"#), ("b", r#"{"ttl": 30000}"#)] {
        let (s, v) = lock_over_http(name, body);
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["lock"]["ttl"], 30000, "{body}: {v}");
    }
    broker.pb_ok(&["lock", "c", "--owner", "cli", "--ttl", "30000"]);
    let locks = broker.pb_json(&["locks"]);
    let ttls: Vec<&Value> = locks["locks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["ttl_ms"])
        .collect();
    assert_eq!(ttls, [&json!(30000); 3], "{locks}");
    // And a unit means the same everywhere.
    let (s, v) = lock_over_http("d", r#"{"ttl": "30s"}"#);
    assert_eq!((s, &v["lock"]["ttl"]), (200, &json!(30000)), "{v}");
    broker.pb_ok(&["lock", "e", "--owner", "cli", "--ttl", "30s"]);
    assert_eq!(broker.pb_json(&["locks", "e"])["locks"][0]["ttl_ms"], 30000);
    // A malformed one is refused the same way over both.
    let (s, v) = lock_over_http("f", r#"{"ttl": "30 parsecs"}"#);
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("invalid_duration")),
        "{v}"
    );
    let out = broker.pb(&["-j", "lock", "f", "--ttl", "30 parsecs"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

#[test]
fn a_pid_hint_of_zero_or_garbage_is_refused_by_every_route_alike() {
    let broker = Broker::start();
    for (method, path, body) in [
        ("POST", "/claim/app:web", "{}"),
        ("POST", "/locks/db", "{}"),
        ("POST", "/agents/a1", "{}"),
    ] {
        for pid in ["0", "-4", "4294967296", "x"] {
            let r = curl(&[
                "-X",
                method,
                &url(&broker, path),
                "-H",
                "Content-Type: application/json",
                "-H",
                &format!("X-PID: {pid}"),
                "-d",
                body,
            ]);
            assert_error(&r, 400, "invalid_request");
        }
    }
    // And nothing was made.
    assert_eq!(broker.pb_json(&["list"])["services"], json!([]));
    assert_eq!(broker.pb_json(&["locks"])["locks"], json!([]));
    assert_eq!(broker.pb_json(&["agent", "ls"])["agents"], json!([]));
}

#[test]
fn work_sessions_over_http_claim_files_hand_over_and_refuse_bad_input() {
    let broker = Broker::start();
    let base = broker.http_url();
    let post = |path: &str, body: Value, extra: &[&str]| {
        let url = format!("{base}{path}");
        let body = body.to_string();
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body,
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args)
    };
    let get = |path: &str| curl(&[&format!("{base}{path}")]);
    // A's session lives with a process of ours (X-PID).
    let mut owner = pb_tests::Proc(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = owner.pid().to_string();
    let (st, a) = post(
        "/sessions",
        json!({ "purpose": "auth", "dir": "/srv/app", "files": ["src/auth"], "note": "begun" }),
        &["-H", &format!("X-PID: {pid}")],
    );
    assert_eq!(st, 201, "{a}");
    let s = a["session"]["id"].as_str().unwrap().to_string();
    assert_eq!(a["session"]["pid"], owner.pid());
    let (st, b) = post(
        "/sessions",
        json!({ "purpose": "docs", "dir": "/srv/app" }),
        &[],
    );
    assert_eq!(st, 201, "{b}");
    let other = b["session"]["id"].as_str().unwrap().to_string();
    // A conflict is a 409 with the holder; nothing of it is claimed.
    let (st, clash) = post(
        &format!("/sessions/{other}/files"),
        json!({ "paths": ["README.md", "src/auth/jwt.rs"] }),
        &[],
    );
    assert_eq!((st, clash["code"].as_str()), (409, Some("held")), "{clash}");
    assert_eq!(clash["details"]["conflicts"][0]["session"], s.as_str());
    let (_, who) = get("/files?path=/srv/app/README.md");
    assert_eq!(who["claims"], json!([]), "{who}");
    let (st, _) = post(
        &format!("/sessions/{other}/files"),
        json!({ "paths": ["README.md"] }),
        &[],
    );
    assert_eq!(st, 200);
    let (_, who) = get("/files?path=/srv/app/src/auth/jwt.rs");
    assert_eq!(who["claims"][0]["session"], s.as_str(), "{who}");
    // Its owner dies: abandoned; another takes it over, with its notes.
    owner.signal(libc::SIGKILL);
    owner.wait_for(Duration::from_secs(5));
    let gone = wait_until(Duration::from_secs(10), || {
        let (_, v) = get(&format!("/sessions/{s}"));
        (v["session"]["state"] == "abandoned").then_some(())
    });
    assert!(gone.is_some());
    let (st, closed) = post(&format!("/sessions/{s}/notes"), json!({ "text": "x" }), &[]);
    assert_eq!(
        (st, closed["code"].as_str()),
        (409, Some("closed")),
        "{closed}"
    );
    let (st, taken) = post(&format!("/sessions/{s}/takeover"), json!({}), &[]);
    assert_eq!(st, 200, "{taken}");
    assert_eq!(taken["session"]["state"], "active");
    let (st, _) = post(
        &format!("/sessions/{s}/notes"),
        json!({ "text": "mine now" }),
        &[],
    );
    assert_eq!(st, 201);
    let (_, notes) = get(&format!("/sessions/{s}/notes"));
    let kinds: Vec<&str> = notes["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["note", "handoff", "note"], "{notes}");
    let url = format!("{base}/sessions/{s}/phase");
    let (st, ph) = curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"phase":"review"}"#,
        &url,
    ]);
    assert_eq!(
        (st, ph["session"]["phase"].as_str()),
        (200, Some("review")),
        "{ph}"
    );
    let (st, ended) = post(
        &format!("/sessions/{s}/end"),
        json!({ "note": "done" }),
        &[],
    );
    assert_eq!(st, 200, "{ended}");
    assert_eq!(ended["released"], json!(["/srv/app/src/auth"]));
    // Bad input: a clear code, and nothing changes.
    for (path, body, status, code) in [
        (
            "/sessions",
            json!({ "dir": "/srv/app" }),
            400,
            "invalid_request",
        ),
        (
            "/sessions",
            json!({ "purpose": "x", "dir": "relative" }),
            400,
            "invalid_path",
        ),
        (
            "/sessions",
            json!({ "purpose": "x", "extra": 1 }),
            400,
            "invalid_request",
        ),
        (
            "/sessions",
            json!({ "purpose": "x", "phase": "no spaces" }),
            400,
            "invalid_name",
        ),
        (
            &format!("/sessions/{other}/files") as &str,
            json!({ "paths": ["/etc/passwd"] }),
            400,
            "invalid_path",
        ),
        (&format!("/sessions/{s}/end"), json!({}), 409, "closed"),
        (
            "/sessions/s999/notes",
            json!({ "text": "x" }),
            404,
            "not_found",
        ),
    ] {
        let (st, v) = post(path, body.clone(), &[]);
        assert_eq!(
            (st, v["code"].as_str()),
            (status, Some(code)),
            "{path} {body}: {v}"
        );
    }
    let (_, listed) = get("/sessions?state=all");
    assert_eq!(listed["sessions"].as_array().unwrap().len(), 2, "{listed}");
    let (st, bad) = get("/sessions?state=sideways");
    assert_eq!((st, bad["code"].as_str()), (400, Some("invalid_request")));
}

/// Port Daddy's SDK sends fields pb has no field of its own for: its
/// agent registration's `identity` and `purpose`, its release's
/// `expiredOnly`; and its CLI names the agent in PORT_DADDY_AGENT.
#[test]
fn port_daddy_sdk_fields_and_its_agent_variable_are_accepted() {
    let broker = Broker::start();
    let json_post = |method: &str, path: &str, body: Value| {
        curl(&[
            "-X",
            method,
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            &url(&broker, path),
        ])
    };
    let (code, v) = json_post(
        "POST",
        "/agents",
        json!({"id": "sdk-1", "identity": "claude-code@host", "purpose": "split the auth module"}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["agent"]["name"], "claude-code@host");
    assert_eq!(v["agent"]["metadata"]["purpose"], "split the auth module");
    // Beside metadata of its own, purpose joins it; other metadata is refused.
    let (code, v) = json_post(
        "POST",
        "/agents",
        json!({"id": "sdk-2", "name": "two", "identity": "x", "purpose": "p", "metadata": {"k": 1}}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["agent"]["name"], "two", "name wins over identity");
    assert_eq!(v["agent"]["metadata"], json!({"k": 1, "purpose": "p"}));
    let r = json_post(
        "POST",
        "/agents",
        json!({"id": "sdk-3", "purpose": "p", "metadata": [1]}),
    );
    assert_error(&r, 400, "invalid_metadata");

    // expiredOnly: pb ends leases at their expiry, so there is never one.
    broker.claim("sdk:api", &["--keep"]);
    let (code, v) = json_post(
        "DELETE",
        "/release",
        json!({"id": "sdk:api", "expiredOnly": true}),
    );
    assert_eq!((code, &v["released"]), (200, &json!(0)), "{v}");
    assert!(
        broker.leases().iter().any(|(id, _)| id == "sdk:api"),
        "nothing released"
    );

    // PORT_DADDY_AGENT names the agent for pb's CLI when PB_AGENT does not.
    let out = broker
        .cmd()
        .args(["-j", "claim", "sdk:web"])
        .env_remove("PB_AGENT")
        .env("PORT_DADDY_AGENT", "sdk-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["lease"]["agent"], "sdk-1", "{v}");
}
