//! Every kind of bad input gets a clear error code and message, the broker
//! keeps serving, and the store is exactly as it was.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use pb_proto::client::ClientError;
use pb_proto::{frame, ClaimArgs, ErrorCode, Op, Reply};
use pb_tests::*;
use serde_json::{json, Value};

/// The stored services, read by an independent SQLite client (python3).
/// The broker holds its database exclusively, so it is killed (-9, which
/// also proves what was acknowledged is on disk) and started again.
fn stored(broker: &mut Broker) -> String {
    broker.kill9();
    let db = broker.home.path().join("pb.db");
    let out = output_ok(
        Command::new("python3")
            .args([
                "-c",
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('select * from services order by id').fetchall())",
            ])
            .arg(db),
    );
    broker.restart();
    String::from_utf8(out.stdout).unwrap()
}

/// A broker with a little state, and a check that it is unchanged.
struct Fixture {
    broker: Broker,
    before: (String, Vec<(String, u16)>),
}

impl Fixture {
    fn new() -> Fixture {
        let mut broker = Broker::start();
        broker.claim("keep:a", &[]);
        broker.claim("keep:b", &["--expires", "1d"]);
        let before = (stored(&mut broker), broker.leases());
        Fixture { broker, before }
    }

    fn assert_unchanged(mut self) {
        // Still serving, and nothing changed.
        assert_eq!(self.broker.leases(), self.before.1);
        assert_eq!(stored(&mut self.broker), self.before.0);
    }
}

fn raw(broker: &Broker) -> UnixStream {
    let s = UnixStream::connect(broker.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn read_reply(s: &UnixStream) -> Reply {
    let (payload, fds) = frame::read_blocking(s).expect("a reply frame");
    assert!(fds.is_empty());
    serde_json::from_slice(&payload).unwrap()
}

fn error_of(reply: &Reply) -> ErrorCode {
    assert!(!reply.ok, "expected an error, got {reply:?}");
    let e = reply.error.as_ref().unwrap();
    assert!(!e.message.is_empty());
    e.code
}

/// After a fatal framing error the broker hangs up.
fn closed(mut s: UnixStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0))
}

#[test]
fn malformed_frames() {
    let f = Fixture::new();
    // Zero length: refused, then the connection is closed.
    let mut s = raw(&f.broker);
    s.write_all(&0u32.to_be_bytes()).unwrap();
    assert_eq!(error_of(&read_reply(&s)), ErrorCode::InvalidFrame);
    assert!(closed(s));
    // Over the request limit.
    let mut s = raw(&f.broker);
    s.write_all(&((pb_proto::MAX_REQUEST as u32) + 1).to_be_bytes())
        .unwrap();
    assert_eq!(error_of(&read_reply(&s)), ErrorCode::InvalidFrame);
    assert!(closed(s));
    // Not JSON, and JSON that is not an object: refused, connection kept.
    let mut s = raw(&f.broker);
    for body in [&b"{not json"[..], b"[1,2]", b"\"claim\"", &[0xff, 0xfe][..]] {
        s.write_all(&frame::encode(body)).unwrap();
        assert_eq!(error_of(&read_reply(&s)), ErrorCode::InvalidFrame);
    }
    s.write_all(&frame::encode(br#"{"v":1,"tag":9,"op":"status"}"#))
        .unwrap();
    let r = read_reply(&s);
    assert!(r.ok && r.tag == Some(9), "the connection still works");
    f.assert_unchanged();
}

#[test]
fn unknown_versions_ops_and_fields() {
    let f = Fixture::new();
    let mut s = raw(&f.broker);
    let cases = [
        (
            json!({"v": 2, "tag": 1, "op": "claim", "id": "x"}),
            ErrorCode::UnsupportedVersion,
        ),
        (
            json!({"v": 0, "tag": 2, "op": "status"}),
            ErrorCode::UnsupportedVersion,
        ),
        (json!({"tag": 3, "op": "status"}), ErrorCode::InvalidRequest),
        (
            json!({"v": 1, "tag": 4, "op": "launch"}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"v": 1, "tag": 5, "op": "claim", "id": "x", "colour": "red"}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"v": 1, "tag": 6, "op": "claim", "id": 5}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"v": 1, "tag": 7, "op": "claim"}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"v": 1, "tag": 8, "op": "claim", "id": "x", "fds": "yes"}),
            ErrorCode::InvalidRequest,
        ),
        // A family picks which listener to hand over: it needs fds.
        (
            json!({"v": 1, "tag": 9, "op": "claim", "id": "x", "family": "v6"}),
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"v": 1, "tag": 10, "op": "claim", "id": "x", "fds": true, "family": "v5"}),
            ErrorCode::InvalidRequest,
        ),
    ];
    for (req, code) in cases {
        s.write_all(&frame::encode(req.to_string().as_bytes()))
            .unwrap();
        let r = read_reply(&s);
        assert_eq!(r.tag, req["tag"].as_u64(), "the error names its request");
        assert_eq!(error_of(&r), code, "{req}");
    }
    f.assert_unchanged();
}

fn claim_err(f: &Fixture, args: ClaimArgs) -> ErrorCode {
    match f.broker.client().call(Op::Claim(args)) {
        Err(ClientError::Wire(w)) => w.code,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn invalid_ids() {
    let f = Fixture::new();
    for id in [
        "",
        "a b",
        "a::b",
        "a:b:c:d",
        "x:*",
        "3100",
        "ünï",
        &"x".repeat(65),
        "a;rm -rf",
    ] {
        let args = ClaimArgs {
            id: id.into(),
            ..Default::default()
        };
        assert_eq!(claim_err(&f, args), ErrorCode::InvalidId, "{id:?}");
    }
    let out = f.broker.pb(&["claim", "bad id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid id"));
    assert_eq!(f.broker.pb(&["find", "a::b"]).status.code(), Some(2));
    assert_eq!(f.broker.pb(&["release", "a:b:c:d"]).status.code(), Some(2));
    f.assert_unchanged();
}

#[test]
fn ports_out_of_range_or_privileged() {
    let f = Fixture::new();
    for port in [0, -1, 80, 1023, 65536, 1 << 40] {
        let args = ClaimArgs {
            id: "p".into(),
            port: Some(port),
            ..Default::default()
        };
        assert_eq!(claim_err(&f, args), ErrorCode::InvalidPort, "{port}");
    }
    for port in ["80", "70000", "0"] {
        let out = f.broker.pb(&["claim", "p", "-p", port]);
        assert_eq!(out.status.code(), Some(2), "{port}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("port"));
    }
    assert_eq!(f.broker.pb(&["release", "99999"]).status.code(), Some(2));
    f.assert_unchanged();
}

#[test]
fn inverted_or_malformed_ranges() {
    let f = Fixture::new();
    for range in [(5000, 4000), (80, 2000), (3000, 70000)] {
        let args = ClaimArgs {
            id: "r".into(),
            range: Some(range),
            ..Default::default()
        };
        assert_eq!(claim_err(&f, args), ErrorCode::InvalidRange, "{range:?}");
    }
    for text in ["5000-4000", "abc", "4000", "4000-", "-4000", "1-2-3"] {
        let out = f.broker.pb(&["claim", "r", &format!("--range={text}")]);
        assert_eq!(out.status.code(), Some(2), "{text}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("range"),
            "{text}"
        );
    }
    // The broker refuses to start with a bad PB_RANGE, saying why.
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(pb_bin())
        .arg("daemon")
        .env("PB_HOME", home.path())
        .env("PB_RANGE", "9000-3000")
        .env("PB_HTTP_ADDR", "off")
        .env("PB_PROXY_ADDR", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("inverted"));
    f.assert_unchanged();
}

#[test]
fn bad_durations() {
    let f = Fixture::new();
    for ms in [0, -5, 400 * 86_400_000] {
        let args = ClaimArgs {
            id: "d".into(),
            expires_ms: Some(ms),
            ..Default::default()
        };
        assert_eq!(claim_err(&f, args), ErrorCode::InvalidDuration, "{ms}");
    }
    for text in ["5x", "-3m", "1.5h", "", "forever"] {
        let out = f.broker.pb(&["claim", "d", &format!("--expires={text}")]);
        assert_eq!(out.status.code(), Some(2), "{text:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("duration"),
            "{text:?}"
        );
    }
    f.assert_unchanged();
}

#[test]
fn bad_metadata() {
    let f = Fixture::new();
    let big: String = "x".repeat(5000);
    for m in [json!([1, 2]), json!("text"), json!({ "big": big })] {
        let args = ClaimArgs {
            id: "m".into(),
            metadata: Some(m),
            ..Default::default()
        };
        assert_eq!(claim_err(&f, args), ErrorCode::InvalidMetadata);
    }
    f.assert_unchanged();
}

#[test]
fn a_client_that_disconnects_mid_request_changes_nothing() {
    let f = Fixture::new();
    let body = json!({"v": 1, "tag": 1, "op": "claim", "id": "half:done"}).to_string();
    let framed = frame::encode(body.as_bytes());
    for cut in [2, 4, 10, framed.len() - 1] {
        let mut s = raw(&f.broker);
        s.write_all(&framed[..cut]).unwrap();
        drop(s);
    }
    // A claim sent whole by a client that hangs up before reading the reply
    // with its descriptors is taken back: it was never acknowledged.
    for i in 0..20 {
        let mut s = raw(&f.broker);
        let body =
            json!({"v": 1, "op": "claim", "id": format!("gone:{i}"), "fds": true}).to_string();
        // Stop reading before sending: otherwise a broker scheduled right
        // after the write answers before the hang-up, and the reply (with
        // its descriptors) is delivered after all.
        s.shutdown(std::net::Shutdown::Read).unwrap();
        s.write_all(&frame::encode(body.as_bytes())).unwrap();
        s.shutdown(std::net::Shutdown::Both).unwrap();
        drop(s);
    }
    let settled = wait_until(Duration::from_secs(10), || {
        (!f.broker
            .leases()
            .iter()
            .any(|(id, _)| id.starts_with("gone:") || id == "half:done"))
        .then_some(())
    });
    assert!(settled.is_some(), "leases left: {:?}", f.broker.leases());
    // Not vacuously: the claims were applied, and each was taken back
    // as undelivered (none simply never reached the core).
    let log = f.broker.activity(&["--action", "service.*", "-n", "1000"]);
    let of = |action: &str| -> Vec<String> {
        log.iter()
            .filter(|e| e["action"] == action)
            .filter(|e| e["target"].as_str().is_some_and(|t| t.starts_with("gone:")))
            .filter(|e| action == "service.claim" || e["details"]["reason"] == "undelivered")
            .map(|e| e["target"].as_str().unwrap().to_string())
            .collect()
    };
    let (mut claimed, mut undone) = (of("service.claim"), of("service.release"));
    claimed.sort();
    undone.sort();
    assert!(!claimed.is_empty(), "no claim reached the core: {log:#?}");
    assert_eq!(claimed, undone, "every applied claim was undone");
    f.assert_unchanged();
}

#[test]
fn other_users_leases_are_refused_by_the_core() {
    // The Unix socket is 0600 in a 0700 directory, so another user cannot
    // even connect; this checks the core's own rule behind that, through a
    // lease stored with another uid.
    let f = Fixture::new();
    let mut broker = f.broker;
    broker.kill9();
    let db = broker.home.path().join("pb.db");
    let port = broker.range.1;
    let st = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('insert into services (id,port,active,uid,created_ms,port_since_ms) values (?,?,1,?,1,1)', ('theirs', int(sys.argv[2]), 4242)); c.commit()"])
        .arg(&db)
        .arg(port.to_string())
        .status()
        .unwrap();
    assert!(st.success());
    // A lease written behind the broker's back is exactly what the store's
    // fingerprint refuses (tests/restart.rs); this test means it, so it
    // follows the documented way on: the fingerprint goes aside.
    std::fs::remove_file(broker.home.path().join("pb.db-fingerprint")).unwrap();
    broker.restart();
    let out = broker.pb(&["release", "theirs"]);
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("belongs to uid 4242"));
    let out = broker.pb(&["claim", "theirs"]);
    assert_eq!(out.status.code(), Some(5));
    let v: Value = broker.pb_json(&["release", "*"]);
    assert!(v["released"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["id"] != "theirs"));
    assert!(broker.leases().iter().any(|(id, _)| id == "theirs"));
}
