//! The broker's lifetime: leases survive kill -9 and come back held;
//! autostart; stop; a dead owner's lease ends at restart.

use std::process::Stdio;
use std::time::Duration;

use pb_tests::*;
use serde_json::Value;

#[test]
fn acknowledged_leases_survive_kill_9_and_are_held_again() {
    let mut broker = Broker::start();
    let mut claimed = Vec::new();
    for i in 0..20 {
        let id = format!("svc:{i}");
        let port = broker.claim(&id, &[]);
        claimed.push((id, port));
    }
    // One lease whose listener a client holds: after the crash the client
    // still serves, and the broker must accept that.
    let (reply, fds) = broker
        .client()
        .call_as::<pb_proto::ClaimReply>(pb_proto::Op::Claim(pb_proto::ClaimArgs {
            id: "held:by-client".into(),
            fds: true,
            ..Default::default()
        }))
        .unwrap();
    claimed.push(("held:by-client".into(), reply.lease.port));
    broker.pb_ok(&["release", "svc:3"]);
    claimed.retain(|(id, _)| id != "svc:3");
    claimed.sort_by_key(|(_, p)| *p);

    broker.kill9();
    broker.restart();
    assert_eq!(broker.leases(), claimed, "every acknowledged lease is back");
    for (id, port) in &claimed {
        assert!(
            !can_bind(v4(*port)) && !can_bind(v6(*port)),
            "{id}'s port {port} is held again"
        );
    }
    let v = broker.pb_json(&["find", "held:*"]);
    assert_eq!(
        v["services"][0]["held"], false,
        "the client, not the broker, holds it now"
    );
    drop(fds);
    // The sticky memory survived too: a released id gets its port back.
    let svc3 = broker.claim("svc:3", &[]);
    let again = broker.claim("svc:new", &[]);
    assert_ne!(svc3, again);
}

#[test]
fn a_lease_whose_owner_died_while_the_broker_was_down_ends_at_restart() {
    let mut broker = Broker::start();
    let mut sleeper = Proc(
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap(),
    );
    let port = broker.claim("owned", &["--pid", &sleeper.pid().to_string()]);
    broker.claim("unowned", &[]);
    broker.kill9();
    sleeper.signal(libc::SIGKILL);
    sleeper.wait_for(Duration::from_secs(5));
    broker.restart();
    let ids: Vec<String> = broker.leases().into_iter().map(|(i, _)| i).collect();
    assert_eq!(ids, vec!["unowned".to_string()]);
    assert!(can_bind(v4(port)));
}

#[test]
fn claim_pid_must_name_a_live_process_of_ours() {
    let broker = Broker::start();
    let out = broker.pb(&["claim", "x", "--pid", "999999999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no process"));
    assert!(broker.leases().is_empty());
}

#[test]
fn clients_start_a_broker_when_none_runs_and_only_one_wins() {
    let home = tempfile::tempdir().unwrap();
    let block = PortBlock::take(200);
    let range = block.range;
    let spawn = |i: usize| {
        std::process::Command::new(pb_bin())
            .args(["claim", &format!("auto:{i}"), "-q"])
            .env("PB_HOME", home.path())
            .env("PB_RANGE", format!("{}-{}", range.0, range.1))
            .env("PB_HTTP_ADDR", "off")
            .env("PB_PROXY_ADDR", "off")
            .env_remove("PB_NO_AUTOSTART")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let racers: Vec<_> = (0..4).map(spawn).collect();
    let mut ports = Vec::new();
    for r in racers {
        let out = r.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ports.push(
            String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse::<u16>()
                .unwrap(),
        );
    }
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 4);
    // One broker serves all of them; stop it (by request, then its pid is gone).
    let status = std::process::Command::new(pb_bin())
        .args(["-j", "status"])
        .env("PB_HOME", home.path())
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["leases"], 4);
    let pid = v["pid"].as_u64().unwrap() as u32;
    let st = std::process::Command::new(pb_bin())
        .arg("stop")
        .env("PB_HOME", home.path())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(!pb_platform::ProcessId::of(pid).is_some_and(|p| p.is_alive()));
    assert!(!home.path().join("pb.sock").exists());
}

#[test]
fn no_autostart_means_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(pb_bin())
        .args(["claim", "x"])
        .env("PB_HOME", home.path())
        .env("PB_NO_AUTOSTART", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no broker is running"));
    let out = std::process::Command::new(pb_bin())
        .arg("status")
        .env("PB_HOME", home.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn a_second_daemon_refuses_to_start() {
    let broker = Broker::start();
    let out = broker.pb(&["daemon"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    // The first one still answers.
    broker.pb_ok(&["status"]);
}

#[test]
fn private_directory_and_socket() {
    use std::os::unix::fs::PermissionsExt;
    let broker = Broker::start();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    // A PB_HOME is the user's: checked (nobody else may write to it, see
    // tests/home.rs), never chmod'ed; what the broker puts in it is private.
    assert_eq!(mode(broker.home.path()) & 0o022, 0);
    assert_eq!(mode(&broker.socket()), 0o600);
    assert_eq!(mode(&broker.home.path().join("pb.db")), 0o600);
}

/// Issue 14, defect 1: a number-only lease whose port another user took
/// while the broker was down is reloaded unheld (`held: false`); once that
/// process lets the port go, the broker holds it again (within a scan), so
/// no process of any user can bind a leased port while the broker runs.
#[test]
fn a_lease_whose_port_was_taken_across_a_restart_is_held_again_when_it_frees() {
    use std::io::BufRead;
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "needs root to act as another user"
    );
    let mut broker = Broker::start_with(&[("PB_SCAN_INTERVAL", "200ms")]);
    let port = broker.claim("app:web", &["--keep"]);
    broker.kill9();
    let squat = format!(
        "import socket,time\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(8); print('up', flush=True); time.sleep(60)"
    );
    let mut squatter = Proc(
        // Debian's python3: one the other user can run (not under /root).
        command_as(Some((65534, 65534)), "/usr/bin/python3")
            .args(["-c", &squat])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(squatter.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "up");
    broker.restart();
    let held = |b: &Broker| b.pb_json(&["find", "app:web"])["services"][0]["held"].as_bool();
    assert_eq!(
        held(&broker),
        Some(false),
        "reloaded, but the port is taken"
    );
    squatter.signal(libc::SIGKILL);
    squatter.wait_for(Duration::from_secs(5));
    let again = wait_until(Duration::from_secs(10), || {
        (held(&broker) == Some(true)).then_some(())
    });
    assert!(
        again.is_some(),
        "held again once the port was free: {}",
        broker.log()
    );
    assert!(
        !can_bind(v4(port)) && !can_bind(v6(port)),
        "nobody else can bind it"
    );
    assert!(broker.log().contains("is free again"));
    let events = broker.activity(&["--action", "service.held"]);
    assert_eq!(events.len(), 1, "{events:?}");
}

/// Issue 14, defect 10: a panic inside the core aborts the broker at once,
/// rather than carrying on with a change half-applied in memory; the next
/// start reloads exactly what was acknowledged.
#[test]
fn a_panic_in_the_core_aborts_the_broker_and_a_restart_recovers() {
    use std::os::unix::process::ExitStatusExt;
    let mut broker = Broker::start_with(&[("PB_TEST_PANIC_ON_CLAIM", "boom")]);
    let kept = broker.claim("kept", &["--keep"]);
    let out = broker.pb(&["claim", "boom"]);
    assert!(
        !out.status.success(),
        "the claim that panicked is not acknowledged"
    );
    let status = broker
        .exited(Duration::from_secs(10))
        .expect("the broker ended");
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    assert!(
        broker.log().contains("the broker panicked"),
        "{}",
        broker.log()
    );
    broker.restart();
    assert_eq!(broker.leases(), vec![("kept".to_string(), kept)]);
}

/// Runs `pb daemon` on `broker`'s home (stopped) and returns how it ended
/// within 10 s and what it said, or `None` if it came up (then stopped).
fn daemon_refuses(broker: &Broker) -> Option<String> {
    let out = broker
        .cmd()
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proc(out);
    match p.wait_for(Duration::from_secs(10)) {
        Some(st) => {
            assert!(!st.success(), "a refusing daemon exits non-zero");
            let mut err = String::new();
            use std::io::Read;
            p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            Some(err)
        }
        None => None,
    }
}

/// Issue 14, defect 4: after a kill -9, a lost write-ahead log or a zeroed
/// database is detected (the fingerprint kept outside SQLite no longer
/// matches), and the broker refuses to start with what happened and how to
/// go on, instead of silently holding fewer leases than it acknowledged.
#[test]
fn a_store_that_lost_acknowledged_leases_is_never_used_silently() {
    for damage in ["wal deleted", "wal truncated", "db zeroed"] {
        let mut broker = Broker::start();
        for i in 0..50 {
            broker.claim(&format!("app:{i}"), &["--keep"]);
        }
        broker.kill9();
        let home = broker.home.path().to_path_buf();
        let (db, wal) = (home.join("pb.db"), home.join("pb.db-wal"));
        match damage {
            "wal deleted" => std::fs::remove_file(&wal).unwrap(),
            "wal truncated" => {
                let f = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
                f.set_len(f.metadata().unwrap().len() / 3).unwrap();
            }
            _ => {
                let _ = std::fs::remove_file(&wal);
                std::fs::File::create(&db).unwrap();
            }
        }
        let said = daemon_refuses(&broker).unwrap_or_else(|| panic!("{damage}: started anyway"));
        assert!(said.contains("were acknowledged"), "{damage}: {said}");
        assert!(
            said.contains("pb.db-fingerprint"),
            "{damage}: names the file: {said}"
        );
        assert!(said.contains("mv "), "{damage}: says how to go on: {said}");
        // Following its advice: the broker starts with what the file holds.
        let witness = home.join("pb.db-fingerprint");
        std::fs::rename(&witness, home.join("pb.db-fingerprint.old")).unwrap();
        broker.restart();
        assert!(
            broker.leases().len() < 50,
            "{damage}: some were lost, as it said"
        );
    }
}

/// A kill -9 alone damages nothing: every acknowledged lease is there, and
/// the fingerprint agrees.
#[test]
fn a_plain_kill_9_passes_the_store_check() {
    let mut broker = Broker::start();
    for i in 0..50 {
        broker.claim(&format!("app:{i}"), &["--keep"]);
    }
    broker.pb_ok(&["release", "app:1*"]);
    broker.kill9();
    broker.restart();
    assert_eq!(broker.leases().len(), 50 - 11);
}

/// Issue 14, defect 8: clients ride through a broker restart. `pb wait`
/// keeps waiting, `pb lock --wait` queues again, `pb sub` resumes after the
/// last message it printed (no loss, no duplicate), each saying so on
/// stderr; all within a bounded time.
#[test]
fn waiting_clients_ride_through_a_broker_restart() {
    use std::io::{BufRead, BufReader};
    let mut broker = Broker::start();
    let port = broker.claim("later:api", &["--keep"]);
    broker.pb_ok(&["lock", "L", "--owner", "someone"]);
    let spawn = |args: &[&str]| {
        Proc(
            broker
                .cmd()
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    let mut waiter = spawn(&["wait", "later:api", "--timeout", "40s"]);
    let mut locker = spawn(&[
        "lock",
        "L",
        "--wait",
        "--timeout",
        "40s",
        "--owner",
        "me",
        "-q",
    ]);
    let mut sub = spawn(&["-q", "sub", "news:*"]);
    let sub_out = lines_of(sub.0.stdout.take().unwrap());
    // The subscriber is subscribed once a message published now reaches it.
    let first = wait_until(Duration::from_secs(10), || {
        broker.pb_ok(&["pub", "news:a", "\"one\""]);
        sub_out.recv_timeout(Duration::from_millis(200)).ok()
    })
    .expect("the subscriber hears the first message");
    assert_eq!(first, "\"one\"");
    while sub_out.recv_timeout(Duration::from_millis(300)).is_ok() {}

    broker.kill9();
    std::thread::sleep(Duration::from_millis(500));
    broker.restart();

    // The subscriber is back once it hears a message published after.
    let second = wait_until(Duration::from_secs(15), || {
        broker.pb_ok(&["pub", "news:a", "\"two\""]);
        sub_out.recv_timeout(Duration::from_millis(300)).ok()
    })
    .expect("the subscriber resumes");
    assert_eq!(second, "\"two\"", "no repeat of what it printed before");
    // The waiter waits on, and returns once the service serves.
    // std's bind sets SO_REUSEADDR, which steps over the placeholder.
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("listen");
    let (st, err) = waiter.finish(Duration::from_secs(20));
    assert!(st.expect("pb wait returns").success(), "{err}");
    assert!(err.contains("reconnecting"), "says so: {err}");
    drop(listener);
    // The lock waiter queued again, and is granted when the holder lets go.
    broker.pb_ok(&["unlock", "L", "--owner", "someone"]);
    let (st, err) = locker.finish(Duration::from_secs(20));
    assert!(st.expect("pb lock returns").success(), "{err}");
    assert!(err.contains("queued again for lock L"), "{err}");
    let mut token = String::new();
    BufReader::new(locker.0.stdout.take().unwrap())
        .read_line(&mut token)
        .unwrap();
    assert!(token.trim().parse::<u64>().is_ok(), "{token:?}");
    sub.signal(libc::SIGTERM);
}

/// A `pb exec` whose broker restarts under it keeps its lease (the owner,
/// `pb exec` itself, is stored) and its app keeps serving; when `pb exec`
/// ends, the lease ends with it at the new broker.
#[test]
fn pb_exec_keeps_its_lease_across_a_broker_restart() {
    let mut broker = Broker::start();
    let script = tests_dir().join("servers/fd_server.py");
    let (mut pb, port) = broker.exec(&["web", "--", "python3", script.to_str().unwrap()]);
    assert!(curl_until("-4", port).is_some());
    broker.kill9();
    broker.restart();
    let lease = broker.pb_json(&["find", "web"]);
    assert_eq!(lease["services"][0]["pid"], pb.pid(), "{lease}");
    assert!(curl_until("-4", port).is_some(), "the app serves on");
    pb.signal(libc::SIGTERM);
    pb.wait_for(Duration::from_secs(10)).expect("pb exec ends");
    let gone = wait_until(Duration::from_secs(10), || {
        broker.leases().is_empty().then_some(())
    });
    assert!(
        gone.is_some(),
        "the lease ends with pb exec: {:?}",
        broker.leases()
    );
}

/// `pb repair` (issue 14): a store that lost acknowledged leases is kept
/// with what it holds, saying how many are gone; a store with a damaged
/// page is moved aside and every table that can still be read is copied
/// into a new one; a sound store, or a running broker, is left alone.
#[test]
fn pb_repair_keeps_what_can_be_saved() {
    let mut broker = Broker::start();
    for i in 0..50 {
        broker.claim(&format!("app:{i}"), &["--keep"]);
    }
    for name in ["db", "cache", "deploy"] {
        broker.pb_ok(&["lock", name, "--owner", "ops"]);
    }
    // While it runs, nothing is touched.
    let out = broker.pb(&["repair"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("stop it first"));
    broker.pb_ok(&["stop"]);
    let sound: Value = serde_json::from_str(&broker.pb_ok(&["-j", "repair"])).unwrap();
    assert_eq!(sound["outcome"], "sound", "{sound}");
    assert_eq!(sound["leases"], 50);

    // A damaged page of the locks table: SQLite's check fails, the
    // services table is whole.
    let home = broker.home.path().to_path_buf();
    let db = home.join("pb.db");
    let root = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute(\"PRAGMA page_size\").fetchone()[0], c.execute(\"SELECT rootpage FROM sqlite_master WHERE name='locks'\").fetchone()[0])",
        ])
        .arg(&db)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&root.stdout);
    let (page_size, page): (u64, u64) = {
        let mut w = said.split_whitespace().map(|n| n.parse().unwrap());
        (w.next().unwrap(), w.next().unwrap())
    };
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        f.seek(std::io::SeekFrom::Start((page - 1) * page_size))
            .unwrap();
        f.write_all(&vec![0xA5; page_size as usize]).unwrap();
    }
    let refused = daemon_refuses(&broker).expect("a damaged store is not used");
    assert!(refused.contains("is damaged"), "{refused}");
    assert!(refused.contains("pb repair"), "{refused}");
    let fixed: Value = serde_json::from_str(&broker.pb_ok(&["-j", "repair"])).unwrap();
    assert_eq!(fixed["outcome"], "salvaged", "{fixed}");
    assert_eq!(fixed["leases"], 50, "{fixed}");
    let lost: Vec<&str> = fixed["lost"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l[0].as_str().unwrap())
        .collect();
    assert_eq!(lost, ["locks"], "{fixed}");
    let damaged = fixed["damaged"].as_str().unwrap();
    assert!(
        std::path::Path::new(damaged).exists(),
        "kept aside: {fixed}"
    );
    broker.restart();
    assert_eq!(broker.leases().len(), 50);
    // The saved leases are held again.
    for (_, port) in broker.leases() {
        assert!(!can_bind(v4(port)), "{port} is held");
    }
    assert_eq!(broker.pb_json(&["locks"])["locks"], serde_json::json!([]));
    // The lost lock rows carried the fencing-token counter: tokens still
    // only rise.
    let token: u64 = broker
        .pb_ok(&["-q", "lock", "next", "--owner", "ops"])
        .trim()
        .parse()
        .unwrap();
    assert!(
        token > 3,
        "token {token} after a repair that lost the locks"
    );

    // A lost write-ahead log: the database is whole but short of what was
    // acknowledged. It is kept, and pb repair says how many are gone.
    for i in 50..60 {
        broker.claim(&format!("app:{i}"), &["--keep"]);
    }
    broker.kill9();
    std::fs::remove_file(home.join("pb.db-wal")).unwrap();
    assert!(daemon_refuses(&broker).is_some_and(|s| s.contains("pb repair")));
    let kept: Value = serde_json::from_str(&broker.pb_ok(&["-j", "repair"])).unwrap();
    assert_eq!(kept["outcome"], "accepted", "{kept}");
    let (leases, gone) = (
        kept["leases"].as_u64().unwrap(),
        kept["lost"].as_u64().unwrap(),
    );
    assert_eq!(leases + gone, 60, "{kept}");
    assert!(gone > 0, "{kept}");
    broker.restart();
    assert_eq!(broker.leases().len() as u64, leases);
}
