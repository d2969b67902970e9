//! Where a stack lives under PB_HOME while it is up: a directory per stack
//! id with the supervisor's lock (held for as long as it runs, so a second
//! `pb up` of the same stack is refused and `pb down` knows when it is
//! over), `state.json` (a `StackInfo`, rewritten whole on every change),
//! the services' logs, and the restart requests that reach it (from the
//! broker's `stack.restart_requested`, or `watch`).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use pb_platform::os::FileLock;
use pb_proto::paths::Paths;
use pb_proto::StackInfo;

/// The supervisor `state` names, if that very process still runs.
pub fn supervisor(state: &StackInfo) -> Option<pb_platform::ProcessId> {
    let p = pb_platform::ProcessId {
        pid: state.supervisor,
        start_time: state.supervisor_start,
    };
    p.is_alive().then_some(p)
}

pub struct StackHome {
    pub dir: PathBuf,
}

impl StackHome {
    pub fn new(paths: &Paths, stack_id: &str) -> StackHome {
        StackHome {
            dir: paths.state_dir.join("stacks").join(stack_id),
        }
    }

    /// Takes the stack's lock for this supervisor; `None` while another
    /// holds it (the stack is up).
    pub fn lock(&self) -> Result<Option<FileLock>> {
        // Private, as the rest of pb's state: logs can hold secrets.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(self.dir.join("requests"))
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(FileLock::try_exclusive(file)?)
    }

    /// Whether a supervisor runs this stack now. Asked of the process the
    /// state names (pid and start time), not of the lock, which asking
    /// would take: the lock goes with the process, as its files close
    /// before it is dead.
    pub fn is_up(&self) -> bool {
        self.load().is_some_and(|s| supervisor(&s).is_some())
    }

    pub fn save(&self, state: &StackInfo) -> Result<()> {
        let tmp = self.dir.join(format!(".state.{}.tmp", std::process::id()));
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state)?)?;
        drop(f);
        std::fs::rename(&tmp, self.dir.join("state.json"))?;
        Ok(())
    }

    pub fn load(&self) -> Option<StackInfo> {
        let text = std::fs::read(self.dir.join("state.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Leaves a request to restart `service`, saying why in one word
    /// (the supervisor is told with SIGUSR1).
    pub fn request_restart(&self, service: &str, why: &str) -> Result<()> {
        let name = format!("restart.{why}.{}.{service}", crate::up::now_ms());
        File::create(self.dir.join("requests").join(name))?;
        Ok(())
    }

    /// The services named by requests left since the last look, oldest
    /// first, each with why; the requests are removed.
    pub fn take_restarts(&self) -> Vec<(String, String)> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("requests")) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, String, String, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let mut parts = name.splitn(4, '.');
                (parts.next()? == "restart").then_some(())?;
                let why = parts.next()?.to_string();
                let ms = parts.next()?.parse().ok()?;
                Some((ms, parts.next()?.to_string(), why, e.path()))
            })
            .take(1024)
            .collect();
        found.sort();
        found
            .into_iter()
            .map(|(_, service, why, path)| {
                let _ = std::fs::remove_file(path);
                (service, why)
            })
            .collect()
    }

    /// Where a detached supervisor writes what it says.
    pub fn supervisor_log(&self) -> PathBuf {
        self.dir.join("supervisor.log")
    }

    /// The last lines a detached supervisor said, for an error message.
    pub fn supervisor_log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.supervisor_log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }
}
