//! Where pb keeps its files. One function, so the broker and every client
//! agree on the socket path.
//!
//! PB_HOME, when set, holds everything. Otherwise the database lives in the
//! XDG state directory and the socket in the XDG runtime directory, each in
//! a `pb` subdirectory.

use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Paths {
    /// Directory of the socket, the pid file and the daemon lock (mode 0700).
    pub runtime_dir: PathBuf,
    /// Directory of the database and the log (mode 0700).
    pub state_dir: PathBuf,
    /// The directories are pb's own `pb` subdirectories (the XDG default),
    /// which pb may make private; a PB_HOME is the user's, which pb checks
    /// but never changes.
    pub own: bool,
}

impl Paths {
    pub fn from_env() -> Paths {
        if let Some(home) = std::env::var_os("PB_HOME").filter(|h| !h.is_empty()) {
            let home = PathBuf::from(home);
            return Paths {
                runtime_dir: home.clone(),
                state_dir: home,
                own: false,
            };
        }
        let user_home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/tmp".into());
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| user_home.join(".local/state"))
            .join("pb");
        let runtime = std::env::var_os("XDG_RUNTIME_DIR")
            .filter(|v| !v.is_empty())
            .map(|d| PathBuf::from(d).join("pb"))
            .unwrap_or_else(|| state.clone());
        Paths {
            runtime_dir: runtime,
            state_dir: state,
            own: true,
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("pb.sock")
    }
    pub fn lock_file(&self) -> PathBuf {
        self.runtime_dir.join("pb.lock")
    }
    pub fn database(&self) -> PathBuf {
        self.state_dir.join("pb.db")
    }
    pub fn log_file(&self) -> PathBuf {
        self.state_dir.join("broker.log")
    }
    pub fn activity_database(&self) -> PathBuf {
        self.state_dir.join("activity.db")
    }
}
