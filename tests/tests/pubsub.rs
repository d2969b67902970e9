//! Pub/sub: pattern subscriptions get exactly their channels (through the
//! independent python client's streams); a subscriber that resumes from the
//! last id it saw loses nothing; a subscriber that never reads is dropped
//! with a notice and does not slow the others; the broker's own events
//! arrive on `pb:*`; bad input.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Command, Stdio};
use std::time::Duration;

use pb_proto::client::ClientError;
use pb_proto::{ErrorCode, Op};
use pb_tests::*;
use serde_json::{json, Value};

/// Starts tests/clients/subscriber.py, waits for its subscription.
fn subscriber(broker: &Broker, count: usize, args: &[&str]) -> (Proc, BufReader<ChildStdout>) {
    let mut child = Command::new("python3")
        .arg(tests_dir().join("clients/subscriber.py"))
        .arg(broker.socket())
        .arg(count.to_string())
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.contains("patterns"), "no subscription: {first:?}");
    (Proc(child), out)
}

/// Every line the subscriber prints until it exits (bounded by its own
/// quiet timeout and `wait_for`).
fn collect(mut p: Proc, out: BufReader<ChildStdout>) -> Vec<Value> {
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let st = p
        .wait_for(Duration::from_secs(60))
        .expect("subscriber ends");
    assert!(st.success());
    lines
}

fn publish(c: &mut pb_proto::Client, channel: &str, data: Value) -> u64 {
    let (v, _) = c
        .call(Op::Publish {
            channel: channel.into(),
            data,
            agent: None,
        })
        .expect("publish");
    v["id"].as_u64().unwrap()
}

fn code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Wire(w) => w.code,
        other => panic!("not a broker error: {other}"),
    }
}

#[test]
fn pattern_subscriptions_receive_exactly_their_channels() {
    let broker = Broker::start();
    let channels = [
        "build:api",
        "build:web",
        "build:api:x",
        "test:api",
        "errors",
        "errors:db",
        "other",
    ];
    let patterns = ["build:*", "build:api", "*:api", "errors"];
    let matches = |p: &str, c: &str| -> bool {
        let ps: Vec<&str> = p.split(':').collect();
        let cs: Vec<&str> = c.split(':').collect();
        let open = ps.last() == Some(&"*");
        (cs.len() == ps.len() || (open && cs.len() > ps.len()))
            && ps.iter().zip(&cs).all(|(a, b)| *a == "*" || a == b)
    };
    let rounds = 5;
    let subs: Vec<_> = patterns
        .iter()
        .map(|p| {
            let n = channels.iter().filter(|c| matches(p, c)).count() * rounds;
            (*p, n, subscriber(&broker, n, &[p]))
        })
        .collect();
    let mut c = broker.client();
    let mut sent = Vec::new();
    for r in 0..rounds {
        for ch in channels {
            let id = publish(&mut c, ch, json!({"round": r, "channel": ch}));
            sent.push((id, ch));
        }
    }
    for (p, n, (proc_, out)) in subs {
        let got = collect(proc_, out);
        let want: Vec<u64> = sent
            .iter()
            .filter(|(_, ch)| matches(p, ch))
            .map(|(id, _)| *id)
            .collect();
        let ids: Vec<u64> = got.iter().map(|m| m["id"].as_u64().unwrap()).collect();
        assert_eq!(ids.len(), n, "{p}: {got:?}");
        assert_eq!(ids, want, "{p} got the wrong messages or order");
        for m in &got {
            assert_eq!(m["data"]["channel"], m["channel"]);
            assert_eq!(m["from"]["pid"], std::process::id());
        }
    }
}

#[test]
fn resuming_from_the_last_id_loses_nothing_within_retention() {
    let broker = Broker::start();
    let mut c = broker.client();
    // Subscribe, take 10 of 30, disconnect; 30 more while away; resume.
    let (p, out) = subscriber(&broker, 10, &["jobs:*"]);
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(publish(&mut c, "jobs:a", json!(i)));
    }
    let first = collect(p, out);
    assert!(first.len() >= 10);
    let first = &first[..10];
    let last = first[9]["id"].as_u64().unwrap();
    for i in 30..60 {
        ids.push(publish(
            &mut c,
            if i % 2 == 0 { "jobs:a" } else { "jobs:b" },
            json!(i),
        ));
    }
    let (p, out) = subscriber(&broker, 50, &["--since", &last.to_string(), "jobs:*"]);
    let rest = collect(p, out);
    let mut seen: Vec<u64> = first.iter().map(|m| m["id"].as_u64().unwrap()).collect();
    seen.extend(rest.iter().map(|m| m["id"].as_u64().unwrap()));
    assert_eq!(seen, ids, "messages lost or repeated across the resume");
    // History agrees.
    let (h, _) = c
        .call(Op::History {
            pattern: "jobs:*".into(),
            since_id: Some(last),
            limit: Some(1000),
        })
        .unwrap();
    assert_eq!(h["messages"].as_array().unwrap().len(), 50);
}

#[test]
fn a_subscriber_that_never_reads_is_dropped_without_slowing_a_fast_one() {
    let broker = Broker::start_with(&[("PB_SUB_QUEUE", "1024")]);
    // The slow one subscribes and then never reads.
    let mut slow = broker.client();
    slow.open_stream(Op::Subscribe {
        patterns: vec!["firehose".into()],
        since_id: None,
    })
    .unwrap();
    const N: usize = 5000;
    let mut fast = broker.client();
    fast.open_stream(Op::Subscribe {
        patterns: vec!["firehose".into()],
        since_id: None,
    })
    .unwrap();
    fast.stream()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut ids = Vec::with_capacity(N);
        while ids.len() < N {
            match fast.next_item() {
                Ok(Some(m)) => ids.push(m["id"].as_u64().unwrap()),
                other => panic!("the fast subscriber's stream broke: {other:?}"),
            }
        }
        ids
    });
    let mut c = broker.client();
    let payload = json!({"pad": "x".repeat(200)});
    let mut sent = Vec::with_capacity(N);
    for _ in 0..N {
        sent.push(publish(&mut c, "firehose", payload.clone()));
    }
    let got = reader.join().unwrap();
    assert_eq!(got, sent, "the fast subscriber missed messages");
    // The slow one gets what was queued for it, then the notice.
    slow.stream()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut items = 0;
    let end = loop {
        match slow.next_item() {
            Ok(Some(_)) => items += 1,
            Ok(None) => panic!("the stream ended without a notice"),
            Err(e) => break e,
        }
        assert!(items <= N, "unbounded stream");
    };
    let ClientError::Wire(w) = end else {
        panic!("not a notice: {end}")
    };
    assert_eq!(w.code, ErrorCode::Lagged);
    assert!(items < N, "a never-reading subscriber got everything");
    assert!(w.details.unwrap()["last_id"].as_u64().is_some());
    // The broker carries on.
    broker.pb_ok(&["pub", "firehose", "still here"]);
}

#[test]
fn broker_events_arrive_on_pb_channels_and_the_cli_streams_json_lines() {
    let broker = Broker::start();
    let mut sub = Proc(
        broker
            .cmd()
            .args(["sub", "-j", "pb:*", "news"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut out = BufReader::new(sub.0.stdout.take().unwrap());
    // Once the subscription is in place (the channel counts it), publish.
    broker.pb_ok(&["pub", "news", "first"]);
    let counted = wait_until(Duration::from_secs(10), || {
        let v = broker.pb_json(&["channels"]);
        v["channels"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["channel"] == "news" && c["subscribers"] == 1)
            .then_some(())
    });
    assert!(counted.is_some(), "the subscription never appeared");
    broker.pb_ok(&["pub", "news", "{\"hello\":1}"]);
    let mut line = String::new();
    // "first" arrives too if the subscription was quicker than it.
    let mut m: Value = json!(null);
    for _ in 0..2 {
        line.clear();
        out.read_line(&mut line).unwrap();
        m = serde_json::from_str(&line).unwrap();
        if m["_pb"]["data"] != "first" {
            break;
        }
    }
    // The payload's own fields on top, pb's under `_pb`.
    assert_eq!(m["hello"], 1, "{m}");
    assert_eq!(m["_pb"]["channel"], "news", "{m}");
    assert!(m["_pb"]["id"].as_u64().is_some(), "{m}");
    let port = broker.claim("evt:api", &[]);
    line.clear();
    out.read_line(&mut line).unwrap();
    let m: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(m["_pb"]["channel"], "pb:service.claim");
    assert_eq!(m["target"], "evt:api");
    assert_eq!(m["details"]["port"], port);
    drop(sub);
    let v = broker.pb_json(&["channels"]);
    let names: Vec<&str> = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"news") && names.contains(&"pb:service.claim"));
    broker.pb_ok(&["channels", "--clear", "news"]);
    assert!(broker.pb_json_lines(&["history", "news"]).is_empty());
}

#[test]
fn bad_pubsub_requests_get_clear_errors_and_change_nothing() {
    let broker = Broker::start_with(&[("PB_MAX_SUBSCRIBERS", "2"), ("PB_MAX_MESSAGE", "1024")]);
    broker.pb_ok(&["pub", "keep", "1"]);
    let before = broker.pb_json(&["channels"]);
    let mut c = broker.client();
    let mut publish_err = |channel: &str, data: Value| {
        code(
            c.call(Op::Publish {
                channel: channel.into(),
                data,
                agent: None,
            })
            .unwrap_err(),
        )
    };
    for bad in ["", "a b", "a::b", "x:*", "é"] {
        assert_eq!(
            publish_err(bad, json!(1)),
            ErrorCode::InvalidName,
            "{bad:?}"
        );
    }
    assert_eq!(publish_err("pb:fake", json!(1)), ErrorCode::Forbidden);
    // `_pb` is pb's key on `pb sub --json` lines; a payload may not take it
    // (below the top level it is the payload's).
    assert_eq!(
        publish_err("keep", json!({"_pb": 1, "status": "x"})),
        ErrorCode::InvalidRequest
    );
    assert_eq!(
        publish_err("big", json!("x".repeat(2000))),
        ErrorCode::TooLarge
    );
    let out = broker.pb(&["-j", "pub", "keep", "1", "--agent", "ghost"]);
    assert_eq!(out.status.code(), Some(4), "unknown agent");
    // Too many subscribers: two fit, a third is refused.
    let mut subs: Vec<pb_proto::Client> = Vec::new();
    for _ in 0..2 {
        let mut s = broker.client();
        s.open_stream(Op::Subscribe {
            patterns: vec!["keep".into()],
            since_id: None,
        })
        .unwrap();
        subs.push(s);
    }
    let mut third = broker.client();
    let e = third
        .open_stream(Op::Subscribe {
            patterns: vec!["keep".into()],
            since_id: None,
        })
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::Limit);
    let e = third
        .open_stream(Op::Subscribe {
            patterns: vec![],
            since_id: None,
        })
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::InvalidRequest);
    drop(subs);
    // Subscriptions whose clients left no longer count.
    let room = wait_until(Duration::from_secs(10), || {
        let mut s = broker.client();
        s.open_stream(Op::Subscribe {
            patterns: vec!["keep".into()],
            since_id: None,
        })
        .ok()
    });
    assert!(room.is_some());
    drop(room);
    let e = c_history(&broker, "a b");
    assert_eq!(e, ErrorCode::InvalidName);
    assert_eq!(
        broker.pb(&["channels", "--clear", "nothing"]).status.code(),
        Some(4)
    );
    // Nothing changed (once the last subscriber's leaving is seen).
    let same = wait_until(Duration::from_secs(10), || {
        (broker.pb_json(&["channels"]) == before).then_some(())
    });
    assert!(
        same.is_some(),
        "{before} became {}",
        broker.pb_json(&["channels"])
    );
}

fn c_history(broker: &Broker, pattern: &str) -> ErrorCode {
    code(
        broker
            .client()
            .call(Op::History {
                pattern: pattern.into(),
                since_id: None,
                limit: None,
            })
            .unwrap_err(),
    )
}

#[test]
fn message_ids_keep_increasing_across_a_restart() {
    let mut broker = Broker::start();
    let mut c = broker.client();
    let before = publish(&mut c, "ids", json!(1));
    drop(c);
    broker.restart();
    let mut c = broker.client();
    let after = publish(&mut c, "ids", json!(2));
    assert!(after > before, "{before} then {after}");
    // Retained messages are in memory: the resume window starts anew.
    let (h, _) = c
        .call(Op::History {
            pattern: "ids".into(),
            since_id: None,
            limit: None,
        })
        .unwrap();
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
}
