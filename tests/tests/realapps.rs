//! Real dev servers from PyPI and npm (tests/realapps, installed by
//! tests/realapps/install.sh) started under pb exactly as their users start
//! them: apps that bind $PORT themselves (express, node, flask, django),
//! socket-activation servers on fd 3 (uvicorn, hypercorn, gunicorn, node),
//! hard-coded ports under --shim (vite's 5173, flask's 5000, express's
//! 3000, django's 8000), `npm` trees that end with pb, reloaders (nodemon,
//! Django's autoreloader) that keep their port, and `--keep` across a
//! restart. Every request is bounded: an app is reachable at 127.0.0.1,
//! [::1] and localhost, or the test fails; nothing hangs.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use pb_tests::*;

/// tests/realapps, with its venv and node_modules installed.
fn apps() -> PathBuf {
    let dir = tests_dir().join("realapps");
    for needed in [".venv/bin/python", "node_modules/.bin/vite"] {
        assert!(
            dir.join(needed).exists(),
            "{} is missing: run `bash tests/realapps/install.sh` (the README's test command does)",
            dir.join(needed).display()
        );
    }
    dir
}

fn venv(bin: &str) -> String {
    apps().join(".venv/bin").join(bin).display().to_string()
}

/// A `pb exec`/`pb run` of a real app, started in tests/realapps.
struct AppRun {
    proc: Proc,
    stderr: Receiver<String>,
    seen: Vec<String>,
    /// The tree under pb, as last seen: what must be gone at the end.
    tree: Vec<(u32, u64)>,
}

impl AppRun {
    fn start(broker: &Broker, args: &[&str]) -> AppRun {
        AppRun::start_in(broker, args, &apps())
    }

    fn start_in(broker: &Broker, args: &[&str], dir: &std::path::Path) -> AppRun {
        let mut child = broker
            .cmd()
            .args(args)
            .current_dir(dir)
            // Node and python find their packages from here; nothing else
            // of the test's environment is needed.
            .env("PATH", path_with_node_modules())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pb");
        let stderr = lines_of(child.stderr.take().unwrap());
        AppRun {
            proc: Proc(child),
            stderr,
            seen: Vec::new(),
            tree: Vec::new(),
        }
    }

    /// The port of the URL pb prints for the app (`pb: ID → http://localhost:P`).
    fn url_port(&mut self) -> u16 {
        let line = next_matching(&self.stderr, &mut self.seen, Duration::from_secs(30), |l| {
            l.starts_with("pb: ") && l.contains("→ http://localhost:")
        })
        .unwrap_or_else(|| panic!("no URL from pb; it said: {:#?}", self.seen));
        port_in(&line).expect("a port in the URL line")
    }

    /// Waits (bounded) until the app answers at 127.0.0.1, [::1] and
    /// localhost on `port`; returns the bodies.
    fn reachable(&mut self, port: u16) -> [String; 3] {
        let got = reachable_everywhere_within(port, Duration::from_secs(30));
        self.tree = process_tree(self.proc.pid());
        got.unwrap_or_else(|e| panic!("{e}; pb said: {:#?}", self.drain()))
    }

    fn drain(&mut self) -> &[String] {
        while let Ok(l) = self.stderr.try_recv() {
            self.seen.push(l);
        }
        &self.seen
    }

    /// Sends `sig` to pb and asserts that pb and its whole tree are gone
    /// within `limit`, and the lease with them.
    fn stop_with(mut self, sig: i32, limit: Duration, broker: &Broker, id: &str) {
        if self.tree.is_empty() {
            self.tree = process_tree(self.proc.pid());
        }
        let tree = self.tree.clone();
        let t = Instant::now();
        self.proc.signal(sig);
        let ended = self.proc.wait_for(limit);
        let left = wait_until(limit.saturating_sub(t.elapsed()), || {
            still_running(&tree).is_empty().then_some(())
        });
        let stragglers = still_running(&tree);
        end_all(&tree);
        assert!(ended.is_some(), "pb exec ended within {limit:?}");
        assert!(
            left.is_some(),
            "processes of the tree left after {sig}: {stragglers:?} (tree {tree:?})"
        );
        let gone = wait_until(Duration::from_secs(10), || {
            (!broker.leases().iter().any(|(i, _)| i == id)).then_some(())
        });
        assert!(gone.is_some(), "the lease {id} ended");
    }
}

/// PATH with tests/realapps/node_modules/.bin first, as `npx` would have it.
fn path_with_node_modules() -> String {
    format!(
        "{}:{}",
        apps().join("node_modules/.bin").display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// [`reachable_everywhere`], with a longer first wait for slow starters.
fn reachable_everywhere_within(port: u16, limit: Duration) -> Result<[String; 3], String> {
    wait_until(limit, || curl_host("127.0.0.1", port))
        .ok_or_else(|| format!("no answer at 127.0.0.1:{port} within {limit:?}"))?;
    reachable_everywhere(port)
}

fn app_serves(broker: &Broker, args: &[&str], expect: &str) {
    let id = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .expect("an id")
        .to_string();
    let mut run = AppRun::start(broker, args);
    let port = run.url_port();
    let bodies = run.reachable(port);
    for b in &bodies {
        assert!(b.contains(expect), "{args:?}: {bodies:?}");
    }
    run.stop_with(libc::SIGTERM, Duration::from_secs(10), broker, &id);
    // Free for the next server (whose bind, like every server's, sets
    // SO_REUSEADDR, past the TIME_WAIT of connections this one closed).
    assert!(
        can_bind_and_listen_reuseaddr(v4(port)) && can_bind_and_listen_reuseaddr(v6(port)),
        "port {port} is free after {args:?}"
    );
}

// ---- apps that bind $PORT themselves, unchanged ----

#[test]
fn pb_run_npm_start_with_express_binding_port() {
    let broker = Broker::start();
    app_serves(
        &broker,
        &["run", "my-api", "--", "npm", "start"],
        "express port=",
    );
}

#[test]
fn pb_exec_node_binding_port() {
    let broker = Broker::start();
    app_serves(
        &broker,
        &["exec", "web", "--", "node", "node_port.js"],
        "nodeport",
    );
}

#[test]
fn pb_exec_flask_binding_port() {
    let broker = Broker::start();
    let python = venv("python");
    app_serves(
        &broker,
        &["exec", "web", "--", &python, "flask_app.py"],
        "flask",
    );
}

#[test]
fn pb_run_django_runserver_on_port() {
    let broker = Broker::start();
    let python = venv("python");
    let line = format!("exec {python} djsite/manage.py runserver $PORT");
    app_serves(&broker, &["run", "site", "--", "sh", "-c", &line], "django");
}

// ---- socket activation: the broker's listener at fd 3 ----

#[test]
fn uvicorn_serves_fd_3() {
    let broker = Broker::start();
    let uvicorn = venv("uvicorn");
    app_serves(
        &broker,
        &["exec", "api", "--", &uvicorn, "asgi_app:app", "--fd", "3"],
        "asgi",
    );
}

#[test]
fn hypercorn_serves_fd_3() {
    let broker = Broker::start();
    let hypercorn = venv("hypercorn");
    app_serves(
        &broker,
        &[
            "exec",
            "api",
            "--",
            &hypercorn,
            "--bind",
            "fd://3",
            "asgi_app:app",
        ],
        "asgi",
    );
}

/// gunicorn finds systemd's LISTEN_FDS by itself (adding `--bind fd://3`
/// as well would make it wrap fd 3 twice and fail, broker or not).
#[test]
fn gunicorn_serves_the_socket_activation_fd() {
    let broker = Broker::start();
    let gunicorn = venv("gunicorn");
    app_serves(
        &broker,
        &["exec", "api", "--", &gunicorn, "wsgi_app:app"],
        "wsgi",
    );
}

#[test]
fn node_listen_fd_3() {
    let broker = Broker::start();
    app_serves(
        &broker,
        &["exec", "web", "--", "node", "node_fd.js"],
        "nodefd",
    );
}

// ---- hard-coded ports under --shim ----

/// A project of its own for `npm run dev`: vite refuses a second dev
/// server for one project (its command lock), as two checkouts never share
/// one. package.json and vite-app/ are copied, node_modules linked.
fn vite_project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(apps().join("package.json"), dir.path().join("package.json")).unwrap();
    std::os::unix::fs::symlink(apps().join("node_modules"), dir.path().join("node_modules"))
        .unwrap();
    std::fs::create_dir(dir.path().join("vite-app")).unwrap();
    copy_dir(&apps().join("vite-app"), &dir.path().join("vite-app"));
    dir
}

#[test]
fn vite_on_its_default_port_under_shim_twice_side_by_side() {
    let broker = Broker::start();
    let (pa, pb) = (vite_project(), vite_project());
    let dev = ["exec", "--shim", "web-a", "--", "npm", "run", "dev"];
    let mut a = AppRun::start_in(&broker, &dev, pa.path());
    let mut b = AppRun::start_in(
        &broker,
        &["exec", "--shim", "web-b", "--", "npm", "run", "dev"],
        pb.path(),
    );
    let (pa, pb) = (a.url_port(), b.url_port());
    assert_ne!(pa, pb);
    for (run, port) in [(&mut a, pa), (&mut b, pb)] {
        let bodies = run.reachable(port);
        assert!(bodies.iter().all(|b| b.contains("vite-ok")), "{bodies:?}");
    }
    a.stop_with(libc::SIGTERM, Duration::from_secs(10), &broker, "web-a");
    b.stop_with(libc::SIGINT, Duration::from_secs(10), &broker, "web-b");
}

#[test]
fn flask_hard_coded_to_5000_under_shim() {
    let broker = Broker::start();
    let python = venv("python");
    app_serves(
        &broker,
        &["exec", "--shim", "web", "--", &python, "flask_5000.py"],
        "flask5000",
    );
}

#[test]
fn express_hard_coded_to_3000_under_shim_twice_side_by_side() {
    let broker = Broker::start();
    let mut a = AppRun::start(
        &broker,
        &["exec", "--shim", "e1", "--", "node", "express_3000.js"],
    );
    let mut b = AppRun::start(
        &broker,
        &["exec", "--shim", "e2", "--", "node", "express_3000.js"],
    );
    let (pa, pb) = (a.url_port(), b.url_port());
    assert_ne!(pa, pb);
    for (run, port) in [(&mut a, pa), (&mut b, pb)] {
        let bodies = run.reachable(port);
        // server.address() answers the brokered port, not 3000.
        let want = format!("express3000 port={port}");
        assert!(bodies.iter().all(|b| b.contains(&want)), "{bodies:?}");
    }
    a.stop_with(libc::SIGTERM, Duration::from_secs(10), &broker, "e1");
    b.stop_with(libc::SIGTERM, Duration::from_secs(10), &broker, "e2");
}

#[test]
fn django_runserver_8000_under_shim() {
    let broker = Broker::start();
    let python = venv("python");
    app_serves(
        &broker,
        &[
            "exec",
            "--shim",
            "site",
            "--",
            &python,
            "djsite/manage.py",
            "runserver",
            "8000",
        ],
        "django",
    );
}

// ---- npm trees end with pb ----

#[test]
fn sigterm_and_sigint_to_pb_end_npm_run_dev_and_npm_start() {
    let broker = Broker::start();
    let dev: &[&str] = &["exec", "--shim", "dev", "--", "npm", "run", "dev"];
    let start: &[&str] = &["run", "start", "--", "npm", "start"];
    let project = vite_project();
    for (sig, args, id) in [
        (libc::SIGTERM, dev, "dev"),
        (libc::SIGINT, dev, "dev"),
        (libc::SIGTERM, start, "start"),
        (libc::SIGINT, start, "start"),
    ] {
        let mut run = if id == "dev" {
            AppRun::start_in(&broker, args, project.path())
        } else {
            AppRun::start(&broker, args)
        };
        let port = run.url_port();
        run.reachable(port);
        assert!(run.tree.len() >= 2, "npm and its server: {:?}", run.tree);
        // The default grace is 5 s; everything must be gone within it.
        run.stop_with(sig, Duration::from_secs(6), &broker, id);
        assert!(
            can_bind_and_listen_reuseaddr(v4(port)),
            "port {port} free after {args:?}"
        );
    }
}

// ---- reloaders keep their port ----

/// Asks `url` with a 5 s bound: the answer, or `None` for a refusal; panics
/// on a hang (curl's timeout, exit 28).
fn served_or_refused(port: u16) -> Option<String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(28), "a request to {port} hung");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Restarts a reloader 3 times by touching `watched`, checking after each
/// that the app answers on `port` from a new process (its body names its
/// pid), and that requests in between never hang.
fn restart_three_times(port: u16, watched: &std::path::Path) {
    let mut last = served_or_refused(port);
    for round in 0..3 {
        // mtime must move on for the watcher.
        std::thread::sleep(Duration::from_millis(1100));
        let text = std::fs::read_to_string(watched).unwrap();
        std::fs::write(watched, text).unwrap();
        let next = wait_until(Duration::from_secs(20), || {
            let got = served_or_refused(port)?;
            (Some(&got) != last.as_ref()).then_some(got)
        });
        assert!(
            next.is_some(),
            "round {round}: served again after the restart"
        );
        last = next;
    }
}

#[test]
fn nodemon_restarts_keep_the_port_in_port_mode() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("server.js");
    std::fs::copy(apps().join("node_port.js"), &app).unwrap();
    let nodemon = apps()
        .join("node_modules/.bin/nodemon")
        .display()
        .to_string();
    let mut run = AppRun::start_in(
        &broker,
        &["exec", "web", "--", &nodemon, "server.js"],
        dir.path(),
    );
    let port = run.url_port();
    run.reachable(port);
    restart_three_times(port, &app);
    assert_eq!(broker.leases(), vec![("web".to_string(), port)]);
    run.stop_with(libc::SIGTERM, Duration::from_secs(10), &broker, "web");
}

#[test]
fn nodemon_restarts_keep_a_number_only_lease() {
    let broker = Broker::start_with(&[("PB_SCAN_INTERVAL", "200ms")]);
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("server.js");
    std::fs::copy(apps().join("node_port.js"), &app).unwrap();
    let nodemon = apps()
        .join("node_modules/.bin/nodemon")
        .display()
        .to_string();
    // PORT=$(pb claim web -q) nodemon server.js
    let port = broker.claim("web", &[]);
    let mut child = Command::new(&nodemon)
        .arg("server.js")
        .current_dir(dir.path())
        .env("PORT", port.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let nodemon_pid = child.id();
    wait_until(Duration::from_secs(20), || curl_host("127.0.0.1", port)).expect("served");
    restart_three_times(port, &app);
    // Between and after the restarts the lease stayed, on the same port.
    assert_eq!(broker.leases(), vec![("web".to_string(), port)]);
    let tree = process_tree(nodemon_pid);
    unsafe { libc::kill(nodemon_pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    end_all(&tree);
}

#[test]
fn django_autoreloader_keeps_the_port_in_port_mode_and_number_only() {
    let python = venv("python");
    // $PORT mode, under pb run.
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&apps().join("djsite"), dir.path());
    // This copy answers with its pid, so each restart is seen.
    let urls = dir.path().join("djsite/urls.py");
    let text = std::fs::read_to_string(&urls).unwrap();
    let text = text.replace(
        "HttpResponse(\"django\\n\"",
        "HttpResponse(f\"django pid={__import__('os').getpid()}\\n\"",
    );
    assert!(text.contains("pid="), "urls.py changed shape");
    std::fs::write(&urls, text).unwrap();
    let line = format!("exec {python} manage.py runserver $PORT");
    let mut run = AppRun::start_in(
        &broker,
        &["run", "site", "--", "sh", "-c", &line],
        dir.path(),
    );
    let port = run.url_port();
    run.reachable(port);
    restart_three_times(port, &urls);
    assert_eq!(broker.leases(), vec![("site".to_string(), port)]);
    run.stop_with(libc::SIGTERM, Duration::from_secs(10), &broker, "site");

    // Number only: PORT=$(pb claim site -q) python manage.py runserver $PORT.
    let broker = Broker::start_with(&[("PB_SCAN_INTERVAL", "200ms")]);
    let port = broker.claim("site", &[]);
    let mut child = Command::new(&python)
        .args(["manage.py", "runserver", &port.to_string()])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_until(Duration::from_secs(20), || curl_host("127.0.0.1", port)).expect("served");
    restart_three_times(port, &urls);
    assert_eq!(broker.leases(), vec![("site".to_string(), port)]);
    let tree = process_tree(pid);
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    end_all(&tree);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            if entry.file_name() == "__pycache__" {
                continue;
            }
            std::fs::create_dir_all(&target).unwrap();
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

// ---- --keep: the socket outlives the process ----

#[test]
fn keep_answers_a_request_sent_between_two_runs() {
    let broker = Broker::start();
    let mut first = AppRun::start(
        &broker,
        &["exec", "--keep", "web", "--", "node", "node_fd.js"],
    );
    let port = first.url_port();
    first.reachable(port);
    first.proc.signal(libc::SIGTERM);
    first
        .proc
        .wait_for(Duration::from_secs(10))
        .expect("the first run ends");
    assert_eq!(broker.leases(), vec![("web".to_string(), port)], "kept");
    // A request in the gap waits in the kept socket's backlog...
    let waiting = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "20",
            &format!("http://127.0.0.1:{port}/"),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // ...and the next run answers it.
    let mut second = AppRun::start(
        &broker,
        &["exec", "--keep", "web", "--", "node", "node_fd.js"],
    );
    assert_eq!(second.url_port(), port);
    let out = waiting.wait_with_output().unwrap();
    assert!(out.status.success(), "the waiting request was answered");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "nodefd");
    second.reachable(port);
    second.proc.signal(libc::SIGTERM);
    second
        .proc
        .wait_for(Duration::from_secs(10))
        .expect("the second run ends");
    broker.pb_ok(&["release", "web"]);
}

/// A reloader in fd mode: uvicorn's reloader process holds fd 3 and each
/// new server process it starts serves it.
#[test]
fn uvicorn_reload_keeps_the_port_in_fd_mode() {
    let broker = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    let app = dir.path().join("asgi_app.py");
    // This copy answers with its pid, so each restart is seen.
    let text = std::fs::read_to_string(apps().join("asgi_app.py")).unwrap();
    let text = text.replace(
        "body = b\"asgi\\n\"",
        "body = f\"asgi pid={__import__('os').getpid()}\\n\".encode()",
    );
    assert!(text.contains("pid="), "asgi_app.py changed shape");
    std::fs::write(&app, text).unwrap();
    let uvicorn = venv("uvicorn");
    let mut run = AppRun::start_in(
        &broker,
        &[
            "exec",
            "api",
            "--",
            &uvicorn,
            "asgi_app:app",
            "--fd",
            "3",
            "--reload",
        ],
        dir.path(),
    );
    let port = run.url_port();
    run.reachable(port);
    restart_three_times(port, &app);
    assert_eq!(broker.leases(), vec![("api".to_string(), port)]);
    run.stop_with(libc::SIGTERM, Duration::from_secs(10), &broker, "api");
}
