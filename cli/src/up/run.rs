//! The stack's supervisor: it claims every service's port first (all or
//! nothing), so every sibling's address is known and bound before anything
//! starts; then it starts each service on its socket, as `pb exec` would,
//! once what it needs is ready; it follows crashes with each service's
//! restart policy, keeping the service's listener across restarts; and on
//! a stop it ends the services in reverse order, each with its signal and
//! then SIGKILL after its grace, releases every port and leaves no process
//! behind.
//!
//! One thread waits for signals and child exits (`Fleet`); readiness
//! probes that only read (a connection, an HTTP answer) run on threads of
//! their own, and a readiness command is a child of the supervisor like a
//! service. The state is written to `state.json` for `pb up --status`,
//! `pb restart` and `pb down`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pb_platform::supervise::{self, ChildSpec, Fleet};
use pb_proto::client::ClientError;
use pb_proto::paths::Paths;
use pb_proto::shim::{PortMap, ENV_MAP};
use pb_proto::{ClaimArgs, ClaimManyReply, ClaimReply, Client, IpFamily, Op, Owner};

use super::env;
use super::file::{PortWant, Ready, Restart, Service, Stack, Take};
use super::logs::{self, LogFile, Printer, Tail};
use super::state::StackHome;
use crate::{connect, output, shim};
use pb_proto::{StackEvent, StackEventKind, StackInfo, StackService, StackStatus as Status};

/// The first wait before a crashed service starts again; it doubles with
/// each crash in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A service that ran this long before it crashed starts again at once.
const STEADY: Duration = Duration::from_secs(10);
/// How often a readiness command runs.
const COMMAND_EVERY: Duration = Duration::from_millis(250);
/// How long the supervisor sleeps while nothing is starting.
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// ... and while something is: readiness is seen within this.
const BUSY_WAIT: Duration = Duration::from_millis(5);

/// What one service is doing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Waiting for what it needs.
    Waiting,
    Starting,
    Ready,
    /// Crashed; starts again at this time.
    Backoff(Instant),
    /// Being stopped: SIGKILL at this time; then start again if
    /// `again`.
    Stopping {
        kill_at: Instant,
        again: bool,
    },
    /// Ended, with this code, and will not start again.
    Exited(i32),
}

enum Probe {
    /// A thread that says when the service is ready.
    Thread(Receiver<()>),
    /// A readiness command: the one running, and when to run the next.
    Command { pid: Option<u32>, next: Instant },
}

struct Unit {
    index: usize,
    svc: Service,
    port: Option<u16>,
    /// The lease's listeners, kept for every start of the service.
    listeners: Vec<OwnedFd>,
    env: Vec<(OsString, OsString)>,
    unset: Vec<OsString>,
    command: String,
    phase: Phase,
    pid: Option<u32>,
    restarts: u32,
    started: Instant,
    ever_ready: bool,
    probe: Option<Probe>,
    tail: Tail,
    log: Arc<Mutex<LogFile>>,
    crashes_in_a_row: u32,
    /// Why the restart under way was asked for.
    restart_why: Option<String>,
}

impl Unit {
    fn running(&self) -> bool {
        self.pid.is_some()
    }

    fn last_lines(&self) -> String {
        let t = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_empty() {
            return " (it printed nothing)".into();
        }
        let mut s = String::from("; its last lines:");
        for l in t.iter().skip(t.len().saturating_sub(10)) {
            s.push_str("\n    ");
            s.push_str(l);
        }
        s
    }
}

/// Checks that each service's program exists, before anything is claimed.
pub fn check_commands(stack: &Stack) -> Result<()> {
    for s in &stack.services {
        if let Some(program) = first_program(&s.command) {
            let found = if program.contains('/') {
                let p = s.dir.join(&program);
                p.is_file() && supervise::find_program(p.as_os_str()).is_ok()
            } else {
                supervise::find_program(std::ffi::OsStr::new(&program)).is_ok()
            };
            if !found {
                bail!(
                    "{}: service {}: {program}: command not found (in {})",
                    stack.file.display(),
                    s.name,
                    s.dir.display()
                );
            }
        }
    }
    Ok(())
}

/// The program a command runs, when that can be known without running a
/// shell: not for a builtin, a variable, or a compound command.
fn first_program(command: &str) -> Option<String> {
    let words = shell_words::split(command).ok()?;
    let mut it = words
        .into_iter()
        .skip_while(|w| w.contains('=') && !w.starts_with('='));
    let mut first = it.next()?;
    if first == "exec" {
        first = it.next()?;
    }
    // Builtins and keywords: a shell runs these, no program needed.
    const SHELL: [&str; 30] = [
        "cd", ".", "source", "eval", "export", "set", "true", "false", "test", "[", "echo",
        "printf", ":", "trap", "wait", "command", "if", "for", "while", "until", "case",
        "function", "select", "time", "{", "!", "ulimit", "umask", "read", "unset",
    ];
    let special = |c: char| "$`(){}|&;<>*?~!".contains(c);
    (!SHELL.contains(&first.as_str()) && !first.contains(special)).then_some(first)
}

/// Whether `command` can run without a shell: plain words, no operators,
/// no variables or globs. Run directly, the service's own process gets
/// LISTEN_PID.
fn direct_words(command: &str) -> Option<Vec<String>> {
    if command.contains(|c: char| "$`(){}|&;<>*?~!#\n".contains(c)) {
        return None;
    }
    let words = shell_words::split(command).ok()?;
    if words.is_empty() || words[0].contains('=') {
        return None;
    }
    Some(words)
}

/// Claims every port of the stack in one request, all or nothing
/// (`claim_many`); then, on the same connection, each id again for the
/// listeners of those that take a descriptor. Nothing is held if any step
/// fails.
fn claim_all(
    paths: &Paths,
    client: &mut Client,
    stack: &Stack,
) -> Result<HashMap<String, (u16, Vec<OwnedFd>)>> {
    let with_port: Vec<&Service> = stack
        .services
        .iter()
        .filter(|s| s.port != PortWant::None)
        .collect();
    let mut got: HashMap<String, (u16, Vec<OwnedFd>)> = HashMap::new();
    if with_port.is_empty() {
        return Ok(got);
    }
    let claims = with_port
        .iter()
        .map(|s| {
            let (port, fallback) = match s.port {
                PortWant::Exact(p) => (Some(i64::from(p)), false),
                PortWant::Preferred(p) => (Some(i64::from(p)), true),
                PortWant::Any | PortWant::None => (None, false),
            };
            ClaimArgs {
                id: s.id.clone(),
                port,
                fallback,
                range: stack.range.map(|(a, b)| (i64::from(a), i64::from(b))),
                // The leases end with this supervisor, whatever ends it.
                session: true,
                owner: Owner::Caller,
                names: s.names.clone(),
                ..ClaimArgs::default()
            }
        })
        .collect();
    let nothing = || format!("no port of {} is held and nothing started", stack.id());
    let (reply, _): (ClaimManyReply, _) = match client.call_as(Op::ClaimMany { claims }) {
        Ok(r) => r,
        Err(e) => {
            // The broker names the id that failed: say which service it is.
            let text = e.to_string();
            let named = with_port.iter().find_map(|s| {
                let rest = text.split_once(&format!("{}: ", s.id))?.1;
                Some(format!("service {}: {rest}", s.name))
            });
            bail!("{}; {}", named.unwrap_or(text), nothing());
        }
    };
    let made: Vec<String> = reply
        .claims
        .iter()
        .filter(|c| !c.existing)
        .map(|c| c.lease.id.clone())
        .collect();
    if let Some(c) = reply.claims.iter().find(|c| c.existing) {
        connect::release_all(paths, client, &made);
        bail!(
            "{} is already claimed (port {}): is this stack up elsewhere? `pb release {}` frees it; {}",
            c.lease.id,
            c.lease.port,
            c.lease.id,
            nothing()
        );
    }
    for (s, c) in with_port.iter().zip(&reply.claims) {
        let mut fds = Vec::new();
        if matches!(s.take, Take::Auto | Take::Fd) {
            let again = ClaimArgs {
                id: s.id.clone(),
                fds: true,
                family: Some(IpFamily::V4),
                session: true,
                owner: Owner::Caller,
                ..ClaimArgs::default()
            };
            match client.call_as::<ClaimReply>(Op::Claim(again)) {
                Ok((_, f)) => fds = f,
                Err(e) => {
                    connect::release_all(paths, client, &made);
                    bail!("service {}: {e}; {}", s.name, nothing());
                }
            }
        }
        got.insert(s.name.clone(), (c.lease.port, fds));
    }
    Ok(got)
}

/// Runs the stack until it is stopped; returns pb's exit code. `quiet`:
/// detached, output only to the files.
pub fn supervise(paths: &Paths, stack: &Stack, home: &StackHome, quiet: bool) -> Result<i32> {
    let mut client = connect::connect(paths)?;
    let mut claimed = claim_all(paths, &mut client, stack)?;
    let ports: HashMap<String, u16> = claimed.iter().map(|(k, (p, _))| (k.clone(), *p)).collect();
    let port_of = |name: &str| ports.get(name).copied();
    let shared = env::siblings(stack, &port_of);
    let names: Vec<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
    let printer = Arc::new(Printer::new(&names, quiet));
    let log_dir = logs::dir(&home.dir);
    logs::make_dir(&log_dir)?;
    let mut units = Vec::with_capacity(stack.services.len());
    for (index, svc) in stack.services.iter().enumerate() {
        let value = |n: &str, f: &str| env::lookup(&port_of, n, f);
        let command = env::interpolate(&svc.command, &value)?;
        let port = port_of(&svc.name);
        let listeners = claimed
            .remove(&svc.name)
            .map(|(_, f)| f)
            .unwrap_or_default();
        let mut vars: Vec<(OsString, OsString)> =
            shared.iter().map(|(k, v)| (k.into(), v.into())).collect();
        vars.push(("PB_SERVICE".into(), svc.name.clone().into()));
        let mut unset: Vec<OsString> = Vec::new();
        if let Some(p) = port {
            vars.push(("PORT".into(), p.to_string().into()));
            match svc.take {
                Take::Auto => vars.extend(shim::env(
                    paths,
                    &PortMap::Ports(vec![(p, svc.id.clone())]),
                )?),
                Take::Shim => vars.extend(shim::env(paths, &PortMap::First(svc.id.clone()))?),
                Take::Fd | Take::Port => unset.push(ENV_MAP.into()),
            }
        }
        for (k, v) in &svc.env {
            vars.push((k.into(), env::interpolate(v, &value)?.into()));
        }
        units.push(Unit {
            index,
            svc: svc.clone(),
            port,
            listeners,
            env: vars,
            unset,
            command,
            phase: Phase::Waiting,
            pid: None,
            restarts: 0,
            started: Instant::now(),
            ever_ready: false,
            probe: None,
            tail: Tail::default(),
            log: Arc::new(Mutex::new(LogFile::open(
                log_dir.join(format!("{}.log", svc.name)),
            ))),
            crashes_in_a_row: 0,
            restart_why: None,
        });
    }
    for u in &units {
        if let Some(p) = u.port {
            eprintln!("pb: {} → {} ({})", u.svc.name, output::url(p), u.svc.id);
        }
    }
    let watched = units
        .iter()
        .filter(|u| !u.svc.watch.is_empty())
        .map(|u| Ok((u.svc.clone(), super::watch::compile(&u.svc.watch)?)))
        .collect::<Result<Vec<_>>>()?;
    // Before any thread starts: every thread inherits the blocked signals.
    let fleet = Fleet::new().context("preparing to supervise")?;
    for (svc, set) in watched {
        super::watch::start(home, svc.name, svc.dir, svc.watch, set);
    }
    let rejoined = Arc::new(AtomicBool::new(false));
    follow_restart_requests(paths, stack.id(), home, rejoined.clone());
    let (forward, queued) = mpsc::sync_channel(logs::FORWARD_QUEUE);
    logs::forward(paths.clone(), stack.id(), queued);
    let mut sup = Supervisor {
        stack,
        home,
        paths,
        client,
        forward,
        rejoined,
        units,
        fleet,
        printer,
        status: Status::Starting,
        error: None,
        began: Instant::now(),
    };
    let code = sup.run();
    let ids: Vec<String> = sup
        .units
        .iter()
        .filter(|u| u.port.is_some())
        .map(|u| u.svc.id.clone())
        .collect();
    connect::release_all(paths, &mut sup.client, &ids);
    sup.status = match sup.error {
        Some(_) => Status::Failed,
        None => Status::Down,
    };
    let detail = sup.error.clone().unwrap_or_else(|| "stopped".into());
    sup.event(StackEventKind::Down, None, Some(detail));
    Ok(code)
}

/// Follows the broker's `stack.restart_requested` events for this stack
/// (`pb restart`, HTTP, the dashboard) and leaves each as a request for
/// the supervisor, poked with SIGUSR1. Reconnects (every second) while a
/// broker is away, and then sets `rejoined`: the broker (restarted) must
/// hear the stack again. Returns once the first subscription is open, or
/// after two seconds.
fn follow_restart_requests(
    paths: &Paths,
    stack_id: String,
    home: &StackHome,
    rejoined: Arc<AtomicBool>,
) {
    let (paths, dir) = (paths.clone(), home.dir.clone());
    let (opened, first) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        let home = StackHome { dir };
        let me = pb_platform::ProcessId::current();
        let op = || Op::Subscribe {
            patterns: vec!["pb:stack.restart_requested".into()],
            since_id: None,
        };
        let mut first = true;
        loop {
            if let Ok(mut c) = connect::existing(&paths) {
                if c.open_stream(op()).is_ok() {
                    let _ = opened.send(());
                    if !first {
                        rejoined.store(true, Ordering::Relaxed);
                        pb_platform::process::signal(me, libc::SIGUSR1);
                    }
                    first = false;
                    while let Ok(Some(item)) = c.next_item() {
                        let data = &item["data"];
                        if data["target"] != stack_id.as_str() {
                            continue;
                        }
                        if let Some(service) = data["details"]["service"].as_str() {
                            if home.request_restart(service, "requested").is_ok() {
                                pb_platform::process::signal(me, libc::SIGUSR1);
                            }
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let _ = first.recv_timeout(Duration::from_secs(2));
}

struct Supervisor<'a> {
    stack: &'a Stack,
    home: &'a StackHome,
    paths: &'a Paths,
    /// The connection the leases are claimed on, and the stack reported.
    client: Client,
    /// Where the services' output goes on its way to the broker.
    forward: mpsc::SyncSender<pb_proto::StackLogLine>,
    /// The broker came back after being away: report the stack again.
    rejoined: Arc<AtomicBool>,
    units: Vec<Unit>,
    fleet: Fleet,
    printer: Arc<Printer>,
    status: Status,
    error: Option<String>,
    began: Instant,
}

impl Supervisor<'_> {
    fn run(&mut self) -> i32 {
        self.save();
        // Bounded by the stop that always comes: a signal, a failure, or
        // every service ended.
        loop {
            let now = Instant::now();
            self.start_due(now);
            self.check_probes(now);
            if let Some(e) = self.check_timeouts(now) {
                return self.fail(e);
            }
            self.kill_overdue(now);
            let all_ready = self
                .units
                .iter()
                .all(|u| matches!(u.phase, Phase::Ready) || (u.ever_ready && !u.running()));
            if self.status == Status::Starting && all_ready {
                self.status = Status::Up;
                eprintln!(
                    "pb: {} is up ({} services, {} ms)",
                    self.stack.id(),
                    self.units.len(),
                    self.began.elapsed().as_millis()
                );
                self.event(StackEventKind::Up, None, None);
            }
            if self
                .units
                .iter()
                .all(|u| matches!(u.phase, Phase::Exited(_)))
            {
                eprintln!("pb: every service of {} has ended", self.stack.id());
                return self.stop_all(0);
            }
            // The stack's directory is where `pb down`, `pb restart` and
            // `pb up --status` find it: gone (its PB_HOME removed), nothing
            // could reach the stack any more, so it stops.
            if !self.home.dir.is_dir() {
                eprintln!(
                    "pb: {} is gone, and {} with it",
                    self.home.dir.display(),
                    self.stack.id()
                );
                return self.stop_all(0);
            }
            let busy = self.units.iter().any(|u| {
                matches!(
                    u.phase,
                    Phase::Starting | Phase::Backoff(_) | Phase::Stopping { .. }
                )
            });
            let ev = match self.fleet.wait(if busy { BUSY_WAIT } else { IDLE_WAIT }) {
                Ok(ev) => ev,
                Err(e) => return self.fail(format!("waiting for signals: {e}")),
            };
            for (pid, code) in ev.exited {
                if let Some(e) = self.exited(pid, code) {
                    return self.fail(e);
                }
            }
            if let Some(sig) = ev.stop {
                eprintln!("pb: stopping {} (signal {sig})", self.stack.id());
                return self.stop_all(0);
            }
            if ev.poked {
                if self.rejoined.swap(false, Ordering::Relaxed) {
                    self.save();
                }
                self.take_requests();
            }
        }
    }

    /// Starts every service whose needs are ready, and crashed ones whose
    /// backoff is over.
    fn start_due(&mut self, now: Instant) {
        for i in 0..self.units.len() {
            let due = match self.units[i].phase {
                Phase::Waiting => self.units[i].svc.needs.iter().all(|n| {
                    self.units
                        .iter()
                        .any(|u| &u.svc.name == n && (u.phase == Phase::Ready || u.ever_ready))
                }),
                Phase::Backoff(at) => now >= at,
                _ => false,
            };
            if due {
                self.start(i);
            }
        }
    }

    fn start(&mut self, i: usize) {
        let u = &mut self.units[i];
        let (reader, writer) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("pb: {}: cannot make a pipe: {e}", u.svc.name);
                u.phase = Phase::Backoff(Instant::now() + MAX_BACKOFF);
                return;
            }
        };
        let spec = (|| -> std::io::Result<ChildSpec> {
            let out = OwnedFd::from(writer);
            let err = out.try_clone()?;
            let null = OwnedFd::from(File::open("/dev/null")?);
            let listen_fds = u
                .listeners
                .iter()
                .map(|f| f.try_clone())
                .collect::<std::io::Result<Vec<_>>>()?;
            let (program, args) = match direct_words(&u.command) {
                Some(mut w) => (w.remove(0).into(), w.into_iter().map(Into::into).collect()),
                None => ("sh".into(), vec!["-c".into(), u.command.clone().into()]),
            };
            Ok(ChildSpec {
                program,
                args,
                fd_names: vec![u.svc.id.replace(':', "."); listen_fds.len()],
                listen_fds,
                env: u.env.clone(),
                unset: u.unset.clone(),
                listen_pid: true,
                stdio: Some([null, out, err]),
                dir: Some(u.svc.dir.clone()),
                own_group: true,
                ..ChildSpec::default()
            })
        })();
        let launched = spec
            .map_err(supervise::SpawnError::from)
            .and_then(supervise::spawn_held)
            .and_then(|h| h.launch());
        let pid = match launched {
            Ok(pid) => pid,
            Err(e) => {
                eprintln!("pb: {}: {e}", u.svc.name);
                u.phase = Phase::Exited(e.exit_code());
                return;
            }
        };
        logs::pump(
            File::from(OwnedFd::from(reader)),
            u.index,
            u.svc.name.clone(),
            self.printer.clone(),
            u.log.clone(),
            u.tail.clone(),
            self.forward.clone(),
        );
        u.pid = Some(pid);
        u.started = Instant::now();
        u.phase = Phase::Starting;
        u.probe = match (&u.svc.ready, u.port) {
            (Ready::Started, _) => None,
            (Ready::Command(_), _) => Some(Probe::Command {
                pid: None,
                next: Instant::now(),
            }),
            (ready, Some(port)) => Some(Probe::Thread(probe_thread(
                ready.clone(),
                port,
                u.svc.ready_timeout,
            ))),
            (_, None) => None,
        };
        if u.probe.is_none() {
            self.ready(i);
        }
        self.save();
    }

    fn ready(&mut self, i: usize) {
        let u = &mut self.units[i];
        u.phase = Phase::Ready;
        u.ever_ready = true;
        u.probe = None;
        let after = u.started.elapsed().as_millis();
        match u.port {
            Some(p) => eprintln!(
                "pb: {} is ready on {} ({after} ms)",
                u.svc.name,
                output::url(p)
            ),
            None => eprintln!("pb: {} is running ({after} ms)", u.svc.name),
        }
        self.save();
    }

    fn check_probes(&mut self, now: Instant) {
        for i in 0..self.units.len() {
            if self.units[i].phase != Phase::Starting {
                continue;
            }
            let done = match &mut self.units[i].probe {
                Some(Probe::Thread(rx)) => match rx.try_recv() {
                    Ok(()) => true,
                    Err(TryRecvError::Empty) => false,
                    // The prober gave up (its deadline): the timeout says so.
                    Err(TryRecvError::Disconnected) => false,
                },
                Some(Probe::Command { pid: None, next }) if now >= *next => {
                    let pid = self.probe_command(i);
                    if let Some(Probe::Command { pid: slot, next }) = &mut self.units[i].probe {
                        *slot = pid;
                        *next = now + COMMAND_EVERY;
                    }
                    false
                }
                _ => false,
            };
            if done {
                self.ready(i);
            }
        }
    }

    fn probe_command(&self, i: usize) -> Option<u32> {
        let u = &self.units[i];
        let Ready::Command(cmd) = &u.svc.ready else {
            return None;
        };
        let null = || File::open("/dev/null").ok().map(OwnedFd::from);
        let spec = ChildSpec {
            program: "sh".into(),
            args: vec!["-c".into(), cmd.clone().into()],
            env: u.env.clone(),
            unset: u.unset.clone(),
            stdio: Some([null()?, null()?, null()?]),
            dir: Some(u.svc.dir.clone()),
            own_group: true,
            ..ChildSpec::default()
        };
        supervise::spawn_held(spec).and_then(|h| h.launch()).ok()
    }

    fn check_timeouts(&mut self, now: Instant) -> Option<String> {
        for u in &self.units {
            if u.phase == Phase::Starting && now.duration_since(u.started) > u.svc.ready_timeout {
                return Some(format!(
                    "{} was not ready within {} ({}){}",
                    u.svc.name,
                    humantime::format_duration(u.svc.ready_timeout),
                    describe_ready(&u.svc.ready, u.port),
                    u.last_lines()
                ));
            }
        }
        None
    }

    fn kill_overdue(&mut self, now: Instant) {
        for u in &mut self.units {
            if let (Phase::Stopping { kill_at, again }, Some(pid)) = (u.phase, u.pid) {
                if now >= kill_at {
                    self.fleet.signal_group(pid, libc::SIGKILL);
                    // Once: the exit follows.
                    u.phase = Phase::Stopping {
                        kill_at: now + Duration::from_secs(3600),
                        again,
                    };
                }
            }
        }
    }

    /// A child ended: a service (what now follows from its restart
    /// policy), a readiness command, or an orphan of some tree. Returns a
    /// failure that ends the stack.
    fn exited(&mut self, pid: u32, code: i32) -> Option<String> {
        for i in 0..self.units.len() {
            if let Some(Probe::Command { pid: p, .. }) = &mut self.units[i].probe {
                if *p == Some(pid) {
                    *p = None;
                    if code == 0 {
                        self.ready(i);
                    }
                    return None;
                }
            }
        }
        let i = self.units.iter().position(|u| u.pid == Some(pid))?;
        let u = &mut self.units[i];
        u.pid = None;
        u.probe = None;
        // What it left in its group goes with it.
        self.fleet.signal_group(pid, libc::SIGKILL);
        if let Phase::Stopping { again, .. } = u.phase {
            if again {
                u.restarts += 1;
                self.start(i);
                self.restarted(i);
            } else {
                u.phase = Phase::Exited(code);
                self.save();
            }
            return None;
        }
        let restart = match u.svc.restart {
            Restart::Always => true,
            Restart::OnFailure => code != 0,
            Restart::No => false,
        };
        let ran = u.started.elapsed();
        eprintln!(
            "pb: {} exited with code {code} after {} ms{}",
            u.svc.name,
            ran.as_millis(),
            if restart { "; restarting" } else { "" }
        );
        let name = u.svc.name.clone();
        self.event(
            StackEventKind::Crash,
            Some(name),
            Some(format!(
                "exit code {code}{}",
                if restart { "; restarting" } else { "" }
            )),
        );
        let u = &mut self.units[i];
        if !restart {
            u.phase = Phase::Exited(code);
            let failed =
                (!u.ever_ready || code != 0 && self.status == Status::Starting).then(|| {
                    format!(
                        "{} exited with code {code} before it was ready{}",
                        u.svc.name,
                        u.last_lines()
                    )
                });
            self.save();
            return failed;
        }
        if ran >= STEADY {
            u.crashes_in_a_row = 0;
        }
        let wait = FIRST_BACKOFF
            .saturating_mul(1 << u.crashes_in_a_row.min(8))
            .min(MAX_BACKOFF);
        u.crashes_in_a_row += 1;
        u.restarts += 1;
        u.phase = Phase::Backoff(Instant::now() + wait);
        self.save();
        None
    }

    /// Restart requests left by `pb restart` (SIGUSR1 says they are there).
    fn take_requests(&mut self) {
        for (name, why) in self.home.take_restarts() {
            let Some(i) = self.units.iter().position(|u| u.svc.name == name) else {
                continue;
            };
            let why = match why.as_str() {
                "changed" => "a watched file changed",
                _ => "requested",
            };
            eprintln!("pb: restarting {name} ({why})");
            self.units[i].restart_why = Some(why.to_string());
            match self.units[i].pid {
                Some(pid) => {
                    let u = &mut self.units[i];
                    self.fleet.signal_group(pid, u.svc.stop_signal);
                    u.phase = Phase::Stopping {
                        kill_at: Instant::now() + u.svc.stop_grace,
                        again: true,
                    };
                }
                None => {
                    self.units[i].restarts += 1;
                    self.start(i);
                    self.restarted(i);
                }
            }
        }
    }

    /// Reports a restart that was asked for.
    fn restarted(&mut self, i: usize) {
        let why = self.units[i].restart_why.take();
        let name = self.units[i].svc.name.clone();
        self.event(StackEventKind::Restart, Some(name), why);
    }

    fn fail(&mut self, e: String) -> i32 {
        eprintln!("pb: {}: {e}", self.stack.id());
        self.error = Some(e);
        self.stop_all(1)
    }

    /// Stops every service, last started first, each with its signal and
    /// SIGKILL after its grace; then whatever is left below us.
    fn stop_all(&mut self, code: i32) -> i32 {
        self.status = Status::Stopping;
        self.save();
        let order: Vec<usize> = (0..self.units.len()).rev().collect();
        for i in order {
            let Some(pid) = self.units[i].pid else {
                continue;
            };
            let (sig, grace) = (self.units[i].svc.stop_signal, self.units[i].svc.stop_grace);
            self.fleet.signal_group(pid, sig);
            let kill_at = Instant::now() + grace;
            let mut killed = false;
            // Bounded: SIGKILL at `kill_at`, and a last second after it.
            while self.units[i].pid.is_some() {
                let now = Instant::now();
                if now >= kill_at + Duration::from_secs(1) {
                    break;
                }
                if now >= kill_at && !killed {
                    self.fleet.signal_group(pid, libc::SIGKILL);
                    killed = true;
                }
                if let Ok(ev) = self.fleet.wait(Duration::from_millis(20)) {
                    for (p, c) in ev.exited {
                        if let Some(u) = self.units.iter_mut().find(|u| u.pid == Some(p)) {
                            u.pid = None;
                            u.phase = Phase::Exited(c);
                        }
                    }
                }
            }
            self.fleet.signal_group(pid, libc::SIGKILL);
        }
        // Daemonized grandchildren left their groups, but not our tree.
        if self.fleet.any_left() {
            self.fleet.signal_all(libc::SIGTERM);
            let until = Instant::now() + Duration::from_secs(2);
            while self.fleet.any_left() && Instant::now() < until {
                let _ = self.fleet.wait(Duration::from_millis(20));
            }
            self.fleet.signal_all(libc::SIGKILL);
            let until = Instant::now() + Duration::from_secs(2);
            while self.fleet.any_left() && Instant::now() < until {
                let _ = self.fleet.wait(Duration::from_millis(20));
            }
        }
        let _ = self.fleet.wait(Duration::ZERO);
        code
    }

    /// The stack as it is now.
    fn info(&self) -> StackInfo {
        StackInfo {
            id: self.stack.id(),
            file: self.stack.file.display().to_string(),
            supervisor: std::process::id(),
            supervisor_start: pb_platform::ProcessId::current().start_time,
            status: self.status,
            error: self.error.clone(),
            services: self
                .units
                .iter()
                .map(|u| StackService {
                    name: u.svc.name.clone(),
                    id: u.svc.id.clone(),
                    state: match u.phase {
                        Phase::Waiting => "waiting",
                        Phase::Starting => "starting",
                        Phase::Ready => "ready",
                        Phase::Backoff(_) => "restarting",
                        Phase::Stopping { again: true, .. } => "restarting",
                        Phase::Stopping { .. } => "stopping",
                        Phase::Exited(_) => "exited",
                    }
                    .to_string(),
                    exit_code: match u.phase {
                        Phase::Exited(c) => Some(c),
                        _ => None,
                    },
                    pid: u.pid,
                    port: u.port,
                    url: u.port.map(output::url),
                    restarts: u.restarts,
                    ready: u.phase == Phase::Ready,
                })
                .collect(),
        }
    }

    /// Writes the state for `pb up --status` and reports it to the broker.
    fn save(&mut self) {
        self.report(None);
    }

    /// [`save`](Self::save), with what happened: a `stack.*` event.
    fn event(&mut self, kind: StackEventKind, service: Option<String>, detail: Option<String>) {
        self.report(Some(StackEvent {
            kind,
            service,
            detail,
        }));
    }

    fn report(&mut self, event: Option<StackEvent>) {
        let info = self.info();
        if let Err(e) = self.home.save(&info) {
            eprintln!("pb: cannot write the stack's state: {e:#}");
        }
        let op = Op::StackReport { stack: info, event };
        // A broker that went away (and may be back, its leases reloaded)
        // hears it on a new connection; while none answers, the state file
        // is all there is, and nothing need be said.
        if let Err(e) = connect::call_surviving(self.paths, &mut self.client, op) {
            if let Some(ClientError::Wire(w)) = e.downcast_ref::<ClientError>() {
                eprintln!("pb: the broker refused the stack's report: {}", w.message);
            }
        }
    }
}

fn describe_ready(ready: &Ready, port: Option<u16>) -> String {
    match (ready, port) {
        (Ready::Http(p), Some(port)) => format!("waiting for an answer to GET {p} on port {port}"),
        (Ready::Accepting, Some(port)) => {
            format!("waiting for it to accept a connection on port {port}")
        }
        (Ready::Command(c), _) => format!("waiting for `{c}` to succeed"),
        _ => "waiting for it to start".into(),
    }
}

/// A thread that sends once the service answers on `port` as `ready`
/// asks, and gives up at `limit`.
fn probe_thread(ready: Ready, port: u16, limit: Duration) -> Receiver<()> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        let server = SocketAddr::from(([127, 0, 0, 1], port));
        // Bounded by the deadline.
        while Instant::now() < deadline {
            let ok = match &ready {
                Ready::Http(path) => http_answers(server, path, deadline),
                _ => accepts(server, deadline),
            };
            if ok {
                let _ = tx.send(());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    rx
}

/// Whether the server takes a connection out of its listen queue before
/// `deadline`: the kernel shows the server's end of it with a file.
fn accepts(server: SocketAddr, deadline: Instant) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&server, Duration::from_millis(500)) else {
        return false;
    };
    let Ok(ours) = stream.local_addr() else {
        return false;
    };
    while Instant::now() < deadline {
        match pb_platform::sockets::accepted(ours, server) {
            // Accepted; or accepted and closed already.
            Some(true) | None => return true,
            Some(false) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    false
}

/// Whether a GET of `path` is answered with a status below 500 before
/// `deadline`. A connection that waits in the listen queue simply waits.
fn http_answers(server: SocketAddr, path: &str, deadline: Instant) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&server, Duration::from_millis(500)) else {
        return false;
    };
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return false;
    }
    let _ = stream.set_read_timeout(Some(left));
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        server.port()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    // The whole answer (up to a bound), so that the server is never reset
    // in the middle of sending it.
    let mut answer = Vec::new();
    let _ = (&mut stream).take(64 * 1024).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer[..answer.len().min(12)]);
    text.strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse::<u16>().ok())
        .is_some_and(|c| c < 500)
}

/// The path of the running pb, for starting a detached supervisor.
pub fn own_exe() -> Result<PathBuf> {
    std::env::current_exe().context("finding pb's own executable")
}

/// Waits until the detached supervisor says the stack is up (or failed,
/// or it ended); bounded by `limit`.
pub fn await_detached(home: &StackHome, pid: u32, limit: Duration) -> Result<StackInfo> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if let Some(s) = home.load().filter(|s| s.supervisor == pid) {
            match s.status {
                Status::Up => return Ok(s),
                Status::Failed | Status::Down => {
                    bail!(
                        "{} did not come up: {}",
                        s.id,
                        s.error.as_deref().unwrap_or("it stopped")
                    )
                }
                _ => {}
            }
        }
        if pb_platform::ProcessId::of(pid).is_none_or(|p| !p.is_alive()) {
            bail!(
                "the stack's supervisor ended: {}",
                home.supervisor_log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "the stack was not up within {}",
        humantime::format_duration(limit)
    )
}

/// `dir` as given, for the detached child to find the same file.
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_commands_run_without_a_shell() {
        assert_eq!(
            direct_words("python3 -m http.server 'a b'").unwrap(),
            ["python3", "-m", "http.server", "a b"]
        );
        assert!(direct_words("node app.js && echo done").is_none());
        assert!(direct_words("python3 -m http.server $PORT").is_none());
        assert!(direct_words("FOO=1 node app.js").is_none());
        assert_eq!(
            first_program("FOO=1 exec node app.js").as_deref(),
            Some("node")
        );
        assert_eq!(first_program("cd web && npm start"), None);
        assert_eq!(first_program("$NODE app.js"), None);
    }
}
