//! The stack file `pb up` runs: pb's own `pb.toml`, Port Daddy's
//! `.portdaddyrc` (JSON), or a foreman/honcho `Procfile`, found upward from
//! the working directory. Each is read into one [`Stack`], checked whole
//! before anything is claimed or started: every error names the file, and
//! where the format knows them the line and column.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// The names searched for, in each directory from the working one up.
pub const FILE_NAMES: [&str; 5] = [
    "pb.toml",
    ".portdaddyrc",
    ".portdaddyrc.json",
    "portdaddy.config.json",
    "Procfile",
];

/// How long a service may take to become ready, unless its file says.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service has between its stop signal and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(5);
/// At most this many services in one stack.
pub const MAX_SERVICES: usize = 64;

/// A whole stack, checked, its services in start order (each after what it
/// needs).
#[derive(Debug, Clone)]
pub struct Stack {
    pub file: PathBuf,
    pub project: String,
    /// The id's last segment: the git branch or worktree, unless the file
    /// or `--context` says.
    pub context: Option<String>,
    pub range: Option<(u16, u16)>,
    pub services: Vec<Service>,
}

impl Stack {
    /// The stack's own id: `project[:context]`.
    pub fn id(&self) -> String {
        match &self.context {
            Some(c) => format!("{}:{c}", self.project),
            None => self.project.clone(),
        }
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    /// The lease's id: `project:name[:context]`.
    pub id: String,
    /// Run with `sh -c`, after `${name.port}` and `${name.url}` are
    /// replaced.
    pub command: String,
    pub dir: PathBuf,
    pub env: Vec<(String, String)>,
    pub port: PortWant,
    pub take: Take,
    pub needs: Vec<String>,
    pub ready: Ready,
    pub ready_timeout: Duration,
    pub restart: Restart,
    pub stop_signal: i32,
    pub stop_grace: Duration,
    pub watch: Vec<String>,
    /// The proxy's extra names for it (`names = ["docs"]`).
    pub names: Vec<String>,
}

/// Which port a service wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortWant {
    /// A worker: no port at all.
    None,
    /// Any free port (the id's sticky one first).
    Any,
    /// This one, or the stack does not start.
    Exact(u16),
    /// This one if free, else any.
    Preferred(u16),
}

/// How a service takes its port, as `pb exec` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// `pb exec`'s default: the listener at fd 3 (LISTEN_FDS) and $PORT,
    /// with the shim giving the app's own bind of $PORT that listener.
    Auto,
    /// fd 3 and $PORT, no shim.
    Fd,
    /// $PORT only; the app binds it over the broker's placeholder.
    Port,
    /// The shim gives the app's first bind, of any port, the listener (a
    /// hard-coded port).
    Shim,
}

/// When a service counts as ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    /// Once started (workers, and Procfile entries).
    Started,
    /// When it accepts a connection on its port: the kernel shows the
    /// probe's connection taken out of the listen queue.
    Accepting,
    /// When a GET of this path is answered (any status below 500).
    Http(String),
    /// When this command exits 0 (run with `sh -c`, retried).
    Command(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    OnFailure,
    Always,
}

/// Finds the stack file upward from `from` (or takes `explicit`) and reads
/// it; `context` overrides the id's last segment.
pub fn load(from: &Path, explicit: Option<&Path>, context: Option<&str>) -> Result<Stack> {
    let file = match explicit {
        Some(f) => {
            let f = if f.is_absolute() {
                f.to_path_buf()
            } else {
                from.join(f)
            };
            if !f.is_file() {
                bail!("{}: no such stack file", f.display());
            }
            f
        }
        None => find(from).ok_or_else(|| {
            anyhow!(
                "no stack file here or above {} (looked for {})",
                from.display(),
                FILE_NAMES.join(", ")
            )
        })?,
    };
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let root = file.parent().unwrap_or(Path::new("/")).to_path_buf();
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let raw = if name == "Procfile" || name.starts_with("Procfile.") {
        procfile(&text).map_err(|e| anyhow!("{}:{e}", file.display()))?
    } else if name.ends_with(".toml") {
        native(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?
    } else {
        portdaddy(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?
    };
    let context = match context.or(raw.context.as_deref()) {
        Some(c) => Some(c.to_string()),
        None => git_context(&root),
    };
    check(raw, &file, &root, context).map_err(|e| anyhow!("{}: {e:#}", file.display()))
}

/// The first stack file in `from` or a directory above it.
pub fn find(from: &Path) -> Option<PathBuf> {
    from.ancestors()
        .take(64)
        .flat_map(|d| FILE_NAMES.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// A stack as read, before it is checked.
struct RawStack {
    project: Option<String>,
    context: Option<String>,
    range: Option<(u16, u16)>,
    services: Vec<(String, RawService)>,
}

#[derive(Default)]
struct RawService {
    command: String,
    dir: Option<String>,
    env: BTreeMap<String, String>,
    port: Option<u16>,
    preferred_port: Option<u16>,
    no_port: bool,
    take: Option<String>,
    needs: Vec<String>,
    ready: Option<ReadyText>,
    ready_timeout: Option<String>,
    restart: Option<String>,
    stop_signal: Option<String>,
    stop_grace: Option<String>,
    watch: Vec<String>,
    names: Vec<String>,
    /// Port Daddy's `stack`: the id's middle segment instead of the name.
    stack: Option<String>,
}

enum ReadyText {
    Word(String),
    Http(String),
    Command(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    project: Option<String>,
    context: Option<String>,
    range: Option<String>,
    #[serde(default)]
    services: BTreeMap<String, TomlService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlService {
    cmd: String,
    dir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    port: Option<u16>,
    preferred_port: Option<u16>,
    #[serde(default)]
    no_port: bool,
    take: Option<String>,
    #[serde(default)]
    needs: Vec<String>,
    ready: Option<TomlReady>,
    ready_timeout: Option<String>,
    restart: Option<String>,
    stop_signal: Option<String>,
    stop_grace: Option<String>,
    #[serde(default)]
    watch: Vec<String>,
    #[serde(default)]
    names: Vec<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TomlReady {
    Word(String),
    Table(ReadyTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadyTable {
    http: Option<String>,
    cmd: Option<String>,
}

fn native(text: &str) -> Result<RawStack> {
    let f: TomlFile = toml::from_str(text).map_err(|e| anyhow!("{}", suggest(&e.to_string())))?;
    let mut services = Vec::new();
    for (name, s) in f.services {
        let ready = match s.ready {
            None => None,
            Some(TomlReady::Word(w)) => Some(ReadyText::Word(w)),
            Some(TomlReady::Table(ReadyTable {
                http: Some(p),
                cmd: None,
            })) => Some(ReadyText::Http(p)),
            Some(TomlReady::Table(ReadyTable {
                http: None,
                cmd: Some(c),
            })) => Some(ReadyText::Command(c)),
            Some(_) => bail!("service {name}: `ready` takes one of `http` or `cmd`"),
        };
        services.push((
            name,
            RawService {
                command: s.cmd,
                dir: s.dir,
                env: s.env,
                port: s.port,
                preferred_port: s.preferred_port,
                no_port: s.no_port,
                take: s.take,
                needs: s.needs,
                ready,
                ready_timeout: s.ready_timeout,
                restart: s.restart,
                stop_signal: s.stop_signal,
                stop_grace: s.stop_grace,
                watch: s.watch,
                names: s.names,
                stack: None,
            },
        ));
    }
    let range = f.range.as_deref().map(parse_range).transpose()?;
    Ok(RawStack {
        project: f.project,
        context: f.context,
        range,
        services,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PdFile {
    project: Option<String>,
    port_range: Option<PdRange>,
    #[serde(default, deserialize_with = "unique_entries")]
    services: Vec<(String, PdService)>,
}

/// A JSON object's entries in file order, refusing a key given twice (which
/// a map would silently take the last of).
fn unique_entries<'de, D, T>(d: D) -> Result<Vec<(String, T)>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Entries<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Entries<T> {
        type Value = Vec<(String, T)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of services")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut m: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out: Vec<(String, T)> = Vec::new();
            while let Some(k) = m.next_key::<String>()? {
                if out.iter().any(|(n, _)| *n == k) {
                    return Err(serde::de::Error::custom(format!("duplicate service {k:?}")));
                }
                let v = m.next_value()?;
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Entries(std::marker::PhantomData))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PdRange {
    Pair([u16; 2]),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PdService {
    cmd: Option<String>,
    dev: Option<String>,
    port: Option<u16>,
    preferred_port: Option<u16>,
    health_path: Option<String>,
    health: Option<String>,
    #[serde(default)]
    needs: Vec<String>,
    #[serde(default)]
    no_port: bool,
    dir: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    stack: Option<String>,
}

fn portdaddy(text: &str) -> Result<RawStack> {
    let f: PdFile =
        serde_json::from_str(text).map_err(|e| anyhow!("{}", suggest(&e.to_string())))?;
    let mut services = Vec::new();
    for (name, s) in f.services {
        let command = s
            .cmd
            .or(s.dev)
            .ok_or_else(|| anyhow!("service {name}: no `cmd` (or `dev`)"))?;
        // Port Daddy waits for an HTTP answer, at `/` unless told.
        let ready = (!s.no_port)
            .then(|| ReadyText::Http(s.health_path.or(s.health).unwrap_or_else(|| "/".into())));
        services.push((
            name,
            RawService {
                command,
                dir: s.dir,
                env: s.env,
                port: s.port,
                preferred_port: s.preferred_port,
                no_port: s.no_port,
                needs: s.needs,
                ready,
                stack: s.stack,
                ..RawService::default()
            },
        ));
    }
    let range = match f.port_range {
        None => None,
        Some(PdRange::Pair([a, b])) => Some((a, b)),
        Some(PdRange::Text(t)) => Some(parse_range(&t)?),
    };
    Ok(RawStack {
        project: f.project,
        context: None,
        range,
        services,
    })
}

/// `name: command` per line, as foreman and honcho read it; `#` starts a
/// comment line. Every entry gets a port ($PORT), as foreman gives one.
fn procfile(text: &str) -> Result<RawStack> {
    let mut services = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, command) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("{}:1: expected `name: command`, found {line:?}", n + 1))?;
        let (name, command) = (name.trim(), command.trim());
        if services.iter().any(|(n, _)| n == name) {
            bail!("{}:1: duplicate service {name:?}", n + 1);
        }
        if command.is_empty() {
            bail!("{}:{}: {name} has no command", n + 1, name.len() + 2);
        }
        services.push((
            name.to_string(),
            RawService {
                command: command.to_string(),
                ready: Some(ReadyText::Word("started".into())),
                ..RawService::default()
            },
        ));
    }
    Ok(RawStack {
        project: None,
        context: None,
        range: None,
        services,
    })
}

/// Adds "did you mean" to serde's unknown-field message, from the fields
/// it lists as expected.
fn suggest(message: &str) -> String {
    let Some(at) = message.find("unknown field `") else {
        return message.to_string();
    };
    let rest = &message[at + "unknown field `".len()..];
    let Some(end) = rest.find('`') else {
        return message.to_string();
    };
    let unknown = &rest[..end];
    let expected: Vec<&str> = rest[end + 1..]
        .split('`')
        .skip(1)
        .step_by(2)
        .take_while(|w| !w.contains('\n'))
        .collect();
    let nearest = expected
        .iter()
        .map(|w| (strsim::damerau_levenshtein(unknown, w), *w))
        .filter(|(d, _)| *d <= (unknown.len() / 2).max(2))
        .min();
    match nearest {
        Some((_, w)) => format!("{}\n(did you mean `{w}`?)", message.trim_end()),
        None => message.to_string(),
    }
}

fn parse_range(text: &str) -> Result<(u16, u16)> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| anyhow!("range {text:?}: expected A-B, e.g. 4000-4999"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("range {text:?}: {p:?} is not a port"))
    };
    Ok((port(a)?, port(b)?))
}

fn duration(what: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    match text {
        None => Ok(default),
        Some(t) => pb_proto::duration::parse(t).map_err(|e| anyhow!("{what} {t:?}: {e}")),
    }
}

fn signal(text: Option<&str>) -> Result<i32> {
    let Some(t) = text else {
        return Ok(libc::SIGTERM);
    };
    let name = t.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    Ok(match name {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        _ => bail!("stop_signal {t:?}: expected TERM, INT, QUIT, HUP, KILL, USR1, USR2 or WINCH"),
    })
}

/// A service name: what `${name.port}` and `NAME_PORT` are made from.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("service name {name:?}: use letters, digits, '-' and '_' (at most 64), starting with a letter or digit");
    }
    Ok(())
}

/// Turns what was read into a [`Stack`], or says what is wrong with it.
fn check(raw: RawStack, file: &Path, root: &Path, context: Option<String>) -> Result<Stack> {
    if raw.services.is_empty() {
        bail!("no services");
    }
    if raw.services.len() > MAX_SERVICES {
        bail!("{} services; at most {MAX_SERVICES}", raw.services.len());
    }
    let project = match raw.project {
        Some(p) => p,
        None => segment(root.file_name().and_then(|n| n.to_str()).unwrap_or("stack")),
    };
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (name, _) in &raw.services {
        check_name(name)?;
        // Names that differ only in case or '-'/'_' make the same variable.
        if let Some(other) = seen.insert(env_name(name), name) {
            bail!("services {other} and {name} would share the variables {}_PORT and {}_URL: rename one", env_name(name), env_name(name));
        }
    }
    let names: Vec<&str> = raw.services.iter().map(|(n, _)| n.as_str()).collect();
    let mut services = Vec::new();
    for (name, s) in &raw.services {
        let ctx = |e: anyhow::Error| anyhow!("service {name}: {e:#}");
        let middle = s.stack.as_deref().unwrap_or(name);
        let id = match &context {
            Some(c) => format!("{project}:{middle}:{c}"),
            None => format!("{project}:{middle}"),
        };
        pb_broker::ids::check_id(&id).map_err(|e| ctx(anyhow!("{}", e.message)))?;
        for n in &s.needs {
            if !names.contains(&n.as_str()) {
                let near = names
                    .iter()
                    .map(|k| (strsim::damerau_levenshtein(n, k), *k))
                    .min()
                    .filter(|(d, _)| *d <= 2)
                    .map(|(_, k)| format!(" (did you mean {k}?)"))
                    .unwrap_or_default();
                return Err(ctx(anyhow!("needs {n:?}, which is no service here{near}")));
            }
            if n == name {
                return Err(ctx(anyhow!("needs itself")));
            }
        }
        let port = match (s.no_port, s.port, s.preferred_port) {
            (true, None, None) => PortWant::None,
            (true, _, _) => return Err(ctx(anyhow!("no_port with a port"))),
            (false, Some(_), Some(_)) => {
                return Err(ctx(anyhow!("both port and preferred_port: name one")))
            }
            (false, Some(0), _) | (false, _, Some(0)) => {
                return Err(ctx(anyhow!("port 0 is not a port")))
            }
            (false, Some(p), None) => PortWant::Exact(p),
            (false, None, Some(p)) => PortWant::Preferred(p),
            (false, None, None) => PortWant::Any,
        };
        let take = match s.take.as_deref() {
            None | Some("auto") => Take::Auto,
            Some("fd") => Take::Fd,
            Some("port") => Take::Port,
            Some("shim") => Take::Shim,
            Some(t) => return Err(ctx(anyhow!("take {t:?}: expected auto, fd, port or shim"))),
        };
        let ready = match (&s.ready, port) {
            (Some(ReadyText::Word(w)), _) if w == "started" => Ready::Started,
            (Some(ReadyText::Word(w)), PortWant::None) if w == "accepting" => {
                return Err(ctx(anyhow!("ready = \"accepting\" needs a port")))
            }
            (Some(ReadyText::Word(w)), _) if w == "accepting" => Ready::Accepting,
            (Some(ReadyText::Word(w)), _) => {
                return Err(ctx(anyhow!(
                    "ready {w:?}: expected \"started\", \"accepting\", {{ http = \"/path\" }} or {{ cmd = \"...\" }}"
                )))
            }
            (Some(ReadyText::Http(_)), PortWant::None) => {
                return Err(ctx(anyhow!("an HTTP readiness check needs a port")))
            }
            (Some(ReadyText::Http(p)), _) => {
                if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                    return Err(ctx(anyhow!("ready http {p:?}: a path, starting with /")));
                }
                Ready::Http(p.clone())
            }
            (Some(ReadyText::Command(c)), _) => Ready::Command(c.clone()),
            (None, PortWant::None) => Ready::Started,
            (None, _) => Ready::Accepting,
        };
        let restart = match s.restart.as_deref() {
            None | Some("no") => Restart::No,
            Some("on-failure") => Restart::OnFailure,
            Some("always") => Restart::Always,
            Some(r) => {
                return Err(ctx(anyhow!(
                    "restart {r:?}: expected no, on-failure or always"
                )))
            }
        };
        let dir = match &s.dir {
            Some(d) => root.join(d),
            None => root.to_path_buf(),
        };
        if !dir.is_dir() {
            return Err(ctx(anyhow!("dir {}: no such directory", dir.display())));
        }
        if s.command.trim().is_empty() {
            return Err(ctx(anyhow!("an empty command")));
        }
        for k in s.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(ctx(anyhow!("env {k:?}: not a variable name")));
            }
        }
        services.push(Service {
            name: name.clone(),
            id,
            command: s.command.clone(),
            dir,
            env: s.env.clone().into_iter().collect(),
            port,
            take,
            needs: s.needs.clone(),
            ready,
            ready_timeout: duration(
                "ready_timeout",
                s.ready_timeout.as_deref(),
                DEFAULT_READY_TIMEOUT,
            )
            .map_err(ctx)?,
            restart,
            stop_signal: signal(s.stop_signal.as_deref()).map_err(ctx)?,
            stop_grace: duration("stop_grace", s.stop_grace.as_deref(), DEFAULT_STOP_GRACE)
                .map_err(ctx)?,
            watch: s.watch.clone(),
            names: s.names.clone(),
        });
        super::watch::compile(&s.watch).map_err(ctx)?;
    }
    let services = start_order(services)?;
    let stack = Stack {
        file: file.to_path_buf(),
        project,
        context,
        range: raw.range,
        services,
    };
    // Every reference in commands and env must name a service with a port.
    for s in &stack.services {
        for text in std::iter::once(&s.command).chain(s.env.iter().map(|(_, v)| v)) {
            super::env::interpolate(text, &|name, _| {
                stack
                    .service(name)
                    .filter(|t| t.port != PortWant::None)
                    .map(|_| "0".to_string())
            })
            .map_err(|e| anyhow!("service {}: {e}", s.name))?;
        }
    }
    Ok(stack)
}

/// Orders services so that each comes after what it needs (ties by name);
/// a cycle is an error that shows it.
fn start_order(services: Vec<Service>) -> Result<Vec<Service>> {
    let mut left: Vec<Service> = services;
    let mut done: Vec<Service> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let ready = left
            .iter()
            .position(|s| s.needs.iter().all(|n| done.iter().any(|d| &d.name == n)));
        match ready {
            Some(i) => done.push(left.remove(i)),
            None => bail!("the needs form a cycle: {}", cycle(&left)),
        }
    }
    Ok(done)
}

/// One cycle among `left` (where every service needs another of them),
/// written `a → b → a`.
fn cycle(left: &[Service]) -> String {
    let by_name: HashMap<&str, &Service> = left.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut path: Vec<&str> = vec![left[0].name.as_str()];
    for _ in 0..=left.len() {
        let here = by_name[path.last().expect("never empty")];
        let next = here
            .needs
            .iter()
            .map(String::as_str)
            .find(|n| by_name.contains_key(n))
            .expect("every service left needs another left");
        if let Some(at) = path.iter().position(|p| *p == next) {
            let mut c: Vec<&str> = path[at..].to_vec();
            c.push(next);
            return c.join(" → ");
        }
        path.push(next);
    }
    path.join(" → ")
}

/// `api-gw` → `API_GW`: the prefix of a service's variables.
pub fn env_name(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect()
}

/// Text made into one id segment: what git calls a branch (`feature/x`)
/// or a directory name.
fn segment(text: &str) -> String {
    let s: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(pb_broker::ids::MAX_SEGMENT_LEN)
        .collect();
    if s.is_empty() {
        "stack".into()
    } else {
        s
    }
}

/// The git branch of the checkout `dir` is in (a linked worktree's own),
/// or the worktree's name on a detached HEAD: two worktrees of one repo
/// never share it. Read from .git directly, without running git.
pub fn git_context(dir: &Path) -> Option<String> {
    let dotgit = dir
        .ancestors()
        .take(64)
        .map(|d| d.join(".git"))
        .find(|p| p.exists())?;
    let (gitdir, worktree) = if dotgit.is_dir() {
        (dotgit, None)
    } else {
        let text = std::fs::read_to_string(&dotgit).ok()?;
        let target = PathBuf::from(text.trim().strip_prefix("gitdir:")?.trim());
        let target = if target.is_absolute() {
            target
        } else {
            dotgit.parent()?.join(target)
        };
        let name = target.file_name()?.to_str()?.to_string();
        (target, Some(name))
    };
    let head = std::fs::read_to_string(gitdir.join("HEAD")).ok()?;
    match head.trim().strip_prefix("ref: refs/heads/") {
        Some(branch) => Some(segment(branch)),
        None => worktree
            .or_else(|| Some(head.trim().chars().take(8).collect()))
            .map(|s| segment(&s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_key_gets_the_nearest_known_one() {
        let e = native("[services.api]\ncomand = \"x\"\n")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("line 2"), "{e}");
        assert!(e.contains("did you mean `cmd`?"), "{e}");
        let e = portdaddy("{\"services\": {\"api\": {\"cmd\": \"x\", \"helthPath\": \"/\"}}}")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("did you mean `healthPath`?"), "{e}");
        assert!(e.contains("column"), "{e}");
    }

    #[test]
    fn a_procfile_is_name_colon_command() {
        let s = procfile("# web\nweb: python3 -m http.server $PORT\nworker:  sleep 9\n\n").unwrap();
        let names: Vec<&str> = s.services.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["web", "worker"]);
        assert_eq!(s.services[1].1.command, "sleep 9");
        assert!(procfile("web python3\n").is_err());
    }
}
