//! `pb exec` fits every app unchanged: one that binds `$PORT` itself gets
//! the broker's listener (through the preload shim loaded by default), one
//! that accepts on a single inherited socket is reachable in both families
//! (the broker relays the other), and everything the command starts lives
//! and dies with `pb exec`.

use std::time::{Duration, Instant};

use pb_tests::*;

/// A node server that knows nothing of pb: `listen(process.env.PORT || 3000)`,
/// which binds the IPv6 wildcard.
const NODE_PORT_SERVER: &str = "const http = require('http');\n\
    const s = http.createServer((q, r) => r.end('node-port ' + s.address().port));\n\
    s.listen(process.env.PORT || 3000);";

/// A python server that binds `$PORT` on 127.0.0.1 *without* SO_REUSEADDR,
/// which a number-only placeholder would refuse.
const PY_PLAIN_BIND: &str = "import os, socket\n\
    s = socket.socket()\n\
    s.bind(('127.0.0.1', int(os.environ['PORT'])))\n\
    s.listen(16)\n\
    while True:\n\
    \x20   c, _ = s.accept()\n\
    \x20   c.recv(65536)\n\
    \x20   c.sendall(b'HTTP/1.0 200 OK\\r\\nContent-Length: 8\\r\\n\\r\\npy-plain')\n\
    \x20   c.close()\n";

fn lease_gone(broker: &Broker, id: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        (!broker.leases().iter().any(|(i, _)| i == id)).then_some(())
    })
    .is_some()
}

fn serves_unchanged(word: &str, program: &[&str], expect: &str) {
    let broker = Broker::start();
    let mut args = vec!["web", "--"];
    args.extend_from_slice(program);
    let (mut pb, port) = broker.exec_as(word, &args);
    let bodies = reachable_everywhere(port).expect("the app answers everywhere");
    for b in &bodies {
        assert!(b.starts_with(expect), "{bodies:?}");
    }
    assert_eq!(broker.leases(), vec![("web".to_string(), port)]);
    pb.signal(libc::SIGTERM);
    pb.wait_for(Duration::from_secs(10))
        .expect("pb exec ends after SIGTERM");
    assert!(lease_gone(&broker, "web"));
}

#[test]
fn pb_run_with_a_node_app_that_binds_port_itself() {
    serves_unchanged("run", &["node", "-e", NODE_PORT_SERVER], "node-port");
}

#[test]
fn pb_exec_with_a_python_app_that_binds_port_without_reuseaddr() {
    serves_unchanged("exec", &["python3", "-c", PY_PLAIN_BIND], "py-plain");
}

/// What `--no-shim` opts out of: the app's own bind of $PORT meets the
/// broker's listener and fails, as it did before the shim was the default.
#[test]
fn no_shim_leaves_the_apps_own_bind_to_fail() {
    let broker = Broker::start();
    let out = broker
        .cmd()
        .args(["exec", "-q", "--no-shim", "web", "--", "python3", "-c"])
        .arg("import os,socket; s=socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT'])))")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Address already in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Processes whose command line carries `marker`, with their pids: ours,
/// since only this test starts such commands.
fn with_marker(marker: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let state = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        if !zombie && String::from_utf8_lossy(&cmdline).contains(marker) {
            out.push(pid);
        }
    }
    out
}

/// Ends (by pid) whatever a failed test left, so no stray outlives it.
fn end_strays(marker: &str) {
    for pid in with_marker(marker) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// The tree `sh` → (a background sleep, a daemonized `setsid` sleep, a
/// shell that ignores SIGTERM) under `pb exec --grace 1s`; each sleep
/// carries `marker` as its duration.
fn start_tree(broker: &Broker, marker: &str) -> (Proc, u16) {
    let script = format!(
        "sleep {marker} & setsid sleep {marker} & sh -c 'trap \"\" TERM; sleep {marker}; true' & \
         echo started; wait"
    );
    broker.exec(&["--grace", "1s", "tree", "--", "sh", "-c", &script])
}

fn tree_ends_after(sig: i32, marker: &str) {
    let broker = Broker::start();
    let (mut pb, port) = start_tree(&broker, marker);
    let all_up = wait_until(Duration::from_secs(10), || {
        (with_marker(marker).len() >= 3).then_some(())
    });
    assert!(
        all_up.is_some(),
        "the tree started: {:?}",
        with_marker(marker)
    );
    let t = Instant::now();
    pb.signal(sig);
    let st = pb.wait_for(Duration::from_secs(10));
    let left = with_marker(marker);
    end_strays(marker);
    assert!(st.is_some(), "pb exec ended");
    assert!(left.is_empty(), "processes left behind: {left:?}");
    // 1 s of grace for the one that ignores SIGTERM, and some slack.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(lease_gone(&broker, "tree"));
    assert!(can_bind(v4(port)), "port {port} is free");
}

#[test]
fn sigterm_to_pb_exec_ends_the_whole_tree() {
    tree_ends_after(libc::SIGTERM, "301.0101");
}

#[test]
fn sigint_to_pb_exec_ends_the_whole_tree() {
    tree_ends_after(libc::SIGINT, "301.0202");
}

#[test]
fn sighup_to_pb_exec_ends_the_whole_tree() {
    tree_ends_after(libc::SIGHUP, "301.0303");
}

/// The command exits on its own and leaves a daemon behind: pb ends it
/// before it releases the lease, so nothing serves a port pb gave up.
#[test]
fn what_the_command_leaves_behind_ends_before_the_lease() {
    let broker = Broker::start();
    let marker = "301.0404";
    let out = broker
        .cmd()
        .args(["exec", "-q", "--grace", "2s", "left", "--", "sh", "-c"])
        .arg(format!("setsid sleep {marker} & sleep {marker} & exit 3"))
        .output()
        .unwrap();
    let left = with_marker(marker);
    end_strays(marker);
    assert_eq!(out.status.code(), Some(3), "pb exits as its child did");
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(lease_gone(&broker, "left"));
}

#[test]
fn a_missing_or_unrunnable_command_is_refused_before_any_claim() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("not-executable");
    std::fs::write(&plain, "#!/bin/sh\necho hi\n").unwrap();
    for (program, code, says) in [
        ("no-such-command-pb", 127, "command not found"),
        (plain.to_str().unwrap(), 126, "Permission denied"),
    ] {
        let out = broker
            .cmd()
            .args(["exec", "web", "--", program])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{err}");
        assert!(err.contains(says), "{err}");
        assert!(!err.contains("http://"), "no URL before the failure: {err}");
        assert!(broker.leases().is_empty());
    }
    let bad = broker
        .cmd()
        .args(["exec", "--grace", "2h", "web", "--", "true"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--grace"));
    assert!(broker.leases().is_empty());
}

/// LD_PRELOAD cannot reach a static binary (here Debian's static-pie
/// ldconfig): pb says so, and what the app gets instead, and runs it.
#[test]
fn a_static_binary_is_told_what_the_shim_cannot_do() {
    let broker = Broker::start();
    let out = broker
        .cmd()
        .args(["exec", "web", "--", "/sbin/ldconfig", "--version"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("static binary") && err.contains("--port-only"),
        "{err}"
    );
    let dynamic = broker
        .cmd()
        .args(["exec", "web", "--", "true"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&dynamic.stderr).contains("static binary"));
}

/// An app that ignores both fd 3 and $PORT and binds a port of its own
/// (vite's 5173, say) is not reachable at pb's URL: pb says so, and how to
/// fix it, instead of leaving the user at a URL that never answers.
#[test]
fn an_app_binding_a_port_of_its_own_is_pointed_to_shim() {
    let broker = Broker::start();
    let spare = PortBlock::take(10);
    let own = spare.range.0.to_string();
    let mut child = broker
        .cmd()
        .args(["exec", "web", "--", "python3", "-m", "http.server", &own])
        .args(["--bind", "127.0.0.1"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = lines_of(child.stderr.take().unwrap());
    let mut pb = Proc(child);
    let mut seen = Vec::new();
    let hint = next_matching(&lines, &mut seen, Duration::from_secs(10), |l| {
        l.contains("itself")
    });
    let hint = hint.unwrap_or_else(|| panic!("no hint; pb said {seen:?}"));
    assert!(
        hint.contains(&format!("127.0.0.1:{own}")) && hint.contains("--shim"),
        "{hint}"
    );
    pb.signal(libc::SIGTERM);
    pb.wait_for(Duration::from_secs(10)).expect("pb exec ends");
}
