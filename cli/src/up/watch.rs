//! `watch`: a service whose files change is restarted, its socket kept.
//! Each watching service has a thread that looks at the files its globs
//! match (relative to the service's directory) every [`EVERY`], and asks
//! its supervisor for a restart, as `pb restart` does, when their sizes or
//! times change. Polling, bounded: at most [`MAX_FILES`] files a look,
//! and never inside .git, node_modules, target or a virtualenv unless a
//! glob names them.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use globset::{Glob, GlobSet, GlobSetBuilder};

use super::state::StackHome;

const EVERY: Duration = Duration::from_millis(250);
const MAX_FILES: usize = 20_000;
const SKIPPED: [&str; 5] = [".git", "node_modules", "target", ".venv", "__pycache__"];

/// The globs of one service, compiled (a bad one is an error before
/// anything starts).
pub fn compile(globs: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(Glob::new(g).map_err(|e| anyhow!("watch {g:?}: {e}"))?);
    }
    b.build().map_err(|e| anyhow!("watch: {e}"))
}

/// What the matching files look like now: each one's path, size and time.
fn look(dir: &Path, set: &GlobSet, globs: &[String]) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = 0usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > MAX_FILES {
                return out;
            }
            let path = e.path();
            let Ok(rel) = path.strip_prefix(dir) else {
                continue;
            };
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                let name = e.file_name();
                let skipped = SKIPPED.iter().any(|s| name == *s)
                    && !globs.iter().any(|g| g.contains(&*name.to_string_lossy()));
                if !skipped {
                    stack.push(path);
                }
            } else if set.is_match(rel) {
                let m = e.metadata().ok();
                out.push((
                    rel.to_path_buf(),
                    m.as_ref().map_or(0, |m| m.len()),
                    m.and_then(|m| m.modified().ok()),
                ));
            }
        }
    }
    out.sort();
    out
}

/// Starts the watcher of `service`: it runs as long as the supervisor.
pub fn start(home: &StackHome, service: String, dir: PathBuf, globs: Vec<String>, set: GlobSet) {
    let home = StackHome {
        dir: home.dir.clone(),
    };
    std::thread::spawn(move || {
        let mut before = look(&dir, &set, &globs);
        let me = pb_platform::ProcessId::current();
        loop {
            std::thread::sleep(EVERY);
            let now = look(&dir, &set, &globs);
            if now != before {
                before = now;
                if home.request_restart(&service, "changed").is_ok() {
                    pb_platform::process::signal(me, libc::SIGUSR1);
                }
            }
        }
    });
}
