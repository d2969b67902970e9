//! Port Daddy's /webhooks routes over real HTTP, with real curl and a real
//! receiver on loopback (tests/servers/webhook_receiver.py, which verifies
//! signatures with its own code): the README's curl recipe runs unchanged
//! and a signed delivery arrives; HTTP and `pb webhook` see the same
//! webhooks; refusals get the core's codes as statuses and change nothing;
//! /webhooks/events lists the kinds; /test delivers and /deliveries shows it.

use std::time::Duration;

use pb_tests::*;
use serde_json::{json, Value};

/// Runs curl with `args` and returns (status, JSON body).
fn curl(args: &[&str]) -> (u16, Value) {
    curl_json(None, 10, args)
}

/// A request with a JSON body (`-d`), as Port Daddy's clients send it.
fn send(method: &str, url: &str, body: &Value) -> (u16, Value) {
    curl(&[
        "-X",
        method,
        url,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body.to_string(),
    ])
}

fn get(url: &str) -> (u16, Value) {
    curl(&[url])
}

/// Asserts a JSON error with this status and code.
fn assert_error(got: &(u16, Value), status: u16, code: &str, what: &str) {
    assert_eq!(got.0, status, "{what}: {got:?}");
    assert_eq!(got.1["code"], code, "{what}: {got:?}");
    assert!(
        got.1["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: {got:?}"
    );
}

fn cli_list(b: &Broker) -> Vec<Value> {
    b.pb_json(&["webhook", "ls"])["webhooks"]
        .as_array()
        .unwrap()
        .clone()
}

fn http_list(base: &str) -> Vec<Value> {
    let (status, v) = get(&format!("{base}/webhooks"));
    assert_eq!(status, 200, "{v}");
    v["webhooks"].as_array().unwrap().clone()
}

/// Waits (at most 10 s) until the webhook's newest delivery is finished,
/// read over HTTP; returns the deliveries, newest first.
fn wait_delivered(base: &str, id: &str) -> Vec<Value> {
    let url = format!("{base}/webhooks/{id}/deliveries");
    wait_until(Duration::from_secs(10), || {
        let (status, v) = get(&url);
        assert_eq!(status, 200, "{v}");
        let d = v["deliveries"].as_array().unwrap().clone();
        (!d.is_empty() && d[0]["state"] != "pending").then_some(d)
    })
    .unwrap_or_else(|| panic!("no finished delivery: {:?}", get(&url)))
}

#[test]
fn port_daddys_readme_recipe_runs_unchanged_and_a_signed_delivery_arrives() {
    let b = Broker::start();
    let p = b.http_port().unwrap();
    let ports = PortBlock::take(1);
    let r = WebhookReceiver::start(b.home.path(), ports.range.0, "r", &[]);
    // The README's recipe, with the broker's port for 9876 and the loopback
    // receiver for your-server.com.
    let recipe = format!(
        r#"{{
    "url": "http://127.0.0.1:{}/port-daddy-events",
    "events": ["service.claim", "service.release"],
    "secret": "your-hmac-secret"
  }}"#,
        r.port
    );
    let (status, created) = curl(&[
        "-X",
        "POST",
        &format!("http://localhost:{p}/webhooks"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &recipe,
    ]);
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["secret"], "your-hmac-secret");
    let hook = &created["webhook"];
    let id = hook["id"].as_str().unwrap().to_string();
    // Port Daddy's own reply fields are there too.
    assert_eq!(created["success"], true);
    assert_eq!(created["id"], id.as_str());
    assert_eq!(created["url"], hook["url"]);
    assert_eq!(created["events"], hook["events"]);
    assert_eq!(
        hook["url"],
        format!("http://127.0.0.1:{}/port-daddy-events", r.port)
    );
    assert_eq!(hook["events"], json!(["service.claim", "service.release"]));
    assert_eq!(hook["active"], true);

    let port = b.claim("myapp", &[]);
    let got = r.wait_for(1, Duration::from_secs(10));
    let req = &got[0];
    assert_eq!(req["path"], "/port-daddy-events");
    assert_eq!(req["headers"]["x-portdaddy-event"], "service.claim");
    assert!(req["headers"]["x-portdaddy-signature"]
        .as_str()
        .is_some_and(|s| s.starts_with("sha256=")));
    let body: Value = serde_json::from_str(req["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["event"], "service.claim");
    assert_eq!(body["data"]["target"], "myapp");
    assert!(body.to_string().contains(&port.to_string()), "{body}");
    r.verify("your-hmac-secret", 0, &[]).unwrap();
    assert!(r.verify("another-secret", 0, &[]).is_err());

    let base = b.http_url();
    let d = wait_delivered(&base, &id);
    assert_eq!(d[0]["state"], "delivered");
    assert_eq!(d[0]["event"], "service.claim");
    assert_eq!(d[0]["id"], req["headers"]["x-portdaddy-delivery"]);
    assert_eq!(d[0]["attempts"][0]["status"], 200);
}

#[test]
fn http_and_the_cli_see_the_same_webhooks() {
    let b = Broker::start();
    let base = b.http_url();
    let (status, created) = send(
        "POST",
        &format!("{base}/webhooks"),
        // Port Daddy's name for the filter.
        &json!({"url": "http://127.0.0.1:9/http", "events": ["lock.acquire"], "filterPattern": "db:*"}),
    );
    assert_eq!(status, 200, "{created}");
    let generated = created["secret"].as_str().unwrap().to_string();
    assert!(generated.starts_with("whsec_"), "{generated}");
    let http_id = created["webhook"]["id"].as_str().unwrap().to_string();

    // Registered over HTTP, listed by the CLI.
    let ls = cli_list(&b);
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["id"], http_id);
    assert_eq!(ls[0]["filter"], "db:*");
    assert_eq!(ls[0]["events"], json!(["lock.acquire"]));

    // Registered by the CLI, listed and read over HTTP.
    let cli = b.pb_json(&["webhook", "add", "http://127.0.0.1:9/cli"]);
    let cli_id = cli["webhook"]["id"].as_str().unwrap().to_string();
    let listed = http_list(&base);
    let ids: Vec<&str> = listed.iter().map(|w| w["id"].as_str().unwrap()).collect();
    assert!(
        ids.contains(&http_id.as_str()) && ids.contains(&cli_id.as_str()),
        "{listed:?}"
    );
    let (status, one) = get(&format!("{base}/webhooks/{cli_id}"));
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["success"], true);
    assert_eq!(one["webhook"]["url"], "http://127.0.0.1:9/cli");
    // The secret is shown once: never by list or get.
    let (_, all) = get(&format!("{base}/webhooks"));
    assert_eq!(all["count"], 2);
    for text in [all.to_string(), one.to_string()] {
        assert!(
            !text.contains(&generated) && !text.contains("secret"),
            "{text}"
        );
    }

    // Changed over HTTP, seen by the CLI.
    let (status, changed) = send(
        "PUT",
        &format!("{base}/webhooks/{cli_id}"),
        &json!({"events": ["daemon.stop", "agent.stale"], "active": false}),
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        changed["webhook"]["events"],
        json!(["daemon.stop", "agent.stale"])
    );
    let seen = cli_list(&b)
        .into_iter()
        .find(|w| w["id"] == cli_id.as_str())
        .unwrap();
    assert_eq!(seen["events"], json!(["daemon.stop", "agent.stale"]));
    assert_eq!(seen["active"], false);
    // Port Daddy's `?active=true` leaves it out.
    let (status, active) = get(&format!("{base}/webhooks?active=true"));
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["count"], 1);
    assert_eq!(active["webhooks"][0]["id"], http_id.as_str());

    // Deleted over HTTP, gone for the CLI; deleted by the CLI, gone over HTTP.
    let (status, gone) = curl(&["-X", "DELETE", &format!("{base}/webhooks/{cli_id}")]);
    assert_eq!(status, 200, "{gone}");
    assert_eq!(
        gone,
        json!({"success": true, "id": cli_id, "deleted": true})
    );
    let ls = cli_list(&b);
    assert_eq!(ls.len(), 1);
    assert_eq!(ls[0]["id"], http_id);
    b.pb_ok(&["webhook", "rm", &http_id]);
    assert_error(
        &get(&format!("{base}/webhooks/{http_id}")),
        404,
        "not_found",
        "get after pb webhook rm",
    );
    assert!(http_list(&base).is_empty());
}

#[test]
fn refusals_get_the_cores_codes_as_statuses_and_change_nothing() {
    let b = Broker::start_with(&[("PB_MAX_WEBHOOKS", "1")]);
    let base = b.http_url();
    let p = b.http_port().unwrap();
    let url = format!("{base}/webhooks");
    let long_secret = "s".repeat(257);
    for (body, status, code) in [
        (
            json!({"url": "http://169.254.169.254/"}),
            403,
            "blocked_address",
        ),
        (
            json!({"url": "http://[::ffff:169.254.169.254]/"}),
            403,
            "blocked_address",
        ),
        // 169.254.169.254 as one decimal number.
        (json!({"url": "http://2852039166/"}), 403, "blocked_address"),
        // ... and in dotted octal.
        (
            json!({"url": "http://0251.0376.0251.0376/"}),
            403,
            "blocked_address",
        ),
        (json!({"url": "ftp://x"}), 400, "invalid_url"),
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["service.claimed"]}),
            400,
            "invalid_name",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "secret": long_secret}),
            413,
            "too_large",
        ),
        // Port Daddy's "every event" spelling is not pb's (no events is).
        (
            json!({"url": "http://127.0.0.1:9/", "events": ["*"]}),
            400,
            "invalid_name",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "evil": 1}),
            400,
            "invalid_request",
        ),
        (
            json!({"url": "http://127.0.0.1:9/", "metadata": {"team": "ci"}}),
            400,
            "invalid_request",
        ),
        (json!({"events": []}), 400, "invalid_request"),
    ] {
        assert_error(&send("POST", &url, &body), status, code, &body.to_string());
    }
    assert_error(
        &curl(&[
            "-X",
            "POST",
            &url,
            "-H",
            "Content-Type: application/json",
            "-d",
            "{not json",
        ]),
        400,
        "invalid_request",
        "bad JSON",
    );
    // Before any route runs: a web page's request, a text/plain post.
    assert_error(
        &curl(&[
            "-X",
            "POST",
            &url,
            "-H",
            "Origin: https://evil.example",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"url": "http://127.0.0.1:9/"}"#,
        ]),
        403,
        "forbidden",
        "foreign Origin",
    );
    assert_error(
        &curl(&[
            "-X",
            "POST",
            &url,
            "-H",
            "Content-Type: text/plain",
            "-d",
            r#"{"url": "http://127.0.0.1:9/"}"#,
        ]),
        415,
        "unsupported_media_type",
        "text/plain",
    );
    assert!(http_list(&base).is_empty());
    assert!(cli_list(&b).is_empty());

    // One is allowed here; the second is over the limit.
    let (status, created) = send(
        "POST",
        &format!("http://localhost:{p}/webhooks"),
        &json!({"url": "http://127.0.0.1:9/ok"}),
    );
    assert_eq!(status, 200, "{created}");
    let id = created["webhook"]["id"].as_str().unwrap().to_string();
    assert_error(
        &send("POST", &url, &json!({"url": "http://127.0.0.1:9/two"})),
        429,
        "limit",
        "over PB_MAX_WEBHOOKS",
    );
    let before = http_list(&base);
    assert_eq!(before.len(), 1);

    // Updates are checked by the same core, and a refused one changes nothing.
    let one = format!("{base}/webhooks/{id}");
    for (body, status, code) in [
        (
            json!({"url": "http://[::ffff:169.254.169.254]/"}),
            403,
            "blocked_address",
        ),
        (json!({"url": "ftp://x"}), 400, "invalid_url"),
        (json!({"events": ["nope"]}), 400, "invalid_name"),
        (json!({"secret": "s".repeat(257)}), 413, "too_large"),
        (json!({"id": "wh_other"}), 400, "invalid_request"),
    ] {
        assert_error(&send("PUT", &one, &body), status, code, &body.to_string());
    }
    assert_eq!(http_list(&base), before);

    // Unknown ids.
    let nope = format!("{base}/webhooks/wh_nope");
    assert_error(&get(&nope), 404, "not_found", "get");
    assert_error(
        &send("PUT", &nope, &json!({"active": true})),
        404,
        "not_found",
        "put",
    );
    assert_error(&curl(&["-X", "DELETE", &nope]), 404, "not_found", "delete");
    assert_error(
        &curl(&["-X", "POST", &format!("{nope}/test")]),
        404,
        "not_found",
        "test",
    );
    assert_error(
        &get(&format!("{nope}/deliveries")),
        404,
        "not_found",
        "deliveries",
    );
    assert_error(
        &get(&format!("{one}/deliveries?limit=many")),
        400,
        "invalid_request",
        "bad limit",
    );
    assert_eq!(http_list(&base), before);
}

#[test]
fn events_lists_the_sixteen_kinds() {
    let b = Broker::start();
    let (status, v) = get(&format!("{}/webhooks/events", b.http_url()));
    assert_eq!(status, 200, "{v}");
    let mut got: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    got.sort_unstable();
    let mut want = vec![
        "service.claim",
        "service.release",
        "service.reclaim",
        "service.owner_changed",
        "agent.register",
        "agent.unregister",
        "agent.stale",
        "lock.acquire",
        "lock.release",
        "message.publish",
        "stack.up",
        "stack.down",
        "stack.restart",
        "stack.crash",
        "daemon.start",
        "daemon.stop",
    ];
    want.sort_unstable();
    assert_eq!(got, want);

    // Every route is in /openapi.json.
    let (status, doc) = get(&format!("{}/openapi.json", b.http_url()));
    assert_eq!(status, 200);
    let paths = &doc["paths"];
    for (path, methods) in [
        ("/webhooks", &["get", "post"][..]),
        ("/webhooks/events", &["get"]),
        ("/webhooks/{id}", &["get", "put", "delete"]),
        ("/webhooks/{id}/test", &["post"]),
        ("/webhooks/{id}/deliveries", &["get"]),
    ] {
        for m in methods {
            assert!(paths[path].get(m).is_some(), "{m} {path} not documented");
        }
    }
}

#[test]
fn test_route_delivers_and_deliveries_shows_it() {
    let b = Broker::start();
    let base = b.http_url();
    let ports = PortBlock::take(1);
    let r = WebhookReceiver::start(b.home.path(), ports.range.0, "r", &[]);
    // Subscribed to nothing that happens here: only the test is delivered.
    let (status, created) = send(
        "POST",
        &format!("{base}/webhooks"),
        &json!({"url": format!("http://127.0.0.1:{}/hook", r.port), "events": ["agent.stale"]}),
    );
    assert_eq!(status, 200, "{created}");
    let id = created["webhook"]["id"].as_str().unwrap().to_string();
    let secret = created["secret"].as_str().unwrap().to_string();

    let (status, queued) = curl(&["-X", "POST", &format!("{base}/webhooks/{id}/test")]);
    assert_eq!(status, 200, "{queued}");
    let delivery = queued["delivery"].as_str().unwrap().to_string();
    let got = r.wait_for(1, Duration::from_secs(10));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["headers"]["x-portdaddy-event"], "webhook.test");
    assert_eq!(got[0]["headers"]["x-portdaddy-delivery"], delivery.as_str());
    r.verify(&secret, 0, &[]).unwrap();

    let d = wait_delivered(&base, &id);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0]["id"], delivery.as_str());
    assert_eq!(d[0]["event"], "webhook.test");
    assert_eq!(d[0]["state"], "delivered");
    assert_eq!(d[0]["attempts"][0]["attempt"], 1);
    assert_eq!(d[0]["attempts"][0]["status"], 200);

    // A second test; `limit` keeps the newest.
    let (status, second) = curl(&["-X", "POST", &format!("{base}/webhooks/{id}/test")]);
    assert_eq!(status, 200, "{second}");
    r.wait_for(2, Duration::from_secs(10));
    wait_until(Duration::from_secs(10), || {
        let d = wait_delivered(&base, &id);
        (d.len() == 2).then_some(())
    })
    .expect("two deliveries");
    let (status, newest) = get(&format!("{base}/webhooks/{id}/deliveries?limit=1"));
    assert_eq!(status, 200, "{newest}");
    assert_eq!(newest["webhook"], id.as_str());
    let newest = newest["deliveries"].as_array().unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["id"], second["delivery"]);
}
