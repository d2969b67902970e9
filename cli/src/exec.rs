//! `pb exec` (alias `pb run`): claim a port, run a command on it, release it
//! when the command ends.
//!
//! By default the child inherits the broker's listening sockets at fd 3
//! onwards (systemd's LISTEN_FDS protocol) and learns the port from $PORT.
//! With `--port-only` it gets only $PORT and binds the port itself, over the
//! broker's placeholder (which needs SO_REUSEADDR, as Node, Python's
//! http.server, Go, Rust's std and Java all set).

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use pb_platform::supervise::{self, ChildSpec};
use pb_proto::paths::Paths;
use pb_proto::{ClaimArgs, ClaimReply, Client, Op, Owner};

use crate::{connect, output, ClaimOpts};

pub struct ExecOpts {
    pub id: String,
    pub claim: ClaimOpts,
    pub env_name: String,
    pub keep: bool,
    pub port_only: bool,
    pub quiet: bool,
    pub command: Vec<OsString>,
}

/// Runs the command; returns the exit code pb should exit with.
pub fn run(paths: &Paths, o: ExecOpts) -> Result<i32> {
    let mut client = connect::connect(paths)?;
    let args = ClaimArgs {
        id: o.id.clone(),
        fds: !o.port_only,
        session: !o.keep,
        // A kept lease must outlive this process: with it as the owner,
        // the reaper would end the lease the moment pb exits.
        owner: if o.keep { Owner::None } else { Owner::Caller },
        ..o.claim.to_args(&o.id)?
    };
    let ttl = args.expires_ms;
    let (reply, fds): (ClaimReply, _) = client.call_as(Op::Claim(args))?;
    let port = reply.lease.port;
    if !o.quiet {
        eprintln!("pb: {} → {}", o.id, output::url(port));
    }

    let fd_name = o.id.replace(':', ".");
    let spec = ChildSpec {
        program: o.command[0].clone(),
        args: o.command[1..].to_vec(),
        fd_names: vec![fd_name; fds.len()],
        listen_fds: fds,
        env: vec![(o.env_name.into(), port.to_string().into())],
    };
    let child = match supervise::spawn(spec) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pb: {e}");
            if !reply.existing && !o.keep {
                release(paths, &mut client, &o.id);
            }
            return Ok(e.exit_code());
        }
    };

    let client = Arc::new(Mutex::new(client));
    let done = Arc::new(AtomicBool::new(false));
    // PortManager-style TTL: keep renewing while the command runs. Started
    // after fork, so the child never inherits a second thread's state.
    let heartbeat = ttl.map(|ttl| {
        let (client, done, id) = (client.clone(), done.clone(), o.id.clone());
        std::thread::spawn(move || heartbeat_loop(&client, &done, &id, ttl))
    });

    let code = child.wait()?;
    done.store(true, Ordering::Relaxed);
    if let Some(h) = heartbeat {
        h.thread().unpark();
        let _ = h.join();
    }
    if !reply.existing && !o.keep {
        let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
        release(paths, &mut client, &o.id);
    }
    Ok(code)
}

fn heartbeat_loop(client: &Mutex<Client>, done: &AtomicBool, id: &str, ttl_ms: i64) {
    let every = Duration::from_millis((ttl_ms as u64 / 3).max(100));
    while !done.load(Ordering::Relaxed) {
        std::thread::park_timeout(every);
        if done.load(Ordering::Relaxed) {
            break;
        }
        let mut c = client.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = c.call(Op::Heartbeat {
            id: id.to_string(),
            ttl_ms: None,
        }) {
            eprintln!("pb: heartbeat for {id} failed: {e}");
        }
    }
}

/// Releases `id`, over a fresh connection if the broker restarted meanwhile.
fn release(paths: &Paths, client: &mut Client, id: &str) {
    let op = || Op::Release {
        target: id.to_string(),
    };
    if client.call(op()).is_ok() {
        return;
    }
    match connect::existing(paths).map(|mut c| c.call(op())) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => eprintln!("pb: releasing {id}: {e}"),
        Err(e) => eprintln!("pb: releasing {id}: {e}"),
    }
}
