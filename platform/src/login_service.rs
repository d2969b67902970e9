//! The service managers that start pb at login: systemd's user instance on
//! Linux, launchd's per-user agents on macOS. Here are the questions put to
//! them (does one run for this user?) and the commands that load and unload
//! units. What the units say is the CLI's business (cli/src/install.rs).

use std::path::PathBuf;
use std::process::Command;

/// A service manager pb can install itself into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manager {
    /// systemd's per-user instance (`systemctl --user`).
    Systemd,
    /// launchd's per-user agents (`launchctl`, `~/Library/LaunchAgents`).
    Launchd,
}

impl Manager {
    /// The one this system uses.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Manager::Systemd => "systemd",
            Manager::Launchd => "launchd",
        }
    }

    /// Where this user's units live: `$XDG_CONFIG_HOME/systemd/user`
    /// (`~/.config/systemd/user`), or `~/Library/LaunchAgents`.
    pub fn unit_dir(self) -> Result<PathBuf, String> {
        let home = || {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| "HOME is not set".to_string())
        };
        match self {
            Manager::Systemd => {
                let config = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
                    Some(c) => PathBuf::from(c),
                    None => home()?.join(".config"),
                };
                Ok(config.join("systemd/user"))
            }
            Manager::Launchd => Ok(home()?.join("Library/LaunchAgents")),
        }
    }

    /// Whether this manager runs here for this user; else why not, in
    /// words that say what to do.
    pub fn available(self) -> Result<(), String> {
        match self {
            Manager::Systemd => run("systemctl", &["--user", "show-environment"])
                .map(|_| ())
                .map_err(|why| {
                    format!(
                        "systemd is absent: no systemd user manager answers for this user ({why})"
                    )
                }),
            Manager::Launchd if !cfg!(target_os = "macos") => Err(
                "launchd is absent: it is macOS's service manager, and this is not macOS".into(),
            ),
            Manager::Launchd => run("launchctl", &["print", &gui_domain()])
                .map(|_| ())
                .map_err(|why| {
                    format!("launchd is absent: no login session's launchd answers ({why})")
                }),
        }
    }

    /// Loads and starts `units` (file names in [`unit_dir`](Self::unit_dir)),
    /// each step named in what it returns.
    pub fn start(self, units: &[String]) -> Result<Vec<String>, String> {
        let mut done = Vec::new();
        match self {
            Manager::Systemd => {
                run("systemctl", &["--user", "daemon-reload"])?;
                done.push("systemctl --user daemon-reload".to_string());
                let mut args = vec!["--user", "enable"];
                args.extend(units.iter().map(String::as_str));
                run("systemctl", &args)?;
                done.push(format!("systemctl {}", args.join(" ")));
                // A reinstall's new settings take effect: the service (if
                // it runs) stops, and the sockets are bound anew.
                let _ = run("systemctl", &["--user", "stop", "pb.service"]);
                let mut args = vec!["--user", "restart"];
                args.extend(units.iter().map(String::as_str));
                run("systemctl", &args)?;
                done.push(format!("systemctl {}", args.join(" ")));
            }
            Manager::Launchd => {
                let dir = self.unit_dir()?;
                for u in units {
                    let path = dir.join(u).display().to_string();
                    // A reinstall replaces the loaded agent: unloaded
                    // first (an error there only means it was not loaded).
                    let label = u.trim_end_matches(".plist");
                    let _ = run(
                        "launchctl",
                        &["bootout", &format!("{}/{label}", gui_domain())],
                    );
                    run("launchctl", &["bootstrap", &gui_domain(), &path])?;
                    done.push(format!("launchctl bootstrap {} {path}", gui_domain()));
                }
            }
        }
        Ok(done)
    }

    /// Stops and unloads `units` (all of them, trying each even when one
    /// fails); the steps taken, and the failures.
    pub fn stop(self, units: &[String]) -> (Vec<String>, Vec<String>) {
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        let mut step = |cmd: &str, args: Vec<String>| {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let line = format!("{cmd} {}", args.join(" "));
            match run(cmd, &refs) {
                Ok(_) => done.push(line),
                Err(why) => failed.push(format!("{line}: {why}")),
            }
        };
        match self {
            Manager::Systemd => {
                let mut args: Vec<String> =
                    ["--user", "disable", "--now"].map(String::from).to_vec();
                args.extend(units.iter().cloned());
                step("systemctl", args);
            }
            Manager::Launchd => {
                for u in units {
                    let label = u.trim_end_matches(".plist");
                    step(
                        "launchctl",
                        vec!["bootout".into(), format!("{}/{label}", gui_domain())],
                    );
                }
            }
        }
        (done, failed)
    }

    /// Tells the manager its unit files changed (systemd's daemon-reload;
    /// launchd reads a plist when it is bootstrapped, so nothing).
    pub fn reload(self) -> Result<(), String> {
        match self {
            Manager::Systemd => run("systemctl", &["--user", "daemon-reload"]).map(|_| ()),
            Manager::Launchd => Ok(()),
        }
    }
}

/// launchd's domain of this user's login session.
fn gui_domain() -> String {
    format!("gui/{}", crate::os::effective_uid())
}

/// Runs `cmd args`; its stdout, or why it failed (not found, or its first
/// line of stderr).
fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(cmd).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("{cmd} is not installed")
        } else {
            format!("running {cmd}: {e}")
        }
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let first = err
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    Err(if first.is_empty() {
        format!("{cmd} {} failed ({})", args.join(" "), out.status)
    } else {
        format!("{cmd} {}: {first}", args.join(" "))
    })
}
