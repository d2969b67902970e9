//! The HTTP API over real HTTP: the seeds' curl recipes run unchanged
//! (with the test broker's port for 9876/3030), the refusals each get their
//! status and a JSON error and change nothing, another user needs the
//! token, and a flood of connections neither exhausts the broker's
//! descriptors nor stops its Unix socket.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use pb_tests::{can_bind, command_as, other_user, v4, v6, wait_until, Broker, PortBlock, Proc};
use serde_json::{json, Value};

/// One response: status, raw headers, body as JSON (Null if not JSON).
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: String,
    body: Value,
}

/// Sends one request over a fresh connection and reads the whole reply.
/// `Host: 127.0.0.1:PORT` unless `headers` names a Host.
fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(v4(port)).expect("connect to the HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The broker may refuse before reading a large body: a failed write
    // still leaves its reply to read.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

fn parse(raw: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    Resp {
        status,
        headers: head.to_ascii_lowercase(),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

fn get(port: u16, path: &str) -> Resp {
    request(port, "GET", path, &[], b"")
}

fn post_json(port: u16, method: &str, path: &str, body: Value) -> Resp {
    request(
        port,
        method,
        path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    )
}

/// Runs curl with `args` and returns (status, JSON body).
fn curl(args: &[&str]) -> (u16, Value) {
    curl_as(None, args)
}

/// The same as another user (root only: setpriv).
fn curl_as(user: Option<(u32, u32)>, args: &[&str]) -> (u16, Value) {
    pb_tests::curl_json(user, 10, args)
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{r:?}");
    assert_eq!(r.body["code"], code, "{r:?}");
    assert!(
        r.body["error"].as_str().is_some_and(|m| !m.is_empty()),
        "{r:?}"
    );
    assert!(
        r.headers.contains("content-type: application/json"),
        "{r:?}"
    );
}

fn held(port: u16) -> bool {
    !can_bind(v4(port)) && !can_bind(v6(port))
}

#[test]
fn portmanager_curl_recipes_work_unchanged() {
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    // The README's recipes, with the broker's port for 3030.
    let (status, alloc) = curl(&[
        "-X",
        "POST",
        &format!("http://localhost:{p}/alloc"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"service_name": "my-api", "ttl_seconds": 300}"#,
    ]);
    assert_eq!(status, 200, "{alloc}");
    let port = alloc["port"].as_u64().unwrap() as u16;
    assert!((broker.range.0..=broker.range.1).contains(&port));
    assert_eq!(alloc["lease"]["port"], port);
    assert_eq!(alloc["lease"]["service_name"], "my-api");
    assert_eq!(alloc["lease"]["ttl_seconds"], 300);
    assert!(alloc["lease"]["allocated_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert!(held(port), "the allocated port is held in the kernel");

    let (status, found) = curl(&[&format!("http://localhost:{p}/lookup?service=my-api")]);
    assert_eq!(status, 200);
    assert_eq!(found["service_name"], "my-api");
    assert_eq!(found["port"], port);
    assert_eq!(found["all_ports"], json!([port]));
    assert_eq!(found["lease"]["port"], port);

    // The rest of its API: list, heartbeat (by port and by name), release.
    let list = get(p, "/list");
    assert_eq!(list.status, 200);
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert_eq!(list.body[0]["service_name"], "my-api");
    let before = broker.pb_json(&["find"])["services"][0]["expires_ms"]
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let hb = post_json(p, "POST", "/heartbeat", json!({"port": port}));
    assert_eq!(hb.status, 200, "{hb:?}");
    assert_eq!(hb.body["ttl_seconds"], 300);
    let after = broker.pb_json(&["find"])["services"][0]["expires_ms"]
        .as_u64()
        .unwrap();
    assert!(after > before, "heartbeat renews the TTL");
    let hb = post_json(
        p,
        "POST",
        "/heartbeat",
        json!({"service_name": "my-api", "ttl_seconds": 600}),
    );
    assert_eq!(hb.body["ttl_seconds"], 600, "{hb:?}");
    // PortManager's answer: an empty 200.
    let rel = post_json(p, "POST", "/release", json!({"port": port}));
    assert_eq!(rel.status, 200, "{rel:?}");
    assert_eq!(rel.body, Value::Null, "{rel:?}");
    assert!(rel.headers.contains("content-length: 0"), "{rel:?}");
    assert!(can_bind(v4(port)));
    assert_error(&get(p, "/lookup?service=my-api"), 404, "not_found");
    assert_error(
        &post_json(p, "POST", "/release", json!({"port": port})),
        404,
        "not_found",
    );
    assert_error(
        &post_json(p, "POST", "/heartbeat", json!({"service_name": "my-api"})),
        404,
        "not_found",
    );
    assert!(broker.leases().is_empty());
}

#[test]
fn portmanager_on_3030_allocs_a_second_instance_and_looks_both_up() {
    // PortManager's portctl hard-codes localhost:3030: pb listens there
    // when asked (PB_HTTP_ADDR), and its README's recipes run as written.
    let broker = Broker::start_with(&[("PB_HTTP_ADDR", "localhost:3030")]);
    let alloc = || {
        curl(&[
            "-X",
            "POST",
            "http://localhost:3030/alloc",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"service_name": "my-api", "ttl_seconds": 300}"#,
        ])
    };
    let (s1, a1) = alloc();
    let (s2, a2) = alloc();
    assert_eq!((s1, s2), (200, 200), "{a1} {a2}");
    let (p1, p2) = (a1["port"].as_u64().unwrap(), a2["port"].as_u64().unwrap());
    assert_ne!(p1, p2, "a second alloc is a second instance");
    assert_eq!(a2["lease"]["service_name"], "my-api");
    assert_eq!(a2["lease"]["id"], "my-api.2");
    let lookup = || curl(&["http://localhost:3030/lookup?service=my-api"]);
    let (status, found) = lookup();
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["service_name"], "my-api");
    assert_eq!(found["port"], p1);
    assert_eq!(found["all_ports"], json!([p1, p2]));
    // Both are PortManager's leases of one name, and pb's leases of two ids.
    let list = get(3030, "/list");
    let mut seen: Vec<(String, String)> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["service_name"].as_str().unwrap().to_string(),
                l["id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [("my-api", "my-api"), ("my-api", "my-api.2")].map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // A heartbeat by name renews every instance.
    let hb = post_json(
        3030,
        "POST",
        "/heartbeat",
        json!({"service_name": "my-api", "ttl_seconds": 600}),
    );
    assert_eq!(hb.status, 200, "{hb:?}");
    for l in broker.pb_json(&["find"])["services"].as_array().unwrap() {
        assert_eq!(l["ttl_ms"], 600_000, "{l}");
    }
    // A lease a pb client called my-api.3 is not an instance of my-api.
    broker.claim("my-api.3", &[]);
    assert_eq!(lookup().1["all_ports"], json!([p1, p2]));
    // Releasing one instance by port leaves the other.
    let rel = post_json(3030, "POST", "/release", json!({"port": p1}));
    assert_eq!((rel.status, &rel.body), (200, &Value::Null), "{rel:?}");
    let (_, found) = lookup();
    assert_eq!(found["port"], p2);
    assert_eq!(found["all_ports"], json!([p2]));
    // By name: every instance goes, and only them.
    let (s3, _) = alloc();
    assert_eq!(s3, 200);
    let rel = post_json(3030, "POST", "/release", json!({"service_name": "my-api"}));
    assert_eq!(rel.status, 200, "{rel:?}");
    assert_error(&get(3030, "/lookup?service=my-api"), 404, "not_found");
    assert_eq!(broker.leases().len(), 1, "my-api.3 stays");
    assert_error(
        &post_json(3030, "POST", "/release", json!({"service_name": "my-api"})),
        404,
        "not_found",
    );
    assert_error(&get(3030, "/lookup?service=bad%20name"), 400, "invalid_id");
}

#[test]
fn portmanager_leases_expire_unless_renewed() {
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    let alloc = post_json(
        p,
        "POST",
        "/alloc",
        json!({"service_name": "short", "ttl_seconds": 1, "tags": ["db"]}),
    );
    assert_eq!(alloc.status, 200, "{alloc:?}");
    assert_eq!(alloc.body["lease"]["tags"], json!(["db"]));
    let port = alloc.body["port"].as_u64().unwrap() as u16;
    let gone = wait_until(Duration::from_secs(10), || {
        (get(p, "/lookup?service=short").status == 404).then_some(())
    });
    assert!(gone.is_some(), "a lease past its TTL ends");
    assert!(can_bind(v4(port)), "and its port is free");
}

#[test]
fn port_daddy_service_routes() {
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    let base = format!("http://localhost:{p}");

    let (status, health) = curl(&[&format!("{base}/health")]);
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["active_ports"], 0);
    assert_eq!(health["pid"], broker.pid());
    let (_, version) = curl(&[&format!("{base}/version")]);
    assert_eq!(version["service"], "pb");
    assert!(version["version"].is_string() && version["startedAt"].is_u64());
    // The code hash is the running binary's SHA-256.
    let sum = Command::new("sha256sum")
        .arg(pb_tests::pb_bin())
        .output()
        .unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout);
    assert_eq!(version["codeHash"].as_str(), sum.split_whitespace().next());

    // POST /claim/:id, no body.
    let (status, claim) = curl(&["-X", "POST", &format!("{base}/claim/myapp:api")]);
    assert_eq!(status, 200, "{claim}");
    assert_eq!(claim["success"], true);
    assert_eq!(claim["id"], "myapp:api");
    assert_eq!(claim["existing"], false);
    assert_eq!(claim["status"], "assigned");
    let api = claim["port"].as_u64().unwrap() as u16;
    assert!(held(api));
    // Again: the same lease.
    let (_, again) = curl(&["-X", "POST", &format!("{base}/claim/myapp:api")]);
    assert_eq!(
        (again["port"].as_u64(), again["existing"].as_bool()),
        (Some(api as u64), Some(true))
    );

    // POST /claim with the id and a port in the body, as Port Daddy's SDK
    // sends it, and an expiry in its duration syntax.
    let want = broker.range.1;
    let (status, web) = curl(&[
        "-X",
        "POST",
        &format!("{base}/claim"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &json!({"id": "myapp:web", "port": want, "expires": "2h"}).to_string(),
    ]);
    assert_eq!(status, 200, "{web}");
    assert_eq!(
        (web["port"].as_u64(), web["message"].as_str()),
        (Some(want as u64), Some("assigned preferred port"))
    );
    assert!(web["expiresAt"].is_u64());

    // The same leases over the Unix socket: one core.
    let ids: Vec<String> = broker.leases().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, ["myapp:api", "myapp:web"]);

    let (_, all) = curl(&[&format!("{base}/services")]);
    assert_eq!(
        (all["success"].as_bool(), all["count"].as_u64()),
        (Some(true), Some(2))
    );
    let first = &all["services"][0];
    assert_eq!(first["id"], "myapp:api");
    assert_eq!(first["urls"]["local"], format!("http://localhost:{api}"));
    let (_, some) = curl(&[&format!("{base}/services?pattern=*:web")]);
    assert_eq!(some["count"], 1);
    // Port Daddy's CLI filters (`port-daddy find --port N --status S`).
    let (_, on_port) = curl(&[&format!(
        "{base}/services?port={api}&status=assigned&expired=false"
    )]);
    assert_eq!(on_port["count"], 1, "{on_port}");
    assert_eq!(on_port["services"][0]["id"], "myapp:api");
    let (_, running) = curl(&[&format!("{base}/services?status=running")]);
    assert_eq!(running["count"], 0, "nothing serves these ports");
    assert_error(&get(p, "/services?status=sleeping"), 400, "invalid_request");
    let (status, one) = curl(&[&format!("{base}/services/myapp:web")]);
    assert_eq!(status, 200);
    assert_eq!(one["service"]["port"], want);
    assert_error(&get(p, "/services/nothing:here"), 404, "not_found");

    // DELETE /release/:id, and DELETE /release with the id in the body.
    let (status, rel) = curl(&["-X", "DELETE", &format!("{base}/release/myapp:api")]);
    assert_eq!(status, 200);
    assert_eq!(
        (rel["released"].as_u64(), rel["port"].as_u64()),
        (Some(1), Some(api as u64))
    );
    assert!(can_bind(v4(api)));
    let (status, rel) = curl(&[
        "-X",
        "DELETE",
        &format!("{base}/release"),
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"id": "myapp:*"}"#,
    ]);
    assert_eq!(status, 200);
    assert_eq!(rel["releasedPorts"], json!([want]));
    assert!(broker.leases().is_empty());
    // Releasing what is not there: Port Daddy's 200 with `released: 0`,
    // and nothing changes.
    let (status, rel) = curl(&["-X", "DELETE", &format!("{base}/release/myapp:api")]);
    assert_eq!(status, 200, "{rel}");
    assert_eq!(rel["success"], true);
    assert_eq!(rel["released"], 0);
    assert_eq!(rel["releasedPorts"], json!([]));
    assert!(
        rel["message"].as_str().unwrap().contains("myapp:api"),
        "{rel}"
    );
    assert!(broker.leases().is_empty());
}

#[test]
fn a_client_written_like_port_daddys_sdk_works() {
    let broker = Broker::start();
    let v = pb_tests::node_json("port_daddy_sdk.mjs", &[&broker.http_url(), "sdk:api"]);
    let port = v["claim"]["port"].as_u64().unwrap();
    assert_eq!(
        (
            v["claim"]["success"].as_bool(),
            v["claim"]["existing"].as_bool()
        ),
        (Some(true), Some(false))
    );
    assert_eq!(
        (
            v["again"]["port"].as_u64(),
            v["again"]["existing"].as_bool()
        ),
        (Some(port), Some(true))
    );
    assert_eq!(v["list"]["count"], 1);
    assert_eq!(v["one"]["service"]["port"], port);
    assert_eq!(v["served"], "served by the sdk app");
    assert_eq!(v["released"]["released"], 1);
    assert!(broker.leases().is_empty());
}

#[test]
fn x_pid_names_the_owner_and_is_checked() {
    let broker = Broker::start_with(&[("PB_SCAN_INTERVAL", "100ms")]);
    let p = broker.http_port().unwrap();
    let mut sleeper = Proc(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.pid().to_string();
    let r = request(p, "POST", "/claim/owned", &[("X-PID", &pid)], b"");
    assert_eq!(r.status, 200, "{r:?}");
    let port = r.body["port"].as_u64().unwrap() as u16;
    assert_eq!(
        broker.pb_json(&["find"])["services"][0]["pid"],
        sleeper.pid()
    );
    // Not a live process: refused, nothing claimed.
    let r = request(p, "POST", "/claim/ghost", &[("X-PID", "999999999")], b"");
    assert_error(&r, 400, "invalid_request");
    assert_error(
        &request(p, "POST", "/claim/ghost", &[("X-PID", "abc")], b""),
        400,
        "invalid_request",
    );
    // A client naming itself (as Port Daddy's CLI does: `exec` keeps the
    // shell's pid for curl) is not the owner: the lease outlives it.
    let self_named = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec curl -sS -X POST -H \"X-PID: $$\" http://127.0.0.1:{p}/claim/cli-style"
        ))
        .output()
        .unwrap();
    let body: Value = serde_json::from_slice(&self_named.stdout).unwrap();
    assert_eq!(body["success"], true, "{body}");
    let cli_port = body["port"].as_u64().unwrap() as u16;
    // Two scans later, the curl long gone, the lease and its port remain.
    std::thread::sleep(Duration::from_millis(300));
    let leases = broker.pb_json(&["find", "cli-style"]);
    assert_eq!(leases["services"][0]["pid"], Value::Null, "{leases}");
    assert!(held(cli_port));
    // The owner dies: the lease ends and the port is free.
    sleeper.signal(libc::SIGKILL);
    sleeper.wait_for(Duration::from_secs(5));
    let freed = wait_until(Duration::from_secs(10), || {
        (broker.leases().len() == 1).then_some(())
    });
    assert!(freed.is_some(), "the owner's death ends the lease");
    assert_eq!(broker.leases()[0].0, "cli-style");
    assert!(can_bind(v4(port)));
}

#[test]
fn bad_input_gets_a_json_error_and_changes_nothing() {
    let broker = Broker::start_with(&[("PB_RESERVED", "8000")]);
    let p = broker.http_port().unwrap();
    broker.claim("keep", &[]);
    // The leases themselves, not the scan's view of them (`served` may
    // change between the two reads).
    let state = || {
        let mut v = broker.pb_json(&["find"]);
        for l in v["services"].as_array_mut().unwrap() {
            l.as_object_mut().unwrap().remove("served");
        }
        v
    };
    let before = state();
    let json_h = [("Content-Type", "application/json")];
    let cases: Vec<(Resp, u16, &str)> = vec![
        (
            request(p, "POST", "/alloc", &json_h, b"{not json"),
            400,
            "invalid_request",
        ),
        (
            post_json(p, "POST", "/alloc", json!({"service_name": 5})),
            400,
            "invalid_request",
        ),
        (
            post_json(
                p,
                "POST",
                "/alloc",
                json!({"service_name": "a", "color": "red"}),
            ),
            400,
            "invalid_request",
        ),
        (
            post_json(p, "POST", "/alloc", json!({})),
            400,
            "invalid_request",
        ),
        (
            post_json(p, "POST", "/alloc", json!({"service_name": "bad id!"})),
            400,
            "invalid_id",
        ),
        (
            post_json(
                p,
                "POST",
                "/alloc",
                json!({"service_name": "a", "ttl_seconds": -1}),
            ),
            400,
            "invalid_duration",
        ),
        (
            post_json(
                p,
                "POST",
                "/alloc",
                json!({"service_name": "a", "ttl_seconds": i64::MAX}),
            ),
            400,
            "invalid_duration",
        ),
        (
            post_json(p, "POST", "/release", json!({})),
            400,
            "invalid_request",
        ),
        (
            post_json(p, "POST", "/release", json!({"port": 80})),
            400,
            "invalid_port",
        ),
        (
            post_json(p, "POST", "/claim/a", json!({"port": 70000})),
            400,
            "invalid_port",
        ),
        (
            post_json(p, "POST", "/claim/a", json!({"port": 8000})),
            409,
            "reserved_port",
        ),
        (
            post_json(p, "POST", "/claim/keep", json!({"port": broker.range.1})),
            409,
            "id_conflict",
        ),
        (
            post_json(p, "POST", "/claim/a", json!({"expires": "soon"})),
            400,
            "invalid_duration",
        ),
        (
            post_json(p, "POST", "/claim/a", json!({"id": "b"})),
            400,
            "invalid_request",
        ),
        (
            post_json(p, "POST", "/claim/a", json!({"metadata": [1]})),
            400,
            "invalid_metadata",
        ),
        (
            post_json(p, "POST", "/claim", json!({"port": 3000})),
            400,
            "invalid_request",
        ),
        (
            request(p, "POST", "/claim/1234", &[], b""),
            400,
            "invalid_id",
        ),
        (get(p, "/services?pattern=bad%20id!"), 400, "invalid_id"),
        (get(p, "/services?colour=red"), 400, "invalid_request"),
        (get(p, "/lookup"), 400, "invalid_request"),
        (get(p, "/no-such-route"), 404, "not_found"),
        (get(p, "/services/%FF%FE"), 400, "invalid_request"),
        (get(p, "/claim/a"), 405, "method_not_allowed"),
        (
            post_json(p, "POST", "/heartbeat", json!({"service_name": "keep"})),
            400,
            "invalid_request",
        ),
    ];
    for (r, status, code) in &cases {
        assert_error(r, *status, code);
    }
    assert_eq!(state(), before, "state unchanged");
}

#[test]
fn refused_before_any_route_runs() {
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    let claim_body = br#"{"id":"web"}"#;
    // DNS rebinding: a page's own name in Host.
    assert_error(
        &request(p, "GET", "/health", &[("Host", "evil.example")], b""),
        403,
        "forbidden",
    );
    assert_error(
        &request(
            p,
            "POST",
            "/claim",
            &[
                ("Host", "evil.example:80"),
                ("Content-Type", "application/json"),
            ],
            claim_body,
        ),
        403,
        "forbidden",
    );
    // Another port's name is not ours either.
    assert_error(
        &request(p, "GET", "/health", &[("Host", "localhost:1")], b""),
        403,
        "forbidden",
    );
    // Cross-site requests from a web page.
    for origin in ["https://evil.example", "null", "http://localhost:3000"] {
        assert_error(
            &request(
                p,
                "POST",
                "/claim",
                &[("Origin", origin), ("Content-Type", "application/json")],
                claim_body,
            ),
            403,
            "forbidden",
        );
    }
    // A form or text/plain post, which pages may send anywhere.
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        assert_error(
            &request(p, "POST", "/claim", &[("Content-Type", ct)], claim_body),
            415,
            "unsupported_media_type",
        );
    }
    assert_error(
        &request(p, "POST", "/claim", &[], claim_body),
        415,
        "unsupported_media_type",
    );
    // An oversize body, declared or not.
    let big = format!(
        r#"{{"id":"web","metadata":{{"x":"{}"}}}}"#,
        "a".repeat(70 * 1024)
    );
    assert_error(
        &request(
            p,
            "POST",
            "/claim",
            &[("Content-Type", "application/json")],
            big.as_bytes(),
        ),
        413,
        "too_large",
    );
    let mut s = TcpStream::connect(v4(p)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /claim HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    for _ in 0..3 {
        let chunk = "a".repeat(30 * 1024);
        let _ = s.write_all(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    assert_error(&parse(&raw), 413, "too_large");
    // Our own origin and names pass.
    let ok = request(
        p,
        "POST",
        "/claim",
        &[
            ("Host", &format!("localhost:{p}")),
            ("Origin", &format!("http://localhost:{p}")),
            ("Content-Type", "application/json; charset=utf-8"),
        ],
        claim_body,
    );
    assert_eq!(ok.status, 200, "{ok:?}");
    let ok = request(p, "GET", "/health", &[("Host", &format!("[::1]:{p}"))], b"");
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(
        broker.leases().len(),
        1,
        "only the admitted claim changed state"
    );
}

#[test]
fn slow_clients_are_cut_off() {
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    // Headers that never finish, a body that never finishes, and a
    // connection that never sends anything.
    let mut idle = TcpStream::connect(v4(p)).unwrap();
    let mut headers = TcpStream::connect(v4(p)).unwrap();
    headers
        .write_all(b"GET /health HTTP/1.1\r\nHost: loc")
        .unwrap();
    let mut body = TcpStream::connect(v4(p)).unwrap();
    body.write_all(
        format!("POST /claim HTTP/1.1\r\nHost: localhost:{p}\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{{\"id\"")
            .as_bytes(),
    )
    .unwrap();
    for s in [&idle, &headers, &body] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    }
    let mut raw = Vec::new();
    headers.read_to_end(&mut raw).expect("a reply, then EOF");
    assert_error(&parse(&raw), 408, "timeout");
    // The idle connection is closed without a word.
    let mut raw = Vec::new();
    idle.read_to_end(&mut raw).expect("closed by the broker");
    assert!(raw.is_empty(), "{:?}", String::from_utf8_lossy(&raw));
    let mut raw = Vec::new();
    let _ = body.read_to_end(&mut raw);
    assert_error(&parse(&raw), 408, "timeout");
    assert!(broker.leases().is_empty());
}

#[test]
fn requests_per_second_are_limited_per_user() {
    let broker = Broker::start_with(&[("PB_HTTP_RATE", "5")]);
    let p = broker.http_port().unwrap();
    let statuses: Vec<u16> = (0..40).map(|_| get(p, "/health").status).collect();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited > 0, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let r = get(p, "/health");
    if r.status == 429 {
        assert_error(&r, 429, "limit");
        assert!(r.headers.contains("retry-after: 1"));
    }
    // The Unix socket is not affected.
    broker.pb_ok(&["status"]);
}

#[test]
fn whoami_names_the_caller_from_the_kernel() {
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    let me = unsafe { libc::geteuid() };
    // Whatever a client claims about itself changes nothing.
    let r = request(
        p,
        "GET",
        "/whoami",
        &[("X-PID", "1"), ("X-Agent-Id", "someone")],
        b"",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["peer_uid"], me);
    assert_eq!(r.body["uid"], me);
    assert_eq!(r.body["pid"], std::process::id());
    // From curl: curl's own process.
    let (status, body) = curl(&[&format!("http://[::1]:{p}/whoami")]);
    assert_eq!(status, 200);
    assert!(
        body["command"].as_str().unwrap().starts_with("curl"),
        "{body}"
    );
    assert_ne!(body["pid"], std::process::id());
}

/// The activity log's entries for `action` on `target`.
fn activity(broker: &Broker, action: &str, target: &str) -> Vec<Value> {
    broker
        .pb_ok(&["-j", "log", "--action", action, "--target", target])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn the_activity_log_names_http_callers_from_the_kernel() {
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    broker.pb_ok(&["agent", "register", "http-agent", "--max-services", "1"]);
    // `exec` keeps the shell's pid for curl, so the test knows curl's pid.
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$; exec curl -sS -X POST -H 'X-Agent-Id: http-agent' http://127.0.0.1:{p}/claim/logged"
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let curl_pid: u64 = text.lines().next().unwrap().trim().parse().unwrap();
    let entries = wait_until(Duration::from_secs(10), || {
        let e = activity(&broker, "service.claim", "logged");
        (!e.is_empty()).then_some(e)
    })
    .expect("the claim is logged");
    let actor = &entries[0]["actor"];
    assert_eq!(actor["pid"].as_u64(), Some(curl_pid), "{actor}");
    assert_eq!(actor["uid"], unsafe { libc::geteuid() });
    assert!(
        actor["command"].as_str().unwrap().starts_with("curl"),
        "{actor}"
    );
    // Port Daddy's GET /activity, with its filter names.
    let r = get(p, "/activity?action=claim&targetId=logged&limit=5");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        (r.body["success"].as_bool(), r.body["count"].as_u64()),
        (Some(true), Some(1))
    );
    assert_eq!(
        r.body["entries"][0]["actor"]["pid"].as_u64(),
        Some(curl_pid)
    );
    let r = get(p, "/activity?action=service.*&target=logged");
    assert_eq!(r.body["count"], 1, "{r:?}");
    // (`?follow=1` streams as server-sent events: tests/tests/http_coord.rs.)
    // X-Agent-Id names the agent, whose limits apply as with --agent.
    assert_eq!(actor["agent"], "http-agent");
    let more = request(
        p,
        "POST",
        "/claim/logged2",
        &[("X-Agent-Id", "http-agent")],
        b"",
    );
    assert_error(&more, 429, "limit");
    let unknown = request(
        p,
        "POST",
        "/claim/logged3",
        &[("X-Agent-Id", "nobody")],
        b"",
    );
    assert!(unknown.status >= 400, "{unknown:?}");
    assert_eq!(broker.leases().len(), 1);
}

#[test]
fn openapi_describes_every_route() {
    let broker = Broker::start();
    let doc = get(broker.http_port().unwrap(), "/openapi.json");
    assert_eq!(doc.status, 200);
    assert!(doc.body["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/claim/{id}",
        "/release",
        "/services/{id}",
        "/alloc",
        "/lookup",
        "/health",
    ] {
        assert!(doc.body["paths"][path].is_object(), "{path}");
    }
    assert!(doc.body["components"]["schemas"]["ClaimBody"].is_object());
}

#[test]
fn http_off_binds_nothing() {
    let block = PortBlock::take(100);
    let port = block.range.1;
    let broker = Broker::start_in(block, &[("PB_HTTP_ADDR", "off")]);
    assert_eq!(broker.http_port(), None);
    assert!(can_bind(v4(port)) && can_bind(v6(port)));
    // The Unix socket accepts from its bind on, a moment before the HTTP
    // API's start-up writes its line.
    let said = wait_until(Duration::from_secs(10), || {
        broker.log().contains("HTTP API off").then_some(())
    });
    assert!(said.is_some(), "{}", broker.log());
}

#[test]
fn another_user_needs_the_token() {
    let user = other_user();
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    let token = broker.pb_ok(&["token"]).trim().to_string();
    assert_eq!(token.len(), 64);
    let file = broker.home.path().join("http-token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let url = format!("http://localhost:{p}/claim/shared");
    let (status, body) = curl_as(Some(user), &["-X", "POST", &url]);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, body) = curl_as(
        Some(user),
        &["-X", "POST", &url, "-H", "Authorization: Bearer 00"],
    );
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    let (status, _) = curl_as(Some(user), &[&format!("http://localhost:{p}/services")]);
    assert_eq!(status, 401, "reading needs the token too");
    assert!(
        broker.leases().is_empty(),
        "refused requests change nothing"
    );

    // The scheme is case-insensitive (RFC 9110 §11.1).
    let lower = format!("Authorization: bearer {token}");
    let (status, body) = curl_as(
        Some(user),
        &[&format!("http://localhost:{p}/services"), "-H", &lower],
    );
    assert_eq!(status, 200, "a lower-case scheme is accepted: {body}");
    let auth = format!("Authorization: Bearer {token}");
    // X-PID is checked like --pid: the token holder's own process belongs
    // to another user than the one it acts for, so it cannot own a lease.
    let theirs = Proc(command_as(Some(user), "sleep").arg("30").spawn().unwrap());
    let pid_h = format!("X-PID: {}", theirs.pid());
    let (status, body) = curl_as(Some(user), &["-X", "POST", &url, "-H", &auth, "-H", &pid_h]);
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    drop(theirs);
    let (status, body) = curl_as(Some(user), &["-X", "POST", &url, "-H", &auth]);
    assert_eq!(status, 200, "{body}");
    // The lease is the broker user's, whose token it was.
    let lease = &broker.pb_json(&["find"])["services"][0];
    assert_eq!(lease["id"], "shared");
    assert_eq!(lease["uid"], unsafe { libc::geteuid() });
    // The activity log names the real user, not the one it acted for.
    let logged = wait_until(Duration::from_secs(10), || {
        let e = activity(&broker, "service.claim", "shared");
        (!e.is_empty()).then_some(e)
    })
    .expect("the claim is logged");
    assert_eq!(logged[0]["actor"]["uid"], user.0, "{}", logged[0]);
    // It knows who really called.
    let (_, who) = curl_as(
        Some(user),
        &["-H", &auth, &format!("http://localhost:{p}/whoami")],
    );
    assert_eq!(
        (who["peer_uid"].as_u64(), who["uid"].as_u64()),
        (Some(user.0 as u64), Some(unsafe { libc::geteuid() } as u64))
    );
    assert!(
        who["command"].as_str().unwrap().starts_with("curl"),
        "{who}"
    );
    // The same user without a token is served as itself.
    let (status, _) = curl(&[
        "-X",
        "DELETE",
        &format!("http://localhost:{p}/release/shared"),
    ]);
    assert_eq!(status, 200);
}

#[test]
fn another_users_browser_logs_in_with_a_one_time_url() {
    let user = other_user();
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    let url = broker
        .pb_ok(&["dashboard", "--print-url"])
        .trim()
        .to_string();
    assert!(
        url.starts_with(&format!("http://localhost:{p}/login?code=")),
        "{url}"
    );
    let services = format!("http://localhost:{p}/services");
    let (status, _) = curl_as(Some(user), &[&services]);
    assert_eq!(status, 401);
    // The browser opens the URL: a session cookie comes back.
    let out = command_as(Some(user), "curl")
        .args(["-sS", "--max-time", "10", "-D", "-", &url])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let cookie = text
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap_or_else(|| panic!("no cookie: {text}"));
    assert!(
        cookie.starts_with(&format!("pb_session_{p}="))
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_string();
    // The code worked once only.
    let (status, body) = curl_as(Some(user), &[&url]);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("unauthorized")),
        "{body}"
    );
    // With the cookie, the other user's browser is served as the broker's user.
    let cookie_h = format!("Cookie: {session}");
    let (status, body) = curl_as(Some(user), &["-H", &cookie_h, &services]);
    assert_eq!(status, 200, "{body}");
    let (status, _) = curl_as(
        Some(user),
        &[
            "-X",
            "POST",
            "-H",
            &cookie_h,
            &format!("http://localhost:{p}/claim/from-browser"),
        ],
    );
    assert_eq!(status, 200);
    assert_eq!(broker.leases()[0].0, "from-browser");
    let made_up = format!("Cookie: pb_session_{p}=0000");
    let (status, _) = curl_as(Some(user), &["-H", &made_up, &services]);
    assert_eq!(status, 401, "a made-up session is nothing");
    // The session is that uid's: the same cookie from another uid (here
    // root, which needs none for the API) does not open the dashboard.
    let page = |who: Option<(u32, u32)>| {
        let out = command_as(who, "curl")
            .args(["-sS", "--max-time", "10", "-H", &cookie_h])
            .arg(format!("http://localhost:{p}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        page(Some(user)).contains("dashboard/app.js"),
        "its own browser gets the app"
    );
    assert!(
        page(None).contains("Log in to pb"),
        "a replay from another uid gets the login page"
    );
    // With HTTP off there is no URL to give.
    let off = Broker::start_with(&[("PB_HTTP_ADDR", "off")]);
    let out = off.pb(&["dashboard", "--print-url"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn two_thousand_connections_neither_exhaust_descriptors_nor_stop_the_unix_socket() {
    use nix_free_rlimit::raise_nofile;
    raise_nofile(4096);
    let broker = Broker::start_with(&[("PB_HTTP_MAX_CONNECTIONS", "256")]);
    let p = broker.http_port().unwrap();
    let fds = |pid: u32| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    let idle = fds(broker.pid());
    let mut conns = Vec::with_capacity(2000);
    for i in 0..2000 {
        let s = TcpStream::connect(if i % 2 == 0 { v4(p) } else { v6(p) }).expect("connect");
        conns.push(s);
    }
    // A refused connection is told why; once the last one is, every
    // connection has been accepted and judged.
    let last = conns.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut raw = Vec::new();
    last.read_to_end(&mut raw).expect("a reply, then EOF");
    assert_error(&parse(&raw), 429, "limit");
    // While all are open, the Unix socket answers and the broker holds a
    // bounded number of descriptors.
    let status = broker.pb_json(&["status"]);
    assert_eq!(status["pid"], broker.pid());
    let held = fds(broker.pid());
    assert!(
        held <= idle + 256 + 64,
        "broker holds {held} descriptors (idle {idle}, HTTP limit 256)"
    );
    drop(conns);
    let back = wait_until(Duration::from_secs(20), || {
        (get(p, "/health").status == 200).then_some(())
    });
    assert!(back.is_some(), "HTTP serves again once the flood is gone");
    let settled = wait_until(Duration::from_secs(20), || {
        (fds(broker.pid()) <= idle + 8).then_some(())
    });
    assert!(
        settled.is_some(),
        "descriptors return: {} vs {idle}",
        fds(broker.pid())
    );
}

mod nix_free_rlimit {
    /// Raises this process's soft RLIMIT_NOFILE to at least `want` (within
    /// the hard limit), for tests that open many sockets.
    pub fn raise_nofile(want: u64) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain getrlimit/setrlimit on a struct we own.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            if lim.rlim_cur < want {
                lim.rlim_cur = want.min(lim.rlim_max);
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
            }
            assert!(
                lim.rlim_cur >= want,
                "hard open-file limit {} is below {want}",
                lim.rlim_max
            );
        }
    }
}

/// Issue 14, defect 6: a request that names its Host (or Origin, or its
/// body's type or length, or its credentials) twice is refused with a 400
/// before any route runs: the check and the route could read different
/// copies. A header line hundreds of KB long gets a 431.
#[test]
fn doubled_deciding_headers_and_huge_header_lines_are_refused() {
    let broker = Broker::start();
    let p = broker.http_port().unwrap();
    let me = format!("127.0.0.1:{p}");
    let origin = format!("http://localhost:{p}");
    for headers in [
        vec![("Host", me.as_str()), ("Host", "evil.com")],
        vec![("Host", "evil.com"), ("Host", me.as_str())],
        vec![("Origin", origin.as_str()), ("Origin", "http://evil.com")],
        vec![
            ("Content-Type", "application/json"),
            ("Content-Type", "text/plain"),
        ],
        vec![("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
    ] {
        let r = request(p, "POST", "/claim/doubled", &headers, b"");
        assert_error(&r, 400, "invalid_request");
        assert!(
            r.body["error"].as_str().unwrap().contains("more than once"),
            "{headers:?}: {r:?}"
        );
    }
    assert!(broker.leases().is_empty(), "nothing was claimed");
    let huge = "x".repeat(512 * 1024);
    let r = request(p, "GET", "/services", &[("X-Huge", huge.as_str())], b"");
    assert_eq!(r.status, 431, "{r:?}");
    // The broker still serves.
    assert_eq!(get(p, "/services").status, 200);
}

/// A request over a Unix socket, as Port Daddy's clients make it when
/// PORT_DADDY_SOCK exists: (status, JSON body).
fn unix_request(sock: &std::path::Path, method: &str, path: &str, body: &str) -> Resp {
    let mut s = std::os::unix::net::UnixStream::connect(sock).expect("connect to PORT_DADDY_SOCK");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    parse(&raw)
}

#[test]
fn port_daddy_sock_serves_the_api_on_a_unix_socket_with_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("port-daddy.sock");
    let sock_s = sock.display().to_string();
    let broker = Broker::start_with(&[("PORT_DADDY_SOCK", &sock_s)]);
    let status = broker.pb_json(&["status"]);
    assert_eq!(status["http_socket"], sock_s.as_str(), "{status}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "private from birth");
    // Claims and reads over it, as over TCP.
    let r = unix_request(&sock, "POST", "/claim/sock:api", "{}");
    assert_eq!(r.status, 200, "{r:?}");
    let port = r.body["port"].as_u64().unwrap() as u16;
    assert_eq!(broker.leases(), vec![("sock:api".to_string(), port)]);
    // The caller is the kernel's (SO_PEERCRED), whatever it says.
    let me = unsafe { libc::geteuid() };
    let mut s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.write_all(
        b"GET /whoami HTTP/1.1\r\nHost: localhost\r\nX-PID: 1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let who = parse(&raw);
    assert_eq!(who.body["uid"], me, "{who:?}");
    assert_eq!(who.body["pid"], std::process::id(), "{who:?}");
    // curl and node, the way Port Daddy's CLI and SDK reach it.
    let out = Command::new("curl")
        .args([
            "-s",
            "--unix-socket",
            &sock_s,
            "http://localhost/services/sock:api",
        ])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["service"]["port"], port, "{v}");
    let node = format!(
        "require('http').get({{socketPath: {sock_s:?}, path: '/whoami'}}, r => {{ let b = ''; \
         r.on('data', d => b += d); r.on('end', () => console.log(b)); }})"
    );
    let out = Command::new("node").args(["-e", &node]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(v["command"].as_str().unwrap().starts_with("node"), "{v}");
    // The same checks: a bad body is the same error.
    let r = unix_request(&sock, "POST", "/claim/sock:bad", "{\"port\": 70000}");
    assert_error(&r, 400, "invalid_port");
    // A clean stop removes the socket.
    let mut broker = broker;
    broker.pb_ok(&["stop"]);
    assert!(broker.exited(Duration::from_secs(10)).is_some());
    assert!(!sock.exists());
}

#[test]
fn a_port_daddy_sock_that_is_not_ours_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file, a socket another server listens on, another user's
    // socket: each refused with its reason, and left as it was.
    let file = dir.path().join("file.sock");
    std::fs::write(&file, "not a socket").unwrap();
    let live = dir.path().join("live.sock");
    let _listening = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let theirs = dir.path().join("theirs.sock");
    drop(std::os::unix::net::UnixListener::bind(&theirs).unwrap());
    let (uid, gid) = other_user();
    std::os::unix::fs::chown(&theirs, Some(uid), Some(gid)).unwrap();
    for (path, why) in [
        (&file, "is not a socket"),
        (&live, "another server listens on it"),
        (&theirs, "not this process's user"),
    ] {
        let shown = path.display().to_string();
        let before = std::fs::symlink_metadata(path).unwrap();
        let broker = Broker::start_with(&[("PORT_DADDY_SOCK", &shown)]);
        let status = broker.pb_json(&["status"]);
        let off = status["http_socket_off"].as_str().unwrap_or_default();
        assert!(
            off.contains("PORT_DADDY_SOCK") && off.contains(why),
            "{status}"
        );
        assert!(status["http_socket"].is_null());
        // The broker serves everything else.
        assert!(broker.http_port().is_some());
        broker.claim("still:works", &[]);
        drop(broker);
        let after = std::fs::symlink_metadata(path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (before.ino(), before.uid()),
            (after.ino(), after.uid()),
            "{shown}"
        );
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a socket");
    // A socket of ours nobody listens on (a broker that died) is taken over.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let shown = stale.display().to_string();
    let broker = Broker::start_with(&[("PORT_DADDY_SOCK", &shown)]);
    assert_eq!(broker.pb_json(&["status"])["http_socket"], shown.as_str());
    assert_eq!(unix_request(&stale, "GET", "/services", "").status, 200);
}
