//! `pb up`: whole stacks from one file, with real servers (python, node),
//! real signals and a real broker. Every port of a stack is bound before
//! anything starts; the stack stops in order and leaves nothing behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_tests::{output_ok, tests_dir, v4, wait_until, Broker, Proc};
use serde_json::Value;

/// A stack's directory: the test apps copied in, and its file.
fn stack_dir(file_name: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("pb-stack-")
        .tempdir()
        .unwrap();
    for app in ["api.py", "web.js", "worker.py"] {
        std::fs::copy(tests_dir().join("stacks").join(app), dir.path().join(app)).unwrap();
    }
    std::fs::write(dir.path().join(file_name), text).unwrap();
    dir
}

/// A foreground `pb up`, its output (stdout and stderr) in a file.
struct Up {
    proc: Proc,
    out: PathBuf,
}

fn up_in(broker: &Broker, dir: &Path, args: &[&str]) -> Up {
    let out = dir.join("up.out");
    let f = std::fs::File::create(&out).unwrap();
    let proc = Proc(
        broker
            .cmd()
            .arg("up")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap(),
    );
    Up { proc, out }
}

impl Up {
    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for a line containing `text`, returns it.
    fn line(&self, text: &str, limit: Duration) -> String {
        wait_until(limit, || {
            self.output()
                .lines()
                .find(|l| l.contains(text))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no line with {text:?} within {limit:?}:\n{}", self.output()))
    }

    /// The JSON after `tag` in a service's line (`api | api-start {...}`).
    fn json(&self, tag: &str) -> Value {
        let line = self.line(tag, Duration::from_secs(20));
        let at = line.find(tag).unwrap() + tag.len();
        serde_json::from_str(line[at..].trim()).unwrap()
    }
}

/// `pb up --status -j` in `dir`.
fn status(broker: &Broker, dir: &Path) -> Value {
    let out = output_ok(broker.cmd().args(["-j", "up", "--status"]).current_dir(dir));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn service<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

fn pids(status: &Value) -> Vec<u32> {
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["pid"].as_u64().map(|p| p as u32))
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// `pb up -d` of project "shop": an `api` service (python3 api.py), then
/// `more` (its api's further keys first, then other services).
fn up_detached(broker: &Broker, more: &str) -> tempfile::TempDir {
    let dir = stack_dir(
        "pb.toml",
        &format!("project = \"shop\"\n\n[services.api]\ncmd = \"python3 api.py\"\n{more}"),
    );
    let (ok, _, err) = pb_in(broker, dir.path(), &["up", "-d"]);
    assert!(ok, "{err}");
    dir
}

/// Runs `pb ARGS` in `dir`; its status and stderr.
fn pb_in(broker: &Broker, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = broker.cmd().args(args).current_dir(dir).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn get(port: u16, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&v4(port), Duration::from_secs(2))
        .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    text.split("\r\n\r\n")
        .nth(1)
        .map(str::to_string)
        .filter(|_| text.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP answer: {text:?}"))
}

const THREE: &str = r#"
project = "shop"

[services.api]
cmd = "python3 api.py"
env = { API_WAIT_FOR = "go" }
ready = { http = "/health" }

[services.web]
cmd = "node web.js"
needs = ["api"]

[services.worker]
cmd = "python3 worker.py"
no_port = true
"#;

#[test]
fn a_three_service_stack_is_bound_first_wired_together_and_stops_clean() {
    let broker = Broker::start();
    let dir = stack_dir("pb.toml", THREE);
    let mut up = up_in(&broker, dir.path(), &[]);
    let port_of = |name: &str| -> u16 {
        let line = up.line(
            &format!("pb: {name} → http://localhost:"),
            Duration::from_secs(20),
        );
        let after = &line[line.find("localhost:").unwrap() + "localhost:".len()..];
        after.split(' ').next().unwrap().parse().unwrap()
    };
    let (api, web) = (port_of("api"), port_of("web"));
    // The API has not accepted anything yet (it waits for "go"), yet a
    // request opened now waits in its listen queue instead of being refused.
    let early = std::thread::spawn(move || get(api, "/early"));
    let start = up.json("api-start ");
    assert_eq!(start["port"], api);
    // Its sibling's port was bound and listening before it started, though
    // web starts only after the API is ready.
    assert_eq!(start["open"]["WEB_PORT"], true, "{start}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(!early.is_finished(), "answered before the API accepted");
    assert!(
        !up.output().contains("web-got"),
        "web started before the API was ready"
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    let answer = early
        .join()
        .unwrap()
        .expect("the early request is answered");
    assert!(
        answer.starts_with("api ") && answer.ends_with(" /early"),
        "{answer}"
    );
    // The web front end called the API at $API_URL during its own startup.
    let got = up.json("web-got ");
    assert!(
        got["body"].as_str().unwrap().ends_with(" /from-web"),
        "{got}"
    );
    up.line("is up", Duration::from_secs(20));
    assert!(get(web, "/").unwrap().starts_with("web saw: api "));
    // Every sibling's port and URL, in every service's env.
    let env = up.json("worker-env ");
    assert_eq!(env["API_PORT"], api.to_string());
    assert_eq!(env["API_URL"], format!("http://localhost:{api}"));
    assert_eq!(env["WEB_PORT"], web.to_string());
    assert_eq!(env["WEB_URL"], format!("http://localhost:{web}"));
    assert_eq!(env["PB_SERVICE"], "worker");
    assert_eq!(env["PB_STACK"], "shop");
    assert_eq!(env["PORT"], Value::Null, "a worker has no port");
    // Output is prefixed and aligned.
    assert!(up
        .output()
        .lines()
        .any(|l| l.starts_with("worker | worker-env")));
    assert!(up
        .output()
        .lines()
        .any(|l| l.starts_with("api    | api-listening")));
    let running = pids(&status(&broker, dir.path()));
    assert_eq!(running.len(), 3, "{running:?}");
    assert_eq!(broker.leases().len(), 2);

    // Ctrl-C: everything stops, nothing is left, no port is held.
    up.proc.signal(libc::SIGINT);
    let st = up
        .proc
        .wait_for(Duration::from_secs(20))
        .expect("pb up ends");
    assert!(st.success(), "{st:?}\n{}", up.output());
    let out = up.output();
    // In reverse order: the worker first, the API last.
    assert!(out.find("api-stopped").is_some(), "{out}");
    for pid in running {
        assert!(!alive(pid), "pid {pid} outlived pb up");
    }
    assert!(broker.leases().is_empty(), "{:?}", broker.leases());
    for port in [api, web] {
        assert!(
            TcpStream::connect(v4(port)).is_err(),
            "port {port} still listens"
        );
    }
}

#[test]
fn a_detached_stack_restarts_keeps_its_sockets_and_goes_down() {
    let broker = Broker::start();
    let dir = up_detached(
        &broker,
        r#"
ready = { http = "/" }

[services.flaky]
# Crashes on its first start; restarted, it serves.
cmd = "if [ ! -e crashed ]; then touch crashed; echo crashing; exit 3; fi; exec python3 -m http.server $PORT --bind 127.0.0.1"
restart = "on-failure"
"#,
    );
    let s = status(&broker, dir.path());
    assert_eq!(s["status"], "up", "{s}");
    let api = service(&s, "api");
    let flaky = service(&s, "flaky");
    assert_eq!(api["state"], "ready");
    assert_eq!(flaky["state"], "ready");
    assert!(flaky["restarts"].as_u64().unwrap() >= 1, "{s}");
    let port = api["port"].as_u64().unwrap() as u16;
    let old_pid = api["pid"].as_u64().unwrap();
    // The crash and the restart are in flaky's log.
    let (ok, logs, err) = pb_in(&broker, dir.path(), &["logs", "flaky", "-n", "50"]);
    assert!(ok, "{err}");
    assert!(logs.contains("crashing"), "{logs}");
    for n in 0..3 {
        get(port, &format!("/before{n}")).unwrap();
    }
    let (ok, logs, err) = pb_in(&broker, dir.path(), &["logs", "api", "-n", "5"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(lines.len(), 5, "{logs}");
    assert_eq!(lines[4], "api-served /before2", "{logs}");

    // Requests all through a restart: none is refused or lost.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut answers = Vec::new();
            for n in 0..100_000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                answers.push(get(port, &format!("/during{n}")));
            }
            answers
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let (ok, _, err) = pb_in(&broker, dir.path(), &["restart", "api"]);
    assert!(ok, "{err}");
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.join().unwrap();
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let pids_seen: std::collections::HashSet<&str> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .filter_map(|a| a.split(' ').nth(1))
        .collect();
    assert!(
        pids_seen.len() >= 2,
        "old and new process both answered: {pids_seen:?}"
    );
    let s = status(&broker, dir.path());
    let api = service(&s, "api");
    assert_ne!(api["pid"].as_u64().unwrap(), old_pid);
    assert_eq!(api["port"].as_u64().unwrap() as u16, port);
    assert_eq!(api["restarts"], 1);

    let running = pids(&s);
    let (ok, _, err) = pb_in(&broker, dir.path(), &["down"]);
    assert!(ok, "{err}");
    for pid in running {
        assert!(!alive(pid), "pid {pid} outlived pb down");
    }
    assert!(broker.leases().is_empty());
    let (ok, _, err) = pb_in(&broker, dir.path(), &["up", "--status"]);
    assert!(!ok && err.contains("is not up"), "{err}");
}

#[test]
fn a_portdaddyrc_and_a_procfile_run_unchanged() {
    let broker = Broker::start();
    let pd = stack_dir(
        ".portdaddyrc",
        r#"{
  "project": "pdapp",
  "services": {
    "api": { "cmd": "python3 api.py", "healthPath": "/health" },
    "web": { "cmd": "node web.js", "needs": ["api"] },
    "worker": { "cmd": "python3 worker.py", "noPort": true }
  }
}"#,
    );
    let mut up = up_in(&broker, pd.path(), &[]);
    up.line("pdapp is up", Duration::from_secs(30));
    let s = status(&broker, pd.path());
    let web = service(&s, "web")["port"].as_u64().unwrap() as u16;
    assert!(get(web, "/").unwrap().starts_with("web saw: api "));
    let ids: Vec<String> = broker.leases().into_iter().map(|(id, _)| id).collect();
    assert!(ids.contains(&"pdapp:api".to_string()), "{ids:?}");
    up.proc.signal(libc::SIGINT);
    assert!(up.proc.wait_for(Duration::from_secs(20)).unwrap().success());
    assert!(broker.leases().is_empty());

    let pf = stack_dir(
        "Procfile",
        "# a foreman Procfile\nweb: python3 -m http.server $PORT --bind 127.0.0.1\nworker: python3 worker.py\n",
    );
    let mut up = up_in(&broker, pf.path(), &[]);
    up.line("is up", Duration::from_secs(30));
    let s = status(&broker, pf.path());
    let web = service(&s, "web")["port"].as_u64().unwrap() as u16;
    assert!(wait_until(Duration::from_secs(10), || get(web, "/").ok()).is_some());
    // foreman gives every entry a $PORT; the worker sees web's.
    let env = up.json("worker-env ");
    assert!(env["PORT"].as_str().is_some(), "{env}");
    assert_eq!(env["WEB_PORT"], web.to_string());
    up.proc.signal(libc::SIGINT);
    assert!(up.proc.wait_for(Duration::from_secs(20)).unwrap().success());
    assert!(broker.leases().is_empty());
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .args([
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_worktrees_of_one_repo_run_the_same_stack_side_by_side() {
    let broker = Broker::start();
    let repo = stack_dir(
        "pb.toml",
        "project = \"shop\"\n[services.api]\ncmd = \"python3 api.py\"\n",
    );
    git(repo.path(), &["init", "-q"]);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-q", "-m", "stack"]);
    let other = tempfile::tempdir().unwrap();
    let wt = other.path().join("feature-x");
    git(
        repo.path(),
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "feature/x",
            wt.to_str().unwrap(),
        ],
    );
    for d in [repo.path(), wt.as_path()] {
        let (ok, _, err) = pb_in(&broker, d, &["up", "-d"]);
        assert!(ok, "{err}");
    }
    let mut leases = broker.leases();
    leases.sort();
    let ids: Vec<&str> = leases.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["shop:api:feature-x", "shop:api:main"]);
    assert_ne!(leases[0].1, leases[1].1);
    for (_, port) in &leases {
        assert!(get(*port, "/").unwrap().starts_with("api "));
    }
    for d in [repo.path(), wt.as_path()] {
        let (ok, _, err) = pb_in(&broker, d, &["down"]);
        assert!(ok, "{err}");
    }
    assert!(broker.leases().is_empty());
}

#[test]
fn a_change_to_a_watched_file_restarts_the_service_on_its_socket() {
    let broker = Broker::start();
    let dir = stack_dir(
        "pb.toml",
        "project = \"w\"\n[services.api]\ncmd = \"python3 api.py\"\nwatch = [\"*.py\", \"conf/*.txt\"]\n",
    );
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    std::fs::write(dir.path().join("conf/a.txt"), "1").unwrap();
    let mut up = up_in(&broker, dir.path(), &[]);
    up.line("w is up", Duration::from_secs(20));
    let before = status(&broker, dir.path());
    let api = service(&before, "api");
    let (port, pid) = (
        api["port"].as_u64().unwrap() as u16,
        api["pid"].as_u64().unwrap(),
    );
    // A file no glob matches changes nothing.
    std::fs::write(dir.path().join("notes.md"), "x").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        service(&status(&broker, dir.path()), "api")["pid"]
            .as_u64()
            .unwrap(),
        pid
    );
    std::fs::write(dir.path().join("conf/a.txt"), "22").unwrap();
    let restarted = wait_until(Duration::from_secs(15), || {
        let s = status(&broker, dir.path());
        let a = service(&s, "api").clone();
        (a["pid"].as_u64() != Some(pid) && a["ready"] == true).then_some(a)
    })
    .expect("restarted after the change");
    assert_eq!(restarted["port"].as_u64().unwrap() as u16, port);
    assert_eq!(restarted["restarts"], 1);
    let answer = get(port, "/after").unwrap();
    assert!(
        answer.starts_with(&format!("api {} ", restarted["pid"])),
        "{answer}"
    );
    up.proc.signal(libc::SIGINT);
    assert!(up.proc.wait_for(Duration::from_secs(20)).unwrap().success());
}

/// `pb up` of `text` (as `file_name`) fails with a message containing
/// every one of `expect`, starts nothing and holds no port more.
fn refused(broker: &Broker, file_name: &str, text: &str, expect: &[&str]) {
    let dir = stack_dir(file_name, text);
    let before = broker.leases();
    let started = Instant::now();
    let out = broker
        .cmd()
        .arg("up")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{file_name} was accepted:\n{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
    for e in expect {
        assert!(err.contains(e), "{e:?} not in: {err}");
    }
    assert_eq!(broker.leases(), before, "after {err}");
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("started-"))
        .collect();
    assert!(left.is_empty(), "{left:?} ran");
}

#[test]
fn bad_stack_files_are_refused_whole_and_start_nothing() {
    let broker = Broker::start();
    let ok = "[services.a]\ncmd = \"touch started-a\"\n";
    refused(
        &broker,
        "pb.toml",
        "[services.a\ncmd = 1\n",
        &["pb.toml", "line 1"],
    );
    refused(
        &broker,
        "pb.toml",
        &format!("{ok}[services.b]\ncomand = \"touch started-b\"\n"),
        &[
            "pb.toml",
            "line 4",
            "unknown field `comand`",
            "did you mean `cmd`?",
        ],
    );
    refused(
        &broker,
        ".portdaddyrc",
        "{\"services\": {\"a\": {\"cmd\": \"touch started-a\", \"helthPath\": \"/\"}}}",
        &[
            ".portdaddyrc",
            "line 1 column",
            "did you mean `healthPath`?",
        ],
    );
    refused(
        &broker,
        "pb.toml",
        &format!("{ok}[services.b]\ncmd = \"touch started-b\"\nneeds = [\"aa\"]\n"),
        &["service b", "needs \"aa\"", "did you mean a?"],
    );
    refused(
        &broker,
        "pb.toml",
        "[services.a]\ncmd = \"touch started-a\"\nneeds = [\"b\"]\n[services.b]\ncmd = \"touch started-b\"\nneeds = [\"c\"]\n[services.c]\ncmd = \"touch started-c\"\nneeds = [\"b\"]\n",
        &["cycle", "b → c → b"],
    );
    refused(
        &broker,
        "pb.toml",
        &format!("{ok}{ok}"),
        &["pb.toml", "duplicate key"],
    );
    refused(
        &broker,
        ".portdaddyrc",
        "{\"services\": {\"a\": {\"cmd\": \"touch started-a\"}, \"a\": {\"cmd\": \"touch started-a\"}}}",
        &["duplicate service \"a\""],
    );
    refused(
        &broker,
        "Procfile",
        "a: touch started-a\na: touch started-b\n",
        &["Procfile:2:1", "duplicate service"],
    );
    refused(
        &broker,
        "pb.toml",
        &format!("project = \"bad project\"\n{ok}"),
        &["invalid id \"bad project:a\""],
    );
    refused(
        &broker,
        "pb.toml",
        &format!("{ok}[services.b]\ncmd = \"no-such-program-for-pb-up --x\"\n"),
        &["service b", "no-such-program-for-pb-up: command not found"],
    );
    refused(
        &broker,
        "pb.toml",
        &format!("{ok}[services.b]\ncmd = \"touch started-b ${{db.port}}\"\n"),
        &["${db.port}", "no service with a port"],
    );

    // A port another stack holds.
    let port = broker.range.0 + 150;
    let first = stack_dir(
        "pb.toml",
        &format!("project = \"one\"\n[services.api]\ncmd = \"python3 api.py\"\nport = {port}\n"),
    );
    let (ok1, _, err) = pb_in(&broker, first.path(), &["up", "-d"]);
    assert!(ok1, "{err}");
    refused(
        &broker,
        "pb.toml",
        &format!("project = \"two\"\n{ok}[services.b]\ncmd = \"touch started-b\"\nport = {port}\n"),
        &[
            "service b",
            &format!("port {port}"),
            "one:api",
            "nothing started",
        ],
    );
    // ... and the same stack twice.
    let (ok2, _, err) = pb_in(&broker, first.path(), &["up"]);
    assert!(!ok2 && err.contains("one is already up"), "{err}");
    let (ok3, _, err) = pb_in(&broker, first.path(), &["down"]);
    assert!(ok3, "{err}");
}

/// `curl` to the broker's HTTP API: its status and JSON body.
fn http(broker: &Broker, method: &str, path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
        ])
        .args(
            ["-H", "Content-Type: application/json", "-d", "{}"]
                .iter()
                .filter(|_| method == "POST"),
        )
        .arg(format!("{}{path}", broker.http_url()))
        .output()
        .unwrap();
    pb_tests::curl_status_json(&out.stdout)
}

fn actions(broker: &Broker) -> Vec<(String, String, Value)> {
    broker
        .activity(&["--action", "stack.*", "-n", "100"])
        .into_iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["target"].as_str().unwrap().to_string(),
                e["details"].clone(),
            )
        })
        .collect()
}

#[test]
fn the_broker_knows_each_stack_lists_it_logs_it_and_relays_restarts() {
    let broker = Broker::start();
    let dir = up_detached(
        &broker,
        r#"
[services.flaky]
cmd = "if [ ! -e crashed ]; then touch crashed; exit 3; fi; exec python3 worker.py"
no_port = true
restart = "on-failure"
"#,
    );
    // pb find says whose service a lease is.
    let find = broker.pb_json(&["find"]);
    assert_eq!(find["services"][0]["stack"], "shop", "{find}");
    let table = broker.pb_ok(&["find"]);
    assert!(table.lines().next().unwrap().contains("STACK"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("shop:api") && l.contains(" shop ")),
        "{table}"
    );
    // The HTTP API lists it, with its services' states.
    let (code, body) = http(&broker, "GET", "/stacks");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["count"], 1);
    let stack = &body["stacks"][0];
    assert_eq!(stack["id"], "shop");
    assert_eq!(stack["status"], "up");
    let api = service(stack, "api");
    assert_eq!(api["state"], "ready");
    let old_pid = api["pid"].as_u64().unwrap();
    // A restart asked over HTTP reaches the supervisor.
    let (code, body) = http(&broker, "POST", "/stacks/shop/services/api/restart");
    assert_eq!(
        (code, &body["requested"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    let back = wait_until(Duration::from_secs(15), || {
        let s = status(&broker, dir.path());
        let a = service(&s, "api").clone();
        (a["pid"].as_u64() != Some(old_pid) && a["ready"] == true).then_some(a)
    })
    .expect("api restarted");
    assert_eq!(back["restarts"], 1);
    // ... and bad ones change nothing.
    let (code, body) = http(&broker, "POST", "/stacks/shop/services/nope/restart");
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (code, body) = http(&broker, "POST", "/stacks/other/services/api/restart");
    assert_eq!(
        (code, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    // The activity log has what happened, and webhooks may ask for it.
    let events = broker.pb_ok(&["webhook", "events"]);
    for kind in ["stack.up", "stack.down", "stack.restart", "stack.crash"] {
        assert!(events.contains(kind), "{events}");
    }
    let (ok, _, err) = pb_in(&broker, dir.path(), &["down"]);
    assert!(ok, "{err}");
    let got = actions(&broker);
    let kinds: Vec<&str> = got.iter().map(|(a, _, _)| a.as_str()).collect();
    for kind in [
        "stack.crash",
        "stack.up",
        "stack.restart_requested",
        "stack.restart",
        "stack.down",
    ] {
        assert!(kinds.contains(&kind), "{kind} missing from {got:?}");
    }
    assert!(got.iter().all(|(_, target, _)| target == "shop"), "{got:?}");
    let crash = got.iter().find(|(a, _, _)| a == "stack.crash").unwrap();
    assert_eq!(crash.2["service"], "flaky");
    assert!(
        crash.2["detail"].as_str().unwrap().contains("exit code 3"),
        "{crash:?}"
    );
    let restart = got.iter().find(|(a, _, _)| a == "stack.restart").unwrap();
    assert_eq!(restart.2["service"], "api");
    let (_, body) = http(&broker, "GET", "/stacks");
    assert_eq!(body["count"], 0, "{body}");

    // A supervisor killed outright: its stack is gone with its connection.
    let (ok, _, err) = pb_in(&broker, dir.path(), &["up", "-d"]);
    assert!(ok, "{err}");
    let s = status(&broker, dir.path());
    let sup = s["supervisor"].as_u64().unwrap() as i32;
    let children = pids(&s);
    // SAFETY: the supervisor `pb up -d` started for this test.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    let gone = wait_until(Duration::from_secs(10), || {
        actions(&broker)
            .into_iter()
            .filter(|(a, _, _)| a == "stack.down")
            .find(|(_, _, d)| d["detail"] == "its supervisor went away")
    });
    assert!(gone.is_some(), "{:?}", actions(&broker));
    let (_, body) = http(&broker, "GET", "/stacks");
    assert_eq!(body["count"], 0, "{body}");
    // Its services were its own children's trees: end them, as the test
    // started them (by pid).
    for pid in children {
        // SAFETY: pids of this test's stack.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

#[test]
fn a_service_that_never_gets_ready_or_dies_first_stops_the_stack_and_says_why() {
    let broker = Broker::start();
    // Listens, but never answers HTTP: not ready within its limit.
    let dir = stack_dir(
        "pb.toml",
        "project = \"slow\"\n\
         [services.mute]\n\
         cmd = \"python3 -c 'import socket,os,time; print(\\\"mute waiting\\\", flush=True); time.sleep(60)'\"\n\
         ready = { http = \"/health\" }\n\
         ready_timeout = \"1s\"\n\
         [services.after]\ncmd = \"touch started-after\"\nno_port = true\nneeds = [\"mute\"]\n",
    );
    let out = broker
        .cmd()
        .arg("up")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("mute was not ready within 1s"), "{text}");
    assert!(text.contains("GET /health"), "{text}");
    assert!(text.contains("its last lines:\n    mute waiting"), "{text}");
    assert!(
        !dir.path().join("started-after").exists(),
        "what needs it started"
    );
    assert!(broker.leases().is_empty());

    // Ends before it is ready, and will not restart.
    let dir = stack_dir(
        "pb.toml",
        "project = \"dies\"\n[services.api]\ncmd = \"sh -c 'echo cannot open the database; exit 4'\"\n",
    );
    let out = broker
        .cmd()
        .arg("up")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("api exited with code 4 before it was ready"),
        "{err}"
    );
    assert!(err.contains("cannot open the database"), "{err}");
    assert!(broker.leases().is_empty());
}

#[test]
fn a_stack_is_known_again_to_a_broker_that_restarted() {
    let mut broker = Broker::start();
    let dir = up_detached(&broker, "");
    assert_eq!(http(&broker, "GET", "/stacks").1["count"], 1);
    let port = service(&status(&broker, dir.path()), "api")["port"]
        .as_u64()
        .unwrap() as u16;
    broker.kill9();
    broker.restart();
    // The supervisor reports it again on its own (nothing in the stack
    // changed), and the service kept its port and kept serving.
    let back = wait_until(Duration::from_secs(15), || {
        let (_, body) = http(&broker, "GET", "/stacks");
        (body["count"] == 1).then_some(body)
    })
    .expect("listed again");
    assert_eq!(back["stacks"][0]["id"], "shop");
    assert!(get(port, "/again").unwrap().ends_with(" /again"));
    let (ok, _, err) = pb_in(&broker, dir.path(), &["down"]);
    assert!(ok, "{err}");
    assert!(broker.leases().is_empty(), "{:?}", broker.leases());
}

#[test]
fn a_stack_whose_home_is_removed_stops_and_leaves_nothing() {
    let broker = Broker::start();
    let dir = up_detached(&broker, "");
    let s = status(&broker, dir.path());
    let running: Vec<u32> = pids(&s)
        .into_iter()
        .chain([s["supervisor"].as_u64().unwrap() as u32])
        .collect();
    std::fs::remove_dir_all(broker.home.path().join("stacks")).unwrap();
    let gone = wait_until(Duration::from_secs(15), || {
        running.iter().all(|p| !alive(*p)).then_some(())
    });
    assert!(gone.is_some(), "{running:?} still run");
    assert!(broker.leases().is_empty(), "{:?}", broker.leases());
}

#[test]
fn a_stacks_names_route_through_the_proxy_and_a_bad_name_starts_nothing() {
    let broker = Broker::start();
    let proxy = broker.proxy_port().unwrap();
    let dir = up_detached(
        &broker,
        "names = [\"store\"]\nready = { http = \"/health\" }\n",
    );
    for host in ["api.shop.localhost", "store.localhost"] {
        let url = format!("http://{host}:{proxy}/health");
        let ok = wait_until(Duration::from_secs(20), || {
            let out = Command::new("curl")
                .args(["-sf", "--max-time", "5", &url])
                .output()
                .ok()?;
            out.status.success().then_some(())
        });
        assert!(ok.is_some(), "{url}; log:\n{}", broker.log());
    }
    let (ok, _, err) = pb_in(&broker, dir.path(), &["down"]);
    assert!(ok, "{err}");
    // A name the broker refuses: the stack's claim fails, naming the
    // service, and nothing is left claimed or started.
    let bad = stack_dir(
        "pb.toml",
        "project = \"shop\"\n\n[services.api]\ncmd = \"python3 api.py\"\nnames = [\"bad_name\"]\n",
    );
    let (ok, _, err) = pb_in(&broker, bad.path(), &["up", "-d"]);
    assert!(!ok);
    assert!(err.contains("api") && err.contains("bad_name"), "{err}");
    let left = wait_until(Duration::from_secs(5), || {
        broker.leases().is_empty().then_some(())
    });
    assert!(left.is_some(), "{:?}", broker.leases());
}

#[test]
fn up_prefixes_are_coloured_as_color_says() {
    let broker = Broker::start();
    let dir = stack_dir(
        "pb.toml",
        "project = \"hue\"\n\n[services.talker]\ncmd = \"sh -c 'echo hello-from-talker; sleep 30'\"\n",
    );
    // Forced on a file; plain without the flag (a file is no terminal).
    for (args, coloured) in [(&["--color=always"][..], true), (&[][..], false)] {
        let mut up = up_in(&broker, dir.path(), args);
        let line = up.line("hello-from-talker", Duration::from_secs(20));
        assert_eq!(line.contains("\x1b["), coloured, "{line:?}");
        assert!(line.contains("talker |"), "{line:?}");
        up.proc.signal(libc::SIGINT);
        assert!(up.proc.wait_for(Duration::from_secs(20)).is_some());
    }
}
