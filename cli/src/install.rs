//! `pb install` and `pb uninstall`: pb as a login service, so that the
//! broker is up after a reboot and something supervises it.
//!
//! On Linux that is systemd's user instance, with socket activation:
//! `pb.socket` holds the Unix socket, `pb-http.socket` the HTTP API's port
//! and `pb-proxy.socket` the proxy's, so that systemd starts `pb.service`
//! on the first connection to any of them and keeps them across restarts.
//! The broker finds them by name in LISTEN_FDS (broker/src/daemon.rs). On
//! macOS it is a launchd agent that runs the broker at login.
//!
//! Every file written starts with [`MARK`]; uninstall removes exactly the
//! files of pb's names that carry it, and nothing else. Nothing is written
//! before every check has passed, and each file is written aside and
//! renamed, so a failed install leaves no half-written unit behind.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use pb_platform::login_service::Manager;
use pb_proto::paths::Paths;
use pb_proto::{ErrorCode, Op, StatusReply, WireError};

use crate::{connect, output, Format};

/// The first line of every file pb writes (after the XML declaration in a
/// plist): how uninstall knows a file is its own.
const MARK: &str = "Written by pb install; pb uninstall removes it.";

/// The broker's launchd label, and its plist's name without `.plist`.
const LAUNCHD_LABEL: &str = "dev.pb.broker";

/// Every file name install may write, by manager.
fn names(manager: Manager) -> &'static [&'static str] {
    match manager {
        Manager::Systemd => &[
            "pb.service",
            "pb.socket",
            "pb-http.socket",
            "pb-proxy.socket",
        ],
        Manager::Launchd => &["dev.pb.broker.plist"],
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ManagerArg {
    Systemd,
    Launchd,
}

#[derive(Args)]
pub struct InstallCmd {
    /// Print the files instead of writing them.
    #[arg(long)]
    dry_run: bool,
    /// Write the files, but do not ask the service manager to start them.
    #[arg(long)]
    no_start: bool,
    /// The service manager (default: this system's: systemd on Linux,
    /// launchd on macOS).
    #[arg(long, value_enum)]
    manager: Option<ManagerArg>,
}

#[derive(Args)]
pub struct UninstallCmd {
    /// Say what would be removed, removing nothing.
    #[arg(long)]
    dry_run: bool,
    /// The service manager (default: this system's).
    #[arg(long, value_enum)]
    manager: Option<ManagerArg>,
}

/// One file of the install.
#[derive(serde::Serialize)]
struct UnitFile {
    path: PathBuf,
    text: String,
    /// Enabled and started by install (the sockets, or the agent); the
    /// service itself is started by its sockets.
    #[serde(skip)]
    start: bool,
}

/// What the broker needs to be started the way a client would start it.
struct Spec {
    exe: PathBuf,
    /// The broker's settings in force at install (`Config::SETTINGS`), so
    /// that the installed broker is the one the user configured.
    env: Vec<(String, String)>,
    socket: PathBuf,
    http: Vec<SocketAddr>,
    proxy: Vec<SocketAddr>,
    log: PathBuf,
}

impl Spec {
    fn from_env(paths: &Paths) -> Result<Spec> {
        let cfg = pb_broker::Config::from_env().map_err(anyhow::Error::from)?;
        let exe = std::env::current_exe().context("locating the pb binary")?;
        let env: Vec<(String, String)> = pb_broker::config::SETTINGS
            .iter()
            .filter_map(|k| Some((k.to_string(), std::env::var(k).ok()?)))
            .collect();
        if let Some((k, _)) = env.iter().find(|(_, v)| v.contains(['\n', '\r'])) {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("{k} holds a line break, which a unit file cannot carry"),
            )
            .into());
        }
        // systemd runs a unit from the home directory, and a relative
        // ListenStream= is refused: every path must be absolute.
        for (k, v) in &env {
            let pathlike = matches!(
                k.as_str(),
                "PB_HOME"
                    | "XDG_STATE_HOME"
                    | "PB_WEBHOOK_CA"
                    | "PORT_DADDY_SOCK"
                    | "PORT_DADDY_PORT_FILE"
            );
            if pathlike && !std::path::Path::new(v).is_absolute() {
                return Err(WireError::new(
                    ErrorCode::InvalidPath,
                    format!("{k}={v:?} is a relative path; a service needs an absolute one"),
                )
                .into());
            }
        }
        Ok(Spec {
            exe,
            env,
            socket: paths.socket(),
            http: cfg.http_addrs,
            proxy: cfg.proxy_addrs,
            log: paths.log_file(),
        })
    }
}

fn manager_of(arg: Option<ManagerArg>) -> Manager {
    match arg {
        Some(ManagerArg::Systemd) => Manager::Systemd,
        Some(ManagerArg::Launchd) => Manager::Launchd,
        None => Manager::native(),
    }
}

fn unit_dir(manager: Manager) -> Result<PathBuf> {
    manager
        .unit_dir()
        .map_err(|why| anyhow::anyhow!("finding the {} unit directory: {why}", manager.name()))
}

pub fn install(paths: &Paths, cmd: InstallCmd, fmt: Format) -> Result<i32> {
    let manager = manager_of(cmd.manager);
    let dir = unit_dir(manager)?;
    let spec = Spec::from_env(paths)?;
    let files = match manager {
        Manager::Systemd => systemd_units(&spec, &dir),
        Manager::Launchd => launchd_agent(&spec, &dir),
    };
    if cmd.dry_run {
        match fmt {
            Format::Json => output::print_json(&serde_json::json!({
                "manager": manager.name(), "dry_run": true, "files": files,
            })),
            _ => {
                for (i, f) in files.iter().enumerate() {
                    if i > 0 {
                        outln!();
                    }
                    outln!("==> {} <==", f.path.display());
                    outln!("{}", f.text.trim_end());
                }
            }
        }
        return Ok(0);
    }
    // Every check before the first write.
    if !cmd.no_start {
        manager.available().map_err(|why| {
            WireError::new(
                ErrorCode::NotFound,
                format!(
                    "{why}. Nothing was written. pb works without it (a client starts the broker on first use); `pb install --no-start` writes the files anyway"
                ),
            )
        })?;
    }
    for f in &files {
        if f.path.exists() && !is_ours(&f.path) {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                format!(
                    "{} exists and is not pb's (it lacks the line {MARK:?}); nothing was written. Move it aside to install",
                    f.path.display()
                ),
            )
            .into());
        }
    }
    let mut steps = Vec::new();
    if !cmd.no_start {
        // systemd cannot bind what a running broker holds: that broker
        // stops before anything is written (its leases are kept, and
        // reloaded by the next).
        if let Some(pid) = stop_unsupervised(paths)? {
            steps.push(format!(
                "stopped the running broker (pid {pid}) so that {} holds its sockets",
                manager.name()
            ));
        }
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // A reinstall with HTTP (or the proxy) now off leaves no stale socket
    // unit of pb's behind: stopped and disabled first, where a manager
    // runs, so that no listener or enable link outlives its file.
    let stale: Vec<PathBuf> = names(manager)
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| !files.iter().any(|f| &f.path == p) && is_ours(p))
        .collect();
    let written =
        |e: anyhow::Error| e.context("some files are written; `pb uninstall` removes them");
    for f in &files {
        pb_platform::os::write_aside(&f.path, f.text.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", f.path.display()))
            .map_err(written)?;
    }
    if !cmd.no_start && !stale.is_empty() {
        let (done, failed) = manager.stop(&file_names(&stale));
        steps.extend(done);
        steps.extend(failed.into_iter().map(|f| format!("failed: {f}")));
    }
    for p in &stale {
        std::fs::remove_file(p)
            .with_context(|| format!("removing {}", p.display()))
            .map_err(written)?;
    }
    if !cmd.no_start {
        let units: Vec<PathBuf> = files
            .iter()
            .filter(|f| f.start)
            .map(|f| f.path.clone())
            .collect();
        let done = manager.start(&file_names(&units)).map_err(|why| {
            anyhow::anyhow!("the files are written, but starting them failed: {why}; `pb uninstall` removes them")
        })?;
        steps.extend(done);
    }
    match fmt {
        Format::Json => output::print_json(&serde_json::json!({
            "manager": manager.name(),
            "files": files.iter().map(|f| &f.path).collect::<Vec<_>>(),
            "removed": stale,
            "started": !cmd.no_start,
            "steps": steps,
        })),
        Format::Quiet => {}
        Format::Human => {
            for f in &files {
                outln!("wrote {}", f.path.display());
            }
            for p in &stale {
                outln!("removed {}", p.display());
            }
            for s in &steps {
                outln!("ran {s}");
            }
            if cmd.no_start {
                outln!("not started (--no-start)");
            }
        }
    }
    Ok(0)
}

pub fn uninstall(cmd: UninstallCmd, fmt: Format) -> Result<i32> {
    let manager = manager_of(cmd.manager);
    let dir = unit_dir(manager)?;
    let ours: Vec<PathBuf> = names(manager)
        .iter()
        .map(|n| dir.join(n))
        .filter(|p| is_ours(p))
        .collect();
    if ours.is_empty() {
        return Err(WireError::new(
            ErrorCode::NotFound,
            format!("pb is not installed: no file of pb's in {}", dir.display()),
        )
        .into());
    }
    let (mut steps, mut warnings) = (Vec::new(), Vec::new());
    if !cmd.dry_run {
        // Stopped before their files go; a manager that is absent has
        // nothing loaded to stop.
        if manager.available().is_ok() {
            let (done, failed) = manager.stop(&file_names(&ours));
            steps.extend(done);
            warnings.extend(failed);
        }
        for p in &ours {
            std::fs::remove_file(p).with_context(|| format!("removing {}", p.display()))?;
        }
        if manager.available().is_ok() {
            if let Err(why) = manager.reload() {
                warnings.push(why);
            }
        }
    }
    match fmt {
        Format::Json => output::print_json(&serde_json::json!({
            "manager": manager.name(), "dry_run": cmd.dry_run,
            "removed": ours, "steps": steps, "warnings": warnings,
        })),
        Format::Quiet => {}
        Format::Human => {
            let verb = if cmd.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for p in &ours {
                outln!("{verb} {}", p.display());
            }
            for s in &steps {
                outln!("ran {s}");
            }
            for w in &warnings {
                eprintln!("pb: warning: {w}");
            }
        }
    }
    Ok(0)
}

/// The file names of `paths`, as the service manager names units.
fn file_names(paths: &[PathBuf]) -> Vec<String> {
    paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect()
}

/// Stops a broker that runs outside the service manager, returning its
/// pid; a socket-activated one is left alone.
fn stop_unsupervised(paths: &Paths) -> Result<Option<u32>> {
    let Ok(mut client) = connect::existing(paths) else {
        return Ok(None);
    };
    let (status, _): (StatusReply, _) = client.call_as(Op::Status)?;
    if status.started_by == Some(pb_proto::StartedBy::SocketActivation) {
        return Ok(None);
    }
    client.call(Op::Shutdown)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pb_platform::ProcessId::of(status.pid).is_some_and(|p| p.is_alive()) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "the running broker (pid {}) did not stop within 10s",
                status.pid
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(Some(status.pid))
}

/// Whether `path` is a regular file pb wrote (its mark in its first lines).
fn is_ours(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    meta.is_file()
        && std::fs::read_to_string(path).is_ok_and(|t| t.lines().take(3).any(|l| l.contains(MARK)))
}

/// systemd's quoting for one word of a unit setting: specifiers (`%`)
/// doubled, and quotes and backslashes escaped inside double quotes when
/// the word needs them.
fn systemd_word(s: &str) -> String {
    let s = s.replace('%', "%%");
    if s.is_empty() || s.contains([' ', '\t', '"', '\'', '\\', ';']) {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    } else {
        s
    }
}

/// A ListenStream= address: `127.0.0.1:9876`, `[::1]:9876`.
fn listen_addr(a: &SocketAddr) -> String {
    a.to_string()
}

fn systemd_units(spec: &Spec, dir: &Path) -> Vec<UnitFile> {
    let head = format!("# {MARK}\n");
    let mut sockets = vec!["pb.socket"];
    let mut files = Vec::new();
    let mut socket_unit =
        |name: &'static str, what: &str, fd_name: &str, listen: Vec<String>, extra: &str| {
            let mut t = head.clone();
            let _ = writeln!(
                t,
                "[Unit]\nDescription=pb: {what}\nPartOf=pb.service\n\n[Socket]"
            );
            for l in listen {
                let _ = writeln!(t, "ListenStream={l}");
            }
            t.push_str(extra);
            let _ = writeln!(
            t,
            "FileDescriptorName={fd_name}\nService=pb.service\n\n[Install]\nWantedBy=sockets.target"
        );
            files.push(UnitFile {
                path: dir.join(name),
                text: t,
                start: true,
            });
        };
    socket_unit(
        "pb.socket",
        "the broker's Unix socket",
        "ipc",
        vec![spec.socket.display().to_string().replace('%', "%%")],
        // Private from birth, as the broker would make them.
        "SocketMode=0600\nDirectoryMode=0700\n",
    );
    // Both families on one port: each listener on its own family only.
    let v6only = "BindIPv6Only=ipv6-only\n";
    if !spec.http.is_empty() {
        sockets.push("pb-http.socket");
        socket_unit(
            "pb-http.socket",
            "the HTTP API's port",
            "http",
            spec.http.iter().map(listen_addr).collect(),
            v6only,
        );
    }
    if !spec.proxy.is_empty() {
        sockets.push("pb-proxy.socket");
        socket_unit(
            "pb-proxy.socket",
            "the named-URL proxy's port",
            "proxy-http",
            spec.proxy.iter().map(listen_addr).collect(),
            v6only,
        );
    }
    let mut t = head;
    let _ = writeln!(
        t,
        "[Unit]\nDescription=pb, the kernel-aware port broker\nRequires=pb.socket\nAfter={}\n",
        sockets.join(" ")
    );
    let _ = writeln!(t, "[Service]\nType=notify");
    let _ = writeln!(
        t,
        "ExecStart={} daemon",
        systemd_word(&spec.exe.display().to_string()).replace('$', "$$")
    );
    let _ = writeln!(t, "Sockets={}", sockets.join(" "));
    for (k, v) in &spec.env {
        let _ = writeln!(t, "Environment={}", systemd_word(&format!("{k}={v}")));
    }
    // Its log goes to the journal, each line with its level.
    let _ = writeln!(t, "Restart=on-failure\nRestartSec=1");
    files.insert(
        0,
        UnitFile {
            path: dir.join("pb.service"),
            text: t,
            start: false,
        },
    );
    files
}

/// XML's escapes for text in a plist.
fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn launchd_agent(spec: &Spec, dir: &Path) -> Vec<UnitFile> {
    let mut t = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(t, "<!-- {MARK} -->");
    t.push_str("<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n");
    t.push_str("<plist version=\"1.0\">\n<dict>\n");
    let _ = writeln!(t, "  <key>Label</key>\n  <string>{LAUNCHD_LABEL}</string>");
    let _ = writeln!(
        t,
        "  <key>ProgramArguments</key>\n  <array>\n    <string>{}</string>\n    <string>daemon</string>\n  </array>",
        xml(&spec.exe.display().to_string())
    );
    if !spec.env.is_empty() {
        t.push_str("  <key>EnvironmentVariables</key>\n  <dict>\n");
        for (k, v) in &spec.env {
            let _ = writeln!(
                t,
                "    <key>{}</key>\n    <string>{}</string>",
                xml(k),
                xml(v)
            );
        }
        t.push_str("  </dict>\n");
    }
    // Started at login, and again if it dies; a `pb stop` (a clean exit)
    // is left stopped until a client starts it.
    t.push_str("  <key>RunAtLoad</key>\n  <true/>\n");
    t.push_str("  <key>KeepAlive</key>\n  <dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>\n");
    t.push_str("  <key>ProcessType</key>\n  <string>Background</string>\n");
    let log = xml(&spec.log.display().to_string());
    let _ = writeln!(t, "  <key>StandardOutPath</key>\n  <string>{log}</string>");
    let _ = writeln!(
        t,
        "  <key>StandardErrorPath</key>\n  <string>{log}</string>"
    );
    t.push_str("</dict>\n</plist>\n");
    vec![UnitFile {
        path: dir.join(format!("{LAUNCHD_LABEL}.plist")),
        text: t,
        start: true,
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_systemd() {
        assert_eq!(systemd_word("/usr/bin/pb"), "/usr/bin/pb");
        assert_eq!(systemd_word("/opt/my pb/pb"), "\"/opt/my pb/pb\"");
        assert_eq!(systemd_word("A=50%"), "A=50%%");
        assert_eq!(systemd_word("A=say \"hi\""), "\"A=say \\\"hi\\\"\"");
    }

    #[test]
    fn plist_text_is_escaped() {
        assert_eq!(xml("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
