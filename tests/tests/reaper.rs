//! Kernel awareness: dead owners' ports are freed at once, ownership follows
//! the socket, number-only claims are adopted by the app that binds them,
//! and `pb who` / `pb ps --all` name the real processes behind ports.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use pb_tests::*;
use serde_json::Value;

fn broker() -> Broker {
    Broker::start_with(&[("PB_SCAN_INTERVAL", "200ms")])
}

fn lease(broker: &Broker, id: &str) -> Option<Value> {
    let v = broker.pb_json(&["find", id]);
    v["services"].as_array().unwrap().first().cloned()
}

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until(Duration::from_secs(10), f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

fn port_free(port: u16) -> bool {
    can_bind(v4(port)) && can_bind(v6(port))
}

/// Waits for lease `id` to end, then for its port to be free on both
/// loopback families.
fn wait_ended_and_free(broker: &Broker, id: &str, port: u16) {
    wait_for("the lease to end", || {
        lease(broker, id).is_none().then_some(())
    });
    wait_for("the port to be free", || port_free(port).then_some(()));
}

#[test]
fn sigkill_of_a_claimant_frees_its_port() {
    let broker = broker();
    let (mut c, _out, port) = claimant(&broker, "victim", "");
    assert!(!can_bind(v4(port)) && !can_bind(v6(port)));
    assert_eq!(lease(&broker, "victim").unwrap()["pid"], c.pid());
    c.signal(libc::SIGKILL);
    c.wait_for(Duration::from_secs(5));
    wait_for("the port to be free", || port_free(port).then_some(()));
    assert!(lease(&broker, "victim").is_none());
    assert!(broker.log().contains("reclaimed victim"));
}

#[test]
fn ownership_follows_the_socket_into_a_child_and_ends_with_the_last_holder() {
    let broker = broker();
    let (mut parent, mut out, port) = claimant(&broker, "forked", "--fork");
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let child: u32 = line.trim().parse().unwrap();
    let started = Started::of(child);
    parent
        .wait_for(Duration::from_secs(5))
        .expect("the parent exits");
    wait_for("ownership to move to the child", || {
        (lease(&broker, "forked")?["pid"] == child).then_some(())
    });
    assert!(!can_bind(v4(port)), "the child still holds the port");
    assert!(broker
        .log()
        .contains(&format!("forked follows its socket to pid {child}")));
    started.kill();
    wait_ended_and_free(&broker, "forked", port);
}

/// The reaper learns who else holds a dead owner's sockets from the
/// kernel's table of listeners after closing its own copies, not from the
/// processes it has seen before: a process older than the lease that was
/// sent the sockets (SCM_RIGHTS, as systemd or a process manager passes
/// them) keeps the lease, as a forked child does.
#[test]
fn a_socket_sent_to_an_older_process_keeps_the_lease_with_it() {
    let broker = broker();
    let path = broker.socket().with_file_name("receiver.sock");
    let mut receiver = Command::new("python3")
        .arg(tests_dir().join("clients/fd_receiver.py"))
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut said = BufReader::new(receiver.stdout.take().unwrap());
    let receiver = Proc(receiver);
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let (mut owner, mut out, port) =
        claimant(&broker, "passed", &format!("--send {}", path.display()));
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "sent");
    line.clear();
    said.read_line(&mut line).unwrap();
    let families = if can_bind(v6(0)) { "2" } else { "1" };
    assert_eq!(line.trim(), families, "the receiver holds the sockets");
    owner.signal(libc::SIGKILL);
    owner.wait_for(Duration::from_secs(5));
    let moved = wait_for("ownership to move to the receiver", || {
        lease(&broker, "passed").filter(|l| l["pid"] == receiver.pid())
    });
    assert!(
        !can_bind(v4(port)) && !can_bind(v6(port)),
        "the receiver holds the port"
    );
    // The broker holds the sockets again: it took its copies back from the
    // receiver (or, where it may not copy another process's descriptors,
    // never let go of them).
    assert_eq!(moved["held"], true, "{moved}");
    assert_eq!(moved["listening"], true, "{moved}");
    receiver.signal(libc::SIGKILL);
    wait_ended_and_free(&broker, "passed", port);
    assert!(broker.log().contains("reclaimed passed"));
}

/// A claim of one family has the other relayed by the broker, which keeps
/// that socket to itself: when the owner dies, both families are free.
#[test]
fn sigkill_of_a_claimant_with_a_relayed_family_frees_both() {
    let broker = broker();
    let (mut c, _out, port) = claimant(&broker, "relayed", "--v4");
    assert!(!can_bind(v4(port)) && !can_bind(v6(port)));
    c.signal(libc::SIGKILL);
    c.wait_for(Duration::from_secs(5));
    wait_for("the port to be free", || port_free(port).then_some(()));
    assert!(lease(&broker, "relayed").is_none());
    assert!(broker.log().contains("reclaimed relayed"));
}

#[test]
fn killing_pb_exec_hands_the_lease_to_the_child_that_serves() {
    let broker = broker();
    let mut child = broker
        .cmd()
        .args(["exec", "web", "--", "python3"])
        .arg(tests_dir().join("servers/fd_server.py"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "serving");
    let mut pb = Proc(child);
    let port = broker.leases()[0].1;
    pb.signal(libc::SIGKILL);
    pb.wait_for(Duration::from_secs(5));
    let (server, moved) = wait_for("ownership to move to the server", || {
        let l = lease(&broker, "web")?;
        let pid = l["pid"].as_u64()? as u32;
        (pid != pb.pid() && l["command"].as_str()?.contains("fd_server.py")).then_some((pid, l))
    });
    let server = Started::of(server);
    assert!(curl_until("-4", port).is_some(), "still serving");
    // The broker still holds the lease's sockets, and its relay still
    // serves IPv6.
    assert_eq!(moved["held"], true, "{moved}");
    assert!(curl_until("-6", port).is_some(), "IPv6 is still relayed");
    server.kill();
    wait_for("the lease to end", || {
        lease(&broker, "web").is_none().then_some(())
    });
    // The server closed the connection curl made, leaving TIME_WAIT: a
    // server's own bind (SO_REUSEADDR) is what must succeed.
    wait_for("the port to be free", || {
        (can_bind_and_listen_reuseaddr(v4(port)) && can_bind_and_listen_reuseaddr(v6(port)))
            .then_some(())
    });
}

#[test]
fn a_reused_pid_is_not_taken_for_the_owner() {
    let mut broker = broker();
    let sleeper = Proc(Command::new("sleep").arg("60").spawn().unwrap());
    let pid = sleeper.pid().to_string();
    broker.claim("same-start", &["--pid", &pid]);
    broker.claim("other-start", &["--pid", &pid]);
    broker.kill9();
    // Make one lease's owner the same pid with another start time: what a
    // lease of a dead process whose pid was reused looks like.
    let st = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"update services set owner_start = owner_start + 1 where id = 'other-start'\"); c.commit()"])
        .arg(broker.home.path().join("pb.db"))
        .status()
        .unwrap();
    assert!(st.success());
    broker.restart();
    let ids: Vec<String> = broker.leases().into_iter().map(|(i, _)| i).collect();
    assert_eq!(
        ids,
        vec!["same-start".to_string()],
        "the live pid with the wrong start time owns nothing"
    );
    drop(sleeper);
}

/// A node app that binds `port` itself, knowing nothing of pb.
fn node_on(port: u16) -> Proc {
    Proc(
        Command::new("node")
            .args([
                "-e",
                "require('http').createServer((q,r)=>r.end('ok')).listen(Number(process.argv[1]))",
            ])
            .arg(port.to_string())
            .spawn()
            .unwrap(),
    )
}

#[test]
fn a_number_only_claim_is_adopted_by_the_app_and_freed_after_the_reload_grace() {
    let broker = Broker::start_with(&[("PB_SCAN_INTERVAL", "200ms"), ("PB_RELOAD_GRACE", "1s")]);
    let port = broker.claim("num", &[]);
    assert_eq!(lease(&broker, "num").unwrap()["pid"], Value::Null);
    let mut app = node_on(port);
    let app_pid = app.pid();
    wait_for("adoption", || {
        (lease(&broker, "num")?["pid"] == app_pid).then_some(())
    });
    let l = lease(&broker, "num").unwrap();
    assert_eq!(l["served"], true);
    assert!(l["command"].as_str().unwrap().starts_with("node"));
    app.signal(libc::SIGKILL);
    app.wait_for(Duration::from_secs(5));
    // Unowned but reserved during the grace, for the app's next run.
    wait_for("the lease to lose its owner", || {
        (lease(&broker, "num")?["pid"] == Value::Null).then_some(())
    });
    assert!(!can_bind(v4(port)), "still reserved during the grace");
    wait_ended_and_free(&broker, "num", port);
    assert!(broker.log().contains("within the reload grace"));
}

/// A reloader's restart (nodemon, Django's runserver): the app exits and
/// its next run binds the same port; the number-only lease stays, and is
/// adopted by each run in turn.
#[test]
fn a_number_only_lease_is_kept_across_an_apps_restarts() {
    let broker = broker();
    let port = broker.claim("reload", &[]);
    for run in 0..3 {
        let mut app = node_on(port);
        let pid = app.pid();
        wait_for("adoption", || {
            (lease(&broker, "reload")?["pid"] == pid).then_some(())
        });
        assert_eq!(
            curl_host_until("127.0.0.1", port).as_deref(),
            Some("ok"),
            "run {run}"
        );
        app.signal(libc::SIGTERM);
        app.wait_for(Duration::from_secs(5));
        let l = lease(&broker, "reload").expect("the lease outlives the run");
        assert_eq!(l["port"], port);
    }
    assert_eq!(broker.leases(), vec![("reload".to_string(), port)]);
}

#[test]
fn an_owner_that_closes_its_sockets_without_exiting_loses_the_lease() {
    let broker = broker();
    let (c, mut out, port) = claimant(&broker, "closer", "--close");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lease(&broker, "closer").is_some(),
        "held while the owner holds its sockets"
    );
    let mut stdin = c.0.stdin.as_ref().unwrap();
    stdin.write_all(b"close\n").unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "closed");
    wait_ended_and_free(&broker, "closer", port);
    drop(c);
}

#[test]
fn who_and_ps_all_name_an_unrelated_listener() {
    let broker = broker();
    let port = broker.range.1;
    let server = foreign_http_server(port);
    let pid = server.pid();
    let who = wait_for("the server to listen", || {
        let v = broker.pb_json(&["who", &port.to_string()]);
        (!v["listeners"].as_array()?.is_empty()).then_some(v)
    });
    assert_eq!(who["service"], Value::Null);
    let holder = &who["listeners"][0]["holders"][0];
    assert_eq!(holder["pid"], pid);
    assert!(holder["command"].as_str().unwrap().contains("http.server"));
    assert!(holder["since_ms"].as_u64().is_some());
    let text = broker.pb_ok(&["who", &port.to_string()]);
    assert!(
        text.contains(&format!("pid {pid}")) && text.contains("http.server"),
        "{text}"
    );

    let all = broker.pb_json(&["ps", "--all"]);
    let row = all["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["port"] == port)
        .expect("listed");
    assert_eq!(row["holders"][0]["pid"], pid);
    assert_eq!(row["brokered"], false);
    let table = broker.pb_ok(&["ps", "--all"]);
    assert!(table.contains(&port.to_string()) && table.contains(&pid.to_string()));

    // A brokered port names its service.
    let p = broker.claim("mine", &[]);
    let v = broker.pb_json(&["who", &p.to_string()]);
    assert_eq!(v["service"]["id"], "mine");

    for bad in ["0", "70000"] {
        let out = broker.pb(&["who", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
    }
    drop(server);
}

#[test]
fn scans_do_not_fail_while_processes_come_and_go() {
    use pb_platform::sockets;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rounds = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && rounds < 2000 {
                // Short-lived listeners and plain processes, ours, killed by pid.
                let mut l = Command::new("python3")
                    .args(["-c", "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); time.sleep(0.05)"])
                    .spawn()
                    .unwrap();
                let mut s = Command::new("sleep").arg("5").spawn().unwrap();
                std::thread::sleep(Duration::from_millis(5));
                let _ = s.kill();
                let _ = s.wait();
                let _ = l.wait();
                rounds += 1;
            }
            rounds
        })
    };
    for _ in 0..200 {
        let all = sockets::tcp_sockets().expect("a scan never fails");
        let inodes = all.iter().map(|s| s.inode).collect();
        let held = sockets::holders(&inodes);
        for p in held.values().flatten() {
            let _ = pb_platform::ProcessInfo::of(p.pid);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(churn.join().unwrap() > 0);
}

#[test]
fn claim_pid_of_another_users_process_is_refused() {
    let broker = broker();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    // As root, a process of user nobody; otherwise init, which is root's.
    let other = root.then(|| {
        Proc(
            Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "sleep",
                    "60",
                ])
                .spawn()
                .expect("setpriv (util-linux)"),
        )
    });
    let pid = other.as_ref().map_or(1, |p| p.pid());
    wait_for("the process to become another user's", || {
        (pb_platform::process::uid_of(pid) != Some(unsafe { libc::geteuid() })).then_some(())
    });
    let out = broker.pb(&["claim", "x", "--pid", &pid.to_string()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another user"));
    assert!(broker.leases().is_empty());
}

/// `pb claim` in a shell that exits before any app binds the port: nobody
/// will, so the lease ends with that shell (its claimant); `--keep` keeps
/// it; and an app already listening when the shell exits takes it over.
#[test]
fn a_number_only_claim_ends_with_its_shell_unless_an_app_took_it() {
    let broker = Broker::start_with(&[("PB_SCAN_INTERVAL", "10s")]);
    let script = |body: &str| {
        let out = output_ok(
            Command::new("bash")
                .args(["-c", body])
                .envs(broker.env().iter().map(|(k, v)| (k, v)))
                .env("PB", pb_bin()),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    script("P=$(\"$PB\" claim unused -q); echo $P");
    wait_for("the unused claim to end with its shell", || {
        lease(&broker, "unused").is_none().then_some(())
    });
    assert!(
        broker.log().contains("reclaimed unused"),
        "{}",
        broker.log()
    );

    script("\"$PB\" claim kept -q --keep");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        lease(&broker, "kept").is_some(),
        "--keep outlives the shell"
    );

    // The app outlives the shell that claimed for it.
    let node = "require('http').createServer((q,r)=>r.end('ok')).listen(Number(process.argv[1]))";
    let pid: u32 = script(&format!(
        "P=$(\"$PB\" claim used -q); node -e \"{node}\" $P >/dev/null 2>&1 & \
         for i in $(seq 100); do curl -s 127.0.0.1:$P >/dev/null && break; sleep 0.05; done; echo $!"
    ))
    .parse()
    .unwrap();
    let took = wait_until(Duration::from_secs(10), || {
        (lease(&broker, "used")?["pid"] == pid).then_some(())
    });
    // The node this test started through its shell: ended by its pid.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert!(
        took.is_some(),
        "the app took the lease over: {:?}",
        lease(&broker, "used")
    );
}

/// With no reload grace, an adopted lease ends the moment its app does.
#[test]
fn with_no_reload_grace_an_adopted_lease_ends_with_its_app() {
    let broker = Broker::start_with(&[("PB_SCAN_INTERVAL", "200ms"), ("PB_RELOAD_GRACE", "0")]);
    let port = broker.claim("num", &["--keep"]);
    let mut app = node_on(port);
    let pid = app.pid();
    wait_for("adoption", || {
        (lease(&broker, "num")?["pid"] == pid).then_some(())
    });
    app.signal(libc::SIGKILL);
    app.wait_for(Duration::from_secs(5));
    wait_ended_and_free(&broker, "num", port);
}
