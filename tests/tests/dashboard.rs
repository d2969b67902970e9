//! The dashboard end to end: a real broker, the `pb` CLI, and Debian's
//! Chromium driven by playwright-core (tests/browser/dashboard.mjs, one
//! scenario per test). The browser side checks what the page shows; this
//! side sets the scene and checks what the CLI sees afterwards. Where no
//! browser is installed these tests are compiled as ignored (tests/build.rs);
//! under CI=true that is a build failure instead.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use pb_tests::*;

/// How long one scenario may take, browser start included.
const SCENARIO_LIMIT: Duration = Duration::from_secs(120);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// A broker for the dashboard: the listeners are read every 200 ms, so a
/// foreign listener shows up quickly.
fn broker() -> Broker {
    Broker::start_with(&[("PB_SCAN_INTERVAL", "200ms")])
}

/// One browser at a time: two Chromiums beside the brokers on a 2-core
/// machine make every wait in the scenarios needlessly tight.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs one scenario of dashboard.mjs against `broker`, logged in with a
/// fresh one-time URL, and fails with its report unless it held.
fn scenario(broker: &Broker, name: &str, extra: &[(&str, String)]) {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|e| e.into_inner());
    let url = broker
        .pb_ok(&["dashboard", "--print-url"])
        .trim()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut node = Proc(
        Command::new("node")
            .arg(browser_dir().join("dashboard.mjs"))
            .arg(name)
            .current_dir(browser_dir())
            .envs(broker.env().iter().map(|(k, v)| (k, v)))
            .env("PB_BIN", pb_bin())
            .env("PB_LOGIN_URL", &url)
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("run node"),
    );
    let status = node.wait_for(SCENARIO_LIMIT);
    let report = format!(
        "{}{}",
        std::fs::read_to_string(&out).unwrap_or_default(),
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "scenario {name} ({status:?}):\n{report}\nbroker log:\n{}",
        broker.log()
    );
}

/// A foreign server (python's http.server, not through pb), answering.
fn foreign_server(port: u16) -> Proc {
    let p = foreign_http_server(port);
    wait_until(Duration::from_secs(10), || curl("4", port)).expect("the foreign server answers");
    p
}

/// A service run by `pb exec` on tests/servers/fd_server.py, which serves
/// on the sockets it inherits, as a systemd-aware app does.
fn served(broker: &Broker, id: &str) -> (Proc, u16) {
    let server = tests_dir().join("servers/fd_server.py");
    broker.exec(&[id, "--", "python3", server.to_str().unwrap()])
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn a_claim_from_the_cli_appears_without_a_reload() {
    let broker = broker();
    scenario(&broker, "claim_appears", &[]);
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn a_release_from_the_page_is_seen_by_the_cli() {
    let broker = broker();
    broker.claim("shop:web", &[]);
    broker.claim("shop:db", &[]);
    scenario(&broker, "release_from_ui", &[]);
    let left: Vec<String> = broker.leases().into_iter().map(|(id, _)| id).collect();
    assert_eq!(left, vec!["shop:db".to_string()]);
    let out = broker.pb(&["lookup", "shop:web"]);
    assert!(!out.status.success(), "pb lookup still finds shop:web");
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn a_message_from_the_cli_shows_in_the_live_tail() {
    let broker = broker();
    scenario(&broker, "tail_shows_publish", &[]);
    // What the page published is the broker's, for every client.
    let history = broker.pb_json_lines(&["history", "deploy:done"]);
    assert_eq!(history[0]["from"], "the dashboard", "{history:?}");
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn a_work_session_shows_live_with_its_files_notes_and_abandonment() {
    let broker = broker();
    let owner = Proc(Command::new("sleep").arg("120").spawn().unwrap());
    scenario(
        &broker,
        "sessions_live",
        &[("PB_SESSION_OWNER", owner.pid().to_string())],
    );
    let listed = broker.pb_json(&["session", "ls"]);
    assert_eq!(listed["sessions"][0]["state"], "abandoned", "{listed}");
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn a_stack_shows_live_with_its_output_and_restarts_from_the_page() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    for app in ["api.py", "ticker.py"] {
        std::fs::copy(tests_dir().join("stacks").join(app), dir.path().join(app)).unwrap();
    }
    std::fs::write(
        dir.path().join("pb.toml"),
        "project = \"shop\"\n\
         [services.api]\ncmd = \"python3 api.py\"\n\
         [services.ticker]\ncmd = \"python3 ticker.py\"\nno_port = true\n",
    )
    .unwrap();
    let up = broker
        .cmd()
        .args(["up", "-d"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    scenario(&broker, "stack_live", &[]);
    let status = broker
        .cmd()
        .args(["-j", "up", "--status"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let api = status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api")
        .unwrap()
        .clone();
    assert_eq!(api["restarts"], 1, "{status}");
    let down = broker
        .cmd()
        .arg("down")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn webhook_deliveries_update_live() {
    let broker = broker();
    let port = broker.range.1 - 1;
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(dir.path(), port, "record", &[]);
    broker.pb_ok(&["webhook", "add", &receiver.url(), "-e", "service.claim"]);
    scenario(&broker, "webhook_live", &[]);
    let received = receiver.records();
    assert_eq!(received.len(), 2, "{received:?}");
    // Each attempt is in the activity log too.
    let log = broker.activity(&["--action", "webhook.attempt"]);
    let states: Vec<&str> = log
        .iter()
        .map(|e| e["details"]["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["delivered", "delivered"], "{log:?}");
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn a_foreign_listener_shows_as_foreign() {
    let broker = broker();
    let foreign = broker.range.1 - 1;
    let later = broker.range.1 - 2;
    let _server = foreign_server(foreign);
    let (_exec, brokered) = served(&broker, "shop:web");
    scenario(
        &broker,
        "foreign_listener",
        &[
            ("PB_FOREIGN_PORT", foreign.to_string()),
            ("PB_BROKERED_PORT", brokered.to_string()),
            ("PB_LATER_PORT", later.to_string()),
        ],
    );
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn without_login_nothing_is_shown() {
    let broker = broker();
    broker.claim("secret-service", &[]);
    scenario(&broker, "no_login", &[]);
}

#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn the_page_is_usable_by_keyboard_in_both_themes_and_narrow() {
    let broker = broker();
    broker.claim("shop:web", &[]);
    // Something in every part, so that every kind of row is checked.
    broker.pb_ok(&["agent", "register", "claude-1", "--type", "claude"]);
    broker.pb_ok(&["lock", "ci", "--owner", "build-bot"]);
    broker.pb_ok(&["pub", "build:status", r#"{"ok":false}"#]);
    let _server = foreign_server(broker.range.1 - 1);
    scenario(&broker, "usable", &[]);
}

/// The README's picture (docs/dashboard.png): a realistic state, from real
/// processes, the whole page at 1280 pixels wide. The test writes it to target/dashboard.png;
/// with PB_UPDATE_SCREENSHOT=1 it replaces docs/dashboard.png.
#[test]
#[cfg_attr(
    not(pb_browser),
    ignore = "needs chromium and playwright-core (tests/build.rs)"
)]
fn a_screenshot_of_a_realistic_state() {
    let broker = broker();
    let (_web, _) = served(&broker, "shop:web");
    let (_api, _) = served(&broker, "shop:api");
    broker.claim("shop:db", &[]);
    broker.pb_ok(&["agent", "register", "claude-1", "--type", "claude"]);
    broker.claim("docs:preview", &["--agent", "claude-1"]);
    let foreign = broker.range.1 - 1;
    let _stray = foreign_server(foreign);
    let _lock = Proc(
        broker
            .cmd()
            .args(["lock", "db:migrate", "--", "sleep", "120"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until(Duration::from_secs(10), || {
        broker
            .pb_ok(&["locks"])
            .contains("db:migrate")
            .then_some(())
    })
    .expect("the lock is held");
    let _waiter = Proc(
        broker
            .cmd()
            .args([
                "lock",
                "db:migrate",
                "--wait",
                "--timeout",
                "120s",
                "--",
                "true",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let hook_port = broker.range.1 - 2;
    let hooks = tempfile::tempdir().unwrap();
    let _receiver = WebhookReceiver::start(hooks.path(), hook_port, "record", &[]);
    broker.pb_ok(&[
        "webhook",
        "add",
        &format!("http://127.0.0.1:{hook_port}/pb"),
        "-e",
        "service.claim",
        "-e",
        "service.release",
    ]);
    broker.claim("shop:worker", &[]);
    broker.pb_ok(&["release", "shop:worker"]);
    broker.pb_ok(&["pub", "build:status", r#"{"ok":true,"commit":"4f2a9c1"}"#]);
    broker.pb_ok(&["pub", "deploy:staging", "rolled out shop:web"]);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    scenario(
        &broker,
        "screenshot",
        &[("PB_SCREENSHOT", target.display().to_string())],
    );
    let png = std::fs::read(&target).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let (w, h) = (
        u32::from_be_bytes(png[16..20].try_into().unwrap()),
        u32::from_be_bytes(png[20..24].try_into().unwrap()),
    );
    assert!(w == 1280 && h >= 800, "{w}×{h}");
    if std::env::var_os("PB_UPDATE_SCREENSHOT").is_some() {
        std::fs::copy(
            &target,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/dashboard.png"),
        )
        .unwrap();
    }
}

/// `pb dashboard` opens its URL in $BROWSER (here a script that writes
/// down what it was given), and `--print-url` opens nothing.
#[test]
fn pb_dashboard_opens_the_browser() {
    let broker = broker();
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    let script = dir.path().join("browser");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$1\" >> {}\n", seen.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = broker
        .cmd()
        .args(["dashboard", "--print-url"])
        .env("BROWSER", &script)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = broker
        .cmd()
        .arg("dashboard")
        .env("BROWSER", &script)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(printed.contains("/login?code="), "{printed}");
    let opened = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&seen)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .expect("the browser was started");
    // One line, the second run's: had --print-url started the browser
    // (earlier), its line would be here too.
    assert_eq!(opened.trim(), printed, "--print-url opened a browser");
}
