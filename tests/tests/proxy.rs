//! The named-URL proxy (docs/PROXY.md) with real servers and clients:
//! curl by name over HTTP/1.1 and HTTP/2 with pb's CA, python and node
//! apps under `pb exec`, WebSockets with the `ws` package, server-sent
//! events as they are written, routes that follow a death at once, a
//! stranger on a lease's port, another user's broker, and every bad input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_tests::*;
use serde_json::Value;

fn backend() -> String {
    tests_dir()
        .join("servers/proxy_backend.py")
        .display()
        .to_string()
}

/// `pb exec ID -- python3 proxy_backend.py NAME`, waited for until the
/// proxy reaches it by `host`.
fn python_app(broker: &Broker, id: &str, name: &str, host: &str) -> (Proc, u16) {
    let run = broker.exec(&[id, "--", "python3", &backend(), name]);
    let proxy = broker.proxy_port().unwrap();
    let url = format!("http://{host}:{proxy}/");
    let up = wait_until(Duration::from_secs(10), || {
        let (code, v) = curl_json(None, 5, &[&url]);
        (code == 200 && v["server"] == name).then_some(())
    });
    assert!(
        up.is_some(),
        "{url} never reached {name}; log:\n{}",
        broker.log()
    );
    run
}

/// curl with `args` (at most 10 s): the status, the body, curl's exit code
/// and what `-w` printed after the body's last newline.
fn curl(args: &[&str]) -> (u16, String, i32) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        out.status.code().unwrap_or(-1),
    )
}

/// One raw HTTP/1.1 exchange on 127.0.0.1:`port`: what the proxy answered,
/// whole, until it closed or 5 s passed.
fn raw(port: u16, request: &[u8]) -> String {
    let mut s = TcpStream::connect(v4(port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn ca(broker: &Broker) -> String {
    broker.pb_json(&["status"])["proxy"]["ca"]
        .as_str()
        .expect("the proxy runs, with a CA")
        .to_string()
}

#[test]
fn curl_reaches_python_and_node_apps_by_name_over_http1_and_http2() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let (mut py, py_port) = python_app(&broker, "myapp:api", "py-api", "api.myapp.localhost");
    let node = tests_dir().join("realapps/node_port.js");
    let (mut js, js_port) = broker.exec(&["myapp:web", "--", "node", &node.display().to_string()]);
    assert_ne!(py_port, js_port);

    // The python app, by name: Host kept, X-Forwarded-* added.
    let url = format!("http://api.myapp.localhost:{proxy}/some/path?q=1");
    let (code, v) = curl_json(None, 5, &[&url]);
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["server"], "py-api");
    assert_eq!(v["path"], "/some/path?q=1");
    let h = &v["headers"];
    assert_eq!(h["host"], format!("api.myapp.localhost:{proxy}"));
    assert_eq!(
        h["x-forwarded-host"],
        format!("api.myapp.localhost:{proxy}")
    );
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");

    // The node app, by name.
    let body = wait_until(Duration::from_secs(10), || {
        let (code, body, _) = curl(&[&format!("http://web.myapp.localhost:{proxy}/")]);
        (code == 200).then_some(body)
    })
    .expect("the node app through the proxy");
    assert!(body.starts_with("nodeport pid="), "{body}");

    // HTTPS with pb's CA: HTTP/2 by ALPN, and HTTP/1.1 when asked.
    let ca = ca(&broker);
    let https = format!("https://api.myapp.localhost:{proxy}/tls");
    let version = |extra: &[&str]| -> String {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .args(["--cacert", &ca])
            .args(extra)
            .arg(&https)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(version(&[]), "2 200", "HTTP/2 by ALPN");
    assert_eq!(version(&["--http1.1"]), "1.1 200");
    let (code, body, _) = curl(&["--cacert", &ca, &https]);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(v["headers"]["host"], format!("api.myapp.localhost:{proxy}"));
    // Without the CA, curl refuses the certificate: it is pb's, not a
    // public one.
    let (_, _, exit) = curl(&[&https]);
    assert_eq!(exit, 60, "an unknown issuer");

    // A streamed request body, over HTTP/2, arrives whole.
    let dir = tempfile::tempdir().unwrap();
    let blob = dir.path().join("blob");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
    std::fs::write(&blob, &data).unwrap();
    let (code, body, _) = curl(&[
        "--cacert",
        &ca,
        "--data-binary",
        &format!("@{}", blob.display()),
        &format!("https://api.myapp.localhost:{proxy}/echo"),
    ]);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["length"], data.len());
    let sum = Command::new("sha256sum").arg(&blob).output().unwrap();
    let sum = String::from_utf8_lossy(&sum.stdout).into_owned();
    assert_eq!(v["sha256"].as_str(), sum.split_whitespace().next());

    // pb url and pb find show the names.
    assert_eq!(
        broker.pb_ok(&["url", "myapp:api"]).trim(),
        format!("http://api.myapp.localhost:{proxy}")
    );
    let table = broker.pb_ok(&["find"]);
    assert!(
        table.contains("NAME") && table.contains("web.myapp.localhost"),
        "{table}"
    );
    // The list page names both.
    let (code, body, _) = curl(&[&format!("http://localhost:{proxy}/")]);
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api.myapp.localhost", "web.myapp.localhost"]);

    py.signal(libc::SIGTERM);
    js.signal(libc::SIGTERM);
    assert!(py.wait_for(Duration::from_secs(10)).is_some());
    assert!(js.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn aliases_route_and_bad_or_taken_names_are_refused_with_nothing_changed() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let (mut app, port) = broker.exec(&[
        "docs:site",
        "--name",
        "handbook",
        "--name",
        "Manual.Docs.localhost",
        "--",
        "python3",
        &backend(),
        "docs",
    ]);
    for host in [
        "site.docs.localhost",
        "handbook.localhost",
        "manual.docs.localhost",
    ] {
        let url = format!("http://{host}:{proxy}/");
        let ok = wait_until(Duration::from_secs(10), || {
            let (code, v) = curl_json(None, 5, &[&url]);
            (code == 200 && v["server"] == "docs").then_some(())
        });
        assert!(ok.is_some(), "{host}");
    }
    let lease = broker.pb_json(&["lookup", "docs:site"]);
    assert_eq!(
        lease["names"],
        serde_json::json!([
            "site.docs.localhost",
            "handbook.localhost",
            "manual.docs.localhost"
        ])
    );
    assert_eq!(lease["port"], port);
    // The claim's event records the names it routes.
    let claims = broker.activity(&["--action", "service.claim", "--target", "docs:site"]);
    assert!(
        claims
            .iter()
            .any(|e| e["details"]["names"][1] == "handbook.localhost"),
        "{claims:?}"
    );

    // A name that is not a label, and a name another lease has.
    for (bad, code, exit) in [
        ("under_score", "invalid_name", 2),
        ("-dash", "invalid_name", 2),
        ("a..b", "invalid_name", 2),
        ("handbook", "name_taken", 5),
        ("site.docs", "name_taken", 5),
    ] {
        let out = broker.pb(&["-j", "claim", "other:svc", &format!("--name={bad}")]);
        assert_eq!(out.status.code(), Some(exit), "{bad}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["code"], code, "{bad}: {v}");
    }
    let nine: Vec<String> = (0..9)
        .flat_map(|i| ["--name".into(), format!("n{i}")])
        .collect();
    let mut args = vec!["-j", "claim", "other:svc"];
    args.extend(nine.iter().map(String::as_str));
    assert_eq!(broker.pb(&args).status.code(), Some(2), "at most 8 names");
    // Nothing was claimed by the refusals.
    assert!(broker.pb_json(&["find"])["services"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["id"] != "other:svc"));
    // Over HTTP too, the same rule: Port Daddy's claim route.
    let (code, v) = curl_json(
        None,
        5,
        &[
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"id": "third:svc"}"#,
            &format!("{}/claim", broker.http_url()),
        ],
    );
    assert_eq!(code, 200, "{v}");

    // A release takes the aliases with it; another lease may then have one.
    app.signal(libc::SIGTERM);
    assert!(app.wait_for(Duration::from_secs(10)).is_some());
    let gone = wait_until(Duration::from_secs(5), || {
        let (code, _) = curl_json(None, 5, &[&format!("http://handbook.localhost:{proxy}/")]);
        (code == 404).then_some(())
    });
    assert!(gone.is_some());
    broker.claim("other:svc", &["--name", "handbook"]);
    assert_eq!(
        broker.pb_json(&["lookup", "other:svc"])["names"],
        serde_json::json!(["svc.other.localhost", "handbook.localhost"])
    );
}

#[test]
fn websockets_echo_both_ways_and_close_cleanly_through_the_proxy() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let server = tests_dir().join("servers/ws_echo.js");
    let (mut ws, _) = broker.exec(&["chat:ws", "--", "node", &server.display().to_string()]);
    let url = format!("ws://ws.chat.localhost:{proxy}/socket");
    let v = wait_until(Duration::from_secs(10), || {
        let out = Command::new("node")
            .arg(tests_dir().join("clients/ws_client.mjs"))
            .args([&url, "one", "two", "three"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
            .flatten()
    })
    .expect("a WebSocket through the proxy");
    let got = v["got"].as_array().unwrap();
    let hello: Value = serde_json::from_str(got[0].as_str().unwrap()).unwrap();
    assert_eq!(hello["host"], format!("ws.chat.localhost:{proxy}"));
    assert_eq!(hello["xfp"], "http");
    assert_eq!(&got[1..], ["one", "two", "three"]);
    assert_eq!(v["code"], 1000, "a clean close: {v}");
    assert_eq!(v["reason"], "done");
    ws.signal(libc::SIGTERM);
    assert!(ws.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn a_websocket_that_never_reads_holds_nothing_of_the_proxy_but_its_socket() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let server = tests_dir().join("servers/ws_echo.js");
    let (mut ws, _) = broker.exec(&["flood:ws", "--", "node", &server.display().to_string()]);
    let (mut py, _) = python_app(&broker, "flood:api", "api", "api.flood.localhost");
    let rss = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    // A raw client: upgrade, ask for the flood, then never read again.
    let mut s = wait_until(Duration::from_secs(10), || {
        let mut s = TcpStream::connect(v4(proxy)).ok()?;
        let req = format!(
            "GET / HTTP/1.1\r\nHost: ws.flood.localhost:{proxy}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        (&head == b"HTTP/1.1 101").then_some(s)
    })
    .expect("an upgraded connection");
    // A masked text frame "flood" (client frames are masked).
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | 5];
    frame.extend_from_slice(&mask);
    frame.extend(b"flood".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).unwrap();
    let before = rss();
    std::thread::sleep(Duration::from_secs(2));
    // Others are served meanwhile, at once.
    let t = Instant::now();
    let (code, v) = curl_json(None, 5, &[&format!("http://api.flood.localhost:{proxy}/")]);
    assert_eq!((code, v["server"].as_str()), (200, Some("api")));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The backend pushed far more than the proxy holds: bounded buffers
    // pass back-pressure on instead of keeping it.
    let after = rss();
    assert!(
        after < before + 16 * 1024,
        "the broker grew from {before} kB to {after} kB"
    );
    drop(s);
    ws.signal(libc::SIGTERM);
    py.signal(libc::SIGTERM);
    assert!(ws.wait_for(Duration::from_secs(10)).is_some());
    assert!(py.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn server_sent_events_arrive_as_they_are_written() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let (mut app, _) = python_app(&broker, "live:feed", "feed", "feed.live.localhost");
    let mut s = TcpStream::connect(v4(proxy)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /sse HTTP/1.1\r\nHost: feed.live.localhost:{proxy}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while seen.len() < 3 {
        let n = s.read(&mut chunk).expect("the stream goes on");
        assert!(n > 0, "closed after {seen:?}");
        let arrived = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            * 1000.0;
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        for line in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            let v: Value = serde_json::from_str(line).unwrap();
            if seen.iter().all(|(n, _)| *n != v["n"]) {
                seen.push((v["n"].clone(), arrived - v["sent_ms"].as_f64().unwrap()));
            }
        }
    }
    for (n, late) in &seen {
        assert!(
            *late < 50.0,
            "event {n} arrived {late:.1} ms after it was written"
        );
    }
    app.signal(libc::SIGTERM);
    assert!(app.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn a_killed_service_is_never_served_by_the_next_process_on_its_port() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let (mut run, port) = python_app(&broker, "myapp:api", "first", "api.myapp.localhost");
    let url = format!("http://api.myapp.localhost:{proxy}/");
    let app = process_tree(run.pid())
        .into_iter()
        .map(|(pid, _)| pid)
        .find(|pid| *pid != run.pid())
        .expect("the app under pb exec");
    let killed = Instant::now();
    unsafe { libc::kill(app as i32, libc::SIGKILL) };
    let answer = wait_until(Duration::from_secs(5), || {
        let (code, body, _) = curl(&[&url]);
        (code != 200).then_some((code, body))
    })
    .expect("the name stops answering");
    let took = killed.elapsed();
    assert!(matches!(answer.0, 502 | 404), "{answer:?}");
    assert!(took < Duration::from_millis(100), "{took:?}");
    assert!(run.wait_for(Duration::from_secs(10)).is_some());
    // A stranger takes the freed port: the name leads to the list, never
    // to it.
    let mut stranger = foreign_http_server(port);
    wait_until(Duration::from_secs(10), || {
        TcpStream::connect(v4(port)).ok()
    })
    .expect("the stranger listens");
    for _ in 0..20 {
        let (code, body, _) = curl(&[&url]);
        assert_eq!(code, 404, "{body}");
        assert!(!body.contains("Directory listing"), "{body}");
    }
    stranger.signal(libc::SIGKILL);
    assert!(stranger.wait_for(Duration::from_secs(10)).is_some());
    // A new claim of the same id is routed again.
    let (mut again, _) = python_app(&broker, "myapp:api", "second", "api.myapp.localhost");
    again.signal(libc::SIGTERM);
    assert!(again.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn a_stranger_on_a_leased_port_and_another_users_leases_are_not_routed() {
    let (uid, gid) = other_user();
    let broker = Broker::start_as(uid, gid, &[]);
    let proxy = broker.proxy_port().unwrap();
    // A number-only lease of the broker's user; the test (root, another
    // user) slips a listener onto its port over the placeholder.
    let out = command_as(Some((uid, gid)), pb_bin())
        .envs(broker.env().iter().map(|(k, v)| (k, v)))
        .args(["claim", "their:web", "-q", "--keep"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    // The placeholder is bound, not listening: a bind with SO_REUSEADDR
    // steps over it, as an app's own bind of a number-only lease does (and
    // as Rust's TcpListener::bind sets).
    let stranger = std::net::TcpListener::bind(v4(port)).expect("over the placeholder");
    let url = format!("http://web.their.localhost:{proxy}/");
    let (code, body, _) = curl(&[&url]);
    assert_eq!(code, 502, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "foreign_listener", "{v}");
    assert!(v["error"].as_str().unwrap().contains("uid 0"), "{v}");
    // The stranger never saw a request.
    stranger.set_nonblocking(true).unwrap();
    let mut pending = 0;
    while let Ok((mut c, _)) = stranger.accept() {
        c.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = [0u8; 16];
        assert!(
            !matches!(c.read(&mut b), Ok(n) if n > 0),
            "the stranger got bytes"
        );
        pending += 1;
    }
    assert!(pending <= 1);

    // Root's own broker and lease: the other user's proxy does not know it.
    let mine = Broker::start();
    let (mut run, _) = python_app(&mine, "mine:api", "mine", "api.mine.localhost");
    let (code, body, _) = curl(&[&format!("http://api.mine.localhost:{proxy}/")]);
    assert_eq!(code, 404, "{body}");
    run.signal(libc::SIGTERM);
    assert!(run.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn requests_the_proxy_refuses_get_a_status_and_a_code_and_others_are_still_served() {
    let broker = Broker::start_with(&[("PB_PROXY_TIMEOUT", "500ms")]);
    let proxy = broker.proxy_port().unwrap();
    let (mut app, _) = python_app(&broker, "bad:api", "api", "api.bad.localhost");
    let served = || {
        let (code, v) = curl_json(None, 5, &[&format!("http://api.bad.localhost:{proxy}/")]);
        assert_eq!((code, v["server"].as_str()), (200, Some("api")), "{v}");
    };
    // No Host at all (HTTP/1.0 may omit it).
    let r = raw(proxy, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(r.contains("no Host header"), "{r}");
    // A Host for another domain, and an absolute-form request to another
    // host: not an open proxy.
    let r = raw(
        proxy,
        b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 421, "{r}");
    assert!(r.contains("not_ours"), "{r}");
    let r = raw(
        proxy,
        format!("GET http://example.com/ HTTP/1.1\r\nHost: api.bad.localhost:{proxy}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&r), 421, "{r}");
    assert!(r.contains("not an open proxy"), "{r}");
    let r = raw(
        proxy,
        b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 421, "{r}");
    let r = raw(
        proxy,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    );
    assert_eq!(status_of(&r), 405, "{r}");
    let r = raw(
        proxy,
        b"GET / HTTP/1.1\r\nHost: bad host!\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    // Two Hosts: which one would the backend believe?
    let r = raw(
        proxy,
        b"GET / HTTP/1.1\r\nHost: api.bad.localhost\r\nHost: other.localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(r.contains("more than one Host"), "{r}");
    // An unknown name: 404 and the list of names, as a page for browsers.
    let (code, body, _) = curl(&[
        "-H",
        "Accept: text/html",
        &format!("http://nope.localhost:{proxy}/"),
    ]);
    assert_eq!(code, 404);
    assert!(
        body.contains("api.bad.localhost") && body.contains("<a href"),
        "{body}"
    );
    // Oversized headers: 431.
    let big = "x".repeat(70 * 1024);
    let r = raw(
        proxy,
        format!("GET / HTTP/1.1\r\nHost: api.bad.localhost\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert_eq!(status_of(&r), 431, "{}", &r[..r.len().min(200)]);
    served();
    // A backend that hangs: 504 after PB_PROXY_TIMEOUT, naming the process.
    let t = Instant::now();
    let (code, body, _) = curl(&[&format!("http://api.bad.localhost:{proxy}/hang")]);
    assert_eq!(code, 504, "{body}");
    assert!(
        body.contains("backend_timeout") && body.contains("pid"),
        "{body}"
    );
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    served();
    // A backend that closes mid-response: the client sees the cut (curl's
    // exit 18, a partial transfer), not a whole answer.
    let (code, body, exit) = curl(&[&format!("http://api.bad.localhost:{proxy}/cut")]);
    assert_eq!((code, exit), (200, 18), "{body}");
    served();
    // A leased service nothing serves: 502 naming what was expected.
    broker.claim("idle:svc", &["--keep"]);
    let (code, body, _) = curl(&[&format!("http://svc.idle.localhost:{proxy}/")]);
    assert_eq!(code, 502, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["code"], "not_serving");
    assert!(v["error"].as_str().unwrap().contains("idle:svc"), "{v}");
    served();
    app.signal(libc::SIGTERM);
    assert!(app.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn slow_clients_and_too_many_connections_are_cut_off() {
    pb_platform::raise_open_file_limit().unwrap();
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let (mut app, _) = python_app(&broker, "busy:api", "api", "api.busy.localhost");
    // A client that starts its headers and never finishes: closed after
    // 10 s with a 408.
    let mut slow = TcpStream::connect(v4(proxy)).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: api.busy").unwrap();
    let slow_started = Instant::now();
    // Fill every slot but the slow client's.
    let mut held = Vec::new();
    for _ in 0..511 {
        held.push(TcpStream::connect(v4(proxy)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(300));
    let r = raw(proxy, b"GET / HTTP/1.1\r\nHost: api.busy.localhost\r\n\r\n");
    assert_eq!(status_of(&r), 503, "{r}");
    drop(held);
    let ok = wait_until(Duration::from_secs(5), || {
        let (code, _) = curl_json(None, 5, &[&format!("http://api.busy.localhost:{proxy}/")]);
        (code == 200).then_some(())
    });
    assert!(ok.is_some(), "served again once the connections closed");
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut out = Vec::new();
    let _ = slow.read_to_end(&mut out);
    let waited = slow_started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(14),
        "{waited:?}"
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || status_of(&text) == 408, "{text}");
    app.signal(libc::SIGTERM);
    assert!(app.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn pb_trust_adds_the_ca_to_a_throwaway_system_store_and_nss_db_and_removes_it() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let root = tempfile::tempdir().unwrap();
    let nss = tempfile::tempdir().unwrap();
    let nssdb = format!("sql:{}", nss.path().display());
    let made = Command::new("certutil")
        .args(["-N", "-d", &nssdb, "--empty-password"])
        .status()
        .expect("certutil (libnss3-tools)");
    assert!(made.success());
    // A store as a system has it: another authority in it already (the
    // bundle is only rewritten around what remains).
    let local = root.path().join("usr/local/share/ca-certificates");
    std::fs::create_dir_all(&local).unwrap();
    self_signed_cert(
        "/CN=another CA",
        &local.join("another.crt"),
        &root.path().join("other.key"),
        &[],
    );
    let root_s = root.path().display().to_string();
    let nss_s = nss.path().display().to_string();
    let out = broker.pb(&["-j", "trust", "--root", &root_s, "--nss-db", &nss_s]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{report}");
    assert!(steps.iter().all(|s| s["done"] == true), "{report}");
    // The system store's bundle now holds pb's CA: curl with only that
    // bundle trusts the proxy's certificates.
    let bundle = root.path().join("etc/ssl/certs/ca-certificates.crt");
    let ca_pem = std::fs::read_to_string(ca(&broker)).unwrap();
    let bundle_text = std::fs::read_to_string(&bundle).unwrap();
    assert!(
        bundle_text.contains(ca_pem.trim()),
        "the CA is in the bundle"
    );
    let (mut app, _) = python_app(&broker, "tls:api", "api", "api.tls.localhost");
    let (code, body, _) = curl(&[
        "--cacert",
        &bundle.display().to_string(),
        &format!("https://api.tls.localhost:{proxy}/"),
    ]);
    assert_eq!(code, 200, "{body}");
    // The NSS database lists it as a trusted CA.
    let listed = Command::new("certutil")
        .args(["-L", "-d", &nssdb])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains("pb-local-ca-") && listed.contains("C,,"),
        "{listed}"
    );
    // The CA may sign names under localhost only, and no IP address.
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", &ca(&broker)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let constraints = text
        .split("Name Constraints: critical")
        .nth(1)
        .expect("critical constraints");
    assert!(constraints.contains("DNS:localhost"), "{text}");
    assert!(
        constraints.contains("Excluded:") && constraints.contains("IP:0.0.0.0"),
        "{text}"
    );
    // The human report says what was done.
    let human = broker.pb_ok(&["trust", "--root", &root_s, "--nss-db", &nss_s]);
    assert!(
        human.contains("system") && human.contains("nss") && human.contains("ok"),
        "{human}"
    );

    // --remove undoes both, and says so.
    let out = broker.pb(&[
        "-j", "trust", "--remove", "--root", &root_s, "--nss-db", &nss_s,
    ]);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    let bundle_text = std::fs::read_to_string(&bundle).unwrap();
    assert!(
        !bundle_text.contains(ca_pem.trim()),
        "the CA left the bundle"
    );
    let listed = Command::new("certutil")
        .args(["-L", "-d", &nssdb])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("pb-local-ca-"));
    // Removing again is not an error: there is nothing to remove.
    let out = broker.pb(&[
        "-j", "trust", "--remove", "--root", &root_s, "--nss-db", &nss_s,
    ]);
    assert!(out.status.success());
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.to_string().contains("was not there"), "{report}");
    // A store that cannot be written says what to run instead, and fails.
    let out = broker.pb(&["-j", "trust", "--no-system", "--nss-db", "/nonexistent/db"]);
    assert_eq!(out.status.code(), Some(1));
    app.signal(libc::SIGTERM);
    assert!(app.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
fn the_proxy_takes_its_sockets_from_socket_activation() {
    // The way systemd starts a socket-activated unit: the sockets bound
    // already at fd 3 on, LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES set for the
    // process that execs pb. The test binds two ports as the system would
    // bind 80 and 443.
    let block = PortBlock::take(200);
    let (http, https) = (block.range.0, block.range.0 + 1);
    let home = tempfile::tempdir().unwrap();
    let launcher = format!(
        r#"
import os, socket, sys
a = socket.socket(); a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.bind(("127.0.0.1", {http})); a.listen(64)
b = socket.socket(); b.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
b.bind(("127.0.0.1", {https})); b.listen(64)
os.dup2(a.fileno(), 3); os.dup2(b.fileno(), 4)
os.set_inheritable(3, True); os.set_inheritable(4, True)
os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="proxy-http:proxy-https")
os.execv(sys.argv[1], [sys.argv[1], "daemon"])
"#
    );
    let daemon = Command::new("python3")
        .args(["-c", &launcher, &pb_bin().display().to_string()])
        .env("PB_HOME", home.path())
        // Sockets passed or none: never the default port.
        .env("PB_PROXY_ADDR", "off")
        .env(
            "PB_RANGE",
            format!("{}-{}", block.range.0 + 2, block.range.1),
        )
        .env("PB_HTTP_ADDR", "off")
        .env("PB_NO_AUTOSTART", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends (python execs pb: the child is pb).
    let mut daemon = Proc(daemon);
    let pb = |args: &[&str]| {
        Command::new(pb_bin())
            .args(args)
            .env("PB_HOME", home.path())
            .env("PB_NO_AUTOSTART", "1")
            .output()
            .unwrap()
    };
    let status = wait_until(Duration::from_secs(10), || {
        let out = pb(&["-j", "status"]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).ok())
            .flatten()
    })
    .expect("the activated broker runs");
    assert_eq!(status["proxy"]["http_port"], http, "{status}");
    assert_eq!(status["proxy"]["https_port"], https, "{status}");
    // The passed sockets serve: the list page over HTTP, TLS on the other.
    let (code, _, _) = curl(&[&format!("http://localhost:{http}/")]);
    assert_eq!(code, 200);
    let ca = status["proxy"]["ca"].as_str().unwrap().to_string();
    let (code, _, _) = curl(&["--cacert", &ca, &format!("https://x.localhost:{https}/")]);
    assert_eq!(code, 404);
    // pb url gives URLs on those ports.
    let claimed = pb(&["claim", "act:web", "-q", "--keep"]);
    assert!(claimed.status.success());
    let url = pb(&["url", "act:web", "--https"]);
    assert_eq!(
        String::from_utf8_lossy(&url.stdout).trim(),
        format!("https://web.act.localhost:{https}")
    );
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait_for(Duration::from_secs(10)).is_some());
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn vite_is_hot_reloaded_through_its_named_url_in_chromium() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let apps = tests_dir().join("realapps");
    // A copy of vite-app to edit; node_modules linked.
    let project = tempfile::tempdir().unwrap();
    std::fs::copy(
        apps.join("package.json"),
        project.path().join("package.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        apps.join("node_modules"),
        project.path().join("node_modules"),
    )
    .unwrap();
    let app = project.path().join("vite-app");
    std::fs::create_dir(&app).unwrap();
    for f in ["index.html", "main.js", "message.js"] {
        std::fs::copy(apps.join("vite-app").join(f), app.join(f)).unwrap();
    }
    let path = format!(
        "{}:{}",
        apps.join("node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut vite = Proc(
        broker
            .cmd()
            .args(["exec", "--shim", "vite:web", "--", "npm", "run", "dev"])
            .current_dir(project.path())
            .env("PATH", &path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://web.vite.localhost:{proxy}/");
    let up = wait_until(Duration::from_secs(60), || {
        let (code, body, _) = curl(&[&url]);
        (code == 200 && body.contains("vite-ok")).then_some(())
    });
    assert!(up.is_some(), "vite through {url}; log:\n{}", broker.log());
    let out = Command::new("node")
        .arg(tests_dir().join("browser/vite_hmr.mjs"))
        .arg(&url)
        .arg(app.join("message.js"))
        .current_dir(tests_dir().join("browser"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(report.trim()).unwrap();
    assert_eq!(v["kept"], 42, "{v}");
    vite.signal(libc::SIGTERM);
    assert!(vite.wait_for(Duration::from_secs(15)).is_some());
}
