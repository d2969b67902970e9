//! The fuzz harness against a running broker (issue 14): generated frames,
//! well-formed or not, sent over the Unix socket. The broker answers or
//! hangs up, never dies, leaks no descriptor, and still answers a canary
//! `status` after all of them. PB_FUZZ_CASES sets how many (default 300;
//! broker/tests/fuzz.rs has the parser-level targets).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pb_tests::*;
use proptest::prelude::*;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A frame as a client might send it: a length (right, wrong or absurd),
/// then a body (JSON-ish or not).
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        ".{0,120}".prop_map(String::into_bytes),
        (
            prop::sample::select(
                &[
                    "status",
                    "claim",
                    "find",
                    "lock_acquire",
                    "publish",
                    "subscribe",
                    "bogus"
                ][..]
            ),
            "[a-z0-9:*\"{}\\[\\],. _-]{0,60}"
        )
            .prop_map(|(op, rest)| format!("{{\"v\":1,\"op\":\"{op}\",{rest}").into_bytes()),
    ];
    (body, prop_oneof![Just(None), (0u32..).prop_map(Some)]).prop_map(|(body, len)| {
        let n = len.unwrap_or(body.len() as u32);
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    })
}

#[test]
fn generated_frames_never_hurt_the_broker() {
    let broker = Broker::start();
    let pid = broker.pid();
    // Warm up: the broker's own descriptors settle after its first request.
    broker.pb_ok(&["status"]);
    let before = open_fds(pid);
    let cases = std::env::var("PB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let sock = broker.socket();
    runner
        .run(&prop::collection::vec(frame(), 1..4), |frames| {
            let mut s = UnixStream::connect(&sock).expect("the broker accepts");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            for f in &frames {
                let _ = s.write_all(f);
            }
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut reply = Vec::new();
            let _ = s.read_to_end(&mut reply);
            Ok(())
        })
        .unwrap();
    // The canary: still answering, with no descriptor left behind.
    let status = broker.pb_json(&["status"]);
    assert_eq!(status["pid"], pid);
    let after = wait_until(Duration::from_secs(5), || {
        let n = open_fds(pid);
        (n <= before + 2).then_some(n)
    });
    assert!(
        after.is_some(),
        "descriptors grew: {before} → {}",
        open_fds(pid)
    );
    // Straight to stderr, past the test harness's capture, for CI's output.
    let counts = format!(
        "fuzz: {cases} cases of 1-3 frames, broker answering, descriptors {before} → {after:?}\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), counts.as_bytes());
}
