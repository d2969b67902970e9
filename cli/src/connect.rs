//! Reaching the broker, starting it in the background first when none runs
//! (unless PB_NO_AUTOSTART=1).

use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pb_proto::paths::Paths;
use pb_proto::Client;

/// How long a client waits for a broker it started to come up.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker is not running (and was not started).
#[derive(Debug, thiserror::Error)]
#[error("no broker is running at {0} (start one with `pb start`)")]
pub struct Unavailable(pub String);

fn absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
}

/// Connects without starting anything.
pub fn existing(paths: &Paths) -> Result<Client> {
    let sock = paths.socket();
    match Client::connect(&sock) {
        Ok(c) => Ok(c),
        Err(e) if absent(&e) => Err(Unavailable(sock.display().to_string()).into()),
        Err(e) => Err(e).with_context(|| format!("connecting to {}", sock.display())),
    }
}

pub fn autostart_enabled() -> bool {
    std::env::var("PB_NO_AUTOSTART")
        .map(|v| v != "1")
        .unwrap_or(true)
}

/// Connects, starting a broker first if none answers and autostart is on.
pub fn connect(paths: &Paths) -> Result<Client> {
    match existing(paths) {
        Ok(c) => Ok(c),
        Err(e) if e.is::<Unavailable>() && autostart_enabled() => {
            spawn_daemon(paths)?;
            wait_for(paths)
        }
        Err(e) => Err(e),
    }
}

/// Starts `pb daemon` detached, its output appended to the broker log.
/// Two clients racing here start two daemons; the instance lock lets only
/// one live, and both clients then reach it.
pub fn spawn_daemon(paths: &Paths) -> Result<()> {
    std::fs::create_dir_all(&paths.state_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(paths.log_file())
        .with_context(|| format!("opening {}", paths.log_file().display()))?;
    let exe = std::env::current_exe().context("locating the pb binary")?;
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        // Started from inside an app under `pb exec --shim`, the broker
        // must not have its own binds swapped.
        .env_remove(pb_proto::shim::ENV_MAP)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid, fork and _exit are async-signal-safe. A new session
    // keeps the broker alive when the terminal that started it closes; the
    // second fork makes it nobody's child, so a `pb exec` that started it
    // (and reaps its whole tree) neither waits for it nor ends it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
    let mut first = cmd.spawn().context("starting the broker")?;
    // The intermediate process exits at once.
    let _ = first.wait();
    Ok(())
}

/// Waits (bounded) until a broker answers.
pub fn wait_for(paths: &Paths) -> Result<Client> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match existing(paths) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "the broker did not come up within {}s; see {}",
                    START_TIMEOUT.as_secs(),
                    paths.log_file().display()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
