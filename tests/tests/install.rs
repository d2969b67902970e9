//! pb as an installed login service (issue 19): `pb install` and
//! `pb uninstall`, the units they write checked by `systemd-analyze verify`
//! (Debian's systemd; no running systemd needed), the launchd plist parsed
//! by Python's plistlib; and the broker started the way systemd starts it:
//! its Unix socket and HTTP port passed in LISTEN_FDS, READY=1 on
//! NOTIFY_SOCKET, its log on the journal's stream with levels, PB_LOG.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use pb_tests::*;
use serde_json::Value;

/// A pb home and a config directory of the test's own, with the settings a
/// user might have: an HTTP port and a proxy port from `block`.
struct Setup {
    home: tempfile::TempDir,
    config: tempfile::TempDir,
    block: PortBlock,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            home: tempfile::tempdir().unwrap(),
            config: tempfile::tempdir().unwrap(),
            block: PortBlock::take(10),
        }
    }

    fn http_port(&self) -> u16 {
        self.block.range.1
    }

    fn unit_dir(&self) -> PathBuf {
        self.config.path().join("systemd/user")
    }

    fn pb(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let http = self.http_port();
        let proxy = http - 1;
        Command::new(pb_bin())
            .args(args)
            .env("PB_HOME", self.home.path())
            .env("XDG_CONFIG_HOME", self.config.path())
            .env("PB_NO_AUTOSTART", "1")
            .env("PB_HTTP_ADDR", format!("127.0.0.1:{http},[::1]:{http}"))
            .env("PB_PROXY_ADDR", format!("127.0.0.1:{proxy}"))
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }

    fn json(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, Value) {
        let out = self.pb(args, env);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{args:?}: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code().unwrap_or(-1), v)
    }

    /// `pb -j install --dry-run`: each file's path and text.
    fn dry_run(&self, manager: &str) -> Vec<(PathBuf, String)> {
        let (code, v) = self.json(&["-j", "install", "--dry-run", "--manager", manager], &[]);
        assert_eq!(code, 0, "{v}");
        v["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    PathBuf::from(f["path"].as_str().unwrap()),
                    f["text"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// Every file under `dir`, with its bytes, for before/after comparisons.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_dry_run_units_pass_systemd_analyze_verify() {
    let s = Setup::new();
    let files = s.dry_run("systemd");
    let names: Vec<String> = files
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "pb.service",
            "pb.socket",
            "pb-http.socket",
            "pb-proxy.socket"
        ]
    );
    for (p, _) in &files {
        assert_eq!(p.parent().unwrap(), s.unit_dir(), "{}", p.display());
    }
    // Nothing is written by a dry run.
    assert!(!s.config.path().join("systemd").exists());
    let text = |n: &str| &files[names.iter().position(|x| x == n).unwrap()].1;
    let sock = s.home.path().join("pb.sock");
    assert!(
        text("pb.socket").contains(&format!("ListenStream={}\n", sock.display())),
        "{}",
        text("pb.socket")
    );
    assert!(text("pb.socket").contains("FileDescriptorName=ipc\n"));
    assert!(text("pb.socket").contains("SocketMode=0600\n"));
    let http = s.http_port();
    for l in [
        format!("ListenStream=127.0.0.1:{http}\n"),
        format!("ListenStream=[::1]:{http}\n"),
        "FileDescriptorName=http\n".to_string(),
    ] {
        assert!(text("pb-http.socket").contains(&l), "{l}");
    }
    assert!(text("pb-proxy.socket").contains("FileDescriptorName=proxy-http\n"));
    let service = text("pb.service");
    assert!(
        service.contains(&format!("ExecStart={} daemon\n", pb_bin().display())),
        "{service}"
    );
    assert!(service.contains("Type=notify\n"));
    assert!(service.contains(&format!(
        "Environment=PB_HOME={}\n",
        s.home.path().display()
    )));

    // The broker's settings are carried; a client's context is not.
    let (_, v) = s.json(
        &["-j", "install", "--dry-run"],
        &[
            ("PB_LOG", "debug"),
            ("PB_LOCK_TOKEN", "secret"),
            ("PB_PROJECT", "x"),
        ],
    );
    let service = v["files"][0]["text"].as_str().unwrap();
    assert!(service.contains("Environment=PB_LOG=debug\n"), "{service}");
    for absent in ["PB_LOCK_TOKEN", "PB_PROJECT", "PB_NO_AUTOSTART"] {
        assert!(!service.contains(absent), "{absent}: {service}");
    }

    // systemd's own parser, offline: the units as written load cleanly.
    let dir = tempfile::tempdir().unwrap();
    let runtime = dir.path().join("run");
    std::fs::create_dir(&runtime).unwrap();
    let mut paths = Vec::new();
    for (p, t) in &files {
        let to = dir.path().join(p.file_name().unwrap());
        std::fs::write(&to, t).unwrap();
        paths.push(to);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--user"])
        .args(&paths)
        .env("XDG_RUNTIME_DIR", &runtime)
        .output()
        .expect("systemd-analyze (Debian's systemd package)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // Warnings (an unknown key, a bad value) leave the exit code 0: none.
    assert!(err.trim().is_empty(), "systemd-analyze warned: {err}");

    // The human form prints the same files under headers.
    let out = s.pb(&["install", "--dry-run"], &[]);
    let human = String::from_utf8_lossy(&out.stdout);
    for (p, t) in &files {
        assert!(human.contains(&format!("==> {} <==\n{}", p.display(), t)));
    }
    assert!(!s.config.path().join("systemd").exists());
}

#[test]
fn uninstall_removes_exactly_what_install_wrote() {
    let s = Setup::new();
    // The user's own units are there before, and after.
    let dir = s.unit_dir();
    std::fs::create_dir_all(dir.join("sockets.target.wants")).unwrap();
    std::fs::write(
        dir.join("other.service"),
        "[Service]\nExecStart=/bin/true\n",
    )
    .unwrap();
    let before = tree(s.config.path());
    let planned = s.dry_run("systemd");

    let (code, v) = s.json(&["-j", "install", "--no-start"], &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["started"], false);
    let written: Vec<PathBuf> = v["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert_eq!(written.len(), planned.len());
    for (p, t) in &planned {
        assert_eq!(&std::fs::read_to_string(p).unwrap(), t, "{}", p.display());
    }
    // Nothing else was written: no temporary file left beside them.
    let after = tree(s.config.path());
    assert_eq!(after.len(), before.len() + planned.len(), "{after:?}");

    // A reinstall overwrites its own files.
    let (code, _) = s.json(&["-j", "install", "--no-start"], &[]);
    assert_eq!(code, 0);

    // A dry-run uninstall removes nothing.
    let (code, v) = s.json(&["-j", "uninstall", "--dry-run"], &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["removed"].as_array().unwrap().len(), planned.len());
    assert!(planned.iter().all(|(p, _)| p.exists()));

    let (code, v) = s.json(&["-j", "uninstall"], &[]);
    assert_eq!(code, 0, "{v}");
    let mut removed: Vec<PathBuf> = v["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    removed.sort();
    let mut expected = written.clone();
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(tree(s.config.path()), before);

    // Uninstall of nothing: a clear error, and still nothing touched.
    let out = s.pb(&["uninstall"], &[]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pb is not installed"), "{err}");
    assert_eq!(tree(s.config.path()), before);
}

#[test]
fn install_refuses_to_overwrite_a_file_that_is_not_its_own() {
    let s = Setup::new();
    let dir = s.unit_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let theirs = "[Service]\nExecStart=/usr/bin/someone-elses-pb\n";
    std::fs::write(dir.join("pb.service"), theirs).unwrap();
    let before = tree(s.config.path());
    let out = s.pb(&["install", "--no-start"], &[]);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is not pb's") && err.contains("nothing was written"),
        "{err}"
    );
    assert_eq!(tree(s.config.path()), before);
    // Nor does uninstall take it for pb's.
    let out = s.pb(&["uninstall"], &[]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        std::fs::read_to_string(dir.join("pb.service")).unwrap(),
        theirs
    );
}

#[test]
fn a_relative_path_setting_is_refused_before_anything_is_written() {
    let s = Setup::new();
    let out = s.pb(&["install", "--no-start"], &[("PB_HOME", "relative/home")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PB_HOME=\"relative/home\" is a relative path"),
        "{err}"
    );
    assert!(!s.config.path().join("systemd").exists());
}

#[test]
fn install_where_systemd_is_absent_says_so_and_writes_nothing() {
    let s = Setup::new();
    // No systemctl on PATH: no service manager to start anything.
    let empty = tempfile::tempdir().unwrap();
    let path = empty.path().display().to_string();
    let out = s.pb(&["install"], &[("PATH", &path)]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("systemd is absent") && err.contains("systemctl is not installed"),
        "{err}"
    );
    assert!(err.contains("Nothing was written") && err.contains("--no-start"));
    assert!(!s.config.path().join("systemd").exists());
    // JSON callers get the code.
    let (code, v) = s.json(&["-j", "install"], &[("PATH", &path)]);
    assert_eq!(code, 4);
    assert_eq!(v["code"], "not_found", "{v}");
}

#[test]
fn the_launchd_agent_is_a_plist_that_runs_the_broker_at_login() {
    let s = Setup::new();
    let files = s.dry_run("launchd");
    assert_eq!(files.len(), 1);
    let (path, text) = &files[0];
    assert!(
        path.ends_with("Library/LaunchAgents/dev.pb.broker.plist"),
        "{}",
        path.display()
    );
    // Python's plistlib reads it as launchd would.
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, plistlib, sys; print(json.dumps(plistlib.loads(sys.stdin.buffer.read())))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    py.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "{text}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["Label"], "dev.pb.broker");
    assert_eq!(
        v["ProgramArguments"],
        serde_json::json!([pb_bin().display().to_string(), "daemon"])
    );
    assert_eq!(
        v["EnvironmentVariables"]["PB_HOME"],
        s.home.path().display().to_string()
    );
    assert_eq!(v["RunAtLoad"], true);
    assert_eq!(v["KeepAlive"]["SuccessfulExit"], false);
    let log = s.home.path().join("broker.log").display().to_string();
    assert_eq!(v["StandardErrorPath"], log);
    // Loading it is macOS's: here it is refused, with nothing written.
    let out = s.pb(&["install", "--manager", "launchd"], &[]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("launchd is absent"), "{err}");
    assert!(!path.exists());
}

/// A broker started as systemd starts it, with the NOTIFY_SOCKET it tells
/// and the journal stream it logs to (files of the test's own).
struct Activated {
    daemon: Proc,
    notify: UnixDatagram,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Activated {
    /// Started with its Unix socket bound at `socket` and the HTTP API on
    /// `http`; waits for its READY=1.
    fn start(home: &Path, http: u16, socket: &Path) -> Activated {
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let log = dir.path().join("journal");
        let daemon = start_activated(home, http, socket, &notify_path, &log);
        let a = Activated {
            daemon,
            notify,
            log,
            _dir: dir,
        };
        // Type=notify: the broker says READY=1 once it serves.
        assert_eq!(a.next_notice(), "READY=1");
        a
    }

    fn next_notice(&self) -> String {
        let mut buf = [0u8; 256];
        let n = self
            .notify
            .recv(&mut buf)
            .expect("a notice on NOTIFY_SOCKET");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    fn journal(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Starts pb daemon the way systemd starts a socket-activated unit: the
/// sockets bound already, at fd 3 on, LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES
/// set for the process that execs pb, stderr the journal's stream
/// (JOURNAL_STREAM names its device and inode), NOTIFY_SOCKET set.
fn start_activated(home: &Path, http: u16, socket: &Path, notify: &Path, log: &Path) -> Proc {
    let launcher = format!(
        r#"
import os, socket, sys
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
os.umask(0o077)
u.bind({socket:?}); u.listen(64)
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("127.0.0.1", {http})); t.listen(64)
os.dup2(u.fileno(), 3); os.dup2(t.fileno(), 4)
os.set_inheritable(3, True); os.set_inheritable(4, True)
st = os.fstat(2)
os.environ.update(LISTEN_FDS="2", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="ipc:http",
                  JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
os.execv(sys.argv[1], [sys.argv[1], "daemon"])
"#
    );
    let logf = std::fs::File::create(log).unwrap();
    let child = Command::new("python3")
        .args(["-c", &launcher, &pb_bin().display().to_string()])
        .env("PB_HOME", home)
        .env("PB_PROXY_ADDR", "off")
        .env("PB_RANGE", format!("{}-{}", http - 8, http - 1))
        // Passed or none: the broker never binds a port of its own here.
        .env("PB_HTTP_ADDR", "off")
        .env("PB_NO_AUTOSTART", "1")
        .env("NOTIFY_SOCKET", notify)
        .env("INVOCATION_ID", "0123456789abcdef0123456789abcdef")
        .stdout(Stdio::null())
        .stderr(logf)
        .spawn()
        .unwrap();
    Proc(child)
}

#[test]
fn a_broker_started_the_way_systemd_starts_it_serves_on_the_passed_sockets() {
    let block = PortBlock::take(10);
    let http = block.range.1;
    let home = tempfile::tempdir().unwrap();
    let socket = home.path().join("pb.sock");
    let mut a = Activated::start(home.path(), http, &socket);

    let pb = |args: &[&str]| {
        Command::new(pb_bin())
            .args(args)
            .env("PB_HOME", home.path())
            .env("PB_NO_AUTOSTART", "1")
            .output()
            .unwrap()
    };
    let out = pb(&["-j", "status"]);
    assert!(out.status.success(), "{}", a.journal());
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["started_by"], "socket_activation", "{status}");
    assert_eq!(status["pid"], a.daemon.pid());
    assert_eq!(status["http"], format!("http://127.0.0.1:{http}"));
    let human = String::from_utf8_lossy(&pb(&["status"]).stdout).into_owned();
    assert!(
        human.contains("started by:  systemd, socket-activated"),
        "{human}"
    );

    // Claims over the passed Unix socket, and the API on the passed port.
    let out = pb(&["claim", "act:web", "-q", "--keep"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port: u16 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!((http - 8..http).contains(&port));
    let body = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{http}/services/act:web")])
        .output()
        .unwrap();
    assert!(body.status.success());
    let v: Value = serde_json::from_slice(&body.stdout).unwrap();
    assert_eq!(v["service"]["port"], port, "{v}");

    // Stopped, it leaves the socket file to systemd, which keeps it.
    let out = pb(&["stop"]);
    assert!(out.status.success());
    assert!(a.daemon.wait_for(Duration::from_secs(10)).is_some());
    assert!(
        std::fs::symlink_metadata(&socket).is_ok(),
        "the activated socket's file is systemd's to remove"
    );
    assert_eq!(a.next_notice(), "STOPPING=1");

    // The journal gets each line with its syslog level, no timestamp.
    let journal = a.journal();
    let lines: Vec<&str> = journal.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<6>broker ")
                && l.contains("started by systemd, socket-activated")),
        "{journal}"
    );
    assert!(lines.iter().all(|l| l.starts_with('<')), "{journal}");
}

#[test]
fn a_passed_socket_bound_elsewhere_is_not_taken_for_the_broker_s() {
    let block = PortBlock::take(10);
    let http = block.range.1;
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // systemd's unit names a path the clients do not use.
    let elsewhere = dir.path().join("elsewhere.sock");
    let mut a = Activated::start(home.path(), http, &elsewhere);
    // The broker bound its own socket where clients look, and said why.
    let out = Command::new(pb_bin())
        .args(["-j", "status"])
        .env("PB_HOME", home.path())
        .env("PB_NO_AUTOSTART", "1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let journal = a.journal();
    assert!(
        journal.contains("<4>the passed ipc socket is bound at"),
        "{journal}"
    );
    a.daemon.signal(libc::SIGTERM);
    assert!(a.daemon.wait_for(Duration::from_secs(10)).is_some());
    // Its own socket it removes when it stops.
    assert!(!home.path().join("pb.sock").exists());
}

#[test]
fn pb_log_sets_what_the_broker_logs_and_a_bad_filter_is_refused() {
    // A filter tracing cannot parse: the broker refuses to start, naming
    // the variable, and writes nothing of its own.
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(pb_bin())
        .arg("daemon")
        .env("PB_HOME", home.path())
        .env("PB_HTTP_ADDR", "off")
        .env("PB_PROXY_ADDR", "off")
        .env("PB_LOG", "pb=loudest")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PB_LOG=\"pb=loudest\" is not a log filter"),
        "{err}"
    );
    assert!(!home.path().join("pb.db").exists());

    // warn: the start-up line (info) is not written; by default it is,
    // with its level.
    let quiet = Broker::start_with(&[("PB_LOG", "warn")]);
    let loud = Broker::start();
    assert!(!quiet.log().contains("up with"), "{}", quiet.log());
    let log = loud.log();
    let up = log
        .lines()
        .find(|l| l.contains("up with"))
        .unwrap_or_default();
    assert!(up.contains(" INFO "), "{log}");
    assert_eq!(loud.pb_json(&["status"])["started_by"], "foreground");
}

#[test]
fn status_says_a_client_started_the_broker() {
    let home = tempfile::tempdir().unwrap();
    let block = PortBlock::take(10);
    let pb = |args: &[&str]| {
        Command::new(pb_bin())
            .args(args)
            .env("PB_HOME", home.path())
            .env("PB_HTTP_ADDR", "off")
            .env("PB_PROXY_ADDR", "off")
            .env("PB_RANGE", format!("{}-{}", block.range.0, block.range.1))
            .output()
            .unwrap()
    };
    let out = pb(&["-j", "start"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = pb(&["-j", "status"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["started_by"], "client", "{v}");
    let pid = v["pid"].as_u64().unwrap() as u32;
    assert!(pb(&["stop"]).status.success());
    assert!(wait_until(Duration::from_secs(10), || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .is_some());
}
