//! `pb exec`: real servers (python3, node) serving from the broker's
//! inherited sockets over IPv4 and IPv6; exit codes; signal forwarding; the
//! lease's end; and the number-only path with real apps binding the port.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use pb_tests::*;

fn lease_gone(broker: &Broker, id: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        (!broker.leases().iter().any(|(i, _)| i == id)).then_some(())
    })
    .is_some()
}

/// By default the server gets one listener (127.0.0.1) and the broker
/// relays [::1] to it; with `--both-families` it gets both and serves
/// IPv6 on its own socket.
fn serves_from_inherited_fds(server: &[&str], name: &str, both_families: bool) {
    let broker = Broker::start();
    let mut args = vec!["web"];
    if both_families {
        args.push("--both-families");
    }
    args.push("--");
    args.extend_from_slice(server);
    let (mut pb, port) = broker.exec(&args);
    let v4body = curl_until("-4", port).expect("reachable over IPv4");
    assert_eq!(v4body.trim(), format!("{name} ipv4 port={port}"));
    let v6body = curl_until("-6", port).expect("reachable over IPv6");
    let served_as = if both_families { "ipv6" } else { "ipv4" };
    assert_eq!(v6body.trim(), format!("{name} {served_as} port={port}"));
    let localhost = curl_host_until("localhost", port).expect("reachable as localhost");
    assert!(localhost.starts_with(name), "{localhost}");
    let leases = broker.leases();
    assert_eq!(leases, vec![("web".to_string(), port)]);

    pb.signal(libc::SIGTERM);
    let st = pb
        .wait_for(Duration::from_secs(10))
        .expect("pb exec ends after SIGTERM");
    assert_eq!(
        st.code(),
        Some(128 + libc::SIGTERM),
        "pb exits as its child did"
    );
    assert!(lease_gone(&broker, "web"), "lease released");
    // Free again for the next server. (Its bind sets SO_REUSEADDR, as every
    // server does: without it, the TIME_WAIT entries of connections the
    // server closed would block any bind for a minute, broker or no broker.)
    assert!(
        can_bind_and_listen_reuseaddr(v4(port)) && can_bind_and_listen_reuseaddr(v6(port)),
        "port {port} is free again"
    );
}

#[test]
fn python_server_serves_from_inherited_fds_over_both_families() {
    let script = tests_dir().join("servers/fd_server.py");
    serves_from_inherited_fds(&["python3", script.to_str().unwrap()], "python", false);
    serves_from_inherited_fds(&["python3", script.to_str().unwrap()], "python", true);
}

#[test]
fn node_server_serves_from_inherited_fds_over_both_families() {
    let script = tests_dir().join("servers/fd_server.js");
    serves_from_inherited_fds(&["node", script.to_str().unwrap()], "node", false);
    serves_from_inherited_fds(&["node", script.to_str().unwrap()], "node", true);
}

#[test]
fn child_sees_the_socket_activation_environment() {
    let broker = Broker::start();
    for (extra, n, names) in [
        (None, "1", "app.web"),
        (Some("--both-families"), "2", "app.web:app.web"),
    ] {
        let mut cmd = broker.cmd();
        cmd.args(["exec", "-q", "app:web", "--env-name", "APP_PORT"]);
        cmd.args(extra);
        let out = cmd
            .args(["--", "sh", "-c"])
            .arg("echo $LISTEN_FDS $LISTEN_FDNAMES $LISTEN_FDS_FIRST_FD $APP_PORT; [ \"$LISTEN_PID\" = \"$$\" ] && echo pid-ok; ls /proc/$$/fd")
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        let mut lines = text.lines();
        let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(&first[..3], &[n, names, "3"]);
        assert!(first[3].parse::<u16>().is_ok());
        assert_eq!(lines.next(), Some("pid-ok"));
        let fds: Vec<u32> = lines.filter_map(|l| l.parse().ok()).collect();
        assert!(fds.contains(&3), "fd 3 is inherited: {fds:?}");
        assert_eq!(fds.contains(&4), n == "2", "fd 4 only with both: {fds:?}");
        assert!(lease_gone(&broker, "app:web"));
    }
}

#[test]
fn exit_codes_are_the_childs() {
    let broker = Broker::start();
    let st = broker
        .cmd()
        .args(["exec", "-q", "a", "--", "sh", "-c", "exit 7"])
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(7));
    let out = broker
        .cmd()
        .args(["exec", "-q", "a", "--", "no-such-command-pb"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&out.stderr).contains("command not found"));
    assert!(broker.leases().is_empty(), "a failed exec leaves no lease");
}

#[test]
fn signals_sent_to_pb_reach_the_child() {
    let broker = Broker::start();
    let (mut pb, _port) = broker.exec(
        &[
            "sig",
            "--",
            "python3",
            "-c",
            "import signal,sys,time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\nprint('ready', flush=True)\ntime.sleep(60)",
        ],
    );
    let mut line = String::new();
    BufReader::new(pb.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    pb.signal(libc::SIGTERM);
    // A bound, not a timing: a loaded CI machine can be slow to schedule
    // the child's exit.
    let st = pb.wait_for(Duration::from_secs(30)).expect("exits");
    assert_eq!(
        st.code(),
        Some(42),
        "the child's handler ran and its code is ours"
    );
}

#[test]
fn killing_pb_exec_releases_the_lease_when_its_connection_closes() {
    let broker = Broker::start();
    // The child lets go of the sockets, so nobody else holds them.
    let (mut pb, port) = broker.exec(&["victim", "--", "sh", "-c", "exec sleep 60 3>&- 4>&-"]);
    assert_eq!(broker.leases(), vec![("victim".to_string(), port)]);
    // The sleep outlives a SIGKILLed pb exec: note its pid to end it after
    // (the banner comes before the fork, so wait for the child).
    let children = format!("/proc/{0}/task/{0}/children", pb.pid());
    let child: i32 = wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&children)
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
    .expect("pb exec has a child");
    pb.signal(libc::SIGKILL);
    pb.wait_for(Duration::from_secs(5));
    assert!(lease_gone(&broker, "victim"));
    // SAFETY: plain kill(2) of the process this test started.
    unsafe { libc::kill(child, libc::SIGKILL) };
}

#[test]
fn keep_keeps_the_lease() {
    let broker = Broker::start();
    let st = broker
        .cmd()
        .args(["exec", "-q", "--keep", "kept", "--", "true"])
        .status()
        .unwrap();
    assert!(st.success());
    let leases = broker.leases();
    assert_eq!(leases.len(), 1);
    assert!(!can_bind(v4(leases[0].1)), "still held by the broker");
}

#[test]
fn exec_of_an_existing_claim_keeps_that_claim() {
    let broker = Broker::start();
    let port = broker.claim("pre", &[]);
    let st = broker
        .cmd()
        .args(["exec", "-q", "pre", "--", "true"])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(broker.leases(), vec![("pre".to_string(), port)]);
}

#[test]
fn port_only_mode_lets_the_app_bind_port_itself() {
    let broker = Broker::start();
    let (mut pb, port) = broker.exec(&[
        "--port-only",
        "plain",
        "--",
        "sh",
        "-c",
        "[ -z \"$LISTEN_FDS\" ] && exec python3 -m http.server $PORT --bind 127.0.0.1",
    ]);
    assert!(
        curl_until("-4", port).is_some(),
        "python's own bind reached the port"
    );
    pb.signal(libc::SIGTERM);
    pb.wait_for(Duration::from_secs(10)).expect("exits");
    assert!(lease_gone(&broker, "plain"));
    assert!(can_bind_and_listen_reuseaddr(v4(port)));
}

/// `PORT=$(pb claim web -q) app`: the port stays reserved until the app
/// binds it (with SO_REUSEADDR), with no window in between.
#[test]
fn number_only_claims_are_bound_over_by_real_apps() {
    let broker = Broker::start();
    for (id, app) in [
        ("py", vec!["python3", "-m", "http.server", "PORT", "--bind", "127.0.0.1"]),
        ("node", vec!["node", "-e", "require('http').createServer((q,r)=>r.end('node\\n')).listen(Number(process.argv[1]))", "PORT"]),
    ] {
        let port = broker.claim(id, &[]);
        // Reserved: a plain bind fails until the app comes.
        assert!(!can_bind(v4(port)) && !can_bind(v6(port)));
        let args: Vec<String> = app.iter().map(|a| if *a == "PORT" { port.to_string() } else { a.to_string() }).collect();
        let server = Proc(
            Command::new(&args[0])
                .args(&args[1..])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        assert!(curl_until("-4", port).is_some(), "{id} serves on its claimed port");
        // While it serves, nobody else gets the port, even with SO_REUSEADDR.
        assert!(!can_bind_and_listen_reuseaddr(v4(port)));
        drop(server);
        // The lease still reserves the port after the app is gone.
        assert!(wait_until(Duration::from_secs(5), || (!can_bind(v4(port))).then_some(())).is_some());
        broker.pb_ok(&["release", id]);
    }
}

#[test]
fn an_app_without_reuseaddr_sees_eaddrinuse_on_a_reserved_port() {
    let broker = Broker::start();
    let port = broker.claim("strict", &[]);
    let out = Command::new("python3")
        .args(["-c", &format!("import socket\ntry:\n socket.socket().bind(('127.0.0.1',{port}))\nexcept OSError as e: print(e.errno)")])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        libc::EADDRINUSE.to_string()
    );
}

/// `--no-pid`, as systemfd's: a watcher that re-runs the app in a process
/// of its own (here a shell that forks it) passes the sockets on, and an
/// app that accepts them as listenfd does (LISTEN_PID unset, or its own
/// pid) serves them.
#[test]
fn no_pid_lets_a_re_executed_app_take_the_sockets() {
    let broker = Broker::start();
    let server = "import os, socket, http.server\n\
        pid = os.environ.get('LISTEN_PID')\n\
        assert pid is None or pid == str(os.getpid()), 'sockets meant for pid ' + pid\n\
        s = socket.socket(fileno=3)\n\
        class H(http.server.BaseHTTPRequestHandler):\n\
        \x20   def do_GET(self):\n\
        \x20       self.send_response(200); self.end_headers(); self.wfile.write(b'listenfd')\n\
        \x20   def log_message(self, *a): pass\n\
        srv = http.server.HTTPServer(s.getsockname()[:2], H, bind_and_activate=False)\n\
        srv.socket = s\n\
        srv.serve_forever()\n";
    // `; true` keeps the shell alive, so python is its child, not its exec.
    let line = "python3 -c \"$SERVER\"; true";
    let mut cmd = broker.cmd();
    cmd.env("SERVER", server);
    let (mut pb, port) = {
        let mut child = cmd
            .args(["exec", "--no-pid", "web", "--", "sh", "-c", line])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut banner = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        (Proc(child), port_in(&banner).expect("a URL"))
    };
    let bodies = reachable_everywhere(port).expect("served by the forked app");
    assert!(bodies.iter().all(|b| b == "listenfd"), "{bodies:?}");
    pb.signal(libc::SIGTERM);
    pb.wait_for(Duration::from_secs(10)).expect("pb exec ends");
    // Without --no-pid the same app refuses the sockets (they name the
    // shell's pid) and exits.
    let out = broker
        .cmd()
        .env("SERVER", server)
        .args([
            "exec",
            "-q",
            "web",
            "--",
            "sh",
            "-c",
            "python3 -c \"$SERVER\"; echo $?",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}
