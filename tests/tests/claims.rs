//! Claims against a real broker: distinct, kernel-held ports under heavy
//! concurrency; foreign listeners skipped; sticky ports; the CLI's views;
//! and a broker that, once its claims stop, stops polling.

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Command, Stdio};

use pb_tests::*;

#[test]
fn eight_processes_of_250_concurrent_claims_get_distinct_bound_ports() {
    let broker = Broker::start_in(PortBlock::take(2500), &[]);
    let range = broker.range;
    let script = tests_dir().join("clients/claim_load.py");
    let procs: Vec<_> = (0..8)
        .map(|p| {
            Command::new("python3")
                .arg(&script)
                .arg(broker.socket())
                .arg(p.to_string())
                .arg("250")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("python3")
        })
        .collect();
    let mut ports = Vec::new();
    let mut with_fds = 0;
    for p in procs {
        let out = p.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "load process failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<(String, u16, usize)> = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(rows.len(), 250);
        for (_, port, nfds) in rows {
            ports.push(port);
            with_fds += (nfds > 0) as usize;
        }
    }
    assert_eq!(ports.len(), 2000);
    assert_eq!(with_fds, 1000);
    let distinct: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), 2000, "every port is distinct");
    for &p in &ports {
        assert!((range.0..=range.1).contains(&p));
        assert!(
            !can_bind(v4(p)),
            "port {p} is held by the broker on 127.0.0.1"
        );
        assert!(!can_bind(v6(p)), "port {p} is held by the broker on ::1");
    }
    let listed: HashSet<u16> = broker.leases().into_iter().map(|(_, p)| p).collect();
    assert_eq!(listed, distinct);
}

/// Four outside listeners, one per address kind, at the start of the range.
#[test]
fn ports_held_by_outside_listeners_are_never_handed_out() {
    let broker = Broker::start();
    let (start, _) = broker.range;
    let addrs = ["127.0.0.1", "0.0.0.0", "::", "::1"];
    let mut held = Vec::new();
    let mut foreign = Vec::new();
    for (i, a) in addrs.iter().enumerate() {
        let port = start + i as u16;
        let l = TcpListener::bind((*a, port))
            .unwrap_or_else(|e| panic!("test listener on {a}:{port}: {e}"));
        held.push(port);
        foreign.push(l);
    }
    // A claim in exactly that range finds nothing; asking for each fails.
    let range = format!("{}-{}", start, start + 3);
    let out = broker.pb(&["claim", "x", "--range", &range]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "exhausted: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for p in &held {
        let out = broker.pb(&["claim", "x", "-p", &p.to_string()]);
        assert_eq!(out.status.code(), Some(5), "port {p} is taken");
        assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
    }
    // Ordinary claims skip all four.
    for i in 0..6 {
        let p = broker.claim(&format!("svc{i}"), &[]);
        assert!(!held.contains(&p), "got foreign port {p}");
    }
    // A listener that appears between two claims is skipped too.
    let next = broker.leases().iter().map(|(_, p)| *p).max().unwrap() + 1;
    let late = TcpListener::bind(("::", next)).unwrap();
    let p = broker.claim("after-late", &[]);
    assert_ne!(p, next);
    drop(late);
    drop(foreign);
    assert!(broker.leases().iter().all(|(_, p)| !held.contains(p)));
}

#[test]
fn sticky_ports_specific_ports_and_fallback() {
    let broker = Broker::start();
    let a = broker.claim("app:a", &[]);
    broker.pb_ok(&["release", "app:a"]);
    // Another id does not take a's remembered port while others are free.
    let b = broker.claim("app:b", &[]);
    assert_ne!(a, b);
    assert_eq!(broker.claim("app:a", &[]), a, "sticky");
    // Claiming again returns the same lease.
    let again = broker.pb_json(&["claim", "app:a"]);
    assert_eq!(again["existing"], true);
    assert_eq!(again["lease"]["port"], a);
    // A specific port that is leased fails clearly, or falls back if asked.
    let out = broker.pb(&["claim", "app:c", "-p", &a.to_string()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("leased to app:a"));
    let c = broker.claim("app:c", &["-p", &a.to_string(), "--fallback"]);
    assert_ne!(c, a);
    // The same id with a different port is a conflict.
    let out = broker.pb(&["claim", "app:a", "-p", &c.to_string()]);
    assert_eq!(out.status.code(), Some(5));
    // A free specific port is granted exactly.
    let want = broker.range.1;
    assert_eq!(broker.claim("app:d", &["-p", &want.to_string()]), want);
    assert!(!can_bind(v4(want)));
}

#[test]
fn reserved_ports_are_never_handed_out() {
    let block = PortBlock::take(200);
    let range = block.range;
    let reserved = format!("{},{}", range.0, range.0 + 1);
    let broker = Broker::start_in(block, &[("PB_RESERVED", &reserved)]);
    let p = broker.claim("r", &[]);
    assert!(p >= range.0 + 2);
    let out = broker.pb(&["claim", "r2", "-p", &range.0.to_string()]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("reserved"));
}

#[test]
fn release_by_id_pattern_and_port() {
    let broker = Broker::start();
    let api = broker.claim("myapp:api:main", &[]);
    broker.claim("myapp:web:main", &[]);
    broker.claim("myapp:api:feature-auth", &[]);
    let other = broker.claim("other:api", &[]);
    let v = broker.pb_json(&["find", "*:api:*"]);
    assert_eq!(v["services"].as_array().unwrap().len(), 2);
    let v = broker.pb_json(&["release", "myapp:*:feature-auth"]);
    assert_eq!(v["released"][0]["id"], "myapp:api:feature-auth");
    broker.pb_ok(&["release", &api.to_string()]);
    assert!(!broker.leases().iter().any(|(_, p)| *p == api));
    assert!(
        can_bind(v4(api)) && can_bind(v6(api)),
        "released port is free in the kernel"
    );
    let v = broker.pb_json(&["release", "myapp:*"]);
    assert_eq!(v["released"].as_array().unwrap().len(), 1);
    assert_eq!(broker.leases(), vec![("other:api".to_string(), other)]);
    // Unknown id and unleased port are errors; an empty pattern match is not.
    assert_eq!(broker.pb(&["release", "nope"]).status.code(), Some(4));
    assert_eq!(
        broker.pb(&["release", &api.to_string()]).status.code(),
        Some(4)
    );
    assert!(broker.pb(&["release", "nope:*"]).status.success());
}

#[test]
fn url_env_lookup_and_export_output() {
    let broker = Broker::start();
    let p = broker.claim("myapp:api", &[]);
    // With the proxy on (as by default), the URL is the named one.
    let proxy = broker.proxy_port().unwrap();
    assert_eq!(
        broker.pb_ok(&["url", "myapp:api"]).trim(),
        format!("http://api.myapp.localhost:{proxy}")
    );
    assert_eq!(
        broker.pb_ok(&["url", "myapp:api", "-e", "local"]).trim(),
        format!("http://localhost:{p}")
    );
    assert_eq!(broker.pb_ok(&["lookup", "myapp:api"]).trim(), p.to_string());
    assert_eq!(
        broker.pb_ok(&["env", "myapp:*"]).trim(),
        format!("export MYAPP_API_PORT={p}")
    );
    assert_eq!(
        broker.pb_ok(&["claim", "myapp:api", "--export"]).trim(),
        format!("export PORT={p}")
    );
    // PortManager's recipe: `alloc NAME | tail -1 | awk '{print $3}'`.
    assert_eq!(
        broker.pb_ok(&["alloc", "myapp:api"]).trim(),
        format!("Allocated port: {p}")
    );
    let table = broker.pb_ok(&["ps"]);
    assert!(
        table.contains("myapp:api") && table.contains(&p.to_string()),
        "{table}"
    );
    assert_eq!(broker.pb(&["url", "missing"]).status.code(), Some(4));
}

#[test]
fn expired_leases_end_and_free_their_port() {
    let broker = Broker::start();
    let p = broker.claim("short", &["--expires", "300ms"]);
    let long = broker.claim("long", &["--expires", "1d"]);
    let gone = wait_until(std::time::Duration::from_secs(10), || {
        (!broker.leases().iter().any(|(id, _)| id == "short")).then_some(())
    });
    assert!(gone.is_some(), "short lease expired");
    assert!(can_bind(v4(p)));
    assert!(broker
        .leases()
        .iter()
        .any(|(id, q)| id == "long" && *q == long));
}

#[test]
fn heartbeat_renews_a_ttl() {
    let broker = Broker::start();
    broker.claim("hb", &["--ttl", "60"]);
    let mut c = broker.client();
    let (before, _) = c
        .call_as::<pb_proto::LeaseInfo>(pb_proto::Op::Get { id: "hb".into() })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let (after, _) = c
        .call_as::<pb_proto::LeaseInfo>(pb_proto::Op::Heartbeat {
            id: Some("hb".into()),
            port: None,
            ttl_ms: None,
        })
        .unwrap();
    assert_eq!(after.ttl_ms, Some(60_000));
    assert!(after.expires_ms.unwrap() > before.expires_ms.unwrap());
    // The same lease named by its port.
    let (by_port, _) = c
        .call_as::<pb_proto::LeaseInfo>(pb_proto::Op::Heartbeat {
            id: None,
            port: Some(after.port as i64),
            ttl_ms: Some(90_000),
        })
        .unwrap();
    assert_eq!((by_port.id.as_str(), by_port.ttl_ms), ("hb", Some(90_000)));
    for (id, port) in [
        (None, None),
        (Some("hb".to_string()), Some(after.port as i64)),
    ] {
        let e = c
            .call(pb_proto::Op::Heartbeat {
                id,
                port,
                ttl_ms: None,
            })
            .unwrap_err();
        assert!(
            matches!(e, pb_proto::client::ClientError::Wire(w) if w.code == pb_proto::ErrorCode::InvalidRequest)
        );
    }
    broker.claim("nottl", &[]);
    let e = c
        .call(pb_proto::Op::Heartbeat {
            id: Some("nottl".into()),
            port: None,
            ttl_ms: None,
        })
        .unwrap_err();
    assert!(
        matches!(e, pb_proto::client::ClientError::Wire(w) if w.code == pb_proto::ErrorCode::InvalidRequest)
    );
}

/// After answering, the broker polls for a moment instead of sleeping
/// (`service/awake.rs`), and then sleeps: a second after a burst of
/// requests it uses next to no CPU, where a broker that kept polling
/// would use the whole second.
#[test]
fn a_broker_polls_only_a_moment_after_its_answers() {
    let broker = Broker::start();
    let mut c = broker.client();
    for i in 0..500 {
        let id = format!("app:awake{}", i % 5);
        broker_claim_release(&mut c, &id);
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let before = cpu_ticks(broker.pid()).expect("the broker's stat");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let used = cpu_ticks(broker.pid()).expect("the broker's stat") - before;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    assert!(
        used * 20 <= hz,
        "the broker used {used} of {hz} ticks in an idle second (at most 5%)"
    );
}

fn broker_claim_release(c: &mut pb_proto::Client, id: &str) {
    c.call(pb_proto::Op::Claim(pb_proto::ClaimArgs {
        id: id.into(),
        fds: true,
        ..Default::default()
    }))
    .expect("claim");
    c.call(pb_proto::Op::Release {
        target: id.into(),
        more: Vec::new(),
    })
    .expect("release");
}
