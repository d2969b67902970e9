//! `pb wait`: returns once a service accepts connections (a server that
//! starts late, one claimed only after the wait began, an HTTP health
//! path), and times out cleanly, with a clear error, for one that never
//! starts.

use std::process::{Command, Stdio};
use std::time::Duration;

use pb_tests::*;
use serde_json::Value;

/// python3's http.server on `port`, after `delay` seconds, until dropped.
fn late_server(port: u16, delay: &str) -> Proc {
    let script = format!("sleep {delay}; exec python3 -m http.server {port} --bind 127.0.0.1");
    Proc(
        Command::new("sh")
            .args(["-c", &script])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn wait_returns_for_a_server_that_starts_two_seconds_late() {
    let broker = Broker::start();
    let port = broker.claim("late:web", &[]);
    let _server = late_server(port, "2");
    let out = broker.pb(&["-j", "wait", "late:web", "--timeout", "30s", "--http", "/"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["services"][0]["id"], "late:web");
    assert_eq!(v["services"][0]["port"], port);
    // It really accepts now.
    assert!(curl("-4", port).is_some());
}

#[test]
fn wait_follows_a_claim_made_after_it_began() {
    let broker = Broker::start();
    let mut waiting = Proc(
        broker
            .cmd()
            .args(["wait", "later:api", "first:api", "--timeout", "30s"])
            .spawn()
            .unwrap(),
    );
    // The wait has connected (its connection and this status query's own)
    // before anything is claimed; it asks at once, on that connection.
    let connected = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["status"])["connections"].as_u64() >= Some(2)).then_some(())
    });
    assert!(connected.is_some(), "pb wait connected");
    let p1 = broker.claim("first:api", &[]);
    let p2 = broker.claim("later:api", &[]);
    let _s1 = late_server(p1, "0");
    let _s2 = late_server(p2, "1");
    let st = waiting
        .wait_for(Duration::from_secs(40))
        .expect("wait ends");
    assert!(st.success());
}

#[test]
fn wait_times_out_cleanly_for_a_server_that_never_starts() {
    let broker = Broker::start();
    broker.claim("never:web", &[]);
    let out = broker.pb(&["-j", "wait", "never:web", "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(7));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], "timeout");
    assert_eq!(e["details"]["state"], "not accepting connections");
    let out = broker.pb(&["-j", "wait", "unclaimed", "--timeout", "500ms"]);
    assert_eq!(out.status.code(), Some(7));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["details"]["state"], "not claimed");
    // A health path that fails is not ready either.
    let port = broker.claim("sick:web", &[]);
    let _server = late_server(port, "0");
    wait_until(Duration::from_secs(10), || curl("-4", port)).expect("server up");
    let out = broker.pb(&[
        "wait",
        "sick:web",
        "--timeout",
        "1s",
        "--http",
        "/no-such-page",
    ]);
    assert_eq!(out.status.code(), Some(7));
    // Bad input.
    assert_eq!(broker.pb(&["wait", "a b"]).status.code(), Some(2));
    assert_eq!(
        broker.pb(&["wait", "x", "--timeout", "2d"]).status.code(),
        Some(2)
    );
    assert_eq!(
        broker
            .pb(&["wait", "x", "--http", "no-slash"])
            .status
            .code(),
        Some(2)
    );
    // The broker stays responsive throughout.
    broker.pb_ok(&["status"]);
}
