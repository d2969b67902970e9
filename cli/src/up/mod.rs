//! `pb up`: a whole stack from one file, every port claimed and bound
//! before anything starts. `file` reads and checks the stack, `env` makes
//! what each service learns of its siblings, `run` supervises it, `logs`
//! keeps and shows its output, `state` is where it lives while it is up.
//! `pb down`, `pb restart`, `pb logs` and `pb up --status` act on the stack
//! found from the working directory, as `pb up` finds it.

pub mod env;
pub mod file;
pub mod logs;
pub mod run;
pub mod state;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pb_platform::supervise::{self, ChildSpec};
use pb_proto::paths::Paths;

use crate::Format;
use file::Stack;
use pb_proto::StackInfo;
use state::StackHome;

/// Which stack a command is about.
#[derive(clap::Args, Clone, Default)]
pub struct StackArgs {
    /// The stack file (pb.toml, .portdaddyrc, Procfile); found upward from
    /// the working directory if not given.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The id's last segment (default: the git branch or worktree).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn load(a: &StackArgs) -> Result<(Stack, StackHome, Paths)> {
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let stack = file::load(&cwd, a.file.as_deref(), a.context.as_deref())?;
    let paths = Paths::from_env();
    let home = StackHome::new(&paths, &stack.id());
    Ok((stack, home, paths))
}

/// How long `pb up -d` waits for the stack to come up: the slowest
/// readiness limit, plus room to claim and start.
fn up_limit(stack: &Stack) -> Duration {
    stack
        .services
        .iter()
        .map(|s| s.ready_timeout)
        .sum::<Duration>()
        + Duration::from_secs(10)
}

pub fn up(a: &StackArgs, detach: bool, supervised: bool, fmt: Format) -> Result<i32> {
    let (stack, home, paths) = load(a)?;
    run::check_commands(&stack)?;
    let Some(lock) = home.lock()? else {
        let pid = home.load().map(|s| s.supervisor).unwrap_or(0);
        bail!(
            "{} is already up (supervisor pid {pid}): `pb down` stops it, `pb up --status` shows it",
            stack.id()
        );
    };
    if detach {
        // The detached supervisor takes the lock itself.
        drop(lock);
        return detached(a, &stack, &home, fmt);
    }
    let code = run::supervise(&paths, &stack, &home, supervised)?;
    drop(lock);
    Ok(code)
}

/// Starts the supervisor as a process of its own, out of the terminal's
/// process group, and waits until the stack is up.
fn detached(a: &StackArgs, stack: &Stack, home: &StackHome, fmt: Format) -> Result<i32> {
    let mut args: Vec<std::ffi::OsString> = vec!["up".into(), "--supervised".into()];
    args.push("-f".into());
    args.push(run::absolute(&stack.file).into());
    if let Some(c) = &a.context {
        args.push("--context".into());
        args.push(c.into());
    }
    let null = || std::fs::File::open("/dev/null").map(std::os::fd::OwnedFd::from);
    let log = std::fs::File::create(home.supervisor_log())
        .with_context(|| format!("creating {}", home.supervisor_log().display()))?;
    let spec = ChildSpec {
        program: run::own_exe()?.into(),
        args,
        stdio: Some([null()?, null()?, log.into()]),
        dir: Some(std::env::current_dir()?),
        own_group: true,
        ..ChildSpec::default()
    };
    let pid = supervise::spawn_held(spec).and_then(|h| h.launch())?;
    let state = run::await_detached(home, pid, up_limit(stack))?;
    print_status(&state, fmt);
    if fmt != Format::Json {
        eprintln!(
            "pb: {} is up, supervised by pid {pid}; `pb logs -f` follows it, `pb down` stops it",
            state.id
        );
    }
    Ok(0)
}

fn running(home: &StackHome, stack: &Stack) -> Result<StackInfo> {
    match home.load() {
        Some(s) if state::supervisor(&s).is_some() => Ok(s),
        _ => bail!("{} is not up", stack.id()),
    }
}

pub fn status(a: &StackArgs, fmt: Format) -> Result<i32> {
    let (stack, home, _) = load(a)?;
    let state = running(&home, &stack)?;
    print_status(&state, fmt);
    Ok(0)
}

fn print_status(s: &StackInfo, fmt: Format) {
    if fmt == Format::Json {
        crate::output::print_json(s);
        return;
    }
    let w = s
        .services
        .iter()
        .map(|x| x.name.len())
        .max()
        .unwrap_or(4)
        .max(7);
    outln!(
        "{:<w$}  {:<10}  {:>7}  {:>5}  {:>8}  URL",
        "SERVICE",
        "STATE",
        "PID",
        "PORT",
        "RESTARTS"
    );
    for x in &s.services {
        outln!(
            "{:<w$}  {:<10}  {:>7}  {:>5}  {:>8}  {}",
            x.name,
            x.state,
            x.pid.map_or("-".into(), |p| p.to_string()),
            x.port.map_or("-".into(), |p| p.to_string()),
            x.restarts,
            x.url.as_deref().unwrap_or("-")
        );
    }
}

pub fn down(a: &StackArgs, fmt: Format) -> Result<i32> {
    let (stack, home, _) = load(a)?;
    let state = running(&home, &stack)?;
    let sup = state::supervisor(&state).context("the supervisor is gone")?;
    pb_platform::process::signal(sup, libc::SIGTERM);
    // Each service has its grace in turn; then the supervisor lets go.
    let limit = stack
        .services
        .iter()
        .map(|s| s.stop_grace + Duration::from_secs(1))
        .sum::<Duration>()
        + Duration::from_secs(5);
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if !home.is_up() {
            match fmt {
                Format::Json => crate::output::print_json(&serde_json::json!({
                    "stack": stack.id(), "down": true,
                })),
                _ => eprintln!("pb: {} is down", stack.id()),
            }
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{} did not stop within {}",
        stack.id(),
        humantime::format_duration(limit)
    )
}

pub fn restart(a: &StackArgs, service: &str) -> Result<i32> {
    let (stack, home, paths) = load(a)?;
    let Some(svc) = stack.service(service) else {
        let names: Vec<&str> = stack.services.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "{} has no service {service:?} (it has {})",
            stack.id(),
            names.join(", ")
        );
    };
    let state = running(&home, &stack)?;
    let before = state
        .services
        .iter()
        .find(|s| s.name == service)
        .map_or(0, |s| s.restarts);
    // Asked of the broker, as HTTP and the dashboard ask: the supervisor
    // follows its `stack.restart_requested` events.
    let op = pb_proto::Op::StackRestart {
        stack: stack.id(),
        service: service.to_string(),
    };
    crate::connect::existing(&paths)?
        .call(op)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let limit = svc.stop_grace + svc.ready_timeout + Duration::from_secs(5);
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        let now = home
            .load()
            .and_then(|s| s.services.into_iter().find(|x| x.name == service));
        if let Some(x) = now.filter(|x| x.restarts > before && x.ready) {
            eprintln!(
                "pb: {service} restarted (pid {}){}",
                x.pid.unwrap_or(0),
                x.port
                    .map(|p| format!(", still on port {p}"))
                    .unwrap_or_default()
            );
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{service} was not ready again within {}",
        humantime::format_duration(limit)
    )
}

pub fn logs(a: &StackArgs, service: Option<&str>, n: usize, follow: bool) -> Result<i32> {
    let (stack, home, _) = load(a)?;
    let services: Vec<String> = match service {
        Some(s) if stack.service(s).is_none() => {
            bail!("{} has no service {s:?}", stack.id())
        }
        Some(s) => vec![s.to_string()],
        None => stack.services.iter().map(|s| s.name.clone()).collect(),
    };
    logs::show(&logs::dir(&home.dir), &services, n, follow, || home.is_up())?;
    Ok(0)
}
