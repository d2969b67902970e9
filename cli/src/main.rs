//! `pb`: the command-line client of the port broker, and (`pb daemon`) the
//! broker itself. Each subcommand is one request to the broker's core; this
//! file only parses arguments and prints results.

/// `println!` for pb's output: a closed stdout (`pb find | head -1`) ends
/// pb quietly with exit 0, as `ls | head` would, instead of a panic.
macro_rules! outln {
    () => {
        $crate::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}

mod color;
mod connect;
mod coord;
mod deferred;
mod doctor;
mod exec;
mod install;
mod mcp;
mod output;
mod portserver;
mod shim;
mod trust;
mod up;
mod webhook;
mod work;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use deferred::Deferred;
use pb_proto::client::ClientError;
use pb_proto::paths::Paths;
use pb_proto::{
    ClaimArgs, ClaimReply, FindReply, LeaseInfo, ListenersReply, MetricsReply, Op, Owner,
    ReleaseReply, StatusReply, WhoReply,
};

#[derive(Parser)]
#[command(
    name = "pb",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("PB_GIT_REV"), ")"),
    about = "A kernel-aware port broker: race-free ports for dev servers, tests and agents"
)]
struct Cli {
    /// Print JSON.
    #[arg(short = 'j', long, global = true)]
    json: bool,
    /// Print only the value.
    #[arg(short = 'q', long, global = true, conflicts_with = "json")]
    quiet: bool,
    /// Act as this registered agent: its limits apply, and what it takes
    /// ends when it goes stale.
    #[arg(long, global = true, env = "PB_AGENT", value_name = "ID")]
    agent: Option<String>,
    /// Colour: `auto` (on a terminal, unless NO_COLOR is set), `always`,
    /// `never`.
    #[arg(long, global = true, value_enum, default_value_t, value_name = "WHEN")]
    color: color::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
    Quiet,
}

#[derive(Args, Clone, Default)]
pub struct ClaimOpts {
    /// A specific port; fails if it is taken (unless --fallback).
    #[arg(short = 'p', long)]
    port: Option<i64>,
    /// Allocate from this range, e.g. 4000-4999.
    #[arg(long, value_name = "A-B")]
    range: Option<String>,
    /// Release automatically after this long: 30m, 2h, 1d.
    #[arg(long, value_name = "DUR")]
    expires: Option<String>,
    /// Like --expires, in seconds (PortManager's option).
    #[arg(long, value_name = "SECONDS", conflicts_with = "expires")]
    ttl: Option<u64>,
    /// With -p: take another port from the range if that one is taken.
    #[arg(long, requires = "port")]
    fallback: bool,
    /// A JSON object kept with the lease (at most 4 KiB), e.g.
    /// '{"urls": {"staging": "https://api.example.dev"}}' for `pb url -e`.
    #[arg(long, value_name = "JSON")]
    metadata: Option<String>,
    /// Another name the proxy routes to this service, beside the one its
    /// id gives (`docs` is http://docs.localhost:2080); repeatable.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// The agent acting (from --agent / PB_AGENT).
    #[arg(skip)]
    agent: Option<String>,
}

impl ClaimOpts {
    fn to_args(&self, id: &str) -> Result<ClaimArgs> {
        let range = self
            .range
            .as_deref()
            .map(pb_proto::parse_range_text)
            .transpose()?;
        let expires_ms = match (&self.expires, self.ttl) {
            (Some(d), _) => Some(pb_proto::duration::parse(d)?.as_millis() as i64),
            (None, Some(s)) => Some((s as i64).saturating_mul(1000)),
            (None, None) => None,
        };
        let metadata = self
            .metadata
            .as_deref()
            .map(|text| {
                serde_json::from_str::<serde_json::Value>(text).map_err(|e| {
                    pb_proto::WireError::new(
                        pb_proto::ErrorCode::InvalidMetadata,
                        format!("--metadata is not JSON: {e}"),
                    )
                })
            })
            .transpose()?;
        Ok(ClaimArgs {
            id: id.to_string(),
            port: self.port,
            range,
            expires_ms,
            fallback: self.fallback,
            agent: self.agent.clone(),
            metadata,
            names: self.names.clone(),
            ..Default::default()
        })
    }
}

#[derive(Args)]
struct ClaimCmd {
    /// The service id: project[:stack[:context]].
    id: String,
    #[command(flatten)]
    opts: ClaimOpts,
    /// The owning process: the lease ends when it does.
    #[arg(long)]
    pid: Option<u32>,
    /// Keep the lease after the shell that ran pb exits, until it is
    /// released or expires. Without it, a claim that no app has bound by
    /// the time that shell exits ends with it.
    #[arg(long, conflicts_with = "pid")]
    keep: bool,
    /// Print `export PORT=N`.
    #[arg(long)]
    export: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Claim a port for a service id (project[:stack[:context]]).
    Claim(Deferred<ClaimCmd>),
    /// PortManager's word for claim; prints `Allocated port: N`.
    Alloc(Deferred<ClaimCmd>),
    /// Release services by id, pattern (myapp:*, bulk*) or port number;
    /// several at once, all or (if one is bad) none.
    Release {
        /// Ids, patterns or port numbers.
        #[arg(required = true, value_name = "TARGET")]
        targets: Vec<String>,
    },
    /// List services, optionally matching a pattern.
    #[command(visible_aliases = ["ps"])]
    Find {
        /// Only ids matching this pattern (myapp:*).
        pattern: Option<String>,
        /// Every listener on the machine, brokered or not, with its process.
        #[arg(short = 'a', long, conflicts_with = "pattern")]
        all: bool,
    },
    /// Who holds a port: its service, and the processes with a socket on it.
    Who {
        /// A TCP port number.
        port: i64,
    },
    /// PortManager's list: a line per service, `Port: N, Service: ID, TTL:
    /// Ns` (`TTL: none` for a lease without one).
    List {
        /// Only ids matching this pattern (myapp:*).
        pattern: Option<String>,
    },
    /// Print a service's port (PortManager's lookup).
    Lookup {
        /// The service id.
        id: String,
    },
    /// Print a service's URL: its named URL through the proxy
    /// (http://api.myapp.localhost:2080) when the proxy runs, else
    /// http://localhost:PORT.
    Url {
        /// The service id.
        id: String,
        /// Which of the service's URLs (Port Daddy's `-e`): `local` is
        /// http://localhost:PORT, `named` the proxy's; the others are the
        /// ones its claim recorded in metadata `urls`
        /// ({"urls": {"staging": "https://..."}}).
        #[arg(
            short = 'e',
            long = "env",
            value_name = "NAME",
            value_parser = ["local", "named", "tunnel", "dev", "staging", "prod"]
        )]
        env: Option<String>,
        /// The named URL over HTTPS (the proxy's local CA: `pb trust`).
        #[arg(long, conflicts_with = "env")]
        https: bool,
    },
    /// Trust the proxy's local CA: in the system's store
    /// (update-ca-certificates) and in NSS databases (certutil: Chromium's
    /// and Firefox's); --remove undoes it.
    Trust(Deferred<trust::TrustCmd>),
    /// Check what pb needs and say how to fix what is wrong: the broker,
    /// its socket and store, IPv6 on loopback, *.localhost resolution, the
    /// unprivileged port start, the HTTP and proxy ports, the shim.
    Doctor,
    /// Install pb as a login service: systemd user units with socket
    /// activation on Linux (pb.socket, pb-http.socket, pb-proxy.socket,
    /// pb.service), a launchd agent on macOS. --dry-run prints them.
    Install(Deferred<install::InstallCmd>),
    /// Remove exactly the files `pb install` wrote, stopping them first.
    Uninstall(Deferred<install::UninstallCmd>),
    /// Serve portpicker's portserver protocol (PORTSERVER_ADDRESS): each
    /// request's pid gets a port of its own, free again when it exits.
    Portserver(Deferred<portserver::PortserverCmd>),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell): `source <(pb completions bash)`.
    Completions { shell: clap_complete::Shell },
    /// Print pb's man page (roff): `pb man | man -l -`.
    Man,
    /// Print services as shell export lines.
    Env {
        /// Only ids matching this pattern (myapp:*).
        pattern: Option<String>,
    },
    /// Claim a port and run a command on it; release when it ends.
    #[command(visible_aliases = ["run", "launch"])]
    Exec {
        /// The service id: project[:stack[:context]].
        id: String,
        #[command(flatten)]
        opts: ClaimOpts,
        /// The variable that carries the port.
        #[arg(long, default_value = "PORT")]
        env_name: String,
        /// Keep the lease after the command ends.
        #[arg(long)]
        keep: bool,
        /// Pass only $PORT, no sockets: the app binds the port itself, over
        /// the broker's placeholder (which its bind must step over with
        /// SO_REUSEADDR). Without it, an app's own bind of $PORT already
        /// gets the broker's listener, through the preload shim.
        #[arg(long, conflicts_with_all = ["shim", "both_families", "no_shim"])]
        port_only: bool,
        /// Hand over both loopback listeners (fd 3 on 127.0.0.1, fd 4 on
        /// [::1]) instead of one with the other family relayed to it: for
        /// servers that accept on every LISTEN_FDS socket.
        #[arg(long, conflicts_with = "shim")]
        both_families: bool,
        /// Do not load the preload shim by default: the app gets only the
        /// inherited listener and $PORT, and its own bind of $PORT fails.
        #[arg(long, conflicts_with = "shim")]
        no_shim: bool,
        /// How long the processes the command leaves behind get between
        /// SIGTERM and SIGKILL when it ends or pb is signalled: 5s, 500ms.
        #[arg(long, value_name = "DUR", default_value = "5s")]
        grace: String,
        /// Leave LISTEN_PID unset (systemfd's --no-pid), for file watchers
        /// that re-exec the app (cargo watch, watchexec): listenfd-style
        /// apps accept the sockets in whatever process they land.
        #[arg(long, conflicts_with_all = ["port_only", "shim"])]
        no_pid: bool,
        /// Load the preload shim: the app's own bind() of a hard-coded
        /// port gets the broker's socket. Without --map, its first TCP bind.
        #[arg(long)]
        shim: bool,
        /// With --shim: swap binds of PORT only, for the service ID (this
        /// one by default). Repeat for apps with several listeners.
        #[arg(long = "map", value_name = "PORT[=ID]", requires = "shim")]
        maps: Vec<String>,
        #[arg(
            required = true,
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "CMD"
        )]
        /// The command and its arguments.
        command: Vec<OsString>,
    },
    /// Print a one-time URL that logs a browser in to the dashboard and the
    /// HTTP API (valid for a minute, once), and open it in the browser
    /// ($BROWSER, or the desktop's) unless --print-url.
    Dashboard {
        /// Only print the URL.
        #[arg(long)]
        print_url: bool,
    },
    /// Print the bearer token another user's process must send to the HTTP
    /// API (Authorization: Bearer TOKEN). Your own processes need none.
    Token,
    /// Print the path of the preload shim, for LD_PRELOAD by hand (with
    /// PB_SHIM_MAP; see docs/CLI.md). `pb exec --shim` does this for you.
    ShimPath,
    /// Show whether the broker is running.
    Status,
    /// Print the running broker's Prometheus metrics, the OpenMetrics text
    /// that GET /metrics serves (`-j`: `{"text": ...}`).
    Metrics,
    /// Start the broker in the background.
    Start,
    /// Stop the broker.
    Stop,
    /// Stop and start the broker; with a service's name, restart that
    /// service of the running stack instead (`pb up`): its socket is kept,
    /// so requests sent meanwhile are answered by the new process.
    Restart {
        /// A service's name in the stack file.
        service: Option<String>,
        #[command(flatten)]
        stack: up::StackArgs,
    },
    /// Check the store and, when it is damaged, bring it back keeping all
    /// that can be read (the damaged file is kept aside). The broker must
    /// be stopped.
    Repair,
    /// Run the broker in the foreground.
    Daemon,
    /// Take a lock (and with `-- CMD`, hold it while CMD runs).
    Lock(Deferred<coord::LockCmd>),
    /// Release a lock.
    Unlock {
        /// The lock's name.
        name: String,
        /// Take it from another owner of your user.
        #[arg(long)]
        force: bool,
        /// The owner name it was taken under.
        #[arg(long, conflicts_with = "pid")]
        owner: Option<String>,
        /// The owning process it was taken for.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// List held locks, optionally matching a pattern.
    Locks {
        /// Only locks whose names match this pattern.
        pattern: Option<String>,
    },
    /// Publish a message (JSON, or text) on a channel; `-` reads stdin.
    Pub {
        /// The channel, e.g. build:api.
        channel: String,
        /// JSON, or text; `-` reads it from stdin.
        message: String,
    },
    /// Print messages on channels matching the patterns as they arrive.
    Sub {
        /// Channel patterns: build:api, build:*.
        #[arg(required = true)]
        patterns: Vec<String>,
        /// First the retained messages after this id.
        #[arg(long, value_name = "ID")]
        since: Option<u64>,
    },
    /// Retained messages on channels matching a pattern.
    History {
        /// A channel pattern: build:*.
        pattern: String,
        #[arg(long, value_name = "ID")]
        since: Option<u64>,
        #[arg(short = 'n', long)]
        limit: Option<i64>,
    },
    /// List channels with retained messages.
    Channels {
        /// Forget this channel's retained messages.
        #[arg(long, value_name = "CHANNEL")]
        clear: Option<String>,
    },
    /// Register agents, send heartbeats, list them.
    #[command(subcommand)]
    Agent(Deferred<coord::AgentCmd>),
    /// Work sessions: an agent's unit of work, with notes and file
    /// claims, handed over when its owner is gone.
    #[command(subcommand)]
    Session(Deferred<work::SessionCmd>),
    /// A session's notes: added, never changed.
    #[command(subcommand)]
    Note(Deferred<work::NoteCmd>),
    /// Advisory claims on files for a session: claim, release, who.
    #[command(subcommand)]
    Files(Deferred<work::FilesCmd>),
    /// Wait until services accept connections.
    Wait {
        /// The service ids to wait for.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Give up after this long: 30s, 5m, or bare milliseconds as in
        /// Port Daddy (3000).
        #[arg(long, default_value = "60s", value_name = "DUR")]
        timeout: String,
        /// Also require this HTTP path to answer 2xx/3xx.
        #[arg(long, value_name = "PATH")]
        http: Option<String>,
    },
    /// The activity log.
    Log(Deferred<coord::LogCmd>),
    /// Webhooks: signed HTTP deliveries of the broker's events.
    #[command(subcommand)]
    Webhook(Deferred<webhook::WebhookCmd>),
    /// Run a whole stack from pb.toml, .portdaddyrc or a Procfile: every
    /// port claimed and bound first, each service started on its socket
    /// when what it needs is ready. Ctrl-C stops it all.
    Up {
        #[command(flatten)]
        stack: up::StackArgs,
        /// Detach: a supervisor of its own keeps the stack up, beyond this
        /// terminal, until `pb down`.
        #[arg(short = 'd', long, conflicts_with = "status")]
        detach: bool,
        /// Show each service's state, pid, port and restarts.
        #[arg(long)]
        status: bool,
        /// (Used by -d: run as the detached supervisor.)
        #[arg(long, hide = true)]
        supervised: bool,
    },
    /// Serve the broker's tools to a coding agent over MCP on stdio
    /// (`claude mcp add pb -- pb mcp`): what it claims and locks is the
    /// agent's, freed when the agent exits.
    Mcp {
        /// List every tool, not only the essential ones and pd_discover
        /// (also PB_MCP_TOOLS=all). Every tool can be called either way.
        #[arg(long)]
        all: bool,
    },
    /// Stop a detached stack (`pb up -d`).
    Down {
        #[command(flatten)]
        stack: up::StackArgs,
    },
    /// A stack's output, kept per service under PB_HOME.
    Logs {
        /// One service (all of them, interleaved, if not given).
        service: Option<String>,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many lines to show first.
        #[arg(short = 'n', long, default_value_t = 50)]
        lines: usize,
        /// The stack file (-f is --follow here).
        #[arg(long = "file", value_name = "FILE")]
        file: Option<PathBuf>,
        /// The id's last segment (default: the git branch or worktree).
        #[arg(long, value_name = "NAME")]
        context: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    color::set(cli.color);
    let fmt = if cli.json {
        Format::Json
    } else if cli.quiet {
        Format::Quiet
    } else {
        Format::Human
    };
    // Port Daddy's clients name their agent in PORT_DADDY_AGENT; pb's own
    // flag and variable win.
    let agent = cli.agent.or_else(|| {
        std::env::var("PORT_DADDY_AGENT")
            .ok()
            .filter(|a| !a.trim().is_empty())
    });
    match run(cli.command, fmt, agent) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            let code = exit_code(&e);
            if fmt == Format::Json {
                output::print_json(&json_error(&e));
            } else {
                let pb = color::paint(color::stderr(), color::RED, "pb:");
                eprintln!("{pb} {e:#}");
            }
            ExitCode::from(code as u8)
        }
    }
}

/// Any error as `{"error", "code"[, "details"]}`: the broker's own code
/// when it answered, else the client's word for what went wrong.
fn json_error(e: &anyhow::Error) -> serde_json::Value {
    let wire = match e.downcast_ref::<ClientError>() {
        Some(ClientError::Wire(w)) => Some(w),
        _ => e.downcast_ref::<pb_proto::WireError>(),
    };
    if let Some(w) = wire {
        let mut v = serde_json::json!({"error": w.message, "code": w.code});
        if let Some(d) = &w.details {
            v["details"] = d.clone();
        }
        return v;
    }
    let code = if e.downcast_ref::<connect::Unavailable>().is_some()
        || e.downcast_ref::<connect::StartFailed>().is_some()
    {
        "unavailable"
    } else if e
        .downcast_ref::<pb_proto::duration::DurationError>()
        .is_some()
    {
        "invalid_duration"
    } else {
        "error"
    };
    serde_json::json!({"error": format!("{e:#}"), "code": code})
}

/// The exit code for an error; see docs/CLI.md.
fn exit_code(e: &anyhow::Error) -> i32 {
    if let Some(ClientError::Wire(w)) = e.downcast_ref::<ClientError>() {
        return w.code.exit_code();
    }
    if let Some(w) = e.downcast_ref::<pb_proto::WireError>() {
        return w.code.exit_code();
    }
    if e.downcast_ref::<pb_proto::duration::DurationError>()
        .is_some()
    {
        return 2;
    }
    if e.downcast_ref::<connect::Unavailable>().is_some()
        || e.downcast_ref::<connect::StartFailed>().is_some()
    {
        return 3;
    }
    1
}

fn run(command: Command, fmt: Format, agent: Option<String>) -> Result<i32> {
    let paths = Paths::from_env();
    match command {
        Command::Lock(Deferred(c)) => coord::lock(&paths, c, agent, fmt),
        Command::Unlock {
            name,
            force,
            owner,
            pid,
        } => coord::unlock(&paths, name, force, owner, pid, agent, fmt),
        Command::Locks { pattern } => coord::locks(&paths, pattern, fmt),
        Command::Pub { channel, message } => coord::publish(&paths, channel, message, agent, fmt),
        Command::Sub { patterns, since } => coord::subscribe(&paths, patterns, since, fmt),
        Command::History {
            pattern,
            since,
            limit,
        } => coord::history(&paths, pattern, since, limit, fmt),
        Command::Channels { clear } => coord::channels(&paths, clear, fmt),
        Command::Agent(Deferred(c)) => coord::agent(&paths, c, fmt),
        Command::Session(Deferred(c)) => work::session(&paths, c, fmt, agent),
        Command::Note(Deferred(c)) => work::note(&paths, c, fmt, agent),
        Command::Files(Deferred(c)) => work::files(&paths, c, fmt),
        Command::Wait { ids, timeout, http } => coord::wait(&paths, ids, &timeout, http, fmt),
        Command::Log(Deferred(c)) => coord::log(&paths, c, fmt),
        Command::Webhook(Deferred(c)) => webhook::webhook(&paths, c, fmt),
        Command::Daemon => {
            // Whoever started us waits to hear whether we came up.
            let ready = pb_platform::startup::Notifier::from_env();
            let result = pb_broker::Config::from_env()
                .map_err(anyhow::Error::from)
                .and_then(|cfg| pb_broker::run(cfg, &ready));
            match &result {
                Err(e) if e.is::<pb_broker::daemon::AlreadyRunning>() => ready.busy(),
                Err(e) => ready.failed(&format!("{e:#}")),
                Ok(()) => {}
            }
            result?;
            Ok(0)
        }
        Command::Claim(Deferred(c)) => claim(&paths, c, agent, fmt, false),
        Command::Alloc(Deferred(c)) => claim(&paths, c, agent, fmt, true),
        Command::Release { mut targets } => {
            // PortManager's form, `release 8001`, gets its answer.
            let by_port = targets.len() == 1 && targets[0].bytes().all(|b| b.is_ascii_digit());
            // As typed: digits are a port, anything else an id or a pattern.
            let target = targets.remove(0).into();
            let more = targets.into_iter().map(Into::into).collect();
            let (reply, _): (ReleaseReply, _) =
                connect::connect(&paths)?.call_as(Op::Release { target, more })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => reply.released.iter().for_each(|l| outln!("{}", l.port)),
                Format::Human if reply.released.is_empty() => eprintln!("nothing to release"),
                Format::Human => {
                    for l in &reply.released {
                        if by_port {
                            outln!("Released port: {}", l.port);
                        } else {
                            outln!("released {} (port {})", l.id, l.port);
                        }
                    }
                }
            }
            Ok(0)
        }
        Command::Find { all: true, .. } => {
            let (reply, _): (ListenersReply, _) =
                connect::connect(&paths)?.call_as(Op::Listeners { follow: false })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                _ => output::listener_table(&reply.listeners, fmt),
            }
            Ok(0)
        }
        Command::Who { port } => {
            let (reply, _): (WhoReply, _) = connect::connect(&paths)?.call_as(Op::Who { port })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                _ => output::who(&reply, fmt),
            }
            Ok(0)
        }
        Command::Find { pattern, .. } => {
            let reply = find(&paths, pattern)?;
            match fmt {
                Format::Json => output::print_json(&reply),
                _ => output::lease_table(&reply.services, fmt),
            }
            Ok(0)
        }
        Command::List { pattern } => {
            let reply = find(&paths, pattern)?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => reply.services.iter().for_each(|l| outln!("{}", l.id)),
                Format::Human => {
                    for l in &reply.services {
                        let ttl = l
                            .ttl_ms
                            .map_or("none".to_string(), |ms| format!("{}s", ms / 1000));
                        outln!("Port: {}, Service: {}, TTL: {ttl}", l.port, l.id);
                    }
                }
            }
            Ok(0)
        }
        Command::Lookup { id } => {
            let lease = get(&paths, id)?;
            match fmt {
                Format::Json => output::print_json(&lease),
                _ => outln!("{}", lease.port),
            }
            Ok(0)
        }
        Command::Url { id, env, https } => {
            let lease = get(&paths, id)?;
            let no_name = |why: &str| -> anyhow::Error {
                pb_proto::WireError::new(
                    pb_proto::ErrorCode::NotFound,
                    format!("{} has no named URL: {why}", lease.id),
                )
                .into()
            };
            let named = |https: bool| -> Result<String> {
                let host = lease
                    .names
                    .first()
                    .ok_or_else(|| no_name("no name is free for it (see pb find)"))?;
                if !https {
                    if let Some(u) = &lease.url {
                        return Ok(u.clone());
                    }
                }
                let (s, _): (StatusReply, _) = connect::connect(&paths)?.call_as(Op::Status)?;
                let proxy = s.proxy.ok_or_else(|| {
                    no_name(&format!(
                        "the proxy is off ({})",
                        s.proxy_off.as_deref().unwrap_or("PB_PROXY_ADDR")
                    ))
                })?;
                Ok(proxy.url(host, https))
            };
            let env = match (&env, https) {
                (_, true) => "https".to_string(),
                (Some(e), _) => e.clone(),
                (None, _) if lease.url.is_some() => "named".into(),
                (None, _) => "local".into(),
            };
            let url = if env == "local" {
                output::url(lease.port)
            } else if env == "named" || env == "https" {
                named(env == "https")?
            } else {
                let recorded = lease
                    .metadata
                    .as_ref()
                    .and_then(|m| m.get("urls"))
                    .and_then(|u| u.get(&env))
                    .and_then(|u| u.as_str());
                match recorded {
                    Some(u) => u.to_string(),
                    None => {
                        return Err(pb_proto::WireError::new(
                            pb_proto::ErrorCode::NotFound,
                            format!("no {env} URL for {}", lease.id),
                        )
                        .into())
                    }
                }
            };
            match fmt {
                Format::Json => {
                    output::print_json(&serde_json::json!({"id": lease.id, "env": env, "url": url}))
                }
                _ => outln!("{url}"),
            }
            Ok(0)
        }
        Command::Env { pattern } => {
            let reply = find(&paths, pattern)?;
            if fmt == Format::Json {
                let vars: serde_json::Map<String, serde_json::Value> = reply
                    .services
                    .iter()
                    .map(|l| (output::env_name(&l.id), l.port.into()))
                    .collect();
                output::print_json(&vars);
                return Ok(0);
            }
            for l in &reply.services {
                match fmt {
                    Format::Quiet => outln!("{}={}", output::env_name(&l.id), l.port),
                    _ => outln!("export {}={}", output::env_name(&l.id), l.port),
                }
            }
            Ok(0)
        }
        Command::Exec {
            id,
            opts,
            env_name,
            keep,
            port_only,
            both_families,
            no_shim,
            grace,
            no_pid,
            shim,
            maps,
            command,
        } => {
            let mode = if port_only {
                exec::Mode::PortOnly
            } else if shim {
                exec::Mode::Shim(maps)
            } else {
                exec::Mode::Sockets {
                    both_families,
                    preload: !no_shim,
                }
            };
            exec::run(
                &paths,
                exec::ExecOpts {
                    id,
                    claim: ClaimOpts { agent, ..opts },
                    env_name,
                    keep,
                    mode,
                    grace: grace_period(&grace)?,
                    no_pid,
                    quiet: fmt == Format::Quiet,
                    command,
                },
            )
        }
        Command::Up {
            stack,
            detach,
            status,
            supervised,
        } => {
            if status {
                up::status(&stack, fmt)
            } else {
                up::up(&stack, detach, supervised, fmt)
            }
        }
        Command::Down { stack } => up::down(&stack, fmt),
        Command::Mcp { all } => mcp::serve(&paths, all || pb_broker::config::mcp_all_tools()?),
        Command::Restart {
            service: Some(service),
            stack,
        } => up::restart(&stack, &service),
        Command::Logs {
            service,
            follow,
            lines,
            file,
            context,
        } => up::logs(
            &up::StackArgs { file, context },
            service.as_deref(),
            lines,
            follow,
        ),
        Command::Dashboard { print_url } => {
            let (reply, _): (pb_proto::LoginCodeReply, _) =
                connect::connect(&paths)?.call_as(Op::LoginCode)?;
            match fmt {
                Format::Json => output::print_json(&reply),
                _ => outln!("{}", reply.url),
            }
            if !print_url && open_in_browser(&reply.url) {
                eprintln!("pb: opened in your browser; the link works once, for a minute");
            }
            Ok(0)
        }
        Command::Token => {
            // The broker makes the token when it starts: make sure one ran.
            connect::connect(&paths)?.call(Op::Status)?;
            let file = pb_broker::token::path(&paths.state_dir);
            let token = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            match fmt {
                Format::Json => output::print_json(&serde_json::json!({"token": token.trim()})),
                _ => outln!("{}", token.trim()),
            }
            Ok(0)
        }
        Command::Trust(Deferred(t)) => trust::run(&paths, t, fmt),
        Command::Doctor => doctor::run(&paths, fmt),
        Command::Install(Deferred(c)) => install::install(&paths, c, fmt),
        Command::Uninstall(Deferred(c)) => install::uninstall(c, fmt),
        Command::Portserver(Deferred(c)) => portserver::run(&paths, c, fmt),
        Command::Completions { shell } => {
            let mut cmd = deferred::full_tree::<Cli>();
            clap_complete::generate(shell, &mut cmd, "pb", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => {
            clap_mangen::Man::new(deferred::full_tree::<Cli>()).render(&mut std::io::stdout())?;
            Ok(0)
        }
        Command::ShimPath => {
            let path = shim::path(&paths)?;
            match fmt {
                Format::Json => output::print_json(&serde_json::json!({"path": path})),
                _ => outln!("{}", path.display()),
            }
            Ok(0)
        }
        Command::Status => {
            let status = connect::existing(&paths)
                .and_then(|mut c| Ok(c.call_as::<StatusReply>(Op::Status)?.0));
            match (status, fmt) {
                (Ok(s), Format::Json) => output::print_json(&s),
                (Ok(s), Format::Quiet) => outln!("{}", s.pid),
                (Ok(s), Format::Human) => {
                    outln!(
                        "pb broker running (pid {}, up {})",
                        s.pid,
                        output::human_ms(s.uptime_ms)
                    );
                    if let Some(how) = s.started_by {
                        outln!("  started by:  {}", how.describe());
                    }
                    outln!("  leases:      {}", s.leases);
                    outln!("  connections: {}", s.connections);
                    outln!("  range:       {}-{}", s.range.0, s.range.1);
                    outln!("  socket:      {}", s.socket);
                    outln!("  database:    {}", s.database);
                    match (&s.http, &s.http_off) {
                        (Some(url), _) => outln!("  http:        {url}"),
                        (None, Some(why)) => outln!("  http:        off: {why}"),
                        (None, None) => outln!("  http:        off"),
                    }
                    match (&s.http_socket, &s.http_socket_off) {
                        (Some(path), _) => outln!("  http socket: {path}"),
                        (None, Some(why)) => outln!("  http socket: off: {why}"),
                        (None, None) => {}
                    }
                    match (&s.proxy, &s.proxy_off) {
                        (Some(p), _) => outln!(
                            "  proxy:       {} (https on {}; CA {})",
                            p.url("NAME.localhost", false),
                            p.https_port,
                            p.ca
                        ),
                        (None, Some(why)) => outln!("  proxy:       off: {why}"),
                        (None, None) => outln!("  proxy:       off"),
                    }
                }
                (Err(e), _) => return Err(e),
            }
            Ok(0)
        }
        Command::Metrics => {
            let (m, _): (MetricsReply, _) = connect::existing(&paths)?.call_as(Op::Metrics)?;
            match fmt {
                Format::Json => output::print_json(&m),
                _ => outln!("{}", m.text.trim_end()),
            }
            Ok(0)
        }
        Command::Start => {
            let (s, _): (StatusReply, _) = connect::connect(&paths)?.call_as(Op::Status)?;
            running(&s, fmt);
            Ok(0)
        }
        Command::Stop => stop(&paths, fmt),
        Command::Repair => repair(&paths, fmt),
        Command::Restart { service: None, .. } => {
            stop(&paths, Format::Quiet)?;
            let (s, _): (StatusReply, _) =
                connect::spawn_daemon(&paths)?.wait()?.call_as(Op::Status)?;
            running(&s, fmt);
            Ok(0)
        }
    }
}

/// `claim`, and `alloc` with PortManager's `Allocated port: N` line.
fn claim(
    paths: &Paths,
    c: ClaimCmd,
    agent: Option<String>,
    fmt: Format,
    alloc_words: bool,
) -> Result<i32> {
    let ClaimCmd {
        id,
        opts,
        pid,
        keep,
        export,
    } = c;
    let opts = ClaimOpts { agent, ..opts };
    // The shell that ran pb (above any `$(…)` subshell): if it exits before
    // an app binds the port, nobody will, and the lease ends.
    let claimant = (pid.is_none() && !keep)
        .then(|| pb_platform::ProcessId::current().lasting_ancestor())
        .flatten()
        .map(|p| p.pid);
    let args = ClaimArgs {
        owner: pid.map(Owner::Pid).unwrap_or(Owner::None),
        claimant,
        ..opts.to_args(&id)?
    };
    let (reply, _): (ClaimReply, _) = connect::connect(paths)?.call_as(Op::Claim(args))?;
    let port = reply.lease.port;
    match fmt {
        Format::Json => output::print_json(&reply),
        Format::Quiet => outln!("{port}"),
        Format::Human if export => outln!("export PORT={port}"),
        Format::Human if alloc_words => outln!("Allocated port: {port}"),
        Format::Human => outln!("{id} → port {port}"),
    }
    Ok(0)
}

fn find(paths: &Paths, pattern: Option<String>) -> Result<FindReply> {
    Ok(connect::connect(paths)?.call_as(Op::Find { pattern })?.0)
}

fn get(paths: &Paths, id: String) -> Result<LeaseInfo> {
    Ok(connect::connect(paths)?.call_as(Op::Get { id })?.0)
}

/// What `start` and `restart` say.
fn running(s: &StatusReply, fmt: Format) {
    match fmt {
        Format::Json => output::print_json(&serde_json::json!({"running": true, "pid": s.pid})),
        Format::Human => outln!("pb broker running (pid {})", s.pid),
        Format::Quiet => {}
    }
}

/// `pb repair`: under the broker's instance lock, so none starts meanwhile.
fn repair(paths: &Paths, fmt: Format) -> Result<i32> {
    use pb_broker::store::Repair;
    let db = paths.database();
    if !db.exists() {
        match fmt {
            Format::Json => output::print_json(&serde_json::json!({"outcome": "none"})),
            Format::Human => outln!("no store at {}: nothing to repair", db.display()),
            Format::Quiet => {}
        }
        return Ok(0);
    }
    pb_broker::home::prepare(paths)?;
    let lock_path = paths.lock_file();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let Some(_lock) = pb_platform::os::FileLock::try_exclusive(file)? else {
        anyhow::bail!(
            "a broker is running on {}: stop it first (pb stop)",
            db.display()
        );
    };
    let r = pb_broker::store::repair(&db)?;
    match fmt {
        Format::Json => output::print_json(&r),
        Format::Quiet => {}
        Format::Human => match &r {
            Repair::Sound { leases } => {
                outln!("the store is sound ({leases} leases): nothing to do")
            }
            Repair::Accepted {
                leases,
                lost,
                old_fingerprint,
            } => outln!(
                "kept {} as it is, with {leases} leases; {lost} acknowledged leases it lacks are lost. The old fingerprint is {}",
                db.display(),
                old_fingerprint.display()
            ),
            Repair::Salvaged {
                damaged,
                saved,
                lost,
                leases,
            } => {
                outln!("moved the damaged database to {}", damaged.display());
                for (table, rows) in saved {
                    outln!("saved {table}: {rows} rows");
                }
                for (table, why) in lost {
                    outln!("lost {table}: {why}");
                }
                outln!("the new store holds {leases} leases");
            }
        },
    }
    Ok(0)
}

fn stop(paths: &Paths, fmt: Format) -> Result<i32> {
    let mut client = match connect::existing(paths) {
        Ok(c) => c,
        Err(e) if e.is::<connect::Unavailable>() => {
            match fmt {
                Format::Human => outln!("pb broker is not running"),
                Format::Json => {
                    output::print_json(&serde_json::json!({"stopped": false, "running": false}))
                }
                Format::Quiet => {}
            }
            return Ok(0);
        }
        Err(e) => return Err(e),
    };
    let (status, _): (StatusReply, _) = client.call_as(Op::Status)?;
    client.call(Op::Shutdown)?;
    // Wait (bounded) until it has let go of its socket and lock.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pb_platform::ProcessId::of(status.pid).is_some_and(|p| p.is_alive()) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("the broker (pid {}) did not stop within 10s", status.pid);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    match fmt {
        Format::Human => outln!("pb broker stopped (pid {})", status.pid),
        Format::Json => output::print_json(
            &serde_json::json!({"stopped": true, "running": false, "pid": status.pid}),
        ),
        Format::Quiet => {}
    }
    Ok(0)
}

/// Opens `url` in the user's browser: $BROWSER if set, else the desktop's
/// opener when there is a desktop. Says whether one was started; without
/// one, the printed URL is the way in.
fn open_in_browser(url: &str) -> bool {
    let opener = match std::env::var("BROWSER") {
        Ok(b) if !b.trim().is_empty() => b,
        _ if cfg!(target_os = "macos") => "open".into(),
        _ if std::env::var_os("DISPLAY").is_some()
            || std::env::var_os("WAYLAND_DISPLAY").is_some() =>
        {
            "xdg-open".into()
        }
        _ => return false,
    };
    std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

/// `--grace`: at most an hour, so a typo cannot leave a tree standing.
fn grace_period(text: &str) -> Result<std::time::Duration> {
    let d = pb_proto::duration::parse(text).with_context(|| format!("--grace {text:?}"))?;
    if d > std::time::Duration::from_secs(3600) {
        anyhow::bail!("--grace {text:?} is longer than the limit of 1h");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    /// clap checks its own definitions only when a command is built: this
    /// builds every subcommand, so a clash (two `-f`) fails here, not for
    /// a user.
    #[test]
    fn the_command_line_is_well_formed() {
        super::deferred::full_tree::<super::Cli>().debug_assert();
    }

    /// Every subcommand, two levels down, parses into the same help with
    /// its arguments deferred as with the whole tree built at once: a
    /// deferred part that lost a global option or a subcommand shows here.
    #[test]
    fn deferred_subcommands_answer_as_the_whole_tree_does() {
        use clap::CommandFactory;
        let full = super::deferred::full_tree::<super::Cli>();
        let mut paths: Vec<Vec<String>> = Vec::new();
        for sub in full.get_subcommands() {
            let name = sub.get_name().to_string();
            paths.push(vec![name.clone()]);
            for nested in sub.get_subcommands() {
                paths.push(vec![name.clone(), nested.get_name().to_string()]);
            }
        }
        assert!(paths.len() > 60, "{} subcommands", paths.len());
        let help = |cmd: clap::Command, path: &[String]| {
            let args = std::iter::once("pb")
                .chain(path.iter().map(String::as_str))
                .chain(["--help"]);
            match cmd.try_get_matches_from(args) {
                Err(e) => e.render().to_string(),
                Ok(_) => panic!("{path:?} --help parsed"),
            }
        };
        for path in &paths {
            let deferred = help(super::Cli::command(), path);
            let whole = help(full.clone(), path);
            assert_eq!(deferred, whole, "pb {} --help", path.join(" "));
        }
    }
}
