//! Starting and stopping the broker: the log, private directories, the
//! single-instance lock, the store, the sockets (its own, or those socket
//! activation passed), the expiry timer, the webhook delivery worker and
//! signal handling.

use pb_platform::os::{self, FileLock};
use std::fs;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::UnixListener;
use tokio::sync::Notify;

use crate::config::Config;
use crate::core::coord;
use crate::core::{lock, Shared, SharedCore};
use crate::core::{now_ms, Core};
use crate::store::Store;
use crate::tasks::deliver;
use crate::tasks::reaper;
use crate::transport::http;
use crate::transport::ipc;
use pb_platform::startup::Notifier;
use pb_proto::StartedBy;

/// The longest the expiry timer sleeps, so a lease claimed with an earlier
/// expiry than any other is still ended within this much of its time.
const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// Holds the daemon lock for the life of the process.
fn take_lock(path: &Path) -> Result<FileLock> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    FileLock::try_exclusive(file)
        .with_context(|| format!("locking {}", path.display()))?
        .ok_or_else(|| AlreadyRunning(path.parent().unwrap_or(path).display().to_string()).into())
}

/// Another broker holds this PB_HOME's instance lock: a client that raced
/// another to start one waits for that one instead.
#[derive(Debug, thiserror::Error)]
#[error("another broker is already running for {0}")]
pub struct AlreadyRunning(pub String);

/// Runs the broker in the foreground until SIGTERM, SIGINT or a shutdown
/// request.
pub fn run(cfg: Config, ready: &Notifier) -> Result<()> {
    crate::log::init(os::stderr_is_journal())?;
    // A panic anywhere may leave a change half-applied in memory: the
    // broker aborts at once instead of serving it, and its next start
    // reloads what was stored (every acknowledged change is; issue 14).
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(
            "the broker panicked: {info}; aborting rather than serve a half-applied change (the next start reloads the store)"
        );
        std::process::abort();
    }));
    // Before any thread exists: it changes the environment.
    let mut passed = Activated::sort(pb_platform::activation::take_listen_fds());
    let started_by = if passed.any() {
        StartedBy::SocketActivation
    } else if ready.has_waiter() {
        // Before INVOCATION_ID: a client inside some systemd service
        // inherits that variable, and it is still a client's start.
        StartedBy::Client
    } else if std::env::var_os("INVOCATION_ID").is_some() {
        StartedBy::ServiceManager
    } else {
        StartedBy::Foreground
    };
    crate::home::prepare(&cfg.paths)?;
    let _lock = take_lock(&cfg.paths.lock_file())?;
    let nofile = pb_platform::raise_open_file_limit().context("raising the open-file limit")?;
    let needed = 2 * cfg.max_leases
        + cfg.max_connections
        + cfg.http_max_connections
        + crate::transport::proxy::MAX_CONNECTIONS
        + crate::transport::proxy::MAX_BACKENDS
        + 64;
    if (nofile as usize) < needed {
        tracing::warn!(
            "open-file limit {nofile} is below the {needed} the configured limits may need"
        );
    }
    let tls = deliver::tls_config(cfg.webhooks.extra_ca.as_deref())
        .map_err(|e| anyhow::anyhow!("PB_WEBHOOK_CA: {e}"))?;
    let store = Store::open(&cfg.paths.database())
        .with_context(|| format!("opening {}", cfg.paths.database().display()))?;
    let socket_path = cfg.paths.socket();
    let scan_interval = cfg.scan_interval;
    let http_cfg = cfg.clone();
    let port_file = cfg.port_file.clone();
    let http_socket = cfg.http_socket.clone();
    let proxy_cfg = cfg.clone();
    // Made even when HTTP is off, so `pb token` always has one to print.
    let token = crate::token::Token::load_or_create(&crate::token::path(&cfg.paths.state_dir))?;
    let mut core = Core::open(cfg, store)?;
    let (reaper_tx, reaper_rx) = tokio::sync::mpsc::channel(reaper::QUEUE);
    core.set_reaper(reaper_tx);
    core.set_started_by(started_by);
    tracing::info!(
        "broker {} up with {} leases, started by {}",
        std::process::id(),
        core.lease_count(),
        started_by.describe()
    );
    let core: SharedCore = Shared::new(core);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (listener, socket_ours) = match passed.ipc_listener(&socket_path) {
            // The service manager made the socket file and keeps it (and
            // its listening socket) across our restarts.
            Some(l) => (l, false),
            None => {
                // We hold the lock, so a socket file left here belongs to a
                // broker that died; replace it. The umask keeps it private
                // from birth.
                let _ = fs::remove_file(&socket_path);
                let l = os::with_umask(0o177, || UnixListener::bind(&socket_path));
                (
                    l.with_context(|| format!("binding {}", socket_path.display()))?,
                    true,
                )
            }
        };

        start_http(
            &http_cfg,
            core.clone(),
            token,
            std::mem::take(&mut passed.http),
        )
        .await;
        start_proxy(&proxy_cfg, core.clone(), passed.proxy).await;

        let shutdown = Arc::new(Notify::new());
        let stop_accepting = Arc::new(Notify::new());
        tokio::spawn(expiry_timer(core.clone()));
        tokio::spawn(coord::ticker(core.clone()));
        tokio::spawn(crate::service::awake::keep(core.clone()));
        lock(&core).daemon_started();
        tokio::spawn(reaper::run(core.clone(), reaper_rx, scan_interval));
        tokio::spawn(deliver::run(core.clone(), tls));
        let server = tokio::spawn(ipc::serve(
            listener,
            core.clone(),
            shutdown.clone(),
            stop_accepting.clone(),
        ));
        ready.ready();

        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = shutdown.notified() => {}
        }
        ready.stopping();
        stop_accepting.notify_one();
        let _ = server.await;
        lock(&core).daemon_stopping();
        // Under socket activation systemd keeps the port served while
        // the broker is down: the file stays true, and stays.
        if let Some(file) = port_file
            .as_ref()
            .filter(|_| started_by != StartedBy::SocketActivation)
        {
            PortFile::remove(file, lock(&core).http_port());
        }
        if let Some(path) = &http_socket {
            HttpSocket::remove(path, lock(&core).http_socket_inode());
        }
        if socket_ours {
            let _ = fs::remove_file(&socket_path);
        }
        tracing::info!("broker {} stopped", std::process::id());
        Ok(())
    })
}

/// PORT_DADDY_SOCK: the HTTP API on a Unix socket, as Port Daddy's clients
/// prefer it. Made private (0600) from birth. A path that exists is taken
/// over only when it is a socket of the broker's own user that nobody
/// listens on any more (a broker that died); anything else there (a file,
/// a live socket, another user's) is refused, and left as it is.
struct HttpSocket;

impl HttpSocket {
    fn bind(path: &Path) -> Result<UnixListener, String> {
        use os::StaleSocketError::Live;
        let std = os::bind_unix_replacing_stale(path).map_err(|e| match e {
            Live => format!("{e} (Port Daddy?)"),
            e => e.to_string(),
        })?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        UnixListener::from_std(std).map_err(|e| e.to_string())
    }

    /// The inode of the socket file at `path`, to know it for ours later.
    fn inode(path: &Path) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        fs::symlink_metadata(path).ok().map(|m| m.ino())
    }

    /// Removes the socket at a clean stop, if it is still the one bound
    /// (the same inode: not a file someone put there since).
    fn remove(path: &Path, bound: Option<u64>) {
        if bound.is_some() && HttpSocket::inode(path) == bound {
            let _ = fs::remove_file(path);
        }
    }
}

/// PORT_DADDY_PORT_FILE: the HTTP API's port, for Port Daddy's clients to
/// find, written aside and renamed (never through a link someone planted)
/// once the API listens, and removed at a clean stop if it still says
/// what the broker wrote.
struct PortFile;

impl PortFile {
    fn write(path: &Path, port: u16) -> std::io::Result<()> {
        os::write_aside(path, format!("{port}\n").as_bytes(), 0o600)
    }

    fn remove(path: &Path, port: Option<u16>) {
        let ours =
            port.is_some_and(|p| fs::read_to_string(path).is_ok_and(|t| t.trim() == p.to_string()));
        if ours {
            let _ = fs::remove_file(path);
        }
    }
}

/// The sockets socket activation passed, by the name each was given
/// (`FileDescriptorName=` in the units `pb install` writes): `ipc` for the
/// Unix socket, `http` for the HTTP API, `proxy-http` and `proxy-https`
/// for the proxy. A socket with another name is closed, with a warning.
#[derive(Default)]
struct Activated {
    ipc: Vec<OwnedFd>,
    http: Vec<OwnedFd>,
    proxy: Vec<(bool, OwnedFd)>,
}

impl Activated {
    fn sort(passed: Vec<pb_platform::activation::Passed>) -> Activated {
        let mut out = Activated::default();
        for p in passed {
            match p.name.as_str() {
                "ipc" => out.ipc.push(p.fd),
                "http" => out.http.push(p.fd),
                "proxy-http" => out.proxy.push((false, p.fd)),
                "proxy-https" => out.proxy.push((true, p.fd)),
                other => tracing::warn!("ignoring a passed socket named {other:?}"),
            }
        }
        out
    }

    fn any(&self) -> bool {
        !(self.ipc.is_empty() && self.http.is_empty() && self.proxy.is_empty())
    }

    /// The passed Unix socket, if one was passed and it is bound where
    /// every client looks for it (`path`); else the broker binds its own.
    fn ipc_listener(&mut self, path: &Path) -> Option<UnixListener> {
        if self.ipc.len() > 1 {
            tracing::warn!(
                "{} sockets named ipc were passed; using the first",
                self.ipc.len()
            );
        }
        let fd = self.ipc.drain(..).next()?;
        let std = std::os::unix::net::UnixListener::from(fd);
        let at = std
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf));
        if at.as_deref() != Some(path) {
            tracing::warn!(
                "the passed ipc socket is bound at {:?}, not {}, where clients look; binding that instead",
                at,
                path.display()
            );
            return None;
        }
        let listener = std
            .set_nonblocking(true)
            .and_then(|()| UnixListener::from_std(std));
        match listener {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(
                    "the passed ipc socket: {e}; binding {} instead",
                    path.display()
                );
                None
            }
        }
    }
}

/// Starts the HTTP API on PB_HTTP_ADDR. A port that cannot be bound costs
/// only the HTTP API, never the broker: the Unix socket serves regardless,
/// and `status` says why HTTP is off and which process holds its port.
async fn start_http(
    cfg: &Config,
    core: SharedCore,
    token: crate::token::Token,
    passed: Vec<OwnedFd>,
) {
    let state = http::HttpState::new(cfg, core.clone(), token);
    let router = http::router(state.clone());
    // On its own: the TCP listeners below may be off or fail.
    if let Some(path) = &cfg.http_socket {
        let shown = path.display().to_string();
        match HttpSocket::bind(path) {
            Ok(l) => {
                tracing::info!("HTTP API on the Unix socket {shown} (PORT_DADDY_SOCK)");
                lock(&core).set_http_socket(Ok((shown, HttpSocket::inode(path))));
                tokio::spawn(http::serve_unix(l, state.clone(), router.clone()));
            }
            Err(why) => {
                let why = format!("PORT_DADDY_SOCK={shown}: {why}");
                tracing::warn!("{why}; the HTTP API is not served there");
                lock(&core).set_http_socket(Err(why));
            }
        }
    }
    let passed = passed_listeners("http", passed);
    let listeners = if !passed.is_empty() {
        passed
    } else if cfg.http_addrs.is_empty() {
        tracing::info!("HTTP API off (PB_HTTP_ADDR=off)");
        lock(&core).set_http_off("turned off (PB_HTTP_ADDR=off)".into());
        return;
    } else {
        match http::bind(&cfg.http_addrs).await {
            Ok(l) => l,
            Err(e) => {
                let why = unbound(e, &cfg.http_addrs).await;
                tracing::warn!("{why}; running without the HTTP API");
                lock(&core).set_http_off(why);
                return;
            }
        }
    };
    let bound: Vec<std::net::SocketAddr> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect();
    if let Some(first) = bound.first() {
        // `localhost` when both families listen on the port, else the one.
        let both = bound
            .iter()
            .any(|a| a.is_ipv4() && a.port() == first.port())
            && bound
                .iter()
                .any(|a| a.is_ipv6() && a.port() == first.port());
        let host = if both {
            format!("localhost:{}", first.port())
        } else {
            first.to_string()
        };
        lock(&core).set_http_base(format!("http://{host}"));
        if let Some(file) = &cfg.port_file {
            match PortFile::write(file, first.port()) {
                Ok(()) => tracing::info!("wrote port {} to {}", first.port(), file.display()),
                Err(e) => tracing::warn!("PORT_DADDY_PORT_FILE: writing {}: {e}", file.display()),
            }
        }
    }
    for l in listeners {
        if let Ok(a) = l.local_addr() {
            tracing::info!("HTTP API on http://{a}");
        }
        tokio::spawn(http::serve(l, state.clone(), router.clone()));
    }
}

/// Why binding `addrs` failed, with the processes that hold their ports.
async fn unbound(e: anyhow::Error, addrs: &[std::net::SocketAddr]) -> String {
    let ports: Vec<u16> = addrs.iter().map(|a| a.port()).collect();
    let holders = tokio::task::spawn_blocking(move || {
        let mut all: Vec<String> = Vec::new();
        for p in ports {
            all.extend(crate::service::inspect::port_holders(p));
        }
        all
    })
    .await
    .unwrap_or_default();
    if holders.is_empty() {
        format!("{e:#}")
    } else {
        format!("{e:#}; the port is held by {}", holders.join(", "))
    }
}

/// Starts the named-URL proxy: on the sockets socket activation passed
/// (`proxy-http`, `proxy-https`: ports 80 and 443 without root), else on
/// PB_PROXY_ADDR. Like the HTTP API, a port that cannot be bound costs only
/// the proxy, and `status` says why.
async fn start_proxy(cfg: &Config, core: SharedCore, passed: Vec<(bool, OwnedFd)>) {
    let (https, http): (Vec<_>, Vec<_>) = passed.into_iter().partition(|(tls, _)| *tls);
    let mut listeners = passed_listeners("proxy-http", http.into_iter().map(|p| p.1).collect());
    let mut http_port = first_port(&listeners);
    let passed_https = passed_listeners("proxy-https", https.into_iter().map(|p| p.1).collect());
    let https_port = first_port(&passed_https);
    listeners.extend(passed_https);
    if listeners.is_empty() {
        if cfg.proxy_addrs.is_empty() {
            tracing::info!("proxy off (PB_PROXY_ADDR=off)");
            lock(&core).set_proxy_off("turned off (PB_PROXY_ADDR=off)".into());
            return;
        }
        match crate::transport::proxy::bind(&cfg.proxy_addrs).await {
            Ok(l) => {
                http_port = cfg.proxy_addrs.first().map(|a| a.port());
                listeners = l;
            }
            Err(e) => {
                let why = unbound(e, &cfg.proxy_addrs).await;
                tracing::warn!("{why}; running without the proxy");
                lock(&core).set_proxy_off(why);
                return;
            }
        }
    }
    let ca = match crate::localca::LocalCa::load_or_create(&cfg.paths.state_dir) {
        Ok(ca) => ca,
        Err(e) => {
            tracing::warn!("{e}; running without the proxy");
            lock(&core).set_proxy_off(e.to_string());
            return;
        }
    };
    let ca_path = ca.cert_path().display().to_string();
    let tls = match crate::transport::proxy::tls::acceptor(ca) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!("the proxy serves no HTTPS: {e}");
            None
        }
    };
    let Some(http_port) = http_port.or(https_port) else {
        return;
    };
    let https_port = https_port.unwrap_or(http_port);
    lock(&core).set_proxy(pb_proto::ProxyStatus {
        http_port,
        https_port,
        ca: ca_path,
    });
    let state = crate::transport::proxy::ProxyState::new(core, tls, cfg.proxy_timeout);
    for l in listeners {
        if let Ok(a) = l.local_addr() {
            tracing::info!("proxy on {a} (http://NAME.localhost:{})", a.port());
        }
        tokio::spawn(crate::transport::proxy::serve(l, state.clone()));
    }
}

/// The listening TCP sockets passed by socket activation for `what`, on
/// loopback only; any other is closed, with a warning.
fn passed_listeners(what: &str, fds: Vec<OwnedFd>) -> Vec<tokio::net::TcpListener> {
    let adopt = |fd: OwnedFd| -> Result<tokio::net::TcpListener> {
        let std = std::net::TcpListener::from(fd);
        let addr = std.local_addr().context("not a TCP socket")?;
        if !addr.ip().is_loopback() {
            anyhow::bail!("{addr} is not a loopback address; pb listens on loopback only");
        }
        std.set_nonblocking(true)?;
        Ok(tokio::net::TcpListener::from_std(std)?)
    };
    fds.into_iter()
        .filter_map(|fd| {
            adopt(fd)
                .map_err(|e| tracing::warn!("the passed socket {what:?}: {e:#}"))
                .ok()
        })
        .collect()
}

fn first_port(listeners: &[tokio::net::TcpListener]) -> Option<u16> {
    listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port())
}

async fn expiry_timer(core: SharedCore) {
    loop {
        let next = lock(&core).next_expiry();
        let wait = next
            .map(|t| Duration::from_millis(t.saturating_sub(now_ms())))
            .unwrap_or(EXPIRY_TICK)
            .min(EXPIRY_TICK);
        tokio::time::sleep(wait).await;
        let ended = lock(&core).expire_due(now_ms());
        for l in ended {
            tracing::info!("lease {} on port {} expired", l.id, l.port);
        }
    }
}
