//! Locks: mutual exclusion and FIFO order under contention, checked from a
//! recorded history; fencing tokens that keep increasing across restarts;
//! a holder's death frees the lock at once for the next waiter; `pb lock
//! -- CMD`; conflicts that say who holds the lock; bad input.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use pb_proto::{ErrorCode, LockArgs, LockOwnerArg, Op};
use pb_tests::*;
use serde_json::Value;

fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until(Duration::from_secs(20), f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

fn activity(broker: &Broker, target: &str, action: &str) -> Vec<Value> {
    let (v, _) = broker
        .client()
        .call(Op::Activity(pb_proto::ActivityArgs {
            action: Some(action.into()),
            target: Some(target.into()),
            limit: Some(10_000),
            ..Default::default()
        }))
        .expect("activity");
    v["entries"].as_array().unwrap().clone()
}

#[test]
fn sixteen_processes_contend_and_the_history_shows_mutual_exclusion_and_fifo() {
    const PROCS: usize = 16;
    const CYCLES: usize = 100;
    let broker = Broker::start();
    let counter = broker.home.path().join("counter");
    std::fs::write(&counter, "0").unwrap();
    let mut procs: Vec<Proc> = (0..PROCS)
        .map(|_| {
            Proc(
                Command::new("python3")
                    .arg(tests_dir().join("clients/lock_load.py"))
                    .arg(broker.socket())
                    .arg("contended")
                    .arg(CYCLES.to_string())
                    .arg(&counter)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("python3"),
            )
        })
        .collect();
    // Everyone connected first, then all start at once.
    for p in &mut procs {
        p.0.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    }
    let mut records: Vec<Value> = Vec::new();
    for p in &mut procs {
        let out = BufReader::new(p.0.stdout.take().unwrap());
        for line in out.lines() {
            records.push(serde_json::from_str(&line.unwrap()).unwrap());
        }
        let st = p
            .wait_for(Duration::from_secs(120))
            .expect("a load process ends");
        assert!(st.success(), "a load process failed: {st:?}");
    }
    assert_eq!(records.len(), PROCS * CYCLES);

    // No update was lost: nobody ever read the counter while another
    // holder was between its read and its write.
    let n: usize = std::fs::read_to_string(&counter).unwrap().parse().unwrap();
    assert_eq!(n, PROCS * CYCLES, "lost updates: two holders at once");

    // Client-side history, in token order: each holding ends before the
    // next begins (CLOCK_MONOTONIC is one clock for all processes).
    records.sort_by_key(|r| r["token"].as_u64().unwrap());
    for w in records.windows(2) {
        assert!(
            w[0]["token"].as_u64() < w[1]["token"].as_u64(),
            "tokens repeat: {w:?}"
        );
        assert!(
            w[1]["acquired"].as_u64() > w[0]["released"].as_u64(),
            "two holders at once: {w:?}"
        );
    }

    // The broker's own history (the activity log): replay it. A request
    // that found the lock held joined the queue (lock.wait); every grant
    // must go to the queue's head, to nobody while someone holds it, with
    // a token above every earlier one.
    let log = activity(&broker, "contended", "lock.*");
    let mut queue: VecDeque<u64> = VecDeque::new();
    let mut holder: Option<u64> = None;
    let mut last_token = 0;
    let mut grants = 0;
    let mut waited = 0;
    for e in &log {
        let pid = e["actor"]["pid"].as_u64().unwrap();
        match e["action"].as_str().unwrap() {
            "lock.wait" => {
                assert!(holder.is_some(), "queued while free: {e}");
                queue.push_back(pid);
                waited += 1;
            }
            "lock.acquire" => {
                assert!(holder.is_none(), "granted while held: {e}");
                if let Some(head) = queue.front() {
                    assert_eq!(*head, pid, "FIFO broken: {e}");
                    queue.pop_front();
                }
                let token = e["details"]["token"].as_u64().unwrap();
                assert!(token > last_token, "token did not increase: {e}");
                last_token = token;
                holder = Some(pid);
                grants += 1;
            }
            "lock.release" => {
                assert_eq!(holder, e["details"]["pid"].as_u64(), "{e}");
                holder = None;
            }
            other => panic!("unexpected {other} in {e}"),
        }
    }
    assert_eq!(grants, PROCS * CYCLES);
    assert!(queue.is_empty() && holder.is_none());
    assert!(
        waited > 0,
        "the test never made anyone wait; it proves nothing"
    );
}

#[test]
fn kill9_of_the_holder_frees_the_lock_and_the_waiter_gets_it() {
    let broker = Broker::start();
    let (holder, held) = broker.holder(&["lock", "k9"]);
    let first = held["lock"]["token"].as_u64().unwrap();
    assert_eq!(held["lock"]["pid"], holder.pid());

    let mut waiter = Proc(
        broker
            .cmd()
            .args([
                "-j",
                "lock",
                "k9",
                "--wait",
                "--timeout",
                "60s",
                "--owner",
                "next",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for("the waiter to queue", || {
        let v = broker.pb_json(&["locks"]);
        (v["locks"][0]["waiters"] == 1).then_some(())
    });
    holder.signal(libc::SIGKILL);
    let st = waiter
        .wait_for(Duration::from_secs(30))
        .expect("waiter ends");
    assert!(st.success());
    let mut out = String::new();
    std::io::Read::read_to_string(&mut waiter.0.stdout.take().unwrap(), &mut out).unwrap();
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["lock"]["owner_name"], "next");
    assert!(got["lock"]["token"].as_u64().unwrap() > first);
    let log = activity(&broker, "k9", "lock.release");
    assert_eq!(log[0]["details"]["reason"], "owner_died");
}

#[test]
fn tokens_keep_increasing_across_restarts_and_holdings_survive_them() {
    let mut broker = Broker::start();
    let t1: u64 = broker
        .pb_ok(&["lock", "t", "--owner", "a", "-q"])
        .trim()
        .parse()
        .unwrap();
    broker.pb_ok(&["unlock", "t", "--owner", "a"]);
    broker.pb_ok(&["lock", "held", "--owner", "x", "--ttl", "1h"]);
    broker.restart();
    let t2: u64 = broker
        .pb_ok(&["lock", "t", "--owner", "a", "-q"])
        .trim()
        .parse()
        .unwrap();
    assert!(t2 > t1, "token went from {t1} to {t2} across a restart");
    // The holding survived; a conflict names who holds it, since and until.
    let out = broker.pb(&["-j", "lock", "held", "--owner", "y"]);
    assert_eq!(out.status.code(), Some(5));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], "held");
    assert_eq!(e["details"]["owner_name"], "x");
    assert!(e["details"]["since_ms"].as_u64().unwrap() > 0);
    assert!(e["details"]["expires_ms"].as_u64() > e["details"]["since_ms"].as_u64());
    broker.restart();
    let t3: u64 = broker
        .pb_ok(&["lock", "t2", "--owner", "a", "-q"])
        .trim()
        .parse()
        .unwrap();
    assert!(t3 > t2);
}

#[test]
fn lock_dash_dash_cmd_holds_the_lock_for_the_life_of_the_command() {
    let broker = Broker::start();
    let inner = format!(
        "{} lock L --owner other; echo $? > {}; exit 3",
        pb_bin().display(),
        broker.home.path().join("inner").display()
    );
    let out = broker
        .cmd()
        .args(["lock", "L", "--", "sh", "-c", &inner])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "CMD's exit code passes through");
    let inner = std::fs::read_to_string(broker.home.path().join("inner")).unwrap();
    assert_eq!(inner.trim(), "5", "the lock was held while CMD ran");
    let v = broker.pb_json(&["locks"]);
    assert!(v["locks"].as_array().unwrap().is_empty(), "released after");
}

#[test]
fn unlock_is_for_the_owner_or_force_and_a_timeout_is_clean() {
    let broker = Broker::start();
    broker.pb_ok(&["lock", "f", "--owner", "x"]);
    let out = broker.pb(&["unlock", "f"]);
    assert_eq!(out.status.code(), Some(5), "not the owner");
    let out = broker.pb(&["lock", "f", "--wait", "--timeout", "300ms", "--owner", "y"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "a wait that runs out is a timeout"
    );
    let v = broker.pb_json(&["locks"]);
    assert_eq!(
        v["locks"][0]["waiters"], 0,
        "the timed-out waiter left the queue"
    );
    broker.pb_ok(&["unlock", "f", "--force"]);
    assert_eq!(broker.pb(&["unlock", "f"]).status.code(), Some(4));
    // A lock held by this process (the default for a connection).
    let mut c = broker.client();
    let (v, _) = c
        .call(Op::LockAcquire(LockArgs {
            name: "mine".into(),
            ..Default::default()
        }))
        .unwrap();
    assert_eq!(v["lock"]["pid"], std::process::id());
    let (v, _) = c
        .call(Op::LockExtend {
            name: "mine".into(),
            ttl_ms: Some(60_000),
            owner: None,
            agent: None,
        })
        .unwrap();
    assert_eq!(v["lock"]["ttl_ms"], 60_000);
    c.call(Op::LockRelease {
        name: "mine".into(),
        owner: None,
        agent: None,
        force: false,
    })
    .unwrap();
}

#[test]
fn force_does_not_reach_another_users_lock() {
    let mut broker = Broker::start();
    broker.pb_ok(&["lock", "seed", "--owner", "x"]);
    broker.kill9();
    let db = broker.home.path().join("pb.db");
    let st = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute(\"insert into locks values ('theirs', 99, 1, 4242, 'name', 'them', null, null, 1, 99999999999999, 1000)\"); c.commit()"])
        .arg(&db)
        .status()
        .unwrap();
    assert!(st.success());
    broker.restart();
    let out = broker.pb(&["-j", "unlock", "theirs", "--force"]);
    assert_eq!(out.status.code(), Some(5));
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], "forbidden");
    assert!(broker.pb_json(&["locks", "theirs"])["locks"][0]["uid"] == 4242);
}

#[test]
fn bad_lock_requests_get_clear_errors_and_change_nothing() {
    let broker = Broker::start();
    broker.pb_ok(&["lock", "keep", "--owner", "k"]);
    let before = broker.pb_json(&["locks"]);
    for bad in ["a b", "a::b", ":x", "x:", "é", "a:*"] {
        let out = broker.pb(&["-j", "lock", bad, "--owner", "z"]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let e: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(e["code"], "invalid_name", "{bad}");
    }
    let long = "x".repeat(300);
    assert_eq!(broker.pb(&["lock", &long]).status.code(), Some(2));
    let mut c = broker.client();
    let mut try_op = |args: LockArgs| c.call(Op::LockAcquire(args)).unwrap_err();
    let code = |e: pb_proto::client::ClientError| match e {
        pb_proto::client::ClientError::Wire(w) => w.code,
        other => panic!("{other}"),
    };
    for ttl in [-1, 1_000_000_000_000] {
        let e = try_op(LockArgs {
            name: "n".into(),
            ttl_ms: Some(ttl),
            ..Default::default()
        });
        assert_eq!(code(e), ErrorCode::InvalidDuration, "ttl {ttl}");
    }
    // 0 is "while the owner process lives": not for a named owner.
    let e = try_op(LockArgs {
        name: "n".into(),
        ttl_ms: Some(0),
        owner: Some(LockOwnerArg::Name("z".into())),
        ..Default::default()
    });
    assert_eq!(code(e), ErrorCode::InvalidDuration, "ttl 0 for a name");
    for wait in [-5, 10_000_000_000] {
        let e = try_op(LockArgs {
            name: "n".into(),
            wait_ms: Some(wait),
            ..Default::default()
        });
        assert_eq!(code(e), ErrorCode::InvalidDuration, "wait {wait}");
    }
    let e = try_op(LockArgs {
        name: "n".into(),
        agent: Some("ghost".into()),
        ..Default::default()
    });
    assert_eq!(code(e), ErrorCode::NotFound);
    let e = try_op(LockArgs {
        name: "n".into(),
        owner: Some(LockOwnerArg::Pid(999_999_999)),
        ..Default::default()
    });
    assert_eq!(code(e), ErrorCode::InvalidRequest);
    let e = try_op(LockArgs {
        name: "n".into(),
        owner: Some(LockOwnerArg::Name("no spaces allowed".into())),
        ..Default::default()
    });
    assert_eq!(code(e), ErrorCode::InvalidName);
    assert_eq!(
        broker.pb(&["unlock", "nothing-here"]).status.code(),
        Some(4)
    );
    let after = broker.pb_json(&["locks"]);
    assert_eq!(before, after);
}

#[test]
fn a_waiter_that_hangs_up_leaves_the_queue_and_is_never_granted() {
    use std::io::Write as _;
    let broker = Broker::start();
    // Taken by the test process itself (pb's parent), released the same way.
    broker.pb_ok(&["lock", "q"]);
    let v = broker.pb_json(&["locks", "q"]);
    assert_eq!(v["locks"][0]["pid"], std::process::id());
    // A raw client queues, then hangs up while waiting.
    let mut gone = std::os::unix::net::UnixStream::connect(broker.socket()).unwrap();
    let req = serde_json::json!({"v": 1, "tag": 1, "op": "lock_acquire", "name": "q",
                                 "wait_ms": 60000, "owner": {"name": "ghost"}});
    gone.write_all(&pb_proto::frame::encode(req.to_string().as_bytes()))
        .unwrap();
    wait_for("the waiter to queue", || {
        (broker.pb_json(&["locks", "q"])["locks"][0]["waiters"] == 1).then_some(())
    });
    drop(gone);
    wait_for("the waiter to leave", || {
        (broker.pb_json(&["locks", "q"])["locks"][0]["waiters"] == 0).then_some(())
    });
    let cancel = activity(&broker, "q", "lock.cancel");
    assert_eq!(cancel[0]["details"]["reason"], "disconnected");
    broker.pb_ok(&["unlock", "q"]);
    // Free, and nobody was granted it on the ghost's behalf.
    assert!(broker.pb_json(&["locks"])["locks"]
        .as_array()
        .unwrap()
        .is_empty());
    let grants = activity(&broker, "q", "lock.acquire");
    assert_eq!(grants.len(), 1);
}

#[test]
fn an_expired_holding_passes_to_the_next_waiter() {
    let broker = Broker::start();
    let t1: u64 = broker
        .pb_ok(&["lock", "e", "--owner", "a", "--ttl", "1s", "-q"])
        .trim()
        .parse()
        .unwrap();
    // b queues; a never releases; the TTL ends a's holding and b gets it.
    let out = broker.pb(&[
        "-j",
        "lock",
        "e",
        "--owner",
        "b",
        "--wait",
        "--timeout",
        "30s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["lock"]["owner_name"], "b");
    assert!(got["lock"]["token"].as_u64().unwrap() > t1);
    let expired = activity(&broker, "e", "lock.expire");
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0]["details"]["token"], t1);
    assert!(expired[0]["actor"].is_null(), "the broker expired it");
}

/// Issue 14, defect 2: `pb lock NAME -- CMD` takes the lock for CMD's own
/// process. A kill -9 of `pb` alone leaves CMD running and holding it, so
/// no waiter is granted while CMD can still run, not even past the lock TTL
/// (1 s here), which nobody renews once pb is gone: CMD's lock has none
/// (TTL 0). CMD's end releases it.
#[test]
fn lock_dash_dash_cmd_keeps_excluding_when_pb_is_killed() {
    use std::io::BufRead;
    let broker = Broker::start_with(&[("PB_LOCK_TTL", "1s")]);
    let mut pb = Proc(
        broker
            .cmd()
            .args([
                "lock",
                "L",
                "--",
                "sh",
                "-c",
                "echo token=$PB_LOCK_TOKEN pid=$$; exec sleep 30",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(pb.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    let token: u64 = words[0]
        .trim_start_matches("token=")
        .parse()
        .expect("PB_LOCK_TOKEN is set");
    let cmd_pid: u32 = words[1].trim_start_matches("pid=").parse().unwrap();
    let held = broker.pb_json(&["locks"]);
    assert_eq!(
        held["locks"][0]["pid"], cmd_pid,
        "CMD itself holds it: {held}"
    );
    assert_eq!(held["locks"][0]["token"], token);
    assert_eq!(
        held["locks"][0]["ttl_ms"], 0,
        "held until CMD exits: {held}"
    );
    pb.signal(libc::SIGKILL);
    pb.wait_for(Duration::from_secs(5));
    // pb is gone; CMD runs on and still holds the lock, past the TTL.
    std::thread::sleep(Duration::from_millis(1500));
    let out = broker.pb(&[
        "lock",
        "L",
        "--owner",
        "next",
        "--wait",
        "--timeout",
        "500ms",
    ]);
    assert_eq!(out.status.code(), Some(7), "no grant while CMD runs");
    // CMD ends (the test started it, through pb): the lock passes on.
    unsafe { libc::kill(cmd_pid as i32, libc::SIGKILL) };
    let v = broker.pb_json(&["lock", "L", "--owner", "next", "--wait", "--timeout", "5s"]);
    assert!(v["lock"]["token"].as_u64().unwrap() > token, "{v}");
}

/// `pb lock NAME -- CMD` that has to start the broker starts it before it
/// forks CMD, so the broker is not part of CMD's tree and outlives it; a
/// nested `pb lock` hands its own command its own token, once.
#[test]
fn lock_dash_dash_cmd_leaves_the_broker_it_started_running() {
    let home = tempfile::tempdir().unwrap();
    let block = PortBlock::take(20);
    let run = |args: &[&str]| {
        Command::new(pb_bin())
            .args(args)
            .env("PB_HOME", home.path())
            .env("PB_RANGE", format!("{}-{}", block.range.0, block.range.1))
            .env("PB_HTTP_ADDR", "off")
            .env("PB_PROXY_ADDR", "off")
            .env_remove("PB_NO_AUTOSTART")
            .env_remove("PB_LOCK_TOKEN")
            .env("PB", pb_bin())
            .output()
            .unwrap()
    };
    let out = run(&[
        "lock",
        "outer",
        "--",
        "sh",
        "-c",
        "echo $PB_LOCK_TOKEN; \"$PB\" lock inner -- sh -c 'env | grep -c ^PB_LOCK_TOKEN=; echo $PB_LOCK_TOKEN'",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[1], "1", "one PB_LOCK_TOKEN in the inner command");
    assert_ne!(lines[0], lines[2], "each command has its own lock's token");
    let status = run(&["-j", "status"]);
    assert!(status.status.success(), "the broker it started still runs");
    assert!(run(&["stop"]).status.success());
}

/// A TTL of 0 (held while the owner process lives) is for process owners:
/// a named owner asking for it is refused and nothing is held; an explicit
/// `--ttl` on `pb lock -- CMD` bounds the holding as asked.
#[test]
fn a_lock_held_until_exit_needs_a_process_owner() {
    let broker = Broker::start();
    let out = broker.pb(&["-j", "lock", "db", "--owner", "ops", "--ttl", "0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["code"], "invalid_duration", "{e}");
    assert_eq!(broker.pb_json(&["locks"])["locks"], serde_json::json!([]));
    let mut held = Proc(
        broker
            .cmd()
            .args(["lock", "db", "--ttl", "60s", "--", "sleep", "30"])
            .spawn()
            .unwrap(),
    );
    let ttl = wait_for("the holding", || {
        broker.pb_json(&["locks"])["locks"][0]["ttl_ms"].as_u64()
    });
    assert_eq!(ttl, 60_000);
    held.signal(libc::SIGTERM);
    assert!(held.wait_for(Duration::from_secs(10)).is_some());
}
