//! Reaching the broker, starting it in the background first when none runs
//! (unless PB_NO_AUTOSTART=1).

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pb_platform::startup::{Started, Starting};
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
        Err(e) if e.is::<Unavailable>() && autostart_enabled() => spawn_daemon(paths)?.wait(),
        Err(e) => Err(e),
    }
}

/// How long a client that was talking to a broker waits for it to come
/// back after it went away mid-conversation (a restart, or a crash and the
/// next start).
pub const RIDE_THROUGH: Duration = Duration::from_secs(30);

/// How many times one command rides through a broker that went away: a
/// broker that dies on every request is not waited for forever.
pub const MAX_RECONNECTS: usize = 5;

/// Whether `e` means the broker went away (its connection broke), rather
/// than that it answered.
pub fn went_away(e: &pb_proto::client::ClientError) -> bool {
    matches!(e, pb_proto::client::ClientError::Io(_))
}

/// Connects again after the broker went away, for at most
/// [`RIDE_THROUGH`]; says so on stderr. It starts no broker: one stopped on
/// purpose (`pb stop`) stays stopped, and after a crash the next command
/// (or whoever restarts it) brings one back.
pub fn reconnect(paths: &Paths, doing: &str) -> Result<Client> {
    eprintln!("pb: the broker went away; reconnecting to go on {doing}");
    let deadline = Instant::now() + RIDE_THROUGH;
    loop {
        match existing(paths) {
            Ok(c) => {
                eprintln!("pb: reconnected");
                return Ok(c);
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "the broker did not come back within {}s",
                    RIDE_THROUGH.as_secs()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Runs `attempt` on `client` until it answers; when the broker goes away
/// meanwhile, connects again (bounded, see [`reconnect`]) and runs it
/// again. `attempt` carries on from where it was: a stream resumes after
/// what it printed, a wait asks for what is left of its timeout.
pub fn ride_through<T>(
    paths: &Paths,
    doing: &str,
    client: &mut Client,
    mut attempt: impl FnMut(&mut Client) -> std::result::Result<T, pb_proto::client::ClientError>,
) -> Result<T> {
    let mut rides = 0;
    loop {
        match attempt(client) {
            Ok(t) => return Ok(t),
            Err(e) if went_away(&e) && rides < MAX_RECONNECTS => {
                rides += 1;
                *client = reconnect(paths, doing)?;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// One request that survives a broker restart: if the broker went away, it
/// is made once more, over a fresh connection to whichever broker answers
/// now (which then replaces `client`). For the renewals and releases a
/// running `pb exec` or `pb lock -- CMD` makes in the background.
pub fn call_surviving(paths: &Paths, client: &mut Client, op: pb_proto::Op) -> Result<()> {
    match client.call(op.clone()) {
        Ok(_) => Ok(()),
        Err(e) if went_away(&e) => {
            let mut fresh = existing(paths)?;
            let answered = fresh.call(op);
            *client = fresh;
            answered.map(|_| ()).map_err(Into::into)
        }
        Err(e) => Err(e.into()),
    }
}

/// Releases each of `ids`, over a fresh connection if the broker restarted
/// meanwhile; a failure is said, and the rest are released still.
pub fn release_all(paths: &Paths, client: &mut Client, ids: &[String]) {
    for id in ids {
        let op = pb_proto::Op::Release {
            target: pb_proto::ReleaseTarget::Name(id.clone()),
            more: Vec::new(),
        };
        if let Err(e) = call_surviving(paths, client, op) {
            eprintln!("pb: releasing {id}: {e:#}");
        }
    }
}

/// The broker could not start, and said why (or died saying nothing).
#[derive(Debug, thiserror::Error)]
#[error("the broker could not start: {0}")]
pub struct StartFailed(pub String);

/// A broker being started by this process.
pub struct Daemon<'a> {
    paths: &'a Paths,
    starting: Starting,
}

/// Starts `pb daemon` detached, its output appended to the broker log.
/// Two clients racing here start two daemons; the instance lock lets only
/// one live, and both clients then reach it.
pub fn spawn_daemon(paths: &Paths) -> Result<Daemon<'_>> {
    // Private from birth; the broker then checks the directory it finds
    // (docs/SECURITY.md), and the log is never opened through a link
    // someone may have planted.
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&paths.state_dir)
        .with_context(|| format!("creating {}", paths.state_dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(paths.log_file())
        .with_context(|| format!("opening {}", paths.log_file().display()))?;
    let exe = std::env::current_exe().context("locating the pb binary")?;
    let (starting, ready_w) = Starting::pipe().context("making the start-up pipe")?;
    let mut cmd = Command::new(exe);
    cmd.arg("daemon")
        // Started from inside an app under `pb exec`, the broker must not
        // have its own binds swapped.
        .env_remove(pb_proto::shim::ENV_MAP)
        .env(pb_platform::startup::ENV, ready_w.as_raw_fd().to_string())
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
    // Only the daemon may hold the write end, so that its death closes it.
    drop(ready_w);
    // The intermediate process exits at once.
    let _ = first.wait();
    Ok(Daemon { paths, starting })
}

impl Daemon<'_> {
    /// Waits (bounded) until the broker serves, and connects; a broker
    /// that cannot start is reported with its own reason at once.
    pub fn wait(self) -> Result<Client> {
        let paths = self.paths;
        match self.starting.wait(START_TIMEOUT) {
            Started::Ready => wait_for(paths),
            Started::Failed(why) => {
                // Lost a race to another starter: that broker serves.
                if let Ok(c) = existing(paths) {
                    return Ok(c);
                }
                Err(StartFailed(why).into())
            }
            Started::Exited => {
                if let Ok(c) = existing(paths) {
                    return Ok(c);
                }
                Err(StartFailed(format!(
                    "it exited at once; the end of {}:\n{}",
                    paths.log_file().display(),
                    log_tail(paths)
                ))
                .into())
            }
            Started::Silent | Started::Busy => wait_for(paths),
        }
    }
}

/// The last few lines of the broker log, for a start that said nothing.
fn log_tail(paths: &Paths) -> String {
    let text = std::fs::read_to_string(paths.log_file()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Waits (bounded) until a broker answers.
fn wait_for(paths: &Paths) -> Result<Client> {
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
