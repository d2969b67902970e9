//! The coordination commands: `pb lock`, `unlock`, `locks`, `pub`, `sub`,
//! `history`, `channels`, `agent ...`, `wait` and `log`. Each is one
//! request (or one stream) to the broker; this file only builds the ops
//! and prints what comes back.

use std::ffi::OsString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pb_platform::supervise::{self, ChildSpec};
use pb_proto::client::ClientError;
use pb_proto::paths::Paths;
use pb_proto::{
    ActivityArgs, ActivityEntry, ActivityReply, AgentArgs, AgentInfo, AgentReply, AgentsReply,
    ChannelsReply, ClearReply, HistoryReply, LockArgs, LockInfo, LockOwnerArg, LockReply,
    LocksReply, MessageInfo, Op, Owner, PublishReply, UnlockReply, UnregisterReply, WaitReply,
};
use serde_json::Value;

use crate::output::{self, human_ms, now_ms};
use crate::{connect, Format};

/// A lock TTL or wait timeout: Port Daddy's `--ttl <ms>` and `--timeout
/// <ms>`, so a bare number is milliseconds (`300000`); `5m` works too.
fn duration_ms(text: &str) -> Result<i64> {
    Ok(pb_proto::duration::parse_bare(text, pb_proto::duration::Bare::Millis)?.as_millis() as i64)
}

#[derive(Args)]
pub struct LockCmd {
    /// The lock's name, e.g. db-migrations.
    pub name: String,
    /// Time to live (default 5m): 90s, 10m, 1h, or bare milliseconds as
    /// in Port Daddy (300000).
    #[arg(long, value_name = "DUR")]
    pub ttl: Option<String>,
    /// Wait in the lock's queue while another owner holds it.
    #[arg(short, long)]
    pub wait: bool,
    /// With --wait: give up after this long (default 60s; bare numbers are
    /// milliseconds, as in Port Daddy).
    #[arg(long, value_name = "DUR", requires = "wait")]
    pub timeout: Option<String>,
    /// Hold the lock under this name instead of a process.
    #[arg(long, conflicts_with = "pid")]
    pub owner: Option<String>,
    /// The owning process (default: pb's parent, e.g. the calling shell).
    #[arg(long)]
    pub pid: Option<u32>,
    /// Hold the lock while CMD runs, then release it.
    #[arg(last = true, value_name = "CMD")]
    /// The command to run while holding the lock.
    pub command: Vec<OsString>,
}

fn owner_arg(
    owner: Option<String>,
    pid: Option<u32>,
    agent: Option<&str>,
) -> Result<Option<LockOwnerArg>> {
    Ok(match (owner, pid) {
        (Some(n), _) => Some(LockOwnerArg::Name(n)),
        (None, Some(p)) => Some(LockOwnerArg::Pid(p)),
        // The agent owns it when one is named; otherwise the shell or
        // script that ran pb (pb itself exits at once), which the broker
        // finds above the `$(…)` subshell that `T=$(pb lock x -q)` runs in.
        (None, None) if agent.is_some() => None,
        (None, None) => Some(LockOwnerArg::CallerParent),
    })
}

/// Who holds a lock, in words: `pid 42 (bash ./deploy.sh)`, `agent a1`.
fn owner_words(l: &LockInfo) -> String {
    match (&l.owner_name, l.pid) {
        (Some(n), _) => format!("{} {n}", l.owner),
        (None, Some(p)) => match pb_platform::process::command_of(p) {
            Some(cmd) => format!("pid {p} ({})", output::printable(&cmd, 60)),
            None => format!("pid {p}"),
        },
        _ => l.owner.clone(),
    }
}

fn lock_line(l: &LockInfo) -> String {
    let owner = owner_words(l);
    let now = now_ms();
    let until = match l.ttl_ms {
        0 => "until it exits".to_string(),
        _ => format!(
            "expires in {}",
            human_ms(l.expires_ms.unwrap_or(now).saturating_sub(now))
        ),
    };
    format!(
        "{}\ttoken {}\t{owner}\theld {}\t{until}\t{} waiting{}",
        l.name,
        l.token,
        human_ms(now.saturating_sub(l.since_ms)),
        l.waiters,
        l.command
            .as_ref()
            .map(|c| format!("\t{c}"))
            .unwrap_or_default()
    )
}

pub fn lock(paths: &Paths, c: LockCmd, agent: Option<String>, fmt: Format) -> Result<i32> {
    let hold_for_command = !c.command.is_empty();
    // CMD holds the lock for as long as it runs (a TTL of 0), even if pb is
    // killed and nothing renews it; `--ttl` bounds it instead.
    let ttl_ms = match c.ttl.as_deref() {
        Some(t) => Some(duration_ms(t)?),
        None if hold_for_command => Some(0),
        None => None,
    };
    let wait_ms = match (c.wait, c.timeout.as_deref()) {
        (false, _) => None,
        (true, Some(t)) => Some(duration_ms(t)?),
        (true, None) => Some(pb_proto::DEFAULT_LOCK_WAIT_MS),
    };
    // With a command, the lock is the command's own: it is forked first and
    // held before its exec, the lock is taken for its pid, and only then
    // does it run. So it holds the lock for exactly as long as it runs,
    // even if pb itself is killed (issue 14).
    // Connected (and the broker started, if it had to be) before anything
    // is forked: forking makes pb the subreaper of its tree, and a broker
    // started after that would be a child of pb's, ended with the tree.
    let mut client = connect::connect(paths)?;
    let held = if hold_for_command {
        let spec = ChildSpec {
            program: c.command[0].clone(),
            args: c.command[1..].to_vec(),
            late_env: Some(("PB_LOCK_TOKEN".into(), 20)),
            ..ChildSpec::default()
        };
        match supervise::spawn_held(spec) {
            Ok(h) => Some(h),
            Err(e) => {
                eprintln!("pb: {e}");
                return Ok(e.exit_code());
            }
        }
    } else {
        None
    };
    let owner = match &held {
        Some(h) => Some(LockOwnerArg::Pid(h.pid())),
        None => owner_arg(c.owner, c.pid, agent.as_deref())?,
    };
    let progress = wait_ms.map(|_| output::Progress::start(format!("waiting for lock {}", c.name)));
    let started = std::time::Instant::now();
    let mut attempts = 0;
    let mut acquire = |cl: &mut pb_proto::Client| {
        if attempts > 0 {
            eprintln!("pb: queued again for lock {}", c.name);
        }
        attempts += 1;
        let left = wait_ms.map(|w| {
            w.saturating_sub(started.elapsed().as_millis() as i64)
                .max(0)
        });
        cl.call_as::<LockReply>(Op::LockAcquire(LockArgs {
            name: c.name.clone(),
            ttl_ms,
            wait_ms: left,
            owner: owner.clone(),
            agent: agent.clone(),
        }))
    };
    // A waiter whose broker went away queues again at the restarted broker
    // (the queue did not survive it), for what is left of its timeout.
    let reply = match wait_ms {
        Some(_) => {
            let doing = format!("waiting for lock {}", c.name);
            connect::ride_through(paths, &doing, &mut client, acquire)
        }
        None => acquire(&mut client).map_err(Into::into),
    };
    drop(progress);
    let (reply, _) = match reply {
        Ok(r) => r,
        Err(e) => {
            if let Some(h) = held {
                h.abandon();
            }
            return Err(e);
        }
    };
    match fmt {
        Format::Json if !hold_for_command => output::print_json(&reply),
        Format::Quiet => outln!("{}", reply.lock.token),
        Format::Human => eprintln!(
            "pb: lock {} acquired (token {}{}), held by {}",
            reply.lock.name,
            reply.lock.token,
            if reply.existing { ", already held" } else { "" },
            owner_words(&reply.lock)
        ),
        Format::Json => {}
    }
    let Some(held) = held else {
        return Ok(0);
    };
    let child = match held.start_with(&reply.lock.token.to_string()) {
        Ok(ch) => ch,
        // The command's process is gone, and its lock with it.
        Err(e) => {
            eprintln!("pb: {e}");
            return Ok(e.exit_code());
        }
    };
    let client = Arc::new(Mutex::new(client));
    let done = Arc::new(AtomicBool::new(false));
    // Renew every third of the TTL while the command runs (a lock held
    // until CMD exits needs none: the wait below only wakes at the end).
    let every = match reply.lock.ttl_ms {
        0 => Duration::from_secs(u64::from(u32::MAX)),
        ttl => Duration::from_millis((ttl / 3).max(100)),
    };
    let renew = {
        let (client, done, name, owner, agent) = (
            client.clone(),
            done.clone(),
            c.name.clone(),
            owner.clone(),
            agent.clone(),
        );
        let paths = paths.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::park_timeout(every);
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let mut cl = client.lock().unwrap_or_else(|e| e.into_inner());
                let extend = Op::LockExtend {
                    name: name.clone(),
                    ttl_ms: None,
                    owner: owner.clone(),
                    agent: agent.clone(),
                };
                // Across a broker restart too: the holding survives it.
                if let Err(e) = connect::call_surviving(&paths, &mut cl, extend) {
                    eprintln!("pb: renewing lock {name} failed: {e:#}");
                }
            }
        })
    };
    let code = child.wait(supervise::DEFAULT_GRACE)?;
    done.store(true, Ordering::Relaxed);
    renew.thread().unpark();
    let _ = renew.join();
    // The lock was the command's process's, so it ended when that process
    // did: the broker's exit watch releases it (and grants the next
    // waiter) without a word from here. Wait (bounded) until it has, so a
    // script's next `pb lock NAME` finds it free.
    let mut client = client.lock().unwrap_or_else(|e| e.into_inner());
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        match client.call_as::<LockInfo>(Op::LockInfo {
            name: c.name.clone(),
        }) {
            Ok((l, _)) if l.token == reply.lock.token => {
                std::thread::sleep(Duration::from_millis(5))
            }
            _ => break,
        }
    }
    Ok(code)
}

pub fn unlock(
    paths: &Paths,
    name: String,
    force: bool,
    owner: Option<String>,
    pid: Option<u32>,
    agent: Option<String>,
    fmt: Format,
) -> Result<i32> {
    let owner = owner_arg(owner, pid, agent.as_deref())?;
    let (v, _): (UnlockReply, _) = connect::connect(paths)?.call_as(Op::LockRelease {
        name: name.clone(),
        owner,
        agent,
        force,
    })?;
    match fmt {
        Format::Json => output::print_json(&v),
        Format::Quiet => {}
        Format::Human => eprintln!("pb: lock {name} released"),
    }
    Ok(0)
}

pub fn locks(paths: &Paths, pattern: Option<String>, fmt: Format) -> Result<i32> {
    let (reply, _): (LocksReply, _) = connect::connect(paths)?.call_as(Op::Locks { pattern })?;
    match fmt {
        Format::Json => output::print_json(&reply),
        Format::Quiet => reply.locks.iter().for_each(|l| outln!("{}", l.name)),
        Format::Human if reply.locks.is_empty() => eprintln!("no locks held"),
        Format::Human => reply.locks.iter().for_each(|l| outln!("{}", lock_line(l))),
    }
    Ok(0)
}

/// A message argument: JSON when it parses as JSON, else a string.
fn message_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

pub fn publish(
    paths: &Paths,
    channel: String,
    message: String,
    agent: Option<String>,
    fmt: Format,
) -> Result<i32> {
    let text = if message == "-" {
        std::io::read_to_string(std::io::stdin()).context("reading the message from stdin")?
    } else {
        message
    };
    let (reply, _): (PublishReply, _) = connect::connect(paths)?.call_as(Op::Publish {
        channel,
        data: message_value(text.trim_end_matches('\n')),
        agent,
    })?;
    match fmt {
        Format::Json => output::print_json(&reply),
        Format::Quiet => outln!("{}", reply.id),
        Format::Human => eprintln!(
            "pb: published {} on {} ({} subscribers)",
            reply.id, reply.channel, reply.delivered
        ),
    }
    Ok(0)
}

/// UTC, to the second: 2024-01-15T10:30:00Z.
fn iso_time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn print_message(m: &MessageInfo, fmt: Format) {
    match fmt {
        Format::Json => outln!("{}", m.line()),
        Format::Quiet => outln!("{}", m.data),
        // Port Daddy's shape; the channel is `-j`'s `_pb.channel`.
        Format::Human => outln!("[{}] {}", iso_time(m.time_ms), m.data),
    }
}

pub fn subscribe(
    paths: &Paths,
    patterns: Vec<String>,
    since: Option<u64>,
    fmt: Format,
) -> Result<i32> {
    use std::io::Write;
    let mut client = connect::connect(paths)?;
    // The last id printed: after the broker went away, the stream resumes
    // right after it, so nothing is printed twice.
    let mut last = since;
    connect::ride_through(paths, "subscribing", &mut client, |client| {
        client.open_stream(Op::Subscribe {
            patterns: patterns.clone(),
            since_id: last,
        })?;
        while let Some(item) = client.next_item()? {
            let m: MessageInfo = serde_json::from_value(item).map_err(|e| {
                ClientError::Protocol(format!("a message the broker sent is malformed: {e}"))
            })?;
            print_message(&m, fmt);
            last = Some(m.id);
            // Each line as it arrives, also into a pipe.
            if std::io::stdout().flush().is_err() {
                return Ok(());
            }
        }
        Ok(())
    })?;
    Ok(0)
}

pub fn history(
    paths: &Paths,
    pattern: String,
    since: Option<u64>,
    limit: Option<i64>,
    fmt: Format,
) -> Result<i32> {
    let (reply, _): (HistoryReply, _) = connect::connect(paths)?.call_as(Op::History {
        pattern,
        since_id: since,
        limit,
    })?;
    reply.messages.iter().for_each(|m| print_message(m, fmt));
    Ok(0)
}

pub fn channels(paths: &Paths, clear: Option<String>, fmt: Format) -> Result<i32> {
    let mut client = connect::connect(paths)?;
    if let Some(channel) = clear {
        let (v, _): (ClearReply, _) = client.call_as(Op::ClearChannel { channel })?;
        match fmt {
            Format::Json => output::print_json(&v),
            _ => eprintln!("pb: cleared {} ({} messages)", v.channel, v.removed),
        }
        return Ok(0);
    }
    let (reply, _): (ChannelsReply, _) = client.call_as(Op::Channels)?;
    match fmt {
        Format::Json => output::print_json(&reply),
        Format::Quiet => reply.channels.iter().for_each(|c| outln!("{}", c.channel)),
        Format::Human => {
            for c in &reply.channels {
                outln!(
                    "{}\t{} messages\t{} subscribers\tlast id {}",
                    c.channel,
                    c.messages,
                    c.subscribers,
                    c.last_id.map(|i| i.to_string()).unwrap_or("-".into())
                );
            }
        }
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum AgentCmd {
    /// Register (or update) an agent.
    Register {
        /// The agent's id.
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// What kind of agent: claude, ci, ...
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// Most services it may hold at once.
        #[arg(long)]
        max_services: Option<i64>,
        /// Most locks it may hold at once.
        #[arg(long)]
        max_locks: Option<i64>,
        /// The process it lives and dies with (default: none; it lives by
        /// heartbeats).
        #[arg(long, conflicts_with = "parent")]
        pid: Option<u32>,
        /// It lives and dies with pb's parent (the calling shell).
        #[arg(long)]
        parent: bool,
    },
    /// Keep an agent from going stale.
    Heartbeat {
        /// The agent's id.
        id: String,
    },
    /// Remove an agent, releasing its services and locks.
    Unregister {
        /// The agent's id.
        id: String,
    },
    /// List agents.
    #[command(visible_alias = "list")]
    Ls,
    /// One agent's details.
    Info {
        /// The agent's id.
        id: String,
    },
}

fn agent_line(a: &AgentInfo) -> String {
    let now = now_ms();
    format!(
        "{}\t{}\t{}\tseen {} ago\t{} services\t{} locks{}",
        a.id,
        a.name.as_deref().unwrap_or("-"),
        a.kind.as_deref().unwrap_or("-"),
        human_ms(now.saturating_sub(a.last_seen_ms)),
        a.services.len(),
        a.locks.len(),
        a.pid.map(|p| format!("\tpid {p}")).unwrap_or_default()
    )
}

pub fn agent(paths: &Paths, cmd: AgentCmd, fmt: Format) -> Result<i32> {
    let mut client = connect::connect(paths)?;
    match cmd {
        AgentCmd::Register {
            id,
            name,
            kind,
            max_services,
            max_locks,
            pid,
            parent,
        } => {
            let owner = match (pid, parent) {
                (Some(p), _) => Owner::Pid(p),
                (None, true) => Owner::Pid(std::os::unix::process::parent_id()),
                (None, false) => Owner::None,
            };
            let (reply, _): (AgentReply, _) = client.call_as(Op::AgentRegister(AgentArgs {
                id,
                name,
                kind,
                max_services,
                max_locks,
                owner,
                metadata: None,
            }))?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => outln!("{}", reply.agent.id),
                Format::Human => eprintln!(
                    "pb: agent {} {}",
                    reply.agent.id,
                    if reply.existing {
                        "updated"
                    } else {
                        "registered"
                    }
                ),
            }
        }
        AgentCmd::Heartbeat { id } => {
            let (a, _): (AgentInfo, _) = client.call_as(Op::AgentHeartbeat { id })?;
            if fmt == Format::Json {
                output::print_json(&a);
            }
        }
        AgentCmd::Unregister { id } => {
            let (v, _): (UnregisterReply, _) =
                client.call_as(Op::AgentUnregister { id: id.clone() })?;
            match fmt {
                Format::Json => output::print_json(&v),
                Format::Quiet => {}
                Format::Human => eprintln!("pb: agent {id} unregistered"),
            }
        }
        AgentCmd::Ls => {
            let (reply, _): (AgentsReply, _) = client.call_as(Op::Agents)?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => reply.agents.iter().for_each(|a| outln!("{}", a.id)),
                Format::Human if reply.agents.is_empty() => eprintln!("no agents"),
                Format::Human => reply
                    .agents
                    .iter()
                    .for_each(|a| outln!("{}", agent_line(a))),
            }
        }
        AgentCmd::Info { id } => {
            let (a, _): (AgentInfo, _) = client.call_as(Op::AgentInfo { id })?;
            match fmt {
                Format::Json => output::print_json(&a),
                _ => {
                    outln!("{}", agent_line(&a));
                    for s in &a.services {
                        outln!("  service {s}");
                    }
                    for l in &a.locks {
                        outln!("  lock {l}");
                    }
                }
            }
        }
    }
    Ok(0)
}

pub fn wait(
    paths: &Paths,
    ids: Vec<String>,
    timeout: &str,
    http: Option<String>,
    fmt: Format,
) -> Result<i32> {
    let timeout_ms = duration_ms(timeout)?;
    let mut client = connect::connect(paths)?;
    let progress = output::Progress::start(format!("waiting for {}", ids.join(", ")));
    let started = std::time::Instant::now();
    // A broker that goes away mid-wait is waited for, and asked again for
    // what is left of the timeout.
    let reply = connect::ride_through(paths, "waiting", &mut client, |c| {
        let left = timeout_ms.saturating_sub(started.elapsed().as_millis() as i64);
        c.call_as::<WaitReply>(Op::Wait {
            ids: ids.clone(),
            timeout_ms: left.max(0),
            http_path: http.clone(),
        })
    });
    drop(progress);
    let (reply, _) = reply?;
    match fmt {
        Format::Json => output::print_json(&reply),
        Format::Quiet => reply.services.iter().for_each(|s| outln!("{}", s.port)),
        Format::Human => {
            for s in &reply.services {
                eprintln!(
                    "pb: {} is ready on port {} (after {} ms)",
                    s.id, s.port, s.waited_ms
                );
            }
        }
    }
    Ok(0)
}

#[derive(Args)]
pub struct LogCmd {
    /// Only this action (`lock.acquire`) or prefix (`lock.*`).
    #[arg(long)]
    pub action: Option<String>,
    /// Only this target: a service id, lock, channel or agent.
    #[arg(long)]
    pub target: Option<String>,
    /// Only what this agent did.
    #[arg(long = "by-agent", value_name = "AGENT")]
    pub by_agent: Option<String>,
    /// Only entries from the last DUR (10m, 2h).
    #[arg(long, value_name = "DUR")]
    pub since: Option<String>,
    /// The newest N entries (default 100).
    #[arg(short = 'n', long)]
    pub limit: Option<i64>,
    /// Keep printing new entries as they happen.
    #[arg(short, long)]
    pub follow: bool,
}

fn print_entry(e: &ActivityEntry, fmt: Format) {
    match fmt {
        Format::Json => outln!("{}", serde_json::to_string(e).expect("serializable")),
        _ => {
            let actor = match &e.actor {
                None => "broker".to_string(),
                Some(a) => {
                    let mut s = String::new();
                    if let Some(ag) = &a.agent {
                        s.push_str(&format!("agent {ag} "));
                    }
                    if let Some(p) = a.pid {
                        s.push_str(&format!("pid {p}"));
                    }
                    if let Some(c) = &a.command {
                        let short: String = c.chars().take(40).collect();
                        s.push_str(&format!(" ({short})"));
                    }
                    s
                }
            };
            outln!(
                "{} #{} {:<22} {:<24} {actor}  {}",
                iso_time(e.time_ms),
                e.id,
                e.action,
                e.target,
                e.details
            );
        }
    }
}

pub fn log(paths: &Paths, c: LogCmd, fmt: Format) -> Result<i32> {
    use std::io::Write;
    // pb's own option: a bare number is seconds.
    let since_ms = c
        .since
        .as_deref()
        .map(|t| pb_proto::duration::parse(t).map(|d| d.as_millis() as i64))
        .transpose()?
        .map(|d| now_ms() as i64 - d);
    let args = ActivityArgs {
        action: c.action,
        target: c.target,
        agent: c.by_agent,
        since_ms,
        limit: c.limit,
        follow: c.follow,
    };
    let mut client = connect::connect(paths)?;
    if !c.follow {
        let (reply, _): (ActivityReply, _) = client.call_as(Op::Activity(args))?;
        reply.entries.iter().for_each(|e| print_entry(e, fmt));
        return Ok(0);
    }
    // After the broker went away, the log is read again from the last
    // entry's time on; what was printed already (by id) is not again.
    let mut last: Option<(u64, u64)> = None;
    connect::ride_through(paths, "following the log", &mut client, |client| {
        let mut args = args.clone();
        if let Some((_, time_ms)) = last {
            args.since_ms = Some(time_ms as i64);
            args.limit = Some(10_000);
        }
        client.open_stream(Op::Activity(args))?;
        while let Some(item) = client.next_item()? {
            let e: ActivityEntry = serde_json::from_value(item).map_err(|e| {
                ClientError::Protocol(format!("an entry the broker sent is malformed: {e}"))
            })?;
            if last.is_some_and(|(id, _)| e.id <= id) {
                continue;
            }
            print_entry(&e, fmt);
            last = Some((e.id, e.time_ms));
            if std::io::stdout().flush().is_err() {
                return Ok(());
            }
        }
        Ok(())
    })?;
    Ok(0)
}
