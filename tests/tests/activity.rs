//! The activity log: every operation recorded with time, action, target,
//! the actor the kernel names and details; filters; `--follow` streams new
//! entries; retention bounds it by count.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use pb_tests::*;
use serde_json::Value;

#[test]
fn every_operation_is_recorded_with_its_real_actor() {
    let broker = Broker::start();
    let port = broker.claim("act:web", &["--expires", "1s"]);
    broker.pb_ok(&["lock", "act-lock", "--owner", "me"]);
    broker.pb_ok(&["unlock", "act-lock", "--owner", "me"]);
    broker.pb_ok(&["pub", "act:chan", "hello"]);
    broker.pb_ok(&["agent", "register", "act-agent"]);
    broker.pb_ok(&["agent", "unregister", "act-agent"]);
    wait_until(Duration::from_secs(10), || {
        broker.leases().is_empty().then_some(())
    })
    .expect("the lease expires");
    let all = broker.activity(&["-n", "1000"]);
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    for want in [
        "daemon.start",
        "service.claim",
        "lock.acquire",
        "lock.release",
        "message.publish",
        "agent.register",
        "agent.unregister",
        "service.expire",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    assert!(all
        .windows(2)
        .all(|w| w[0]["id"].as_u64() < w[1]["id"].as_u64()));
    let claim = &broker.activity(&["--action", "service.claim", "--target", "act:web"])[0];
    assert_eq!(claim["details"]["port"], port);
    assert!(claim["actor"]["pid"].as_u64().is_some());
    assert_eq!(claim["actor"]["uid"], unsafe { libc::geteuid() });
    assert!(claim["actor"]["command"]
        .as_str()
        .unwrap()
        .contains("claim act:web"));
    // The broker's own actions have no actor.
    let expired = &broker.activity(&["--action", "service.expire"])[0];
    assert!(expired["actor"].is_null());
    // Prefix filters, limits, since.
    let locks = broker.activity(&["--action", "lock.*"]);
    assert_eq!(locks.len(), 2);
    assert_eq!(broker.activity(&["-n", "3"]).len(), 3);
    assert!(broker.activity(&["--since", "1h"]).len() >= 8);
    assert_eq!(
        broker.pb(&["log", "--action", "DROP TABLE"]).status.code(),
        Some(2)
    );
    assert_eq!(broker.pb(&["log", "-n", "0"]).status.code(), Some(2));
    assert_eq!(broker.pb(&["log", "-n", "100000"]).status.code(), Some(2));
}

#[test]
fn follow_streams_new_entries_and_retention_bounds_the_log() {
    let broker = Broker::start_with(&[("PB_ACTIVITY_RETAIN", "50")]);
    let mut follow = Proc(
        broker
            .cmd()
            .args(["-j", "log", "-f", "-n", "1", "--action", "service.*"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(follow.0.stdout.take().unwrap());
    // Claims until the follower shows one (it may start after the first).
    let mut line = String::new();
    broker.claim("f:0", &[]);
    out.read_line(&mut line).unwrap();
    let first: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(first["action"], "service.claim");
    for i in 1..=5 {
        broker.claim(&format!("f:{i}"), &[]);
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        line.clear();
        out.read_line(&mut line).unwrap();
        let e: Value = serde_json::from_str(&line).unwrap();
        if e["target"] != "f:0" {
            seen.push(e["target"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(seen, ["f:1", "f:2", "f:3", "f:4", "f:5"]);
    drop(follow);
    // Retention: 50 entries at most once a trim ran (every 10 s).
    for i in 0..80 {
        broker.pb_ok(&["pub", "noise", &i.to_string()]);
    }
    let trimmed = wait_until(Duration::from_secs(30), || {
        (broker.activity(&["-n", "10000"]).len() <= 52).then_some(())
    });
    assert!(trimmed.is_some(), "the log was not trimmed to its limit");
}
