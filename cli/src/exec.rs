//! `pb exec` (alias `pb run`): claim a port, run a command on it, release it
//! when the command ends.
//!
//! By default the child inherits the broker's listening sockets at fd 3
//! onwards (systemd's LISTEN_FDS protocol) and learns the port from $PORT.
//! With `--port-only` it gets only $PORT and binds the port itself, over the
//! broker's placeholder (which needs SO_REUSEADDR, as Node, Python's
//! http.server, Go, Rust's std and Java all set).
//!
//! With `--shim` the app gets $PORT and the preload shim, which swaps the
//! socket of the app's own bind (of a hard-coded port, say) for the
//! broker's; the shim reports each bind it handled back here, over a
//! datagram socket in the runtime directory, and pb prints what the app
//! asked for and what it got.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use pb_platform::supervise::{self, ChildSpec};
use pb_proto::paths::Paths;
use pb_proto::shim::{PortMap, ShimReport, ENV_MAP, ENV_REPORT};
use pb_proto::{ClaimArgs, ClaimReply, Client, IpFamily, Op, Owner};

use crate::{connect, output, shim, ClaimOpts};

pub struct ExecOpts {
    pub id: String,
    pub claim: ClaimOpts,
    pub env_name: String,
    pub keep: bool,
    pub mode: Mode,
    /// How long the rest of the tree gets between SIGTERM and SIGKILL.
    pub grace: Duration,
    /// Leave LISTEN_PID unset, for watchers that re-exec the app.
    pub no_pid: bool,
    pub quiet: bool,
    pub command: Vec<OsString>,
}

/// How the app receives its port.
pub enum Mode {
    /// The default: one listener at fd 3 (LISTEN_FDS), the other loopback
    /// family relayed to it by the broker (both families with
    /// `both_families`), and $PORT; with `preload`, the shim too, so that
    /// an app's own bind of $PORT gets the broker's listener.
    Sockets { both_families: bool, preload: bool },
    /// Only $PORT; the app binds the port itself over the placeholder.
    PortOnly,
    /// The shim with these `--map` values, for hard-coded ports.
    Shim(Vec<String>),
}

/// Runs the command; returns the exit code pb should exit with.
pub fn run(paths: &Paths, o: ExecOpts) -> Result<i32> {
    // Every --map is checked, and the program found, before anything is
    // claimed or started.
    let map = match &o.mode {
        Mode::Shim(maps) => Some(PortMap::from_args(&o.id, maps)?),
        _ => None,
    };
    let program = match supervise::find_program(&o.command[0]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("pb: {e}");
            return Ok(e.exit_code());
        }
    };
    let preloads = matches!(o.mode, Mode::Shim(_) | Mode::Sockets { preload: true, .. });
    if preloads && !o.quiet && supervise::loads_preload(&program) == Some(false) {
        // The shim cannot reach it; say what it gets instead.
        eprintln!(
            "pb: {} is a static binary (Go, or statically linked): LD_PRELOAD cannot reach it, so {}",
            program.display(),
            if matches!(o.mode, Mode::Shim(_)) {
                "its own binds are not swapped; give it the port through $PORT or fd 3"
            } else {
                "it must take its listener from fd 3 (LISTEN_FDS); if it binds $PORT itself, run it with --port-only"
            }
        );
    }
    let mut client = connect::connect(paths)?;
    let (fds, family) = match o.mode {
        Mode::Sockets { both_families, .. } => (true, (!both_families).then_some(IpFamily::V4)),
        _ => (false, None),
    };
    let args = ClaimArgs {
        id: o.id.clone(),
        fds,
        family,
        session: !o.keep,
        // A kept lease must outlive this process: with it as the owner,
        // the reaper would end the lease the moment pb exits.
        owner: if o.keep { Owner::None } else { Owner::Caller },
        ..o.claim.to_args(&o.id)?
    };
    let ttl = args.expires_ms;
    let (reply, fds): (ClaimReply, _) = client.call_as(Op::Claim(args))?;
    let port = reply.lease.port;
    // What this run claimed itself, and so releases when the command ends.
    let mut ours: Vec<String> = Vec::new();
    if !reply.existing {
        ours.push(o.id.clone());
    }

    let mut env = vec![(o.env_name.clone().into(), port.to_string().into())];
    let mut unset: Vec<OsString> = Vec::new();
    let mut reports = None;
    let mut url_now = true;
    match (&o.mode, &map) {
        (Mode::Shim(_), Some(map)) => {
            for id in map.ids().into_iter().filter(|id| *id != o.id) {
                let extra = ClaimArgs {
                    id: id.to_string(),
                    session: !o.keep,
                    owner: if o.keep { Owner::None } else { Owner::Caller },
                    port: None,
                    fallback: false,
                    ..o.claim.to_args(id)?
                };
                let claimed = client.call_as::<ClaimReply>(Op::Claim(extra));
                match claimed {
                    Ok((r, _)) if !r.existing => ours.push(id.to_string()),
                    Ok(_) => {}
                    Err(e) => {
                        connect::release_all(paths, &mut client, &ours);
                        return Err(e.into());
                    }
                }
            }
            reports = Some(preload(paths, map, &mut env, true, None)?);
            // The shim's report says where the app really serves.
            url_now = false;
        }
        (Mode::Sockets { preload: true, .. }, _) => {
            // The app's own bind of $PORT lands on the lease's listener.
            let own = PortMap::Ports(vec![(port, o.id.clone())]);
            let hint = Some((port, o.env_name.clone()));
            reports = Some(preload(paths, &own, &mut env, false, hint)?);
        }
        _ => {
            // A shimmed app that runs `pb exec` passes its shim on, but not
            // its port map: binds in here are not the outer service's.
            unset.push(ENV_MAP.into());
        }
    }

    let fd_name = o.id.replace(':', ".");
    let spec = ChildSpec {
        program: o.command[0].clone(),
        args: o.command[1..]
            .iter()
            .map(|a| with_port(a, &o.env_name, port))
            .collect(),
        fd_names: vec![fd_name; fds.len()],
        listen_fds: fds,
        env,
        unset,
        listen_pid: !o.no_pid,
        ..ChildSpec::default()
    };
    let child = match supervise::spawn(spec) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pb: {e}");
            if !o.keep {
                connect::release_all(paths, &mut client, &ours);
            }
            return Ok(e.exit_code());
        }
    };
    if url_now && !o.quiet {
        eprintln!("pb: {} → {}", o.id, output::url(port));
    }

    let client = Arc::new(Mutex::new(client));
    let done = Arc::new(AtomicBool::new(false));
    // PortManager-style TTL: keep renewing while the command runs. Started
    // after fork, so the child never inherits a second thread's state.
    let heartbeat = ttl.map(|ttl| {
        let (client, done, id) = (client.clone(), done.clone(), o.id.clone());
        let paths = paths.clone();
        std::thread::spawn(move || heartbeat_loop(&paths, &client, &done, &id, ttl))
    });
    let quiet = o.quiet;
    let reporter = reports.map(|r| {
        let done = done.clone();
        let path = r.path.clone();
        (
            path,
            std::thread::spawn(move || r.print_until(&done, quiet)),
        )
    });

    // Returns once the whole tree is gone, so the lease is released only
    // when nothing started here can still serve the port.
    let code = child.wait(o.grace)?;
    done.store(true, Ordering::Relaxed);
    if let Some(h) = heartbeat {
        h.thread().unpark();
        let _ = h.join();
    }
    if let Some((path, r)) = reporter {
        // The shim reports before its bind returns, so every report is
        // queued by now; an empty datagram after them ends the reader at
        // once instead of at its next timeout.
        if let Ok(waker) = UnixDatagram::unbound() {
            let _ = waker.send_to(&[], &path);
        }
        let _ = r.join();
    }
    if !o.keep {
        let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
        connect::release_all(paths, &mut client, &ours);
    }
    Ok(code)
}

/// Adds what loads the shim with `map` to `env`, and opens the socket its
/// reports come to; `successes` says whether swapped binds are worth a line
/// (with `--shim` they say where the app serves; by default the URL is
/// printed already, and only a bind the shim could not swap is news).
fn preload(
    paths: &Paths,
    map: &PortMap,
    env: &mut Vec<(OsString, OsString)>,
    successes: bool,
    own_port_hint: Option<(u16, String)>,
) -> Result<ReportSocket> {
    let (sock, path) = report_socket(paths)?;
    env.extend(shim::env(paths, map)?);
    env.push((ENV_REPORT.into(), path.clone().into_os_string()));
    Ok(ReportSocket {
        sock,
        path,
        successes,
        own_port_hint,
    })
}

/// Where the shim's reports arrive: a datagram socket in the private
/// runtime directory, removed when this run ends.
struct ReportSocket {
    sock: UnixDatagram,
    path: PathBuf,
    successes: bool,
    /// By default: the lease's port and its variable, for the line that
    /// says an app bound a port of its own instead.
    own_port_hint: Option<(u16, String)>,
}

fn report_socket(paths: &Paths) -> Result<(UnixDatagram, PathBuf)> {
    let path = paths
        .runtime_dir
        .join(format!("shim-{}.sock", std::process::id()));
    // A file left by an earlier pb with our pid, which can only be dead.
    let _ = std::fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    Ok((sock, path))
}

impl ReportSocket {
    /// Prints each report as it comes, until `done` and nothing is queued.
    /// A service's URL is said once: a dev server that probes its port
    /// (vite binds it four times) or restarts under a reloader binds again
    /// and again, and each swap reports. Failures are always said.
    fn print_until(self, done: &AtomicBool, quiet: bool) {
        let mut buf = vec![0u8; 64 * 1024];
        let mut said: Vec<(String, u16)> = Vec::new();
        loop {
            match self.sock.recv(&mut buf) {
                // pb's own word that the app is gone (see `run`).
                Ok(0) if done.load(Ordering::Relaxed) => break,
                Ok(n) => match serde_json::from_slice::<ShimReport>(&buf[..n]) {
                    Ok(_) if quiet => {}
                    Ok(r) if r.unmapped => {
                        if let Some((port, var)) = &self.own_port_hint {
                            eprintln!(
                                "pb: {}: the app binds {} itself, not ${var} ({port}), so {} does not reach it; `pb exec --shim` gives that bind pb's socket",
                                r.id,
                                r.asked,
                                output::url(*port)
                            );
                        }
                    }
                    Ok(r) => match r.port {
                        None => eprintln!("pb: {}", describe(&r)),
                        Some(port) if self.successes && !said.contains(&(r.id.clone(), port)) => {
                            said.push((r.id.clone(), port));
                            eprintln!("pb: {}", describe(&r));
                        }
                        Some(_) => {}
                    },
                    Err(e) => eprintln!("pb: unreadable report from the shim: {e}"),
                },
                Err(_) if done.load(Ordering::Relaxed) => break,
                Err(_) => {}
            }
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One line saying what the app asked for and what it got.
fn describe(r: &ShimReport) -> String {
    match (r.port, &r.error) {
        (Some(port), _) if r.wildcard => {
            let asked_port = r.asked.rsplit(':').next().unwrap_or(&r.asked);
            format!(
                "{} → {} (app asked for {asked_port} on every address; it serves on loopback only)",
                r.id,
                output::url(port)
            )
        }
        (Some(port), _) => format!(
            "{} → {} (app asked for {})",
            r.id,
            output::url(port),
            r.asked
        ),
        (None, error) => format!(
            "{}: the app's bind of {} (pid {}) is its own, not the broker's: {}",
            r.id,
            r.asked,
            r.pid,
            error.as_deref().unwrap_or("unknown reason")
        ),
    }
}

fn heartbeat_loop(paths: &Paths, client: &Mutex<Client>, done: &AtomicBool, id: &str, ttl_ms: i64) {
    let every = Duration::from_millis((ttl_ms as u64 / 3).max(100));
    while !done.load(Ordering::Relaxed) {
        std::thread::park_timeout(every);
        if done.load(Ordering::Relaxed) {
            break;
        }
        let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
        let beat = Op::Heartbeat {
            id: Some(id.to_string()),
            port: None,
            ttl_ms: None,
        };
        if let Err(e) = connect::call_surviving(paths, &mut c, beat) {
            eprintln!("pb: heartbeat for {id} failed: {e:#}");
        }
    }
}

/// `arg` with `$NAME` and `${NAME}` (NAME: `--env-name`, PORT by default)
/// replaced by the port, as PortManager's `run` does: a recipe quotes the
/// variable (`docker run -p \$PORT:5432 postgres`) so that the shell
/// leaves it for the tool, which alone knows the port. A longer name that
/// only begins with NAME (`$PORTS`) is left alone; an argument that is not
/// UTF-8 passes unchanged.
fn with_port(arg: &OsString, name: &str, port: u16) -> OsString {
    let Some(text) = arg.to_str() else {
        return arg.clone();
    };
    let port = port.to_string();
    let braced = format!("${{{name}}}");
    let bare = format!("${name}");
    let text = text.replace(&braced, &port);
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(&bare) {
        let after = &rest[at + bare.len()..];
        let continues = after
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        out.push_str(&rest[..at]);
        out.push_str(if continues { &bare } else { &port });
        rest = after;
    }
    out.push_str(rest);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::with_port;

    #[test]
    fn the_port_variable_is_replaced_in_arguments_and_nothing_else_is() {
        let w = |a: &str, name: &str| with_port(&a.into(), name, 3100).into_string().unwrap();
        assert_eq!(w("$PORT:5432", "PORT"), "3100:5432");
        assert_eq!(w("--port=${PORT}", "PORT"), "--port=3100");
        assert_eq!(w("$PORT/$PORT", "PORT"), "3100/3100");
        assert_eq!(w("$PORTS $PORT_X", "PORT"), "$PORTS $PORT_X");
        assert_eq!(w("$DB_PORT", "DB_PORT"), "3100");
        assert_eq!(w("$PORT", "DB_PORT"), "$PORT");
        assert_eq!(w("plain", "PORT"), "plain");
    }
}
