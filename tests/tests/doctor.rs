//! The conventions of an installed tool (issue 19): `pb doctor` on a
//! healthy setup and on broken ones, each naming the fix (the HTTP port
//! held by a foreign process, with and without a broker; IPv6 off on
//! loopback, in a network namespace of the test's own; a damaged store);
//! completion scripts that bash loads, and a man page that renders; colour
//! on terminals, NO_COLOR and `--color`.

use std::process::Command;
use std::time::Duration;

use pb_tests::*;
use serde_json::Value;

/// `pb -j doctor` in `broker`'s environment plus `env`: its exit code and
/// its checks by name.
fn doctor(broker: &Broker, env: &[(&str, &str)]) -> (i32, Value) {
    let out = broker
        .cmd()
        .args(["-j", "doctor"])
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), v)
}

fn by_name<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
}

#[test]
fn a_healthy_setup_passes_and_says_so() {
    let broker = Broker::start();
    let (code, v) = doctor(&broker, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ok"], true);
    for name in [
        "broker",
        "socket",
        "store",
        "ipv6",
        "http port",
        "proxy port",
        "shim",
    ] {
        assert_eq!(by_name(&v, name)["status"], "ok", "{name}: {v}");
    }
    assert!(by_name(&v, "proxy port")["detail"]
        .as_str()
        .unwrap()
        .contains(&broker.proxy_port().unwrap().to_string()));
    // Informational checks name what they found, and never fail.
    assert!(["ok", "warn"].contains(&by_name(&v, "localhost names")["status"].as_str().unwrap()));
    assert_eq!(by_name(&v, "ports 80/443")["status"], "info");
    let human = broker.pb_ok(&["doctor"]);
    assert!(human.contains("ipv6") && human.contains("shim"), "{human}");
}

#[test]
fn an_http_port_held_by_a_foreign_process_is_named_with_the_fix() {
    let block = PortBlock::take(200);
    let http = block.range.1;
    let squatter = foreign_http_server(http);
    wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(v4(http)).ok()
    })
    .expect("the squatter listens");
    let addr = format!("127.0.0.1:{http}");
    let broker = Broker::start_in(block, &[("PB_HTTP_ADDR", &addr)]);
    let (code, v) = doctor(&broker, &[]);
    assert_eq!(code, 1, "{v}");
    let c = by_name(&v, "http port");
    assert_eq!(c["status"], "fail", "{v}");
    let detail = c["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("pid {}", squatter.pid())),
        "names the holder: {detail}"
    );
    assert!(c["fix"].as_str().unwrap().contains("PB_HTTP_ADDR"), "{c}");
    // Without a broker, doctor looks at the port itself.
    broker.pb_ok(&["stop"]);
    let (code, v) = doctor(&broker, &[("PB_NO_AUTOSTART", "1")]);
    assert_eq!(code, 1, "{v}");
    let c = by_name(&v, "http port");
    assert_eq!(c["status"], "fail", "{v}");
    assert!(c["detail"].as_str().unwrap().contains("held by pid"), "{c}");
    assert_eq!(by_name(&v, "broker")["status"], "info");
    squatter.signal(libc::SIGKILL);
}

#[test]
fn ipv6_off_on_loopback_in_a_network_namespace_fails_with_the_sysctl() {
    let broker = Broker::start();
    let home = broker.home.path().display().to_string();
    // A namespace of the test's own, where loopback has no IPv6.
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c"])
        .arg("echo 1 > /proc/sys/net/ipv6/conf/lo/disable_ipv6 && exec \"$0\" -j doctor")
        .arg(pb_bin())
        .env("PB_HOME", &home)
        .env("PB_NO_AUTOSTART", "1")
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(out.status.code(), Some(1), "{v}");
    let c = by_name(&v, "ipv6");
    assert_eq!(c["status"], "fail", "{v}");
    assert!(c["fix"].as_str().unwrap().contains("disable_ipv6=0"), "{c}");
}

#[test]
fn a_damaged_store_fails_and_points_to_pb_repair() {
    let mut broker = Broker::start();
    for i in 0..5 {
        broker.claim(&format!("app:{i}"), &["--keep"]);
    }
    broker.kill9();
    let home = broker.home.path().to_path_buf();
    let _ = std::fs::remove_file(home.join("pb.db-wal"));
    std::fs::File::create(home.join("pb.db")).unwrap();
    let (code, v) = doctor(&broker, &[("PB_NO_AUTOSTART", "1")]);
    assert_eq!(code, 1, "{v}");
    let c = by_name(&v, "store");
    assert_eq!(c["status"], "fail", "{v}");
    assert_eq!(c["fix"], "pb repair", "{c}");
    assert!(
        c["detail"].as_str().unwrap().contains("acknowledged"),
        "{c}"
    );
}

#[test]
fn completion_scripts_load_in_bash_and_the_man_page_renders() {
    let broker = Broker::start();
    let script = broker.pb_ok(&["completions", "bash"]);
    let out = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p pb"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && listed.contains(" pb"), "{listed}");
    for shell in ["zsh", "fish"] {
        assert!(!broker.pb_ok(&["completions", shell]).is_empty());
    }
    // An unknown shell is refused with a clear message and exit 2.
    let bad = broker.pb(&["completions", "tcsh"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("tcsh"));
    // The man page renders.
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("pb.1");
    std::fs::write(&page, broker.pb_ok(&["man"])).unwrap();
    let rendered = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("PAGER", "cat")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success(),
        "{}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    assert!(
        text.contains("port broker") && text.contains("claim"),
        "{text}"
    );
}

#[test]
fn the_version_names_the_git_revision_it_was_built_from() {
    let out = Command::new(pb_bin()).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(version.starts_with("pb 0."), "{version}");
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(tests_dir())
        .output()
        .unwrap();
    if rev.status.success() {
        let rev = String::from_utf8_lossy(&rev.stdout).trim().to_string();
        assert!(
            version.contains(&format!("({rev}")),
            "{version} is not of {rev}"
        );
    } else {
        assert!(version.contains("(unknown)"), "{version}");
    }
}

/// Runs `pb ARGS` on a terminal of its own (util-linux's `script` gives it
/// a pty), in `broker`'s environment plus `env`: what the terminal showed.
fn on_a_terminal(broker: &Broker, args: &str, env: &[(&str, &str)]) -> String {
    let line = format!("{} {args}", pb_bin().display());
    let out = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .envs(broker.env().iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(env.iter().copied())
        .output()
        .expect("script (util-linux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn colour_follows_the_terminal_no_color_and_the_flag() {
    let broker = Broker::start();
    broker.claim("paint:web", &[]);
    const ESC: char = '\x1b';
    // On a terminal: a bold header and a coloured state.
    let tty = on_a_terminal(&broker, "find", &[]);
    assert!(tty.contains("\x1b[1mID"), "{tty:?}");
    assert!(tty.contains("\x1b[33mreserved"), "{tty:?}");
    // NO_COLOR (any non-empty value) and --color=never turn it off there.
    let plain = on_a_terminal(&broker, "find", &[("NO_COLOR", "1")]);
    assert!(
        !plain.contains(ESC) && plain.contains("reserved"),
        "{plain:?}"
    );
    let never = on_a_terminal(&broker, "--color=never find", &[]);
    assert!(!never.contains(ESC), "{never:?}");
    // An empty NO_COLOR is as if unset.
    assert!(on_a_terminal(&broker, "find", &[("NO_COLOR", "")]).contains(ESC));
    // A pipe is plain, unless --color=always, which wins over NO_COLOR.
    let piped = broker.pb(&["find"]);
    assert!(!String::from_utf8_lossy(&piped.stdout).contains(ESC));
    let forced = broker
        .cmd()
        .args(["--color=always", "find"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let forced = String::from_utf8_lossy(&forced.stdout);
    assert!(forced.contains("\x1b[1mID"), "{forced:?}");
    // The column stays aligned: the escapes take no width.
    let strip = |s: &str| {
        s.replace("\x1b[1m", "")
            .replace("\x1b[33m", "")
            .replace("\x1b[0m", "")
    };
    assert_eq!(strip(&forced), String::from_utf8_lossy(&piped.stdout));
    // Errors: the `pb:` prefix in red on a terminal, plain in a pipe.
    let err = on_a_terminal(&broker, "release nope:nope", &[]);
    assert!(err.contains("\x1b[31mpb:\x1b[0m"), "{err:?}");
    let err = broker.pb(&["release", "nope:nope"]);
    assert!(String::from_utf8_lossy(&err.stderr).starts_with("pb: "));
    // JSON is never coloured.
    let json = broker
        .cmd()
        .args(["--color=always", "-j", "find"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&json.stdout).contains(ESC));
    serde_json::from_slice::<Value>(&json.stdout).unwrap();
    // A bad choice is a usage error.
    assert_eq!(
        broker.pb(&["--color=sometimes", "find"]).status.code(),
        Some(2)
    );
}
