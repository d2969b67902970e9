//! Webhooks end to end, with real HTTP receivers on loopback
//! (tests/servers/webhook_receiver.py, which also verifies signatures with
//! its own code): both signatures verify and tampering or an old timestamp
//! fails; retries back off and stop at the first success; the queue
//! survives kill -9; the SSRF policy refuses blocked addresses in every
//! spelling and host names that resolve to them (through the PB_TEST_HOSTS
//! resolver seam); a slow receiver holds up only its own deliveries; 410
//! disables a webhook; filters; bad input.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pb_proto::client::ClientError;
use pb_proto::{ErrorCode, Op, WebhookUpdateArgs};
use pb_tests::*;
use serde_json::{json, Value};

/// Registers a webhook; returns its id and secret.
fn add(b: &Broker, args: &[&str]) -> (String, String) {
    let mut a = vec!["webhook", "add"];
    a.extend_from_slice(args);
    let v = b.pb_json(&a);
    (
        v["webhook"]["id"].as_str().unwrap().to_string(),
        v["secret"].as_str().unwrap().to_string(),
    )
}

fn deliveries(b: &Broker, id: &str) -> Vec<Value> {
    b.pb_json(&["webhook", "deliveries", id])["deliveries"]
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until every delivery of `id` is finished (and there is at least
/// `n`); returns them, newest first.
fn wait_finished(b: &Broker, id: &str, n: usize, limit: Duration) -> Vec<Value> {
    wait_until(limit, || {
        let d = deliveries(b, id);
        (d.len() >= n && d.iter().all(|d| d["state"] != "pending")).then_some(d)
    })
    .unwrap_or_else(|| panic!("deliveries of {id} not finished: {:?}", deliveries(b, id)))
}

/// The JSON error of a failed `pb -j ...`, with its exit code.
fn pb_err(b: &Broker, args: &[&str]) -> (i32, Value) {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    let out = b.pb(&a);
    assert!(!out.status.success(), "pb {args:?} succeeded");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v)
}

fn list(b: &Broker) -> Vec<Value> {
    b.pb_json(&["webhook", "ls"])["webhooks"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn both_signatures_verify_and_tampering_or_old_timestamps_fail() {
    let b = Broker::start();
    let ports = PortBlock::take(10);
    let r = WebhookReceiver::start(b.home.path(), ports.range.0, "r", &[]);
    let (id, generated) = add(&b, &[&r.url(), "-e", "message.publish"]);
    assert!(generated.starts_with("whsec_"), "{generated}");
    let given = "a-port-daddy-style-secret";
    let r2 = WebhookReceiver::start(b.home.path(), ports.range.0 + 1, "r2", &[]);
    let (id2, echoed) = add(
        &b,
        &[&r2.url(), "--event", "message.publish", "--secret", given],
    );
    assert_eq!(echoed, given);

    // The secret is shown once: never by list or get.
    let ls = b.pb_ok(&["-j", "webhook", "ls"]);
    let get = serde_json::to_string(
        &b.client()
            .call(pb_proto::Op::WebhookGet { id: id.clone() })
            .unwrap()
            .0,
    )
    .unwrap();
    for text in [&ls, &get] {
        assert!(!text.contains(&generated) && !text.contains(given) && !text.contains("secret"));
    }

    b.pb_ok(&["pub", "builds", "{\"ok\":true}"]);
    for (rec, secret, hook) in [(&r, generated.as_str(), &id), (&r2, given, &id2)] {
        let got = rec.wait_for(1, Duration::from_secs(10));
        let req = &got[0];
        let h = &req["headers"];
        assert_eq!(h["x-portdaddy-event"], "message.publish");
        assert_eq!(h["webhook-id"], h["x-portdaddy-delivery"]);
        assert_eq!(h["host"], format!("127.0.0.1:{}", rec.port));
        let body: Value = serde_json::from_str(req["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["event"], "message.publish");
        assert!(body["timestamp"].as_u64().is_some());
        assert_eq!(body["data"]["target"], "builds");
        assert_eq!(body["data"]["details"]["data"]["ok"], true);

        rec.verify(secret, 0, &[]).unwrap();
        let e = rec.verify(secret, 0, &["--tamper"]).unwrap_err();
        assert!(e.contains("X-PortDaddy-Signature does not match"), "{e}");
        assert!(e.contains("webhook-signature does not match"), "{e}");
        let e = rec.verify(secret, 0, &["--age", "600"]).unwrap_err();
        assert!(e.contains("tolerance"), "{e}");
        // A replay that freshens the timestamp breaks the signature.
        let e = rec.verify(secret, 0, &["--forge-timestamp"]).unwrap_err();
        assert!(e.contains("webhook-signature does not match"), "{e}");
        // The other webhook's secret does not verify this delivery.
        let other = if secret == given {
            generated.as_str()
        } else {
            given
        };
        assert!(rec.verify(other, 0, &[]).is_err());
        let d = wait_finished(&b, hook, 1, Duration::from_secs(10));
        assert_eq!(d[0]["state"], "delivered");
        assert_eq!(d[0]["id"], h["webhook-id"]);
    }
}

#[test]
fn a_receiver_failing_twice_gets_exactly_three_attempts_with_growing_gaps() {
    let b = Broker::start();
    let ports = PortBlock::take(10);
    let r = WebhookReceiver::start(b.home.path(), ports.range.0, "r", &["--fail", "2"]);
    let (id, _) = add(&b, &[&r.url(), "-e", "lock.acquire"]);
    b.pb_ok(&["lock", "deploy", "--owner", "ci"]);
    let d = wait_finished(&b, &id, 1, Duration::from_secs(20));
    assert_eq!(d.len(), 1);
    assert_eq!(d[0]["state"], "delivered");
    let statuses: Vec<u64> = d[0]["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [500, 500, 200]);

    let got = r.records();
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got.iter().all(|g| g["headers"]["webhook-id"] == d[0]["id"]));
    let t: Vec<f64> = got.iter().map(|g| g["arrival"].as_f64().unwrap()).collect();
    let (g1, g2) = (t[1] - t[0], t[2] - t[1]);
    // 1 s then 2 s (plus jitter): order and lower bounds only.
    assert!(g1 >= 0.9 && g2 >= 0.9 && g2 >= g1, "gaps {g1} {g2}");
    // Each attempt is signed afresh, with its own timestamp.
    assert_ne!(
        got[0]["headers"]["x-portdaddy-timestamp"],
        got[2]["headers"]["x-portdaddy-timestamp"]
    );
}

#[test]
fn retry_after_is_honoured() {
    let b = Broker::start();
    let ports = PortBlock::take(10);
    let r = WebhookReceiver::start(
        b.home.path(),
        ports.range.0,
        "r",
        &["--fail", "1", "--retry-after", "3"],
    );
    let (id, _) = add(&b, &[&r.url()]);
    b.pb_ok(&["webhook", "test", &id]);
    let d = wait_finished(&b, &id, 1, Duration::from_secs(20));
    assert_eq!(d[0]["state"], "delivered");
    let got = r.records();
    let gap = got[1]["arrival"].as_f64().unwrap() - got[0]["arrival"].as_f64().unwrap();
    assert!(
        gap >= 2.9,
        "Retry-After: 3 but the retry came after {gap} s"
    );
    assert_eq!(got[0]["headers"]["x-portdaddy-event"], "webhook.test");
}

#[test]
fn the_queue_survives_kill9_and_delivery_resumes_after_restart() {
    let mut b = Broker::start();
    let ports = PortBlock::take(10);
    let failing = WebhookReceiver::start(b.home.path(), ports.range.0, "down", &["--fail", "1000"]);
    let (id, _) = add(&b, &[&failing.url(), "-e", "agent.register"]);
    b.pb_ok(&["agent", "register", "builder-1"]);
    // The first attempt failed and is recorded: the delivery waits for
    // its retry in SQLite.
    let first = wait_until(Duration::from_secs(10), || {
        let d = deliveries(&b, &id);
        (d.len() == 1 && d[0]["attempts"].as_array().unwrap().len() == 1).then_some(d)
    })
    .expect("first attempt recorded");
    assert_eq!(first[0]["state"], "pending");
    let delivery = first[0]["id"].as_str().unwrap().to_string();
    b.kill9();
    drop(failing);

    let up = WebhookReceiver::start(b.home.path(), ports.range.0, "up", &[]);
    b.restart();
    let got = up.wait_for(1, Duration::from_secs(15));
    assert_eq!(got[0]["headers"]["x-portdaddy-delivery"], delivery.as_str());
    assert_eq!(got[0]["headers"]["x-portdaddy-event"], "agent.register");
    let d = wait_finished(&b, &id, 1, Duration::from_secs(10));
    assert_eq!(d[0]["id"], delivery.as_str());
    assert_eq!(d[0]["state"], "delivered");
    let attempts = d[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.first().unwrap()["status"], 500);
    assert_eq!(attempts.last().unwrap()["status"], 200);
}

#[test]
fn an_acknowledged_events_delivery_survives_an_immediate_kill9() {
    let mut b = Broker::start();
    let ports = PortBlock::take(10);
    // Nobody listens yet: attempts fail until the receiver starts.
    let url = format!("http://127.0.0.1:{}/hook", ports.range.0);
    let (id, _) = add(&b, &[&url, "-e", "message.publish"]);
    b.pb_ok(&["pub", "alerts", "disk full"]);
    // Killed at once, well within the activity log's 100 ms batch.
    b.kill9();
    let up = WebhookReceiver::start(b.home.path(), ports.range.0, "up", &[]);
    b.restart();
    let got = up.wait_for(1, Duration::from_secs(15));
    let body: Value = serde_json::from_str(got[0]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["data"]["target"], "alerts");
    let d = wait_finished(&b, &id, 1, Duration::from_secs(10));
    assert_eq!(d[0]["state"], "delivered");
}

#[test]
fn blocked_addresses_are_refused_at_registration_in_every_spelling() {
    let b = Broker::start();
    for url in [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fd00:ec2::254]/",
        "http://2852039166/",
        "http://0251.0376.0251.0376/",
        "http://0xa9.0xfe.0xa9.0xfe/",
        "http://0xa9fea9fe/",
        "http://169.254.43518/",
        "http://0.0.0.0:8080/",
        "http://[::]/",
        "http://224.0.0.1/",
        "http://10.0.0.1/",
        "http://012.0.0.1/",
        "http://192.168.1.10/",
        "http://[fc00::1]/",
        "http://100.64.0.1/",
    ] {
        let (code, e) = pb_err(&b, &["webhook", "add", url]);
        assert_eq!(
            (code, e["code"].as_str()),
            (5, Some("blocked_address")),
            "{url}: {e}"
        );
    }
    assert!(list(&b).is_empty());
    // Loopback is allowed, in any spelling.
    add(&b, &["http://2130706433:9/"]);
    add(&b, &["http://[::1]:9/"]);
    assert_eq!(list(&b).len(), 2);

    // Private ranges open up with the setting; metadata never does.
    let open = Broker::start_with(&[("PB_WEBHOOK_ALLOW_PRIVATE", "1")]);
    add(&open, &["http://10.0.0.1/"]);
    add(&open, &["http://[fc00::1]/"]);
    for url in [
        "http://169.254.169.254/",
        "http://[fd00:ec2::254]/",
        "http://2852039166/",
    ] {
        let (_, e) = pb_err(&open, &["webhook", "add", url]);
        assert_eq!(e["code"], "blocked_address", "{url}");
    }
}

#[test]
fn host_names_resolving_to_blocked_addresses_are_refused_at_delivery() {
    let ports = PortBlock::take(10);
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        "169.254.169.254 metadata.test\n\
         10.1.2.3 private.test\n\
         127.0.0.1 receiver.test mixed.test\n\
         169.254.169.254 mixed.test\n\
         ::ffff:169.254.169.254 mapped.test\n",
    )
    .unwrap();
    let b = Broker::start_with(&[("PB_TEST_HOSTS", hosts.to_str().unwrap())]);
    let r = WebhookReceiver::start(dir.path(), ports.range.0, "r", &[]);
    let mut refused = Vec::new();
    for name in ["metadata.test", "private.test", "mixed.test", "mapped.test"] {
        // Names pass registration: they are judged when resolved.
        let (id, _) = add(&b, &[&format!("http://{name}:{}/", r.port)]);
        b.pb_ok(&["webhook", "test", &id]);
        refused.push((name, id));
    }
    let (ok_id, _) = add(&b, &[&format!("http://receiver.test:{}/x", r.port)]);
    b.pb_ok(&["webhook", "test", &ok_id]);

    let d = wait_finished(&b, &ok_id, 1, Duration::from_secs(10));
    assert_eq!(d[0]["state"], "delivered");
    let got = r.wait_for(1, Duration::from_secs(5));
    assert_eq!(
        got[0]["headers"]["host"],
        format!("receiver.test:{}", r.port)
    );
    assert_eq!(got[0]["path"], "/x");

    for (name, id) in refused {
        let d = wait_finished(&b, &id, 1, Duration::from_secs(10));
        assert_eq!(d[0]["state"], "failed", "{name}");
        let attempts = d[0]["attempts"].as_array().unwrap();
        // Refusals are final: no retries.
        assert_eq!(attempts.len(), 1, "{name}");
        let err = attempts[0]["error"].as_str().unwrap();
        assert!(
            err.contains("refused by the SSRF policy") && err.contains(name),
            "{err}"
        );
    }
    // Only the allowed webhook reached the receiver.
    assert_eq!(r.records().len(), 1);
}

#[test]
fn a_slow_receiver_does_not_delay_another_webhooks_deliveries() {
    let b = Broker::start();
    let ports = PortBlock::take(10);
    let slow = WebhookReceiver::start(b.home.path(), ports.range.0, "slow", &["--delay", "4"]);
    let fast = WebhookReceiver::start(b.home.path(), ports.range.0 + 1, "fast", &[]);
    let (slow_id, _) = add(&b, &[&slow.url(), "-e", "lock.acquire"]);
    add(&b, &[&fast.url(), "-e", "message.publish"]);
    // The slow receiver first has a request in hand...
    b.pb_ok(&["webhook", "test", &slow_id]);
    let arrivals = PathBuf::from(format!("{}.arrivals", slow.record.display()));
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&arrivals)
            .ok()
            .filter(|t| !t.is_empty())
    })
    .expect("the slow receiver got its request");
    // ...while the other webhook's deliveries come and go.
    for i in 0..3 {
        b.pb_ok(&["pub", "news", &format!("m{i}")]);
    }
    let fast_got = fast.wait_for(3, Duration::from_secs(15));
    let slow_got = slow.wait_for(1, Duration::from_secs(15));
    let slow_first_done = slow_got[0]["done"].as_f64().unwrap();
    for f in &fast_got {
        assert!(
            f["arrival"].as_f64().unwrap() < slow_first_done,
            "the fast receiver waited for the slow one: {fast_got:?} {slow_got:?}"
        );
    }
}

#[test]
fn gone_disables_the_webhook_until_enabled() {
    let b = Broker::start();
    let ports = PortBlock::take(10);
    let r = WebhookReceiver::start(b.home.path(), ports.range.0, "r", &["--status", "410"]);
    let (id, _) = add(&b, &[&r.url(), "-e", "message.publish"]);
    b.pb_ok(&["webhook", "test", &id]);
    let d = wait_finished(&b, &id, 1, Duration::from_secs(10));
    assert_eq!(d[0]["state"], "failed");
    assert_eq!(d[0]["attempts"].as_array().unwrap().len(), 1);
    let w = &list(&b)[0];
    assert_eq!(w["active"], false);
    assert!(w["disabled_reason"].as_str().unwrap().contains("410"));
    // Disabled: events no longer queue deliveries for it.
    b.pb_ok(&["pub", "news", "x"]);
    assert_eq!(deliveries(&b, &id).len(), 1);
    let w = b.pb_json(&["webhook", "enable", &id]);
    assert_eq!(
        (w["active"].as_bool(), &w["disabled_reason"]),
        (Some(true), &Value::Null)
    );
}

#[test]
fn webhooks_filter_by_event_and_id_pattern() {
    let b = Broker::start();
    let ports = PortBlock::take(10);
    let r = WebhookReceiver::start(b.home.path(), ports.range.0, "r", &[]);
    let (id, _) = add(
        &b,
        &[
            &r.url(),
            "-e",
            "service.claim",
            "-e",
            "service.release",
            "--filter",
            "myapp:*",
        ],
    );
    b.claim("myapp:api", &[]);
    b.claim("other:api", &[]);
    b.pb_ok(&["release", "myapp:api"]);
    b.pb_ok(&["lock", "myapp:db", "--owner", "x"]);
    let d = wait_finished(&b, &id, 2, Duration::from_secs(10));
    let events: Vec<&str> = d
        .iter()
        .rev()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["service.claim", "service.release"]);
    let got = r.wait_for(2, Duration::from_secs(5));
    for g in &got {
        let body: Value = serde_json::from_str(g["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["data"]["target"], "myapp:api");
    }
}

#[test]
fn daemon_start_and_stop_are_delivered() {
    let mut b = Broker::start();
    let ports = PortBlock::take(10);
    let r = WebhookReceiver::start(b.home.path(), ports.range.0, "r", &[]);
    add(&b, &[&r.url(), "-e", "daemon.stop", "-e", "daemon.start"]);
    b.pb_ok(&["stop"]);
    b.restart();
    let got = r.wait_for(2, Duration::from_secs(15));
    let events: Vec<&str> = got
        .iter()
        .map(|g| g["headers"]["x-portdaddy-event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"daemon.stop") && events.contains(&"daemon.start"),
        "{events:?}"
    );
    let events = b.pb_json(&["webhook", "events"]);
    assert_eq!(events["events"].as_array().unwrap().len(), 16);
}

#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let b = Broker::start_with(&[("PB_MAX_WEBHOOKS", "2")]);
    for (args, code, exit) in [
        (vec!["not a url"], "invalid_url", 2),
        (vec!["example.com/hook"], "invalid_url", 2),
        (vec!["ftp://127.0.0.1/"], "invalid_url", 2),
        (vec!["file:///etc/passwd"], "invalid_url", 2),
        (vec!["http://user:pw@127.0.0.1/"], "invalid_url", 2),
        (vec!["http://127.0.0.1:99999/"], "invalid_url", 2),
        (vec!["http://1.2.3.256/"], "invalid_url", 2),
        (
            vec!["http://127.0.0.1/", "-e", "service.claimed"],
            "invalid_name",
            2,
        ),
        (
            vec!["http://127.0.0.1/", "--filter", "a b"],
            "invalid_id",
            2,
        ),
        (
            vec!["http://127.0.0.1/", "--secret", &"s".repeat(257)],
            "too_large",
            2,
        ),
        (
            vec!["http://127.0.0.1/", "--secret", "has space"],
            "invalid_request",
            2,
        ),
    ] {
        let mut a = vec!["webhook", "add"];
        a.extend(args.iter().copied());
        let (exit_code, e) = pb_err(&b, &a);
        assert_eq!(
            (e["code"].as_str(), exit_code),
            (Some(code), exit),
            "{args:?}: {e}"
        );
        assert!(!e["error"].as_str().unwrap().is_empty());
    }
    assert!(list(&b).is_empty());
    add(&b, &["http://127.0.0.1:9/a"]);
    add(&b, &["http://127.0.0.1:9/b"]);
    let (exit, e) = pb_err(&b, &["webhook", "add", "http://127.0.0.1:9/c"]);
    assert_eq!((exit, e["code"].as_str()), (6, Some("limit")));
    assert_eq!(list(&b).len(), 2);
    for verb in ["rm", "test", "deliveries"] {
        let (exit, e) = pb_err(&b, &["webhook", verb, "wh_nope"]);
        assert_eq!((exit, e["code"].as_str()), (4, Some("not_found")), "{verb}");
    }
    let id = list(&b)[0]["id"].as_str().unwrap().to_string();
    let before = list(&b);
    // Updates are checked like registrations, and a refused one changes
    // nothing.
    let mut c = b.client();
    for (args, code) in [
        (
            json!({"url": "http://0251.0376.0251.0376/"}),
            ErrorCode::BlockedAddress,
        ),
        (json!({"url": "gopher://127.0.0.1/"}), ErrorCode::InvalidUrl),
        (
            json!({"events": ["lock.acquire", "nope"]}),
            ErrorCode::InvalidName,
        ),
        (json!({"secret": "x".repeat(300)}), ErrorCode::TooLarge),
        (json!({"filter": "a:b:c:d"}), ErrorCode::InvalidId),
    ] {
        let mut op = args.clone();
        op["id"] = json!(id);
        let op: WebhookUpdateArgs = serde_json::from_value(op).unwrap();
        match c.call(Op::WebhookUpdate(op)) {
            Err(ClientError::Wire(w)) => assert_eq!(w.code, code, "{args}"),
            other => panic!("{args}: {other:?}"),
        }
    }
    assert_eq!(list(&b), before);
    let (w, _) = c
        .call(Op::WebhookUpdate(WebhookUpdateArgs {
            id: id.clone(),
            events: Some(vec!["lock.acquire".into()]),
            filter: Some("ci:*".into()),
            ..Default::default()
        }))
        .unwrap();
    assert_eq!(
        (w["events"].clone(), w["filter"].clone()),
        (json!(["lock.acquire"]), json!("ci:*"))
    );
    b.pb_ok(&["webhook", "rm", &id]);
    assert_eq!(list(&b).len(), 1);
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=pb test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "srv.key",
        "-out",
        "srv.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&a);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:receiver.test\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (dir.join("ca.pem"), dir.join("srv.pem"), dir.join("srv.key"))
}

#[test]
fn https_deliveries_verify_the_receivers_certificate() {
    let ports = PortBlock::take(10);
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_certs(dir.path());
    let r = WebhookReceiver::start(
        dir.path(),
        ports.range.0,
        "tls",
        &[
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let url = format!("https://127.0.0.1:{}/secure", r.port);

    // Trusting the test CA: delivered, signed as over http.
    let b = Broker::start_with(&[("PB_WEBHOOK_CA", ca.to_str().unwrap())]);
    let (id, secret) = add(&b, &[&url]);
    b.pb_ok(&["webhook", "test", &id]);
    let d = wait_finished(&b, &id, 1, Duration::from_secs(10));
    assert_eq!(d[0]["state"], "delivered", "{d:?}");
    let got = r.wait_for(1, Duration::from_secs(5));
    assert_eq!(got[0]["path"], "/secure");
    r.verify(&secret, 0, &[]).unwrap();

    // Without it, the certificate is not trusted and nothing is sent.
    let strict = Broker::start_with(&[("PB_WEBHOOK_MAX_ATTEMPTS", "1")]);
    let (id, _) = add(&strict, &[&url]);
    strict.pb_ok(&["webhook", "test", &id]);
    let d = wait_finished(&strict, &id, 1, Duration::from_secs(10));
    assert_eq!(d[0]["state"], "failed");
    let err = d[0]["attempts"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("TLS") && err.to_lowercase().contains("certificate"),
        "{err}"
    );
    assert_eq!(r.records().len(), 1);
}
