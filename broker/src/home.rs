//! The broker's home: its directories and the files in them, checked before
//! anything is opened, so that nothing it writes (leases, webhook secrets,
//! the HTTP token) can be read or redirected by another user.
//!
//! - A directory pb makes is made 0700. One that exists must be ours; if
//!   another user can write to it (0777, 1777, a group's), it is refused:
//!   whoever can write there can plant a link before the broker starts. pb
//!   tightens only its own `pb` subdirectories (the XDG default); a
//!   PB_HOME is the user's, and pb never changes its mode behind their
//!   back.
//! - No file pb opens there may be a symbolic link or belong to someone
//!   else (a planted `pb.db` link would send the database, secrets
//!   included, wherever its planter chose). pb's own files that others
//!   could read are made 0600, and everything it creates from here on is
//!   (umask 077).
//!
//! The checks and the opens cannot race: once the directory is known to be
//! writable by us alone, nobody else can plant anything in it.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use pb_proto::paths::Paths;

/// Why the home cannot be used; each names the path and the fix.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{path} belongs to uid {uid}, not to us ({me}); refusing to use it: point PB_HOME at a directory of your own")]
    NotOurs { path: PathBuf, uid: u32, me: u32 },
    #[error("{path} can be written by other users (mode {mode:04o}), who could plant files in it before the broker starts; refusing to use it: run `chmod go-w {path}`, or point PB_HOME at a directory only you can write (`mkdir -m 700 DIR`)")]
    Shared { path: PathBuf, mode: u32 },
    #[error("{path} is a symbolic link, and the broker follows none in its home (someone may have planted it); refusing to start: remove it (`rm {path}`) if you did not make it")]
    Link { path: PathBuf },
    #[error("{path} is not a {what}; refusing to use it: move it away")]
    WrongKind { path: PathBuf, what: &'static str },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HomeError + '_ {
    move |source| HomeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `path` (whose metadata is `meta`) belongs to the broker's user.
fn ours(path: &Path, meta: &fs::Metadata) -> Result<(), HomeError> {
    // SAFETY: geteuid cannot fail.
    let me = pb_platform::os::effective_uid();
    if meta.uid() != me {
        return Err(HomeError::NotOurs {
            path: path.to_path_buf(),
            uid: meta.uid(),
            me,
        });
    }
    Ok(())
}

/// Makes the broker's directories ready and checks every file it will open
/// in them. Sets the process umask to 077.
pub fn prepare(paths: &Paths) -> Result<(), HomeError> {
    // Everything made from here on is ours only.
    pb_platform::os::set_umask(0o077);
    walk(paths, true)
}

/// The same checks as [`prepare`], changing nothing (`pb doctor`): what is
/// missing, or what `prepare` would tighten, passes; what it would refuse
/// is the same error.
pub fn check(paths: &Paths) -> Result<(), HomeError> {
    walk(paths, false)
}

/// Every directory and file of the home; `write`: make and tighten them.
fn walk(paths: &Paths, write: bool) -> Result<(), HomeError> {
    let mut dirs = vec![paths.runtime_dir.clone()];
    if paths.state_dir != paths.runtime_dir {
        dirs.push(paths.state_dir.clone());
    }
    for dir in &dirs {
        private_dir(dir, paths.own, write)?;
    }
    let file = "regular file";
    for db in [paths.database(), paths.activity_database()] {
        for f in [wal_of(&db, "-wal"), wal_of(&db, "-shm"), db] {
            private_file(&f, file, write)?;
        }
    }
    private_file(&crate::fingerprint::path_of(&paths.database()), file, write)?;
    private_file(&paths.lock_file(), file, write)?;
    private_file(&paths.log_file(), file, write)?;
    private_file(&paths.socket(), "socket", write)?;
    // A token file others could read is refused by its loader (the token
    // may have leaked), not quietly tightened here.
    let token = crate::token::path(&paths.state_dir);
    private_file(&token, file, false)?;
    // The proxy's CA likewise (its loader refuses a key others can read).
    for ca in [crate::localca::CA_KEY_FILE, crate::localca::CA_CERT_FILE] {
        private_file(&paths.state_dir.join(ca), file, false)?;
    }
    Ok(())
}

fn wal_of(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `dir` (0700) if it does not exist (with `write`), or checks the
/// one that does.
fn private_dir(dir: &Path, own: bool, write: bool) -> Result<(), HomeError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !write => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io(dir));
        }
        Err(e) => return Err(io(dir)(e)),
        Ok(_) => {}
    }
    // A PB_HOME may itself be reached through a link the user made (a
    // symlinked home directory); what it points to is checked.
    let meta = fs::metadata(dir).map_err(io(dir))?;
    if !meta.is_dir() {
        return Err(HomeError::WrongKind {
            path: dir.to_path_buf(),
            what: "directory",
        });
    }
    ours(dir, &meta)?;
    let mode = meta.permissions().mode() & 0o7777;
    if own {
        // pb's own subdirectory: private, whatever it was.
        if write && mode & 0o777 != 0o700 {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        }
        return Ok(());
    }
    if mode & 0o022 != 0 {
        return Err(HomeError::Shared {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

/// Checks a file the broker will open: absent, or ours and of the right
/// kind, never a link; with `tighten`, made 0600 if others could read it.
fn private_file(file: &Path, what: &'static str, tighten: bool) -> Result<(), HomeError> {
    let meta = match fs::symlink_metadata(file) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(file)(e)),
        Ok(m) => m,
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Err(HomeError::Link {
            path: file.to_path_buf(),
        });
    }
    let right_kind = match what {
        "socket" => {
            use std::os::unix::fs::FileTypeExt;
            kind.is_socket()
        }
        _ => kind.is_file(),
    };
    if !right_kind {
        return Err(HomeError::WrongKind {
            path: file.to_path_buf(),
            what,
        });
    }
    ours(file, &meta)?;
    if tighten && meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(file, fs::Permissions::from_mode(0o600)).map_err(io(file))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_in(dir: &Path, own: bool) -> Paths {
        Paths {
            runtime_dir: dir.to_path_buf(),
            state_dir: dir.to_path_buf(),
            own,
        }
    }

    #[test]
    fn a_new_home_is_private_and_a_shared_one_is_refused_unchanged() {
        let base = tempfile::tempdir().unwrap();
        let fresh = base.path().join("new/home");
        prepare(&paths_in(&fresh, false)).unwrap();
        let mode = fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        for shared in [0o777, 0o1777, 0o775] {
            let dir = base.path().join(format!("shared-{shared:o}"));
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(shared)).unwrap();
            let e = prepare(&paths_in(&dir, false)).unwrap_err();
            assert!(matches!(e, HomeError::Shared { .. }), "{e}");
            assert!(e.to_string().contains("chmod go-w"), "{e}");
            let after = fs::metadata(&dir).unwrap().permissions().mode() & 0o7777;
            assert_eq!(after, shared, "never changed");
            // pb's own subdirectory is made private instead.
            prepare(&paths_in(&dir, true)).unwrap();
            let after = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(after, 0o700);
        }
        // Readable by others but not writable: used as it is.
        let open = base.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&paths_in(&open, false)).unwrap();
        let after = fs::metadata(&open).unwrap().permissions().mode() & 0o777;
        assert_eq!(after, 0o755);
    }

    #[test]
    fn planted_links_and_wrong_kinds_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let home = base.path().join("home");
        fs::create_dir(&home).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        let paths = paths_in(&home, false);
        let target = base.path().join("readable-by-the-planter");
        fs::write(&target, "").unwrap();
        for planted in [
            paths.database(),
            wal_of(&paths.database(), "-wal"),
            paths.log_file(),
        ] {
            std::os::unix::fs::symlink(&target, &planted).unwrap();
            let e = prepare(&paths).unwrap_err();
            assert!(matches!(e, HomeError::Link { .. }), "{e}");
            assert!(e.to_string().contains(&planted.display().to_string()));
            fs::remove_file(&planted).unwrap();
        }
        fs::create_dir(paths.database()).unwrap();
        let e = prepare(&paths).unwrap_err();
        assert!(matches!(e, HomeError::WrongKind { .. }), "{e}");
        fs::remove_dir(paths.database()).unwrap();
        // Our own file, readable by others: made 0600.
        fs::write(paths.database(), "").unwrap();
        fs::set_permissions(paths.database(), fs::Permissions::from_mode(0o644)).unwrap();
        prepare(&paths).unwrap();
        let mode = fs::metadata(paths.database()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
