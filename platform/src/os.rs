//! Small questions and settings of the process itself: who it runs as, its
//! umask, whether stderr is the journal, an exclusive lock on a file, a
//! socket's write side, random bytes, a file written aside and renamed, and
//! a Unix socket bound where only a dead one of ours may be replaced. Here
//! so that the broker and the CLI make none of these calls themselves.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

/// The user this process acts as.
pub fn effective_uid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Sets the process umask; returns the one it replaces.
pub fn set_umask(mask: u32) -> u32 {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(mask as nix::libc::mode_t)).bits() as u32
}

/// Runs `f` with the umask set to `mask`, then puts the old one back: a
/// file made inside is private from birth.
pub fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    let old = set_umask(mask);
    let out = f();
    set_umask(old);
    out
}

/// Whether stderr is the journal's stream: systemd names it in
/// JOURNAL_STREAM as `device:inode` (systemd.exec(5)), and a process whose
/// stderr was since redirected elsewhere must not believe it.
pub fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let v = v.to_string_lossy();
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // st_dev and st_ino are not u64 on every platform.
    #[allow(clippy::unnecessary_cast)]
    nix::sys::stat::fstat(std::io::stderr().as_fd().as_raw_fd())
        .is_ok_and(|st| st.st_dev as u64 == dev && st.st_ino as u64 == ino)
}

/// An exclusive lock on a file, held until this value is dropped (or the
/// process dies, when the kernel lets go of it).
#[derive(Debug)]
pub struct FileLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl FileLock {
    /// Takes the lock without waiting; `Ok(None)` when another holds it.
    pub fn try_exclusive(file: File) -> io::Result<Option<FileLock>> {
        use nix::fcntl::{Flock, FlockArg};
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(FileLock(l))),
            Err((_, nix::Error::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(e.into()),
        }
    }
}

/// Whether the other end of a connected stream socket has closed it: a
/// peek finds the end of the stream, or the connection was reset. Data
/// waiting to be read means the peer is there.
pub fn peer_closed(socket: &impl AsFd) -> bool {
    use nix::sys::socket::MsgFlags;
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    match nix::sys::socket::recv(
        socket.as_fd().as_raw_fd(),
        &mut byte,
        MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
    ) {
        Ok(0) => true,
        Ok(_) => false,
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => false,
        Err(_) => true,
    }
}

/// Closes the write side of a socket (a FIN to the peer), leaving reads.
pub fn shutdown_write(socket: &impl AsFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    nix::sys::socket::shutdown(
        socket.as_fd().as_raw_fd(),
        nix::sys::socket::Shutdown::Write,
    )
    .map_err(Into::into)
}

/// Fills `buf` from the kernel's random source (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    getrandom::fill(buf).map_err(|e| io::Error::other(e.to_string()))
}

/// Writes `bytes` to a new file beside `path` (mode `mode`, never through a
/// link planted at the temporary name) and renames it over `path`, so a
/// reader sees the old file or the new one, never half of one.
pub fn write_aside(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".pb-{}.tmp", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes));
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
}

/// Why [`bind_unix_replacing_stale`] left a file alone.
#[derive(Debug, thiserror::Error)]
pub enum StaleSocketError {
    #[error("it exists and is not a socket; remove it or choose another path")]
    NotASocket,
    #[error("it is a socket of uid {0}, not this process's user")]
    OtherUser(u32),
    #[error("another server listens on it")]
    Live,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Binds a Unix socket at `path` (mode 0600). A file already there is
/// replaced only if it is a socket of this user that nobody listens on
/// (the leftover of a process that died); anything else is left alone.
pub fn bind_unix_replacing_stale(
    path: &Path,
) -> Result<std::os::unix::net::UnixListener, StaleSocketError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::os::unix::net::{UnixListener, UnixStream};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(StaleSocketError::NotASocket);
        }
        if meta.uid() != effective_uid() {
            return Err(StaleSocketError::OtherUser(meta.uid()));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(StaleSocketError::Live);
        }
        std::fs::remove_file(path)?;
    }
    Ok(with_umask(0o177, || UnixListener::bind(path))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_locked_file_is_refused_until_the_first_goes() {
        let dir = tempfile_dir();
        let path = dir.join("lock");
        let open = || File::create(&path).unwrap();
        let first = FileLock::try_exclusive(open()).unwrap();
        assert!(first.is_some());
        assert!(FileLock::try_exclusive(open()).unwrap().is_none());
        drop(first);
        assert!(FileLock::try_exclusive(open()).unwrap().is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn random_bytes_differ_and_umask_comes_back() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        random_bytes(&mut a).unwrap();
        random_bytes(&mut b).unwrap();
        assert_ne!(a, b);
        let before = set_umask(0o022);
        assert_eq!(with_umask(0o177, || set_umask(0o177)), 0o177);
        assert_eq!(set_umask(before), 0o022);
    }

    #[test]
    fn write_aside_replaces_whole_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir();
        let path = dir.join("f");
        write_aside(&path, b"one", 0o644).unwrap();
        write_aside(&path, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn only_a_dead_socket_of_ours_is_replaced() {
        let dir = tempfile_dir();
        let path = dir.join("s");
        std::fs::write(&path, b"x").unwrap();
        assert!(matches!(
            bind_unix_replacing_stale(&path),
            Err(StaleSocketError::NotASocket)
        ));
        std::fs::remove_file(&path).unwrap();
        let live = bind_unix_replacing_stale(&path).unwrap();
        assert!(matches!(
            bind_unix_replacing_stale(&path),
            Err(StaleSocketError::Live)
        ));
        drop(live);
        assert!(bind_unix_replacing_stale(&path).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let mut b = [0u8; 8];
        random_bytes(&mut b).unwrap();
        let d = std::env::temp_dir().join(format!("pb-os-{}", u64::from_le_bytes(b)));
        std::fs::create_dir(&d).unwrap();
        d
    }
}
