//! `pb doctor`: what stands between pb and working, each check with what
//! it found and, when something is wrong, the fix. It asks the running
//! broker when there is one and looks at the machine itself otherwise;
//! it starts no broker and changes nothing (the store is checked only
//! while no broker holds it, under the broker's own instance lock).

use std::net::{SocketAddr, ToSocketAddrs};

use anyhow::Result;
use pb_proto::paths::Paths;
use pb_proto::{Op, StatusReply};

use crate::{connect, output, shim, Format};

/// One check's outcome.
#[derive(serde::Serialize)]
struct Check {
    name: &'static str,
    /// `ok`, `info` (nothing wrong, something to know), `warn` (works, but
    /// not everywhere), `fail`.
    status: &'static str,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn check(name: &'static str, status: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Check {
    fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }
}

pub fn run(paths: &Paths, fmt: Format) -> Result<i32> {
    let status = connect::existing(paths)
        .and_then(|mut c| Ok(c.call_as::<StatusReply>(Op::Status)?.0))
        .ok();
    let cfg = pb_broker::Config::from_env();
    let mut checks = vec![
        broker(status.as_ref()),
        socket(paths, status.is_some()),
        store(paths, status.is_some()),
        ipv6(),
        localhost_names(),
        privileged_ports(),
    ];
    match &cfg {
        Ok(cfg) => {
            checks.push(port_check(
                "http port",
                "the HTTP API",
                "PB_HTTP_ADDR",
                &cfg.http_addrs,
                status
                    .as_ref()
                    .map(|s| (s.http.clone(), s.http_off.clone())),
            ));
            checks.push(port_check(
                "proxy port",
                "the proxy",
                "PB_PROXY_ADDR",
                &cfg.proxy_addrs,
                status.as_ref().map(|s| {
                    (
                        s.proxy.as_ref().map(|p| p.url("NAME.localhost", false)),
                        s.proxy_off.clone(),
                    )
                }),
            ));
        }
        Err(e) => checks.push(
            check("settings", "fail", e.message.clone())
                .fix("correct the variable it names (docs/CLI.md, Environment)"),
        ),
    }
    checks.push(shim_check(paths));
    let ok = checks.iter().all(|c| c.status != "fail");
    match fmt {
        Format::Json => output::print_json(&serde_json::json!({ "ok": ok, "checks": checks })),
        _ => {
            for c in &checks {
                outln!("{:<4} {:<16} {}", c.status, c.name, c.detail);
                if let Some(f) = &c.fix {
                    outln!("     {:<16} fix: {f}", "");
                }
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

fn broker(status: Option<&StatusReply>) -> Check {
    let mine = env!("CARGO_PKG_VERSION");
    match status {
        None => check("broker", "info", "not running").fix(
            "nothing to do: a client starts one when it needs it (unless PB_NO_AUTOSTART); or `pb start`",
        ),
        Some(s) if s.version != mine => check(
            "broker",
            "warn",
            format!("pid {} runs pb {}, this pb is {mine}", s.pid, s.version),
        )
        .fix("pb restart"),
        Some(s) => check(
            "broker",
            "ok",
            format!("pid {}, pb {}, {} leases", s.pid, s.version, s.leases),
        ),
    }
}

/// The broker's home, by the broker's own rules (`home::check`: no
/// directory others can write, no link, nothing of another user's), and
/// whether the socket is there when a broker runs.
fn socket(paths: &Paths, running: bool) -> Check {
    let sock = paths.socket();
    if let Err(e) = pb_broker::home::check(paths) {
        return check("socket", "fail", e.to_string())
            .fix("as the message says; the broker refuses this home until then");
    }
    match (sock.exists(), running) {
        (false, true) => {
            check("socket", "fail", format!("{} is gone", sock.display())).fix("pb restart")
        }
        (false, false) => check(
            "socket",
            "ok",
            format!("{}: no socket without a broker", sock.display()),
        ),
        (true, _) => check(
            "socket",
            "ok",
            format!("{} (in a directory only you can write)", sock.display()),
        ),
    }
}

fn store(paths: &Paths, running: bool) -> Check {
    let db = paths.database();
    if running {
        return check(
            "store",
            "ok",
            format!(
                "{} is the running broker's, checked when it started",
                db.display()
            ),
        );
    }
    if !db.exists() {
        return check(
            "store",
            "ok",
            format!("{} does not exist yet", db.display()),
        );
    }
    // The broker's own instance lock: no broker may start while we look.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.lock_file())
        .ok()
        .and_then(|f| pb_platform::os::FileLock::try_exclusive(f).ok().flatten());
    if lock.is_none() {
        return check("store", "info", "a broker is starting; not checked");
    }
    match pb_broker::store::Store::open(&db) {
        Ok(_) => check("store", "ok", format!("{} passes its checks", db.display())),
        Err(e) => check("store", "fail", e.to_string()).fix("pb repair"),
    }
}

fn ipv6() -> Check {
    match pb_platform::net::loopback_ipv6() {
        Ok(()) => check("ipv6", "ok", "::1 is usable"),
        Err(why) => check("ipv6", "fail", why).fix(
            "sysctl -w net.ipv6.conf.lo.disable_ipv6=0 (pb holds every port on 127.0.0.1 and ::1; `localhost` reaches ::1 first in many clients)",
        ),
    }
}

fn localhost_names() -> Check {
    let resolved: Vec<SocketAddr> = ("pb-doctor-check.localhost", 80)
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    if !resolved.is_empty() && resolved.iter().all(|a| a.ip().is_loopback()) {
        return check(
            "localhost names",
            "ok",
            "the system resolver resolves *.localhost to loopback",
        );
    }
    check(
        "localhost names",
        "warn",
        "the system resolver does not resolve *.localhost (browsers and curl do, themselves; other programs do not)",
    )
    .fix("install nss-myhostname (Debian: libnss-myhostname) and put `myhostname` on the hosts: line of /etc/nsswitch.conf, or list the names in /etc/hosts")
}

fn privileged_ports() -> Check {
    match pb_platform::net::unprivileged_port_start() {
        Some(n) if n <= 80 => check(
            "ports 80/443",
            "info",
            format!(
                "ip_unprivileged_port_start is {n}: the broker may bind 80{} itself (PB_PROXY_ADDR=localhost:80)",
                if n <= 443 { " and 443" } else { "" }
            ),
        ),
        Some(n) => check(
            "ports 80/443",
            "info",
            format!("ip_unprivileged_port_start is {n}: ports 80 and 443 need socket activation (docs/PROXY.md)"),
        )
        .fix("socket activation (sockets named proxy-http and proxy-https), or sysctl -w net.ipv4.ip_unprivileged_port_start=80"),
        None => check("ports 80/443", "info", "ip_unprivileged_port_start is not readable here"),
    }
}

/// A listener the broker keeps (`what`, set by `var`): from the running
/// broker's status (`url` when it listens, `off` why not), or, with no
/// broker, whether something else holds its port now.
fn port_check(
    name: &'static str,
    what: &str,
    var: &str,
    addrs: &[SocketAddr],
    running: Option<(Option<String>, Option<String>)>,
) -> Check {
    let fix = format!("stop the process that holds it, or set {var} to another port (or `off`)");
    match running {
        Some((Some(url), _)) => check(name, "ok", format!("{what} listens at {url}")),
        Some((None, Some(why))) if why.contains("turned off") => check(name, "info", why),
        Some((None, why)) => check(
            name,
            "fail",
            format!("{what} is not running: {}", why.unwrap_or_default()),
        )
        .fix(fix),
        None if addrs.is_empty() => check(name, "info", format!("{what} is off ({var}=off)")),
        None => {
            for a in addrs {
                if let Err(e) = std::net::TcpListener::bind(a) {
                    let holders = pb_broker::service::inspect::port_holders(a.port());
                    let by = if holders.is_empty() {
                        String::new()
                    } else {
                        format!(", held by {}", holders.join(", "))
                    };
                    return check(name, "fail", format!("{a} cannot be bound ({e}){by}")).fix(fix);
                }
            }
            check(name, "ok", format!("{} free for {what}", addrs[0]))
        }
    }
}

fn shim_check(paths: &Paths) -> Check {
    let path = match shim::path(paths) {
        Ok(p) => p,
        Err(e) => {
            return check("shim", "fail", format!("{e:#}"))
                .fix("check that the runtime directory is writable, or set PB_SHIM_PATH")
        }
    };
    let out = std::process::Command::new("/bin/sh")
        .args(["-c", "exit 0"])
        .env("LD_PRELOAD", &path)
        .output();
    let musl = std::fs::read_dir("/lib")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("ld-musl"))
        })
        .unwrap_or(false);
    let limits = "it cannot reach static binaries (Go's), setuid programs or musl ones: those take fd 3, or run with --port-only";
    match out {
        Ok(o)
            if o.status.success()
                && !String::from_utf8_lossy(&o.stderr).contains("cannot be preloaded") =>
        {
            let c = check(
                "shim",
                if musl { "warn" } else { "ok" },
                format!("{} loads; {limits}", path.display()),
            );
            if musl {
                c.fix("this system has a musl loader: programs linked against musl ignore the (glibc) shim; use fd 3 or --port-only for them")
            } else {
                c
            }
        }
        Ok(o) => check(
            "shim",
            "fail",
            format!(
                "{} does not load: {}",
                path.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        )
        .fix("reinstall pb (the shim is built with it), or set PB_SHIM_PATH to a working copy"),
        Err(e) => check("shim", "fail", format!("cannot run /bin/sh to try it: {e}")),
    }
}
