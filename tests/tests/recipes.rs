//! Every CLI and curl recipe of the two seed READMEs
//! (../shared/seeds/port-daddy-README.md and portmanager-README.md), run
//! as written by bash against a real broker, one test per recipe, named
//! after the README section it comes from (`port_daddy_*`, `portmanager_*`).
//!
//! The only substitutions: the binary's name (`port-daddy`, and
//! `cargo run -p client --`, become `pb`) and the daemon's address
//! (`localhost:9876`, `localhost:3030`) becomes the test broker's. What
//! the recipes call of the user's own is real where it can be: npm runs
//! package.json scripts, node and python serve on `$PORT`, vite is vite.
//! Two programs that are not pb's and that CI has no business running
//! stand in as small scripts that say what they were given: Prisma (a
//! migration that waits, to hold a lock meanwhile) and Docker (whose `-p`
//! argument is what pb owes it). Each recipe's documented output shape is
//! asserted: fields, exit codes, and what its `jq`, `awk` or `tail`
//! extracts. Recipes that no tool can run as written are in docs/CLI.md
//! ("The seeds' recipes") with the form that works, which is tested here.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use pb_tests::*;
use serde_json::{json, Value};

/// How long any one recipe may take before it counts as hung.
const RECIPE_SECS: &str = "60";
const LINE: Duration = Duration::from_secs(20);

/// A broker, and a project directory with what the recipes call.
struct Desk {
    broker: Broker,
    dir: tempfile::TempDir,
}

const PACKAGE_JSON: &str = r#"{
  "name": "recipes",
  "private": true,
  "scripts": {
    "start": "node server.js",
    "dev": "node server.js",
    "build:api": "node -e \"console.log('built api')\"",
    "build:frontend": "node -e \"console.log('built frontend')\"",
    "test:integration": "node -e \"console.log('integration tests passed')\""
  }
}
"#;

/// A server on `$PORT` (or `--port N`), as the READMEs' apps are.
const SERVER_JS: &str = r#"const http = require('http');
const i = process.argv.indexOf('--port');
const port = Number(i > 0 ? process.argv[i + 1] : process.env.PORT);
http.createServer((req, res) => {
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({ ok: true, path: req.url, port }));
}).listen(port, () => console.log(`listening on ${port}`));
"#;

const APP_PY: &str = r#"import http.server, os
port = int(os.environ.get('PORT', 8080))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'python on %d' % port)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(('127.0.0.1', port), H)
print('listening on', port, flush=True)
s.serve_forever()
"#;

/// Prisma's stand-in: the migration runs until the test says it is done
/// (a file appears), at most 30 s.
const PRISMA: &str = r#"#!/bin/sh
echo "prisma $*"
i=0
while [ ! -e "$RECIPES_DIR/migrated" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
echo "migration done"
"#;

/// Docker's stand-in: says what it would run.
const DOCKER: &str = "#!/bin/sh\necho \"docker $*\"\n";

fn write_exe(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Desk {
    fn new() -> Desk {
        Desk::with(Broker::start())
    }

    fn with(broker: Broker) -> Desk {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("package.json"), PACKAGE_JSON).unwrap();
        std::fs::write(d.join("server.js"), SERVER_JS).unwrap();
        std::fs::write(d.join("app.py"), APP_PY).unwrap();
        std::fs::write(d.join("server.py"), APP_PY).unwrap();
        std::fs::write(d.join("index.html"), "<h1>vite</h1>\n").unwrap();
        write_exe(
            &d.join("start-db.sh"),
            "#!/bin/sh\necho \"database on port $DB_PORT\"\n",
        );
        std::fs::create_dir_all(d.join("node_modules/.bin")).unwrap();
        write_exe(&d.join("node_modules/.bin/prisma"), PRISMA);
        std::fs::create_dir_all(d.join("bin")).unwrap();
        write_exe(&d.join("bin/docker"), DOCKER);
        Desk { broker, dir }
    }

    fn base(&self) -> String {
        format!("localhost:{}", self.broker.http_port().unwrap())
    }

    /// A recipe of Port Daddy's README, as pb runs it.
    fn port_daddy(&self, recipe: &str) -> String {
        recipe
            // The command, not the word in a URL (`/port-daddy-events`).
            .replace("port-daddy ", "pb ")
            .replace("localhost:9876", &self.base())
    }

    /// A recipe of PortManager's README, as pb runs it.
    fn portmanager(&self, recipe: &str) -> String {
        recipe
            .replace("cargo run -p client --", "pb")
            .replace("localhost:3030", &self.base())
    }

    /// bash running `script` in the project, with pb (and vite, python,
    /// the stand-ins) on PATH and the broker's environment, for at most
    /// RECIPE_SECS.
    fn bash(&self, script: &str) -> Command {
        let mut c = self.command("timeout");
        c.args([RECIPE_SECS, "bash", "-c", script]);
        c
    }

    fn command(&self, program: &str) -> Command {
        let realapps = tests_dir().join("realapps");
        let path = [
            self.dir.path().join("bin"),
            pb_bin().parent().unwrap().to_path_buf(),
            realapps.join("node_modules/.bin"),
            realapps.join(".venv/bin"),
        ]
        .iter()
        .map(|p| p.display().to_string())
        .chain(std::env::var("PATH").ok())
        .collect::<Vec<_>>()
        .join(":");
        let mut c = Command::new(program);
        c.current_dir(self.dir.path())
            .envs(self.broker.env().iter().map(|(k, v)| (k, v)))
            .env("PATH", path)
            .env("RECIPES_DIR", self.dir.path())
            .env_remove("PORT")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, script: &str) -> Output {
        self.bash(script).output().unwrap()
    }

    /// Runs `script`, asserting it succeeds; its stdout.
    fn ok(&self, script: &str) -> String {
        let out = self.run(script);
        assert!(
            out.status.success(),
            "{script}\nexit {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `script`; its stdout's lines, as they come.
    fn spawn(&self, script: &str) -> (Proc, Receiver<String>) {
        let mut p = Proc(self.bash(script).stdout(Stdio::piped()).spawn().unwrap());
        let lines = lines_of(p.0.stdout.take().unwrap());
        (p, lines)
    }

    /// A persistent shell, as an agent keeps one: commands are written to
    /// its stdin, so whatever it locks or claims lives until it exits.
    fn shell(&self) -> (Proc, Receiver<String>) {
        let mut p = Proc(
            self.command("bash")
                .arg("-s")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let lines = lines_of(p.0.stdout.take().unwrap());
        (p, lines)
    }

    fn lease(&self, id: &str) -> Option<u16> {
        self.broker
            .leases()
            .into_iter()
            .find(|(i, _)| i == id)
            .map(|(_, p)| p)
    }

    /// Waits until the broker counts `n` subscribers (its own metrics).
    fn wait_subscribers(&self, n: usize) {
        let want = format!("pb_subscribers {n}");
        let seen = wait_until(LINE, || {
            self.broker
                .pb_ok(&["metrics"])
                .lines()
                .any(|l| l == want)
                .then_some(())
        });
        assert!(seen.is_some(), "{n} subscribers never appeared");
    }
}

/// Writes a line of commands to an agent's shell.
fn say(shell: &mut Proc, line: &str) {
    let stdin = shell.0.stdin.as_mut().unwrap();
    writeln!(stdin, "{line}").unwrap();
    stdin.flush().unwrap();
}

/// The next line on `rx` that `pred` accepts; all seen in the failure.
fn expect_line(rx: &Receiver<String>, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let mut seen = Vec::new();
    next_matching(rx, &mut seen, LINE, pred).unwrap_or_else(|| panic!("no {what}: {seen:?}"))
}

/// `ID → port N`, pb's (and Port Daddy's) claim line: N.
fn claimed_port(line: &str, id: &str) -> u16 {
    let rest = line
        .trim()
        .strip_prefix(&format!("{id} → port "))
        .unwrap_or_else(|| panic!("not `{id} → port N`: {line:?}"));
    rest.parse().unwrap_or_else(|_| panic!("{line:?}"))
}

/// The port a recipe's app says it listens on (`listening on N`).
fn serving(rx: &Receiver<String>, what: &str) -> u16 {
    let line = expect_line(rx, what, |l| l.starts_with("listening on"));
    line.trim_start_matches("listening on ")
        .parse()
        .unwrap_or_else(|_| panic!("{line:?}"))
}

/// The port in the Docker stand-in's `docker run -p N:5432 postgres`.
fn docker_port(out: &str) -> u16 {
    out.trim()
        .strip_prefix("docker run -p ")
        .and_then(|r| r.strip_suffix(":5432 postgres"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not docker's -p N:5432: {out}"))
}

fn curl_json_text(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn is_utc_stamp(s: &str) -> bool {
    // [2024-01-15T10:30:00Z]
    let b = s.as_bytes();
    s.len() == 22
        && b[0] == b'['
        && b[21] == b']'
        && b[11] == b'T'
        && b[20] == b'Z'
        && s[1..11].chars().filter(|c| *c == '-').count() == 2
}

// ---- Port Daddy ----------------------------------------------------------

#[test]
fn port_daddy_intro_claims_frontend_then_api_on_the_next_port() {
    let d = Desk::new();
    let out = d.ok(&d.port_daddy(
        "port-daddy claim myapp:frontend\n# → myapp:frontend → port 3100\n\nport-daddy claim myapp:api\n# → myapp:api → port 3101",
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let front = claimed_port(lines[0], "myapp:frontend");
    let api = claimed_port(lines[1], "myapp:api");
    assert_eq!(front, d.broker.range.0, "the range's first port");
    assert_eq!(api, front + 1, "{out}");
}

#[test]
fn port_daddy_quick_start_claim_ps_release() {
    // One terminal: a claim from a shell lasts while the shell does.
    let d = Desk::new();
    d.ok(&d.port_daddy("# Or just start it manually\nport-daddy start"));
    let out = d.ok(&d.port_daddy(
        "# Claim a port\nport-daddy claim myapp\n# → myapp → port 3100\n\n# See what's running\nport-daddy ps\n\n# Release when done\nport-daddy release myapp\necho ---\nport-daddy ps",
    ));
    let mut lines = out.lines();
    let port = claimed_port(lines.next().unwrap(), "myapp");
    let row = lines
        .find(|l| l.starts_with("myapp "))
        .unwrap_or_else(|| panic!("ps lists myapp: {out}"));
    assert!(row.contains(&port.to_string()), "{row}");
    assert_eq!(
        lines.next(),
        Some(format!("released myapp (port {port})").as_str()),
        "{out}"
    );
    assert_eq!(lines.next(), Some("---"));
    assert_eq!(lines.next(), None, "ps lists nothing after: {out}");
    assert!(can_bind(v4(port)), "the port is free again");
}

#[test]
fn port_daddy_quick_start_install_as_a_system_service() {
    // `port-daddy install`, with a home of the test's own: where a systemd
    // user manager answers, the units land there (tests/install.rs checks
    // them); where none does (CI), pb says so and writes nothing.
    let d = Desk::new();
    let home = tempfile::tempdir().unwrap();
    let out = d
        .bash(
            &d.port_daddy("# Install as system service (auto-starts on login)\nport-daddy install"),
        )
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path().join(".config"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let written = home.path().join(".config/systemd/user/pb.service").exists();
    match out.status.code() {
        Some(0) => assert!(written, "{err}"),
        Some(4) => {
            assert!(err.contains("systemd is absent"), "{err}");
            assert!(std::fs::read_dir(home.path()).unwrap().next().is_none());
        }
        other => panic!("exit {other:?}: {err}"),
    }
}

#[test]
fn port_daddy_semantic_identities_find_and_release_by_pattern() {
    let d = Desk::new();
    for id in [
        "myapp:api",
        "myapp:api:feature-auth",
        "myapp:frontend:feature-auth",
        "acme:api:main",
        "todo:worker",
    ] {
        d.broker.claim(id, &[]);
    }
    let ids = |out: &str| -> Vec<String> {
        out.lines()
            .skip(1)
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect()
    };
    let mine = d.ok(&d.port_daddy("# All services for myapp\nport-daddy find myapp:*"));
    assert_eq!(
        ids(&mine),
        [
            "myapp:api",
            "myapp:api:feature-auth",
            "myapp:frontend:feature-auth"
        ],
        "{mine}"
    );
    let apis =
        d.ok(&d.port_daddy("# All API services across all projects\nport-daddy find *:api:*"));
    assert_eq!(
        ids(&apis),
        ["myapp:api:feature-auth", "acme:api:main"],
        "{apis}"
    );
    let out = d.ok(&d.port_daddy(
        "# Release everything for a feature branch\nport-daddy release myapp:*:feature-auth",
    ));
    assert_eq!(out.lines().count(), 2, "{out}");
    let left: Vec<String> = d.broker.leases().into_iter().map(|(i, _)| i).collect();
    assert_eq!(left, ["myapp:api", "acme:api:main", "todo:worker"]);
}

#[test]
fn port_daddy_pub_sub_messaging_agent_c_receives_both_ready_messages() {
    let d = Desk::new();
    // Agent C subscribes and waits (first, so that it is waiting).
    let (_c, lines) =
        d.spawn(&d.port_daddy("# Agent C subscribes and waits\nport-daddy sub build:*"));
    d.wait_subscribers(1);
    d.ok(&d.port_daddy(
        "# Agent A finishes the API\nport-daddy pub build:api '{\"status\":\"ready\",\"port\":3100}'",
    ));
    d.ok(&d.port_daddy(
        "# Agent B finishes the frontend\nport-daddy pub build:frontend '{\"status\":\"ready\",\"port\":3101}'",
    ));
    // # [2024-01-15T10:30:00Z] {"status":"ready","port":3100}
    for want in [
        r#"{"status":"ready","port":3100}"#,
        r#"{"status":"ready","port":3101}"#,
    ] {
        let line = expect_line(&lines, want, |l| l.contains(want));
        let (stamp, data) = line.split_once(' ').unwrap();
        assert!(is_utc_stamp(stamp), "{line}");
        assert_eq!(data, want, "byte for byte: {line}");
    }
}

#[test]
fn port_daddy_distributed_locks_agent_b_skips_while_a_migrates() {
    let d = Desk::new();
    // Agent A: exclusive access to the database, for as long as the
    // migration runs.
    let (mut a, a_out) = d.spawn(&d.port_daddy(
        "# Agent A: Exclusive access to database\nport-daddy lock db-migrations\nnpx prisma migrate dev\nport-daddy unlock db-migrations",
    ));
    expect_line(&a_out, "the migration", |l| l == "prisma migrate dev");
    let b = d.port_daddy(
        "# Agent B: Waits or fails immediately if lock is held\nport-daddy lock db-migrations || echo \"Lock held, skipping\"",
    );
    let out = d.run(&b);
    assert!(out.status.success(), "the recipe's `||` makes it succeed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Lock held, skipping"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("db-migrations") && err.contains("held"),
        "{err}"
    );
    // The migration ends; A unlocks; B's line now takes the lock.
    std::fs::write(d.dir.path().join("migrated"), "").unwrap();
    assert!(a.wait_for(LINE).is_some_and(|s| s.success()));
    let out = d.run(&b);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "", "no skip");
}

#[test]
fn port_daddy_agent_registry_curl_recipes() {
    let d = Desk::new();
    let r = curl_json_text(&d.ok(&d.port_daddy(
        r#"# Register an agent
curl -X POST http://localhost:9876/agents/claude-session-1 \
  -H 'Content-Type: application/json' \
  -d '{"name": "API Builder", "type": "claude"}'"#,
    )));
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["agent"]["id"], "claude-session-1");
    assert_eq!(r["agent"]["name"], "API Builder");
    assert_eq!(r["agent"]["kind"], "claude");
    assert_eq!(r["existing"], false);
    let r = curl_json_text(&d.ok(&d.port_daddy(
        "# Send heartbeats (keeps agent marked as active)\ncurl -X PUT http://localhost:9876/agents/claude-session-1/heartbeat",
    )));
    assert_eq!(r["agent"]["id"], "claude-session-1", "{r}");
    let r = curl_json_text(
        &d.ok(&d.port_daddy("# See all active agents\ncurl http://localhost:9876/agents")),
    );
    assert_eq!(r["count"], 1, "{r}");
    assert_eq!(r["agents"][0]["id"], "claude-session-1");
    let r = curl_json_text(&d.ok(
        &d.port_daddy("# Check agent status\ncurl http://localhost:9876/agents/claude-session-1"),
    ));
    assert_eq!(r["agent"]["name"], "API Builder", "{r}");
    // The same agent over IPC.
    let ipc = d.broker.pb_json(&["agent", "info", "claude-session-1"]);
    assert_eq!(ipc["name"], "API Builder", "{ipc}");
}

#[test]
fn port_daddy_webhooks_curl_recipe_registers_the_webhook() {
    let d = Desk::new();
    // As written: your-server.com is not reached here (its deliveries are
    // tested against a loopback receiver in http_webhooks.rs); registering
    // it is what the recipe does.
    let r = curl_json_text(&d.ok(&d.port_daddy(
        r#"# Register a webhook
curl -X POST http://localhost:9876/webhooks \
  -H 'Content-Type: application/json' \
  -d '{
    "url": "https://your-server.com/port-daddy-events",
    "events": ["service.claim", "service.release"],
    "secret": "your-hmac-secret"
  }'"#,
    )));
    assert_eq!(r["success"], true, "{r}");
    assert_eq!(r["url"], "https://your-server.com/port-daddy-events");
    assert_eq!(r["events"], json!(["service.claim", "service.release"]));
    assert_eq!(r["secret"], "your-hmac-secret");
    let id = r["id"].as_str().unwrap();
    let listed = d.broker.pb_json(&["webhook", "ls"]);
    assert_eq!(listed["webhooks"][0]["id"], id, "{listed}");
}

#[test]
fn port_daddy_activity_log_curl_recipes() {
    let d = Desk::new();
    d.ok(&d.port_daddy("port-daddy agent register claude-session-1"));
    d.broker.claim("myapp:api", &[]);
    d.broker.claim("other:web", &[]);
    let get = |recipe: &str| curl_json_text(&d.ok(&d.port_daddy(recipe)));
    let r = get("# View recent activity\ncurl http://localhost:9876/activity?limit=20");
    let entries = r["entries"].as_array().unwrap();
    assert!(entries.len() >= 3 && entries.len() <= 20, "{r}");
    assert_eq!(r["count"], entries.len());
    for e in entries {
        // Timestamp, action, target, actor, metadata: the README's list.
        for field in ["time_ms", "action", "target", "actor", "details"] {
            assert!(e.get(field).is_some(), "{field} in {e}");
        }
    }
    let r = get("# Filter by action type\ncurl http://localhost:9876/activity?action=claim");
    let entries = r["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{r}");
    assert!(
        entries.iter().all(|e| e["action"] == "service.claim"),
        "{r}"
    );
    let r = get("# Filter by identity\ncurl http://localhost:9876/activity?targetId=myapp:api");
    let entries = r["entries"].as_array().unwrap();
    assert!(!entries.is_empty(), "{r}");
    assert!(entries.iter().all(|e| e["target"] == "myapp:api"), "{r}");
}

#[test]
fn port_daddy_dashboard_is_at_the_daemons_address() {
    let d = Desk::new();
    let out = d.ok(&d.port_daddy(
        "curl -s -o /dev/null -w '%{http_code} %{content_type}' http://localhost:9876",
    ));
    assert_eq!(out, "200 text/html; charset=utf-8");
}

#[test]
fn port_daddy_cli_reference_url_env_wait_locks_log_status() {
    let d = Desk::new();
    let port = d.broker.claim("myapp:api", &[]);
    let url = d.ok(&d.port_daddy("port-daddy url myapp:api -q"));
    assert!(url.trim().starts_with("http://"), "{url}");
    let env = d.ok(&d.port_daddy("port-daddy env myapp:*"));
    assert_eq!(env.trim(), format!("export MYAPP_API_PORT={port}"));
    // Sourced, the export is the port.
    let sourced = d.ok(&d.port_daddy("eval \"$(port-daddy env myapp:*)\"; echo $MYAPP_API_PORT"));
    assert_eq!(sourced.trim(), port.to_string());
    // wait: nothing serves it, so the short timeout ends in exit 7.
    let out = d.run(&d.port_daddy("port-daddy wait myapp:api --timeout 300"));
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    d.ok(&d.port_daddy("port-daddy lock ref-lock --owner me"));
    let locks = d.ok(&d.port_daddy("port-daddy locks"));
    assert!(locks.contains("ref-lock"), "{locks}");
    let log = d.ok(&d.port_daddy("port-daddy log"));
    assert!(
        log.contains("service.claim") && log.contains("myapp:api"),
        "{log}"
    );
    let status = d.ok(&d.port_daddy("port-daddy status"));
    assert!(status.starts_with("pb broker running"), "{status}");
}

#[test]
fn port_daddy_examples_dev_servers_express_serves_its_claimed_port() {
    let d = Desk::new();
    // # Express
    let (_app, lines) =
        d.spawn(&d.port_daddy("PORT=$(port-daddy claim myproject:api -q) node server.js"));
    let port = serving(&lines, "express listening");
    assert_eq!(d.lease("myproject:api"), Some(port));
    let body = d.ok(&format!("curl -s http://127.0.0.1:{port}/"));
    assert_eq!(curl_json_text(&body)["port"], port);
}

#[test]
fn port_daddy_examples_dev_servers_next_and_vite_get_the_port_once_it_is_set() {
    // As written, `PORT=$(…) cmd --port $PORT` expands $PORT before the
    // assignment (in any tool: it is the shell), so `--port` is given
    // nothing. docs/CLI.md gives the forms that work; here they are.
    let d = Desk::new();
    let empty = d.ok("PORT=$(echo 1234) echo \"--port $PORT\"");
    assert_eq!(
        empty.trim(),
        "--port",
        "the shell's order, which no tool can change"
    );
    // Next.js: `npm run dev -- --port $PORT`, with the assignment first.
    let (_next, lines) =
        d.spawn(&d.port_daddy(
            "PORT=$(port-daddy claim myproject:frontend -q); npm run dev -- --port $PORT",
        ));
    let port = serving(&lines, "next listening");
    assert_eq!(d.lease("myproject:frontend"), Some(port));
    // Vite, the real one: pb exec hands it the port as $PORT.
    let (_vite, lines) = d.spawn(&d.port_daddy(
        "port-daddy exec myproject -- vite --port '$PORT' --strictPort --host 127.0.0.1",
    ));
    let port = d
        .lease("myproject")
        .unwrap_or_else(|| wait_until(LINE, || d.lease("myproject")).expect("myproject claimed"));
    expect_line(&lines, "vite ready", |l| l.contains(&port.to_string()));
    let page = d.ok(&format!("curl -s http://127.0.0.1:{port}/"));
    assert!(page.contains("<h1>vite</h1>"), "{page}");
}

#[test]
fn port_daddy_examples_multi_agent_build_pipeline() {
    // As written, Agent C's jq keeps what it prints in its buffer (it
    // writes into a pipe), and `head -2` would count the lines of jq's
    // pretty output, not messages: docs/CLI.md gives the form that works,
    // `jq --unbuffered -c`, run here. C's jq looks for the payload's own
    // `status`, where pb's --json lines keep it.
    let d = Desk::new();
    // Agent C first: it waits for both.
    let (mut c, c_out) = d.spawn(&d.port_daddy(
        "# Agent C: Integration Tests (waits for both)\nport-daddy sub build:* --json | jq --unbuffered -c 'select(.status==\"complete\")' | head -2\nnpm run test:integration",
    ));
    d.wait_subscribers(1);
    let a = d.ok(&d.port_daddy(
        "# Agent A: Build API\nport-daddy claim myproject:api\nnpm run build:api\nport-daddy pub build:api '{\"status\":\"complete\",\"port\":3100}'",
    ));
    claimed_port(a.lines().next().unwrap(), "myproject:api");
    assert!(a.contains("built api"), "{a}");
    let b = d.ok(&d.port_daddy(
        "# Agent B: Build Frontend\nport-daddy claim myproject:frontend\nnpm run build:frontend\nport-daddy pub build:frontend '{\"status\":\"complete\",\"port\":3101}'",
    ));
    assert!(b.contains("built frontend"), "{b}");
    for (port, channel) in [(3100, "build:api"), (3101, "build:frontend")] {
        let line = expect_line(&c_out, "a complete message", |_| true);
        let want = format!(r#"{{"status":"complete","port":{port},"_pb":{{"#);
        assert!(line.starts_with(&want), "as published, then pb's: {line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["_pb"]["channel"], channel, "{line}");
    }
    // head has both; the pipe behind it breaks when the next messages
    // are written into it, and C goes on to its tests.
    let mut done = None;
    for i in 0..10 {
        d.ok(&d.port_daddy(&format!(
            "port-daddy pub build:docs '{{\"status\":\"complete\",\"n\":{i}}}'"
        )));
        let mut seen = Vec::new();
        done = next_matching(&c_out, &mut seen, Duration::from_millis(500), |l| {
            l == "integration tests passed"
        });
        if done.is_some() {
            break;
        }
    }
    assert!(done.is_some(), "C never went on to its integration tests");
    assert!(c.wait_for(LINE).is_some_and(|s| s.success()));
}

#[test]
fn port_daddy_sub_json_jq_select_receives_the_published_message() {
    // The recipe's own pipe, as written: jq prints what it selected once
    // its input ends, here when this test ends the `pb sub` it started.
    let d = Desk::new();
    let (mut pipeline, lines) = d.spawn(
        &d.port_daddy("port-daddy sub 'build:*' --json | jq 'select(.status==\"complete\")'"),
    );
    d.wait_subscribers(1);
    d.ok(&d.port_daddy("port-daddy pub build:api '{\"status\":\"building\"}'"));
    d.ok(&d.port_daddy("port-daddy pub build:api '{\"status\":\"complete\",\"port\":3100}'"));
    // Once the broker has sent both, end pb sub (found below this test's
    // own child by parent pids).
    let sent = wait_until(LINE, || {
        let m = d.broker.pb_ok(&["metrics"]);
        m.lines()
            .any(|l| l.starts_with("pb_subscribers 1"))
            .then_some(())
    });
    assert!(sent.is_some());
    std::thread::sleep(Duration::from_millis(200));
    let sub = pb_platform::process::descendants(pipeline.pid())
        .into_iter()
        .find(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|w| w == b"sub"))
        })
        .expect("pb sub runs below the pipeline");
    // SAFETY: a process this test started (through bash), by its pid.
    unsafe { libc::kill(sub as i32, libc::SIGTERM) };
    assert!(pipeline.wait_for(LINE).is_some());
    let text: String = lines.try_iter().collect::<Vec<_>>().join("\n");
    let got: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter()
        .map(|v| v.unwrap())
        .collect();
    assert_eq!(got.len(), 1, "only the complete one: {text}");
    assert_eq!(got[0]["status"], "complete", "{text}");
    assert_eq!(got[0]["port"], 3100, "{text}");
    assert_eq!(got[0]["_pb"]["channel"], "build:api", "{text}");
}

#[test]
fn port_daddy_examples_bug_fix_handoff() {
    let d = Desk::new();
    // Agent B watches for bugs.
    let (_b_sub, bugs) = d.spawn(&d.port_daddy("# Agent B: Sees the bug\nport-daddy sub bugs"));
    d.wait_subscribers(1);
    // Agent A reports it and takes the lock, in its own shell.
    let (mut a, _) = d.shell();
    say(
        &mut a,
        &d.port_daddy(
            "port-daddy pub bugs '{\"file\":\"auth.ts\",\"line\":42,\"desc\":\"null check missing\"}'\nport-daddy lock bug-fix-auth && echo locked >&2",
        ),
    );
    let bug = expect_line(&bugs, "the bug", |l| l.contains("auth.ts"));
    assert!(
        bug.ends_with(r#"{"file":"auth.ts","line":42,"desc":"null check missing"}"#),
        "{bug}"
    );
    let held = wait_until(LINE, || {
        let v = d.broker.pb_json(&["locks"]);
        (v["locks"][0]["name"] == "bug-fix-auth").then_some(())
    });
    assert!(held.is_some(), "A holds the lock");
    // B waits for the lock: it blocks while A holds it.
    let (mut b, b_out) = d.shell();
    say(
        &mut b,
        &d.port_daddy(
            "port-daddy lock bug-fix-auth --wait  # Blocks until A releases\necho granted",
        ),
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(b_out.try_recv().is_err(), "B waits while A holds the lock");
    // A's session ends: its lock goes with it, and B is granted.
    drop(a);
    expect_line(&b_out, "the grant", |l| l == "granted");
    // Agent B: Fixes and releases.
    say(
        &mut b,
        &d.port_daddy(
            "port-daddy pub bugs '{\"file\":\"auth.ts\",\"status\":\"fixed\"}'\nport-daddy unlock bug-fix-auth && echo unlocked",
        ),
    );
    expect_line(&b_out, "the unlock", |l| l == "unlocked");
    let fixed = expect_line(&bugs, "the fix", |l| l.contains("fixed"));
    assert!(
        fixed.ends_with(r#"{"file":"auth.ts","status":"fixed"}"#),
        "{fixed}"
    );
    assert_eq!(d.broker.pb_json(&["locks"])["locks"], json!([]));
}

#[test]
fn port_daddy_examples_file_coordination() {
    let d = Desk::new();
    let (_files, msgs) = d.spawn(&d.port_daddy("port-daddy sub files"));
    d.wait_subscribers(1);
    let (mut a, a_out) = d.shell();
    say(
        &mut a,
        &d.port_daddy(
            "# Agent A: Claims files\nport-daddy lock files:src-auth\nport-daddy pub files '{\"agent\":\"A\",\"files\":[\"src/auth/*\"],\"status\":\"editing\"}'\necho claimed",
        ),
    );
    expect_line(&a_out, "A's claim", |l| l == "claimed");
    expect_line(&msgs, "editing", |l| l.contains("\"editing\""));
    // Agent B: Sees lock, works elsewhere.
    let seen = d.ok(&d.port_daddy(
        "port-daddy locks --json | jq '.locks[] | select(.name | startswith(\"files:\"))'",
    ));
    let lock: Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(lock["name"], "files:src-auth", "{seen}");
    assert_eq!(lock["pid"], a.pid(), "locked by A: {seen}");
    let out = d.run(&d.port_daddy("port-daddy lock files:src-api  # Work on different files"));
    assert!(out.status.success(), "{out:?}");
    // Agent A: Done.
    say(
        &mut a,
        &d.port_daddy(
            "port-daddy pub files '{\"agent\":\"A\",\"files\":[\"src/auth/*\"],\"status\":\"done\"}'\nport-daddy unlock files:src-auth && echo done",
        ),
    );
    expect_line(&a_out, "A's unlock", |l| l == "done");
    expect_line(&msgs, "done", |l| l.contains("\"done\""));
    let left = d.broker.pb_json(&["locks"]);
    assert!(
        left["locks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["name"] != "files:src-auth"),
        "{left}"
    );
}

/// Port Daddy's "Configuration" section (the recipe's three variables,
/// with ports of this test's block for its example numbers): PORT_DADDY_PORT moves the HTTP
/// API, PORT_DADDY_RANGE_START/END the range, where pb's own variables are
/// unset; pb's own win; malformed values stop the broker, naming them.
#[test]
fn port_daddy_configuration_override_via_environment() {
    let block = PortBlock::take(200);
    let http = block.range.1;
    let (start, end) = (block.range.0, block.range.0 + 49);
    let home = tempfile::tempdir().unwrap();
    let pb = |args: &[&str], env: &[(&str, String)]| {
        Command::new(pb_bin())
            .args(args)
            .env("PB_HOME", home.path())
            .env("PB_PROXY_ADDR", "off")
            .env_remove("PB_HTTP_ADDR")
            .env_remove("PB_RANGE")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap()
    };
    // However the test ends, the broker it started stops.
    struct Stop<'a>(&'a dyn Fn());
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            (self.0)()
        }
    }
    let _stop = Stop(&|| {
        let _ = pb(&["stop"], &[]);
    });
    let daddy = [
        ("PORT_DADDY_PORT", http.to_string()),
        ("PORT_DADDY_RANGE_START", start.to_string()),
        ("PORT_DADDY_RANGE_END", end.to_string()),
    ];
    let started = pb(&["start"], &daddy);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let status: Value = serde_json::from_slice(&pb(&["-j", "status"], &[]).stdout).unwrap();
    assert_eq!(
        status["http"],
        format!("http://localhost:{http}"),
        "{status}"
    );
    assert_eq!(status["range"], serde_json::json!([start, end]));
    let port: u16 = String::from_utf8_lossy(&pb(&["claim", "pd:web", "-q"], &[]).stdout)
        .trim()
        .parse()
        .unwrap();
    assert!((start..=end).contains(&port), "{port}");
    // `pb launch`, Port Daddy's announced word for exec.
    let out = pb(
        &["launch", "pd:launched", "--", "sh", "-c", "echo $PORT"],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let launched: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((start..=end).contains(&launched), "{launched}");
    assert!(pb(&["stop"], &[]).status.success());

    // pb's own variable wins over Port Daddy's.
    let mut both = daddy.to_vec();
    both.push(("PB_RANGE", format!("{}-{}", start + 50, end + 50)));
    assert!(pb(&["start"], &both).status.success());
    let status: Value = serde_json::from_slice(&pb(&["-j", "status"], &[]).stdout).unwrap();
    assert_eq!(
        status["range"],
        serde_json::json!([start + 50, end + 50]),
        "{status}"
    );
    assert_eq!(status["http"], format!("http://localhost:{http}"));
    assert!(pb(&["stop"], &[]).status.success());

    // Malformed: the broker does not start, and says which variable.
    for (var, value) in [
        ("PORT_DADDY_PORT", "nine"),
        ("PORT_DADDY_PORT", "80"),
        ("PORT_DADDY_RANGE_START", "70000"),
        ("PORT_DADDY_RANGE_END", "x"),
    ] {
        let out = pb(&["start"], &[(var, value.to_string())]);
        assert!(!out.status.success(), "{var}={value} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var), "{var}={value}: {err}");
    }

    // PORT_DADDY_URL, where Port Daddy's clients look, moves the API too;
    // PORT_DADDY_PORT_FILE gets the port, and goes at a clean stop.
    let file = home.path().join("port-daddy.port");
    let url_env = [
        ("PORT_DADDY_URL", format!("http://127.0.0.1:{http}")),
        ("PORT_DADDY_PORT_FILE", file.display().to_string()),
    ];
    let started = pb(&["start"], &url_env);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let status: Value = serde_json::from_slice(&pb(&["-j", "status"], &[]).stdout).unwrap();
    assert_eq!(
        status["http"],
        format!("http://127.0.0.1:{http}"),
        "{status}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), format!("{http}\n"));
    assert!(pb(&["stop"], &[]).status.success());
    assert!(!file.exists(), "the port file goes with the broker");
    // The bare form Port Daddy defaults to, `localhost:PORT`.
    let bare = [("PORT_DADDY_URL", format!("localhost:{http}"))];
    assert!(pb(&["start"], &bare).status.success());
    let status: Value = serde_json::from_slice(&pb(&["-j", "status"], &[]).stdout).unwrap();
    assert_eq!(
        status["http"],
        format!("http://localhost:{http}"),
        "{status}"
    );
    assert!(pb(&["stop"], &[]).status.success());
    for (value, why) in [
        ("https://localhost:9876".to_string(), "is not http://"),
        ("http://example.com:9876".to_string(), "is not on loopback"),
        ("http://localhost:9876/api".to_string(), "has a path"),
        ("http://localhost:80".to_string(), "PORT_DADDY_URL"),
        ("http://[::1".to_string(), "is not a URL"),
    ] {
        let out = pb(&["start"], &[("PORT_DADDY_URL", value.clone())]);
        assert!(!out.status.success(), "{value} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("PORT_DADDY_URL") && err.contains(why),
            "{value}: {err}"
        );
    }
    // Two of Port Daddy's variables that disagree are refused.
    let out = pb(
        &["start"],
        &[
            ("PORT_DADDY_PORT", http.to_string()),
            ("PORT_DADDY_URL", format!("localhost:{}", http - 1)),
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("disagree"));
}

// ---- PortManager ---------------------------------------------------------

#[test]
fn portmanager_quick_start_run_injects_port_and_releases_on_exit() {
    let d = Desk::new();
    let (mut run, lines) = d.spawn(&d.portmanager(
        "# Terminal 2: Run your app with automatic port allocation\ncargo run -p client -- run my-api -- npm start",
    ));
    let port = serving(&lines, "the app");
    // → Allocated port 8000, injected as $PORT, released on exit
    assert_eq!(d.lease("my-api"), Some(port));
    let body = d.ok(&format!("curl -s http://127.0.0.1:{port}/"));
    assert_eq!(curl_json_text(&body)["port"], port);
    run.signal(libc::SIGTERM);
    assert!(run.wait_for(LINE).is_some());
    let gone = wait_until(LINE, || d.lease("my-api").is_none().then_some(()));
    assert!(gone.is_some(), "released on exit");
}

#[test]
fn portmanager_co_existence_alloc_tail_awk_feeds_docker() {
    let d = Desk::new();
    let out = d.ok(&d.portmanager(
        "PORT=$(cargo run -p client -- alloc my-db | tail -1 | awk '{print $3}')\ndocker run -p $PORT:5432 postgres",
    ));
    let port = docker_port(&out);
    // The port awk took is the one my-db was allocated.
    let claims = d.broker.activity(&["--action", "service.claim"]);
    assert!(
        claims
            .iter()
            .any(|e| e["target"] == "my-db" && e["details"]["port"] == port),
        "{claims:?}"
    );
}

#[test]
fn portmanager_client_cli_run_recipes() {
    let d = Desk::new();
    // Custom environment variable name.
    let out = d
        .ok(&d.portmanager("cargo run -p client -- run my-db --env-name DB_PORT -- ./start-db.sh"));
    let port: u16 = out
        .trim()
        .strip_prefix("database on port ")
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    assert!((d.broker.range.0..=d.broker.range.1).contains(&port));
    assert_eq!(d.lease("my-db"), None, "released when the script ended");
    // With custom TTL (10 minutes): the lease carries it while it runs.
    let (_run, lines) = d.spawn(
        &d.portmanager("cargo run -p client -- run my-service --ttl 600 -- python server.py"),
    );
    let port = serving(&lines, "python serving");
    let listed = d.ok(&d.portmanager("cargo run -p client -- list"));
    assert!(
        listed
            .lines()
            .any(|l| l == format!("Port: {port}, Service: my-service, TTL: 600s")),
        "{listed}"
    );
    let body = d.ok(&format!("curl -s http://127.0.0.1:{port}/"));
    assert_eq!(body, format!("python on {port}"));
}

#[test]
fn portmanager_other_commands_alloc_list_release_lookup() {
    // One terminal: an allocation from a shell lasts while the shell does.
    let d = Desk::new();
    let out = d.ok(&d.portmanager(
        "# Allocate a port manually\ncargo run -p client -- alloc my-fast-api\n\n# List all leases\ncargo run -p client -- list\n\n# Lookup a service (Service Discovery)\ncargo run -p client -- lookup my-fast-api\n\n# Release a port\ncargo run -p client -- release $(cargo run -p client -- lookup my-fast-api)\necho ---\ncargo run -p client -- list",
    ));
    let lines: Vec<&str> = out.lines().collect();
    // # Allocated port: 8001
    let port: u16 = lines[0]
        .strip_prefix("Allocated port: ")
        .unwrap_or_else(|| panic!("{out}"))
        .parse()
        .unwrap();
    // # Port: 8001, Service: my-fast-api, TTL: 300s (pb's alloc sets no
    // TTL unless asked)
    assert_eq!(
        lines[1..],
        [
            format!("Port: {port}, Service: my-fast-api, TTL: none").as_str(),
            // # 8001
            port.to_string().as_str(),
            // # Released port: 8001
            format!("Released port: {port}").as_str(),
            "---",
        ],
        "{out}"
    );
    // A lookup of what is not there: exit 4, not_found, nothing printed.
    let out = d.run(&d.portmanager("cargo run -p client -- lookup my-backend"));
    assert_eq!(out.status.code(), Some(4));
    assert!(out.stdout.is_empty());
}

#[test]
fn portmanager_api_reference_curl_alloc_and_lookup() {
    let d = Desk::new();
    let r = curl_json_text(&d.ok(&d.portmanager(
        r#"curl -X POST http://localhost:3030/alloc \
  -H "Content-Type: application/json" \
  -d '{"service_name": "my-api", "ttl_seconds": 300}'"#,
    )));
    // {"port": 8000, "lease": {"port": 8000, "service_name": "my-api", ...}}
    let port = r["port"].as_u64().unwrap();
    assert_eq!(r["lease"]["port"], port, "{r}");
    assert_eq!(r["lease"]["service_name"], "my-api");
    assert_eq!(r["lease"]["ttl_seconds"], 300);
    let r = curl_json_text(
        &d.ok(&d.portmanager(r#"curl "http://localhost:3030/lookup?service=my-api""#)),
    );
    // {"service_name": "my-api", "port": 8000, "all_ports": [8000], "lease": {...}}
    assert_eq!(r["service_name"], "my-api", "{r}");
    assert_eq!(r["port"], port);
    assert_eq!(r["all_ports"], json!([port]));
    assert_eq!(r["lease"]["port"], port);
}

#[test]
fn portmanager_service_discovery_in_scripts() {
    let d = Desk::new();
    // # Start your backend (the `&` is this spawn)
    let (_backend, lines) =
        d.spawn(&d.portmanager("cargo run -p client -- run backend -- node server.js"));
    serving(&lines, "the backend");
    let out = d.ok(&d.portmanager(
        "# In another script, find the backend port dynamically\nBACKEND_PORT=$(cargo run -p client -- lookup backend)\ncurl \"http://localhost:$BACKEND_PORT/api/health\"",
    ));
    let v = curl_json_text(&out);
    assert_eq!(v["path"], "/api/health", "{v}");
    assert_eq!(Some(v["port"].as_u64().unwrap() as u16), d.lease("backend"));
}

#[test]
fn portmanager_integration_with_docker_run_gets_the_escaped_port() {
    let d = Desk::new();
    let out = d.ok(&d.portmanager(
        "# Allocate a port and start a container\ncargo run -p client -- run my-postgres -- docker run -p \\$PORT:5432 postgres",
    ));
    let port = docker_port(&out);
    assert!(
        (d.broker.range.0..=d.broker.range.1).contains(&port),
        "{out}"
    );
}

#[test]
fn portmanager_integration_python_and_node_read_port() {
    let d = Desk::new();
    // # Run with: cargo run -p client -- run my-python-app -- python app.py
    let (_py, lines) =
        d.spawn(&d.portmanager("cargo run -p client -- run my-python-app -- python app.py"));
    let port = serving(&lines, "python");
    assert_eq!(d.lease("my-python-app"), Some(port));
    assert_eq!(
        d.ok(&format!("curl -s http://127.0.0.1:{port}/")),
        format!("python on {port}")
    );
    // # Run with: cargo run -p client -- run my-node-app -- node server.js
    let (_node, lines) =
        d.spawn(&d.portmanager("cargo run -p client -- run my-node-app -- node server.js"));
    let port = serving(&lines, "node");
    assert_eq!(d.lease("my-node-app"), Some(port));
    let body = d.ok(&format!("curl -s http://127.0.0.1:{port}/"));
    assert_eq!(curl_json_text(&body)["port"], port);
}
