//! The command line as people use it in pipes and scripts: a closed stdout,
//! `-j` on every command and every error, tables that survive odd command
//! lines, a broker that cannot start or whose HTTP port is taken, locks
//! taken in `$(…)`, the seeds' units, several release targets, and
//! allocation that keeps clear of the ports dev tools take by default.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_tests::*;
use serde_json::Value;

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_closed_stdout_ends_pb_quietly_with_exit_0() {
    let broker = Broker::start();
    for i in 0..40 {
        broker.claim(&format!("svc{i}"), &[]);
    }
    for cmd in ["find", "ps --all", "log", "find -q", "-j find"] {
        let line = format!("set -o pipefail; \"$PB\" {cmd} | head -1");
        let out = Command::new("bash")
            .args(["-c", &line])
            .envs(broker_env(&broker))
            .env("PB", pb_bin())
            .output()
            .unwrap();
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(0), "pb {cmd} | head -1: {err}");
        assert!(!err.contains("panicked"), "pb {cmd}: {err}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    }
}

/// The broker's environment, for commands run through a shell.
fn broker_env(broker: &Broker) -> Vec<(String, String)> {
    broker.env().to_vec()
}

fn parses_as_json(text: &str) -> bool {
    // One document, or JSON lines (log, sub).
    serde_json::from_str::<Value>(text).is_ok()
        || (!text.trim().is_empty()
            && text
                .lines()
                .all(|l| serde_json::from_str::<Value>(l).is_ok()))
}

#[test]
fn every_command_and_every_error_speaks_json_with_j() {
    let broker = Broker::start();
    let port = broker.claim("app:web", &[]).to_string();
    let http = broker.http_port().unwrap().to_string();
    let ok: Vec<Vec<&str>> = vec![
        vec!["status"],
        vec!["claim", "app:api"],
        vec!["alloc", "app:db"],
        vec!["find"],
        vec!["find", "app:*"],
        vec!["ps", "--all"],
        vec!["lookup", "app:web"],
        vec!["url", "app:web"],
        vec!["env", "app:*"],
        vec!["who", &port],
        vec!["who", &http],
        vec!["lock", "j-lock", "--owner", "me"],
        vec!["locks"],
        vec!["unlock", "j-lock", "--owner", "me"],
        vec!["pub", "j:chan", "{\"a\":1}"],
        vec!["history", "j:*"],
        vec!["channels"],
        vec!["agent", "register", "j-agent"],
        vec!["agent", "ls"],
        vec!["log", "-n", "5"],
        vec!["webhook", "ls"],
        vec!["token"],
        vec!["shim-path"],
        vec!["release", "app:api", "app:db"],
        vec!["exec", "j-exec", "--", "true"],
        vec!["start"],
    ];
    for args in &ok {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = broker.pb(&a);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "pb {a:?}: {}", stderr_of(&out));
        // `exec` prints nothing of its own on stdout: the app's is the app's.
        if args[0] != "exec" {
            assert!(parses_as_json(&text), "pb {a:?} printed {text:?}");
        }
    }
    let errors: Vec<(Vec<&str>, &str)> = vec![
        (vec!["lookup", "missing"], "not_found"),
        (vec!["claim", "bad id!"], "invalid_id"),
        (vec!["claim", "x", "-p", "80"], "invalid_port"),
        (vec!["release", "nothing:here"], "not_found"),
        (vec!["wait", "x", "--timeout", "soon"], "invalid_duration"),
        (vec!["exec", "--grace", "2h", "x", "--", "true"], "error"),
    ];
    for (args, code) in &errors {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let out = broker.pb(&a);
        assert!(!out.status.success(), "pb {a:?} should fail");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("pb {a:?}: {e}: {:?}", out.stdout));
        assert_eq!(v["code"], *code, "pb {a:?}: {v}");
        assert!(v["error"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Messages never show internal enum names.
    let out = broker.pb(&["claim", "x", "-p", "80"]);
    assert!(
        !stderr_of(&out).contains("InvalidPort"),
        "{}",
        stderr_of(&out)
    );

    let stopped = broker.pb_json(&["stop"]);
    assert_eq!(stopped["stopped"], true);
    let again = broker.pb_json(&["stop"]);
    assert_eq!(again["running"], false);
    let down = broker.pb(&["-j", "find"]);
    assert_eq!(down.status.code(), Some(3));
    let v: Value = serde_json::from_slice(&down.stdout).expect("JSON error when down");
    assert_eq!(v["code"], "unavailable");
}

#[test]
fn tables_escape_newlines_and_terminal_escapes_in_command_lines() {
    let broker = Broker::start();
    let (mut pb, port) = broker.exec(&[
        "odd",
        "--",
        "python3",
        "-c",
        "import time\n# \x1b[31mred\ntime.sleep(30)",
    ]);
    let table = broker.pb_ok(&["find"]);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(!table.contains('\x1b'), "{table:?}");
    assert!(table.contains("import time\\n"), "{table}");
    let who = broker.pb_ok(&["who", &port.to_string()]);
    assert!(!who.contains('\x1b') && who.contains("\\n"), "{who:?}");
    for line in who.lines().skip(1) {
        assert!(line.starts_with("  "), "every holder on one line: {who:?}");
    }
    pb.signal(libc::SIGTERM);
    pb.wait_for(Duration::from_secs(10)).expect("pb exec ends");
}

#[test]
fn who_names_the_brokers_own_http_listener() {
    let broker = Broker::start();
    let http = broker.http_port().unwrap();
    let v = broker.pb_json(&["who", &http.to_string()]);
    let holders: Vec<u64> = v["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|l| l["holders"].as_array().unwrap().iter())
        .filter_map(|h| h["pid"].as_u64())
        .collect();
    assert!(
        holders.contains(&u64::from(broker.pid())),
        "the broker holds its HTTP port: {v}"
    );
    let all = broker.pb_ok(&["ps", "--all"]);
    assert!(
        all.lines()
            .any(|l| l.contains(&format!(" {} ", broker.pid())) && l.contains("daemon")),
        "{all}"
    );
}

#[test]
fn a_taken_http_port_costs_only_the_http_api() {
    let block = PortBlock::take(200);
    let http = block.range.1;
    let squatter = TcpListener::bind(("127.0.0.1", http)).expect("the test holds the port");
    let addr = format!("127.0.0.1:{http}");
    let broker = Broker::start_in(block, &[("PB_HTTP_ADDR", &addr)]);
    // The Unix socket serves.
    let port = broker.claim("still:works", &[]);
    assert!(port > 0);
    let status = broker.pb_json(&["status"]);
    assert!(status.get("http").is_none(), "{status}");
    let why = status["http_off"].as_str().unwrap_or_default().to_string();
    assert!(why.contains("in use"), "{why}");
    assert!(
        why.contains(&format!("pid {}", std::process::id())),
        "names the holder: {why}"
    );
    let human = broker.pb_ok(&["status"]);
    assert!(human.contains("http:        off:"), "{human}");
    drop(squatter);
}

/// A PB_HOME of its own with autostart on: the client starts the broker.
fn autostart_env(home: &std::path::Path) -> Vec<(&'static str, String)> {
    vec![
        ("PB_HOME", home.display().to_string()),
        ("PB_HTTP_ADDR", "off".into()),
        ("PB_PROXY_ADDR", "off".into()),
    ]
}

#[test]
fn a_broker_that_cannot_start_is_reported_with_its_cause_at_once() {
    let home = tempfile::tempdir().unwrap();
    for json in [false, true] {
        let t = Instant::now();
        let mut cmd = Command::new(pb_bin());
        cmd.envs(autostart_env(home.path()))
            .env("PB_RANGE", "junk")
            .env_remove("PB_NO_AUTOSTART");
        if json {
            cmd.arg("-j");
        }
        let out = cmd.args(["claim", "foo"]).output().unwrap();
        let took = t.elapsed();
        assert_eq!(out.status.code(), Some(3));
        assert!(took < Duration::from_secs(1), "reported in {took:?}");
        let said = if json {
            let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
            assert_eq!(v["code"], "unavailable");
            v["error"].as_str().unwrap().to_string()
        } else {
            stderr_of(&out)
        };
        assert!(said.contains("could not start"), "{said}");
        assert!(said.contains("invalid range \"junk\""), "the cause: {said}");
        assert!(!said.contains("InvalidRange"), "no internal names: {said}");
    }
    // The same home then starts fine, by the same autostart.
    let out = Command::new(pb_bin())
        .envs(autostart_env(home.path()))
        .env_remove("PB_NO_AUTOSTART")
        .args(["claim", "foo", "-q"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let stop = Command::new(pb_bin())
        .envs(autostart_env(home.path()))
        .args(["stop"])
        .output()
        .unwrap();
    assert!(stop.status.success());
}

/// `T=$(pb lock x -q)` runs pb in a subshell that exits at once; the lock
/// belongs to the script's shell, and lasts until it unlocks or exits.
#[test]
fn a_lock_taken_in_a_command_substitution_belongs_to_the_script() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("deploy.sh");
    std::fs::write(
        &script,
        "#!/bin/bash\n\
         T=$(\"$PB\" lock x -q)\n\
         U=$(\"$PB\" lock y -q || true)\n\
         echo \"$T $U $$\"\n\
         read line\n\
         if [ \"$line\" = unlock ]; then \"$PB\" unlock x; read line; fi\n",
    )
    .unwrap();
    let mut child = Command::new("bash")
        .arg(&script)
        .envs(broker_env(&broker))
        .env("PB", pb_bin())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{line:?}");
    let shell: u64 = words[2].parse().unwrap();
    let held = || -> Vec<(String, Option<u64>)> {
        broker.pb_json(&["locks"])["locks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["name"].as_str().unwrap().to_string(), l["pid"].as_u64()))
            .collect()
    };
    // Past the subshells' exits, both are still held, by the script.
    std::thread::sleep(Duration::from_millis(300));
    let locks = held();
    assert_eq!(
        locks,
        vec![
            ("x".to_string(), Some(shell)),
            ("y".to_string(), Some(shell))
        ],
        "held by the script's shell {shell}"
    );
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "unlock").unwrap();
    let x_gone = wait_until(Duration::from_secs(10), || {
        (held().iter().all(|(n, _)| n != "x")).then_some(())
    });
    assert!(x_gone.is_some(), "pb unlock x in the script releases it");
    drop(stdin);
    child.wait().unwrap();
    let all_gone = wait_until(Duration::from_secs(10), || held().is_empty().then_some(()));
    assert!(
        all_gone.is_some(),
        "the script's exit releases y: {:?}",
        held()
    );
}

#[test]
fn the_seeds_units_keep_their_meaning() {
    let broker = Broker::start();
    // Port Daddy: `--ttl <ms>` for locks.
    let v = broker.pb_json(&["lock", "five-min", "--ttl", "300000", "--owner", "t"]);
    assert_eq!(v["lock"]["ttl_ms"], 300_000, "{v}");
    let v = broker.pb_json(&["lock", "units", "--ttl", "5m", "--owner", "t"]);
    assert_eq!(v["lock"]["ttl_ms"], 300_000, "{v}");
    // Port Daddy: `--timeout <ms>` for waits.
    broker.claim("never:serves", &[]);
    let t = Instant::now();
    let out = broker.pb(&["wait", "never:serves", "--timeout", "3000"]);
    let took = t.elapsed();
    assert!(!out.status.success());
    assert!(
        took >= Duration::from_millis(2900) && took < Duration::from_secs(10),
        "gave up after {took:?}"
    );
    // PortManager: `run NAME --ttl 600` is ten minutes.
    let out = broker
        .cmd()
        .args(["run", "ten-min", "--ttl", "600", "--", "sh", "-c"])
        .arg("\"$PB\" -j find ten-min")
        .env("PB", pb_bin())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let found: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(found["services"][0]["ttl_ms"], 600_000, "{found}");
    // Out of range: refused, nothing held.
    let out = broker.pb(&["lock", "long", "--ttl", "999999999999", "--owner", "t"]);
    assert!(!out.status.success());
    assert!(broker.pb_json(&["locks", "long"])["locks"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn release_takes_several_targets_and_globs_all_or_nothing() {
    let broker = Broker::start();
    for id in ["bulk1", "bulk2", "bulkier:api", "other", "keep"] {
        broker.claim(id, &[]);
    }
    // One bad target: nothing is released.
    let out = broker.pb(&["release", "bulk*", "bad id!"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert_eq!(broker.leases().len(), 5);
    let v = broker.pb_json(&["release", "bulk*", "other"]);
    let mut gone: Vec<&str> = v["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["id"].as_str().unwrap())
        .collect();
    gone.sort();
    assert_eq!(gone, vec!["bulk1", "bulk2", "other"]);
    let left: Vec<String> = broker.leases().into_iter().map(|(id, _)| id).collect();
    assert_eq!(left, vec!["bulkier:api", "keep"]);
}

#[test]
fn allocation_skips_the_ports_dev_tools_take_by_default() {
    let broker = Broker::start();
    // Vite's 5173 and 5174 are skipped; 5172 and 5175 are handed out.
    let a = broker.claim("a", &["--range", "5172-5175"]);
    let b = broker.claim("b", &["--range", "5172-5175"]);
    assert_eq!((a, b), (5172, 5175));
    let out = broker.pb(&["claim", "c", "--range", "5172-5175"]);
    assert_eq!(out.status.code(), Some(6), "exhausted: {}", stderr_of(&out));
    // http.server's 8000 and 8001 likewise.
    let d = broker.claim("d", &["--range", "7999-8001"]);
    assert_eq!(d, 7999);
    let out = broker.pb(&["claim", "e", "--range", "7999-8001"]);
    assert_eq!(out.status.code(), Some(6), "exhausted: {}", stderr_of(&out));
    // Asked for by number, such a port is given.
    let f = broker.claim("f", &["-p", "5173"]);
    assert_eq!(f, 5173);
}

/// While `pb wait` and `pb lock --wait` wait, a terminal sees the seconds
/// count (through `script`, which gives pb a pseudo-terminal); a pipe sees
/// nothing of it.
#[test]
fn waits_show_progress_on_a_terminal_only() {
    let broker = Broker::start();
    broker.claim("never:serves", &[]);
    broker.pb_ok(&["lock", "busy", "--owner", "someone"]);
    for (args, what) in [
        (
            "wait never:serves --timeout 1800",
            "waiting for never:serves",
        ),
        ("lock busy --wait --timeout 1800ms", "waiting for lock busy"),
    ] {
        let line = format!("\"$PB\" {args}");
        let out = Command::new("script")
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            .envs(broker_env(&broker))
            .env("PB", pb_bin())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let seen = String::from_utf8_lossy(&out.stdout);
        assert!(seen.contains(&format!("{what}… 1s")), "{args}: {seen:?}");
        let piped = broker.pb(&args.split(' ').collect::<Vec<_>>());
        assert!(!piped.status.success());
        assert!(
            !stderr_of(&piped).contains('…'),
            "{args}: {}",
            stderr_of(&piped)
        );
    }
}

/// Every subcommand (and sub-subcommand) says what each of its positional
/// arguments is.
#[test]
fn every_positional_argument_has_help() {
    fn commands_of(help: &str) -> Vec<String> {
        help.lines()
            .skip_while(|l| !l.starts_with("Commands:"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .filter_map(|l| l.split_whitespace().next())
            .filter(|c| *c != "help")
            .map(str::to_string)
            .collect()
    }
    fn check(path: &[String], missing: &mut Vec<String>) {
        let out = Command::new(pb_bin())
            .args(path)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut in_args = false;
        for line in help.lines() {
            if line.starts_with("Arguments:") {
                in_args = true;
                continue;
            }
            if in_args && !line.starts_with("  ") {
                in_args = false;
            }
            if in_args && line.split_whitespace().count() < 2 {
                missing.push(format!("pb {}: {}", path.join(" "), line.trim()));
            }
        }
        for sub in commands_of(&help) {
            let mut p = path.to_vec();
            p.push(sub);
            check(&p, missing);
        }
    }
    let mut missing = Vec::new();
    check(&[], &mut missing);
    assert!(missing.is_empty(), "arguments without help: {missing:#?}");
}

/// Port Daddy's `url ID -e ENV`: `local` is the local URL; another
/// environment's URL is the one the claim recorded; one never recorded is
/// not found, and an unknown environment is refused.
#[test]
fn url_takes_port_daddys_environments() {
    let broker = Broker::start();
    let port = broker.claim(
        "app:api",
        &[
            "--metadata",
            r#"{"urls": {"staging": "https://api.staging.example"}}"#,
        ],
    );
    let proxy = broker.proxy_port().unwrap();
    assert_eq!(
        broker.pb_ok(&["url", "app:api"]).trim(),
        format!("http://api.app.localhost:{proxy}")
    );
    assert_eq!(
        broker.pb_ok(&["url", "app:api", "--https"]).trim(),
        format!("https://api.app.localhost:{proxy}")
    );
    assert_eq!(
        broker.pb_ok(&["url", "app:api", "-e", "local"]).trim(),
        format!("http://localhost:{port}")
    );
    assert_eq!(
        broker.pb_ok(&["url", "app:api", "--env", "staging"]).trim(),
        "https://api.staging.example"
    );
    let out = broker.pb(&["url", "app:api", "-e", "prod"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr_of(&out));
    assert!(stderr_of(&out).contains("no prod URL for app:api"));
    let out = broker.pb(&["url", "app:api", "-e", "mars"]);
    assert_eq!(out.status.code(), Some(2));
    let out = broker.pb(&["claim", "bad:meta", "--metadata", "{nope"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(broker.leases().iter().all(|(id, _)| id != "bad:meta"));
}
