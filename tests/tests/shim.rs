//! `pb exec --shim`: unmodified programs (python3's http.server, Node
//! servers with hard-coded ports, a pre-fork server, a shell script that
//! execs its server) bind their own ports and land on the broker's sockets,
//! reachable at localhost:P over IPv4 and IPv6. Binds the map does not name
//! pass through untouched, and every failure falls back to the real bind
//! with a reason the user sees.

use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use pb_tests::*;
use serde_json::Value;

/// A running `pb exec --shim`, with its output as lines.
struct ShimRun {
    proc: Proc,
    stderr: Receiver<String>,
    stdout: Receiver<String>,
    /// Every stderr line seen so far, for failure messages.
    seen: Vec<String>,
    /// Lines of stderr read but not yet asked for.
    pending: Vec<String>,
}

/// Starts `pb exec --shim ARGS...`.
fn shim_exec(broker: &Broker, args: &[&str]) -> ShimRun {
    let mut child = broker
        .cmd()
        .args(["exec", "--shim"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pb exec --shim");
    let stderr = lines_of(child.stderr.take().unwrap());
    let stdout = lines_of(child.stdout.take().unwrap());
    ShimRun {
        proc: Proc(child),
        stderr,
        stdout,
        seen: Vec::new(),
        pending: Vec::new(),
    }
}

impl ShimRun {
    /// The next line pb prints about `id` that contains `what`.
    fn report(&mut self, id: &str, what: &str) -> String {
        let prefix = format!("pb: {id} ");
        let prefix2 = format!("pb: {id}: ");
        let wanted =
            |l: &str| (l.starts_with(&prefix) || l.starts_with(&prefix2)) && l.contains(what);
        if let Some(i) = self.pending.iter().position(|l| wanted(l)) {
            return self.pending.remove(i);
        }
        let before = self.seen.len();
        let got = next_matching(
            &self.stderr,
            &mut self.seen,
            Duration::from_secs(20),
            wanted,
        );
        // Reports of other binds may come first; keep them for later.
        let end = self.seen.len() - usize::from(got.is_some());
        self.pending.extend_from_slice(&self.seen[before..end]);
        got.unwrap_or_else(|| panic!("no report on {id} with {what:?}; stderr: {:#?}", self.seen))
    }

    /// The brokered port pb reports for `id`.
    fn port(&mut self, id: &str) -> (u16, String) {
        let line = self.report(id, "http://localhost:");
        let port = port_in(&line).unwrap_or_else(|| panic!("no port in {line:?}"));
        (port, line)
    }

    fn stdout_line(&mut self) -> String {
        let mut seen = Vec::new();
        next_matching(&self.stdout, &mut seen, Duration::from_secs(20), |_| true)
            .expect("a line on stdout")
    }

    /// The JSON lines binds.py prints, one per bind.
    fn binds(&mut self, n: usize) -> Vec<Value> {
        (0..n)
            .map(|_| serde_json::from_str(&self.stdout_line()).expect("binds.py JSON"))
            .collect()
    }

    fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        self.proc
            .wait_for(Duration::from_secs(10))
            .expect("pb exec ends after SIGTERM");
    }
}

fn server(name: &str) -> String {
    tests_dir().join("servers").join(name).display().to_string()
}

fn in_range(broker: &Broker, port: u16) -> bool {
    (broker.range.0..=broker.range.1).contains(&port)
}

/// What the app answers at localhost:P over IPv4 and over IPv6.
fn answers(port: u16) -> (String, String) {
    let v4 = curl_until("-4", port).unwrap_or_else(|| panic!("localhost:{port} over IPv4"));
    let v6 = curl_until("-6", port).unwrap_or_else(|| panic!("localhost:{port} over IPv6"));
    (v4, v6)
}

/// Both families reach the app at localhost:P with the same answer.
fn served_on_both_families(port: u16) -> String {
    let (v4, v6) = answers(port);
    assert_eq!(v4, v6, "same app in both families");
    v4
}

fn lease_gone(broker: &Broker, id: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        (!broker.leases().iter().any(|(i, _)| i == id)).then_some(())
    })
    .is_some()
}

#[test]
fn two_python_http_servers_hard_coded_to_8000_run_side_by_side() {
    let broker = Broker::start();
    let mut runs = Vec::new();
    for name in ["one", "two"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), format!("{name}\n")).unwrap();
        let d = dir.path().display().to_string();
        let mut run = shim_exec(
            &broker,
            &[
                name,
                "--",
                "python3",
                "-m",
                "http.server",
                "8000",
                "--directory",
                &d,
            ],
        );
        let (port, line) = run.port(name);
        assert!(line.contains("app asked for 8000"), "{line}");
        runs.push((run, port, name, dir));
    }
    let (p1, p2) = (runs[0].1, runs[1].1);
    assert_ne!(p1, p2, "distinct brokered ports");
    for (_, port, name, _) in &runs {
        assert!(in_range(&broker, *port));
        assert_eq!(served_on_both_families(*port).trim(), *name);
    }
    let mut leases = broker.leases();
    leases.sort();
    assert_eq!(
        leases,
        vec![("one".to_string(), p1), ("two".to_string(), p2)]
    );
    for (run, _, name, _) in runs {
        run.stop();
        assert!(
            lease_gone(&broker, name),
            "{name} released when its app ends"
        );
    }
}

#[test]
fn node_servers_hard_coded_to_3000_and_to_the_ipv6_wildcard_answer_on_both_families() {
    let broker = Broker::start();
    let js = server("hardcoded.js");
    let mut default_host = shim_exec(&broker, &["plain", "--", "node", &js, "3000"]);
    let mut v6_wildcard = shim_exec(&broker, &["wild6", "--", "node", &js, "3000", "::"]);
    let (p1, _) = default_host.port("plain");
    let (p2, line) = v6_wildcard.port("wild6");
    assert!(
        line.contains("on every address; it serves on loopback only"),
        "{line}"
    );
    assert_ne!(p1, p2);
    for p in [p1, p2] {
        let body = served_on_both_families(p);
        // Node itself sees the brokered port as its own.
        assert!(body.starts_with(&format!("node port={p} ")), "{body}");
    }
    default_host.stop();
    v6_wildcard.stop();
}

#[test]
fn every_address_an_app_asks_for_is_served_on_loopback_in_both_families() {
    let broker = Broker::start();
    for (i, addr) in ["127.0.0.1", "0.0.0.0", "::", "::1"]
        .into_iter()
        .enumerate()
    {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("index.html"), format!("app{i}\n")).unwrap();
        let id = format!("app{i}");
        let d = dir.path().display().to_string();
        let mut run = shim_exec(
            &broker,
            &[
                &id,
                "--",
                "python3",
                "-m",
                "http.server",
                "8000",
                "--bind",
                addr,
                "--directory",
                &d,
            ],
        );
        let (port, line) = run.port(&id);
        let wildcard = addr == "0.0.0.0" || addr == "::";
        assert_eq!(line.contains("loopback only"), wildcard, "{addr}: {line}");
        assert!(line.contains("8000"), "{line}");
        assert_eq!(served_on_both_families(port).trim(), id);
        run.stop();
    }
}

#[test]
fn an_app_with_two_listeners_is_mapped_with_map() {
    let broker = Broker::start();
    let mut run = shim_exec(
        &broker,
        &[
            "web",
            "--map",
            "3000",
            "--map",
            "3001=web:admin",
            "--",
            "python3",
            &server("listeners.py"),
            "site=3000",
            "admin=3001",
        ],
    );
    let (site, l1) = run.port("web");
    let (admin, l2) = run.port("web:admin");
    assert!(l1.contains("127.0.0.1:3000"), "{l1}");
    assert!(l2.contains("127.0.0.1:3001"), "{l2}");
    assert_eq!(
        served_on_both_families(site).trim(),
        format!("site port={site}")
    );
    assert_eq!(
        served_on_both_families(admin).trim(),
        format!("admin port={admin}")
    );
    let mut leases = broker.leases();
    leases.sort();
    assert_eq!(
        leases,
        vec![("web".to_string(), site), ("web:admin".to_string(), admin)]
    );
    run.stop();
    assert!(lease_gone(&broker, "web") && lease_gone(&broker, "web:admin"));
    // The broker's relay of the other family stopped with the lease.
    for p in [site, admin] {
        assert!(can_bind_and_listen_reuseaddr(v4(p)) && can_bind_and_listen_reuseaddr(v6(p)));
    }
}

#[test]
fn port_zero_and_unmapped_ports_pass_through_untouched() {
    let broker = Broker::start();
    let spare = PortBlock::take(10);
    let unmapped = spare.range.0;
    let binds = server("binds.py");
    let unmapped_addr = format!("127.0.0.1:{unmapped}");

    // With --map: only the mapped port is swapped.
    let mut run = shim_exec(
        &broker,
        &[
            "web",
            "--map",
            "3000",
            "--",
            "python3",
            &binds,
            "127.0.0.1:0",
            "127.0.0.1:3000",
            &unmapped_addr,
        ],
    );
    let got = run.binds(3);
    let ephemeral = got[0]["got"].as_u64().unwrap() as u16;
    assert!(
        ephemeral != 0 && !in_range(&broker, ephemeral),
        "port 0 is the kernel's: {got:?}"
    );
    let (brokered, _) = run.port("web");
    assert_eq!(got[1]["got"].as_u64(), Some(u64::from(brokered)));
    assert_eq!(
        got[2]["got"].as_u64(),
        Some(u64::from(unmapped)),
        "unmapped: {got:?}"
    );
    run.stop();

    // Without --map: the first bind of a real port is the app's server;
    // port 0 before it and any bind after it pass through.
    let mut run = shim_exec(
        &broker,
        &[
            "web2",
            "--",
            "python3",
            &binds,
            "127.0.0.1:0",
            ":::3000",
            &unmapped_addr,
        ],
    );
    let got = run.binds(3);
    let (brokered, _) = run.port("web2");
    assert!(!in_range(&broker, got[0]["got"].as_u64().unwrap() as u16));
    assert_eq!(got[1]["got"].as_u64(), Some(u64::from(brokered)));
    assert_eq!(got[2]["got"].as_u64(), Some(u64::from(unmapped)));
    run.stop();
}

#[test]
fn a_server_that_forks_workers_after_bind_serves_from_every_worker_socket() {
    let broker = Broker::start();
    let mut run = shim_exec(
        &broker,
        &[
            "prefork",
            "--",
            "python3",
            &server("forking.py"),
            "3000",
            "2",
        ],
    );
    let (port, _) = run.port("prefork");
    let master_line = run.stdout_line();
    assert!(
        master_line.ends_with(&format!("listening on {port}")),
        "{master_line}"
    );
    let master: u32 = master_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let (v4, v6) = answers(port);
    for body in [v4, v6] {
        assert!(
            body.starts_with("worker ") && body.trim().ends_with(&format!("of {master}")),
            "a forked worker answers: {body}"
        );
    }
    run.stop();
}

#[test]
fn a_server_started_through_a_shell_script_that_execs_it() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("start.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nexec node {} 3000\n", server("hardcoded.js")),
    )
    .unwrap();
    // npm-style: a shell that runs a shell script that execs the server.
    let chain = format!("sh {}", script.display());
    let mut run = shim_exec(&broker, &["scripted", "--", "sh", "-c", &chain]);
    let (port, _) = run.port("scripted");
    assert!(served_on_both_families(port).starts_with(&format!("node port={port} ")));
    // pb exec signals its own child, the outer shell; node, two execs down,
    // would outlive it (and keep the lease, which follows the socket). This
    // test started it, so it ends it, by the pid the broker names.
    let who = broker.pb_json(&["who", &port.to_string()]);
    let pids: Vec<i32> = who["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["holders"].as_array().unwrap().iter())
        .map(|h| h["pid"].as_i64().unwrap() as i32)
        .collect();
    assert!(!pids.is_empty(), "{who}");
    run.stop();
    for pid in pids {
        // SAFETY: plain kill(2) of a process this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        wait_until(Duration::from_secs(10), || {
            (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
        })
        .expect("node ends on SIGTERM");
    }
}

#[test]
fn bad_maps_are_refused_before_the_app_starts() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let m = marker.display().to_string();
    for bad in [
        vec!["--map", "0"],
        vec!["--map", "70000"],
        vec!["--map", "http"],
        vec!["--map", "3000=api", "--map", "3000"],
    ] {
        let mut args = vec!["exec", "--shim", "web"];
        args.extend(&bad);
        args.extend(["--", "touch", &m]);
        let out = broker.pb(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("--map"), "{bad:?}: {stderr}");
        // No internal enum names: the wire's code, if any.
        assert!(!stderr.contains("InvalidPort"), "{bad:?}: {stderr}");
        assert!(!marker.exists(), "{bad:?} started the app");
    }
    assert!(broker.leases().is_empty(), "nothing was claimed");
}

/// Vite probes its port with a bind of 0.0.0.0 that it closes, then binds
/// 127.0.0.1; other servers bind each family, or one port twice. Every one
/// of those binds lands on the broker's socket, and the URL pb prints is
/// where the app answers.
#[test]
fn probe_binds_and_repeated_binds_of_the_port_all_get_the_brokers_socket() {
    let broker = Broker::start();
    let spare = PortBlock::take(10);
    let hard = spare.range.0;
    for maps in [vec![], vec!["--map".to_string(), hard.to_string()]] {
        let specs = [
            format!("probe:0.0.0.0:{hard}"),
            format!("127.0.0.1:{hard}"),
            format!("127.0.0.1:{hard}"),
            format!("[::1]:{hard}"),
        ];
        let mut args: Vec<&str> = vec!["web"];
        args.extend(maps.iter().map(String::as_str));
        args.extend(["--", "python3"]);
        let script = server("binds.py");
        args.push(&script);
        args.extend(specs.iter().map(String::as_str));
        let mut run = shim_exec(&broker, &args);
        let got = run.binds(specs.len());
        let (brokered, _) = run.port("web");
        for g in &got {
            assert_eq!(g["got"].as_u64(), Some(u64::from(brokered)), "{got:?}");
        }
        // Nothing of the app's own listens on the hard-coded port. (A
        // plain bind would also trip over TIME_WAIT left on this port by
        // an earlier test's connections, which says nothing of the app.)
        let untouched =
            can_bind_and_listen_reuseaddr(v4(hard)) && can_bind_and_listen_reuseaddr(v6(hard));
        if !untouched {
            let ss = std::process::Command::new("ss")
                .args(["-tanpe"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let on: Vec<&str> = ss
                .lines()
                .filter(|l| l.contains(&format!(":{hard} ")))
                .collect();
            panic!(
                "{hard} untouched (maps {maps:?}); v4 {} v6 {}; {on:#?}",
                can_bind(v4(hard)),
                can_bind(v6(hard))
            );
        }
        run.stop();
    }
}

/// Vite's pattern in a real HTTP server: a probe bind of 0.0.0.0, closed,
/// then the real bind of 127.0.0.1. The URL pb prints answers at
/// 127.0.0.1, [::1] and localhost.
#[test]
fn a_probing_http_server_answers_at_the_printed_url_on_every_address() {
    let broker = Broker::start();
    let spare = PortBlock::take(10);
    let hard = spare.range.0;
    let code = format!(
        "import http.server,socket\n\
         p=socket.socket(); p.bind(('0.0.0.0',{hard})); p.close()\n\
         class H(http.server.BaseHTTPRequestHandler):\n\
         \x20def do_GET(s):\n\
         \x20 s.send_response(200); s.end_headers(); s.wfile.write(b'probed')\n\
         \x20def log_message(s,*a): pass\n\
         http.server.HTTPServer(('127.0.0.1',{hard}),H).serve_forever()\n"
    );
    let mut run = shim_exec(&broker, &["web", "--", "python3", "-c", &code]);
    let (brokered, _) = run.port("web");
    let bodies = reachable_everywhere(brokered).expect("served everywhere");
    assert!(bodies.iter().all(|b| b == "probed"), "{bodies:?}");
    run.stop();
}

#[test]
fn a_shim_that_cannot_reach_the_broker_falls_back_to_the_real_bind() {
    let mut broker = Broker::start();
    let spare = PortBlock::take(10);
    let addr = format!("127.0.0.1:{}", spare.range.0);
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let g = go.display().to_string();
    let mut run = shim_exec(
        &broker,
        &[
            "web",
            "--",
            "python3",
            &server("binds.py"),
            "--after",
            &g,
            &addr,
        ],
    );
    // The broker dies after the claim, before the app binds.
    wait_until(Duration::from_secs(10), || {
        broker
            .leases()
            .iter()
            .any(|(id, _)| id == "web")
            .then_some(())
    })
    .expect("pb exec claimed web");
    broker.kill9();
    std::fs::write(&go, "").unwrap();
    let got = run.binds(1);
    assert_eq!(
        got[0]["got"].as_u64(),
        Some(u64::from(spare.range.0)),
        "real bind: {got:?}"
    );
    let why = run.report("web", "cannot reach the broker");
    assert!(why.contains(&addr), "{why}");
    run.stop();

    // By hand, with PB_SHIM_DEBUG: the app itself says why.
    let lib = String::from_utf8(broker.pb(&["shim-path"]).stdout).unwrap();
    let out = std::process::Command::new("python3")
        .arg(server("binds.py"))
        .arg(format!("127.0.0.1:{}", spare.range.0 + 1))
        .env("LD_PRELOAD", lib.trim())
        .env("PB_SHIM_MAP", "*=web")
        .env("PB_SHIM_SOCKET", dir.path().join("no-broker.sock"))
        .env("PB_SHIM_DEBUG", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains(&format!("\"got\": {}", spare.range.0 + 1)),
        "{stdout}"
    );
    assert!(stderr.contains("cannot reach the broker"), "{stderr}");
}
