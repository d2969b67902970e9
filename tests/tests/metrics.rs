//! `GET /metrics` and `pb metrics` against real brokers, read by a real
//! Prometheus parser: the prometheus_client package's OpenMetrics parser
//! (strict: it refuses what the format forbids, a missing `# EOF` too),
//! from PyPI by tests/realapps/install.sh. The counters move by exactly
//! the claims, releases and reclaims a test makes, each reclaim is one
//! death-to-free observation, the gauges say the state, the HTTP counter's
//! labels are route templates (no service id), and another user needs
//! the token, as on every route.

use std::process::{Command, Stdio};
use std::time::Duration;

use pb_tests::{
    command_as, curl_status_text, other_user, tests_dir, wait_until, Broker, PortBlock, Proc,
    WebhookReceiver,
};
use serde_json::Value;

/// `text` through tests/clients/metrics.py: `{family: {type, samples}}`.
fn parse(text: &str) -> Value {
    use std::io::Write;
    let python = tests_dir().join("realapps/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tests/realapps/install.sh` (the README's test command does)",
        python.display()
    );
    let mut child = Command::new(python)
        .arg(tests_dir().join("clients/metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// curl's body and status for GET /metrics, as `user` (None: this user)
/// with `headers`.
fn curl_metrics(broker: &Broker, user: Option<(u32, u32)>, headers: &[&str]) -> (u16, String) {
    let url = format!("http://127.0.0.1:{}/metrics", broker.http_port().unwrap());
    let mut cmd = command_as(user, "curl");
    cmd.args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    curl_status_text(&cmd.arg(&url).output().expect("curl").stdout)
}

fn scrape(broker: &Broker) -> Value {
    let (status, body) = curl_metrics(broker, None, &[]);
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

/// The value of the sample `name` with exactly `labels` (0 when the family
/// has no such sample yet: a labelled counter appears at its first count).
fn value(m: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(samples) = m[family]["samples"].as_array() else {
        return 0.0;
    };
    samples
        .iter()
        .find(|s| {
            s["name"] == name
                && s["labels"].as_object().unwrap().len() == labels.len()
                && labels.iter().all(|(k, v)| s["labels"][*k] == *v)
        })
        .map_or(0.0, |s| s["value"].as_f64().unwrap())
}

fn total(m: &Value, counter: &str) -> f64 {
    value(m, counter, &format!("{counter}_total"), &[])
}

#[test]
fn counters_move_by_exactly_the_claims_releases_and_reclaims_made() {
    let broker = Broker::start();
    let http = broker.http_url();
    let before = scrape(&broker);
    assert_eq!(before["pb_claims"]["type"], "counter", "{before}");

    // 2 claims over IPC, 1 over HTTP; 2 owned by processes that then die.
    broker.claim("met:a", &[]);
    broker.claim("met:b", &[]);
    let (s, v) = pb_tests::curl_json(None, 10, &["-X", "POST", &format!("{http}/claim/met:h")]);
    assert_eq!(s, 200, "{v}");
    let owners: Vec<Proc> = (0..2)
        .map(|_| Proc(Command::new("sleep").arg("60").spawn().unwrap()))
        .collect();
    for (i, o) in owners.iter().enumerate() {
        broker.claim(&format!("met:owned{i}"), &["--pid", &o.pid().to_string()]);
    }
    // 1 release over IPC, 1 over HTTP.
    broker.pb_ok(&["release", "met:a"]);
    let (s, v) = pb_tests::curl_json(
        None,
        10,
        &["-X", "DELETE", &format!("{http}/release/met:h")],
    );
    assert_eq!(s, 200, "{v}");
    // The owners die: their leases are reclaimed.
    drop(owners);
    let freed = wait_until(Duration::from_secs(10), || {
        (!broker
            .leases()
            .iter()
            .any(|(id, _)| id.starts_with("met:owned")))
        .then_some(())
    });
    assert!(freed.is_some(), "{:?}", broker.leases());

    let after = scrape(&broker);
    let moved = |counter: &str| total(&after, counter) - total(&before, counter);
    assert_eq!(moved("pb_claims"), 5.0, "{after}");
    assert_eq!(moved("pb_releases"), 2.0, "{after}");
    assert_eq!(moved("pb_reclaims"), 2.0, "{after}");
    assert_eq!(moved("pb_expiries"), 0.0, "{after}");
    let claim_events = |m: &Value| {
        value(
            m,
            "pb_events",
            "pb_events_total",
            &[("kind", "service.claim")],
        )
    };
    assert_eq!(claim_events(&after) - claim_events(&before), 5.0);
    // Each reclaim is one death-to-free observation, each well under the
    // histogram's top bucket.
    let deaths = |m: &Value, name: &str, labels: &[(&str, &str)]| {
        value(m, "pb_death_to_free_seconds", name, labels)
    };
    assert_eq!(
        deaths(&after, "pb_death_to_free_seconds_count", &[])
            - deaths(&before, "pb_death_to_free_seconds_count", &[]),
        2.0,
        "{after}"
    );
    assert_eq!(
        deaths(&after, "pb_death_to_free_seconds_bucket", &[("le", "10.0")]),
        deaths(&after, "pb_death_to_free_seconds_count", &[]),
        "{after}"
    );
    // What is left: met:b, held by the broker.
    let leases = |state: &str| value(&after, "pb_leases", "pb_leases", &[("state", state)]);
    assert_eq!(leases("held"), 1.0, "{after}");
    assert_eq!(
        leases("handed_over") + leases("number_only") + leases("unheld"),
        0.0
    );
    // The HTTP claim is counted under its route's template, never its id.
    let claimed = value(
        &after,
        "pb_http_requests",
        "pb_http_requests_total",
        &[
            ("method", "POST"),
            ("route", "/claim/{id}"),
            ("status", "200"),
        ],
    );
    assert_eq!(claimed, 1.0, "{after}");
    assert!(
        !after.to_string().contains("met:h"),
        "no id is a label: {after}"
    );
    let scraped = value(
        &after,
        "pb_http_request_duration_seconds",
        "pb_http_request_duration_seconds_count",
        &[("route", "/metrics")],
    );
    assert_eq!(scraped, 1.0, "the first scrape was timed: {after}");
    assert!(moved("pb_ipc_connections") >= 5.0, "{after}");
    assert!(
        value(
            &after,
            "pb_resident_memory_bytes",
            "pb_resident_memory_bytes",
            &[]
        ) > 1e6
    );
    assert!(value(&after, "pb_uptime_seconds", "pb_uptime_seconds", &[]) > 0.0);
}

#[test]
fn gauges_count_locks_waiters_and_subscribers_and_pb_metrics_prints_the_same_format() {
    let broker = Broker::start();
    broker.pb_ok(&["lock", "met-db", "--owner", "first"]);
    let spawn = |args: &[&str]| {
        Proc(
            broker
                .cmd()
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let _waiter = spawn(&["lock", "met-db", "--wait", "--owner", "second"]);
    let _sub = spawn(&["sub", "met:*"]);
    let gauge = |m: &Value, name: &str| value(m, name, name, &[]);
    // `pb metrics` over the Unix socket, through the same parser.
    let m = wait_until(Duration::from_secs(10), || {
        let m = parse(&broker.pb_ok(&["metrics"]));
        (gauge(&m, "pb_lock_waiters") == 1.0 && gauge(&m, "pb_subscribers") == 1.0).then_some(m)
    })
    .expect("the waiter and the subscriber are counted");
    assert_eq!(gauge(&m, "pb_locks_held"), 1.0, "{m}");
    assert!(gauge(&m, "pb_ipc_connections_open") >= 3.0, "{m}");
    assert_eq!(m["pb_webhook_queue"]["type"], "gauge", "{m}");
    assert_eq!(m["pb_subscribers_dropped"]["type"], "counter", "{m}");
    // The waiter is granted once the holder lets go.
    broker.pb_ok(&["unlock", "met-db", "--owner", "first"]);
    let granted = wait_until(Duration::from_secs(10), || {
        let m = parse(&broker.pb_ok(&["metrics"]));
        (gauge(&m, "pb_lock_waiters") == 0.0 && gauge(&m, "pb_locks_held") == 1.0).then_some(())
    });
    assert!(granted.is_some());
    // -j: the same text inside JSON.
    let j = broker.pb_json(&["metrics"]);
    assert!(j["text"].as_str().unwrap().ends_with("# EOF\n"), "{j}");
}

#[test]
fn another_user_needs_the_token_for_metrics() {
    let user = other_user();
    let broker = Broker::start();
    let (status, body) = curl_metrics(&broker, Some(user), &[]);
    assert_eq!(status, 401, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "unauthorized", "{v}");
    let token = broker.pb_ok(&["token"]).trim().to_string();
    let auth = format!("Authorization: Bearer {token}");
    let (status, body) = curl_metrics(&broker, Some(user), &[&auth]);
    assert_eq!(status, 200, "{body}");
    let m = parse(&body);
    // The refusal was counted, under no route of the router.
    let refused = value(
        &m,
        "pb_http_requests",
        "pb_http_requests_total",
        &[("method", "GET"), ("route", "refused"), ("status", "401")],
    );
    assert_eq!(refused, 1.0, "{m}");
}

#[test]
fn webhook_attempts_are_counted_by_outcome() {
    let broker = Broker::start();
    let ports = PortBlock::take(1);
    let r = WebhookReceiver::start(broker.home.path(), ports.range.0, "r", &["--fail", "1"]);
    broker.pb_ok(&["webhook", "add", &r.url(), "-e", "lock.acquire"]);
    broker.pb_ok(&["lock", "met-deploy", "--owner", "ci"]);
    // One failed attempt (500, retried after about a second), then one
    // delivered; nothing left queued.
    let attempts = |m: &Value, outcome: &str| {
        value(
            m,
            "pb_webhook_attempts",
            "pb_webhook_attempts_total",
            &[("outcome", outcome)],
        )
    };
    let m = wait_until(Duration::from_secs(20), || {
        let m = parse(&broker.pb_ok(&["metrics"]));
        (attempts(&m, "delivered") == 1.0).then_some(m)
    })
    .expect("the delivery is counted");
    assert_eq!(attempts(&m, "retrying"), 1.0, "{m}");
    assert_eq!(attempts(&m, "failed"), 0.0, "{m}");
    assert_eq!(
        value(&m, "pb_webhook_queue", "pb_webhook_queue", &[]),
        0.0,
        "{m}"
    );
    assert_eq!(r.records().len(), 2);
}
