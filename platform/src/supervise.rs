//! Running a child with inherited listening sockets, forwarding signals to
//! its whole process tree, ending that tree with it, and reporting how it
//! ended: the process side of `pb exec`.
//!
//! The child gets the sockets at fd 3 onwards with close-on-exec cleared and
//! the systemd socket-activation variables, LISTEN_PID included. LISTEN_PID
//! must be the child's own pid, which only the child knows, so the child
//! writes it into a buffer prepared before fork: nothing allocates between
//! fork and exec, which keeps this safe in a multi-threaded caller too.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};

/// The first inherited descriptor, as systemd's sd_listen_fds(3) defines it.
pub const LISTEN_FDS_START: RawFd = 3;

/// Signals passed on to the child when another process sends them to us.
const FORWARDED: [Signal; 7] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{0}: command not found")]
    NotFound(String),
    #[error("{program}: {source}")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl SpawnError {
    /// The exit code a shell would use for this failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            SpawnError::NotFound(_) => 127,
            _ => 126,
        }
    }
}

/// What to run and what it inherits.
#[derive(Default)]
pub struct ChildSpec {
    pub program: OsString,
    pub args: Vec<OsString>,
    /// Sockets to place at fd 3, 4, ... in order.
    pub listen_fds: Vec<OwnedFd>,
    /// One name per socket, for LISTEN_FDNAMES.
    pub fd_names: Vec<String>,
    /// Extra environment, applied over ours.
    pub env: Vec<(OsString, OsString)>,
    /// Variables of ours the child must not inherit.
    pub unset: Vec<OsString>,
    /// Set LISTEN_PID to the child's pid. Without it (systemfd's
    /// `--no-pid`), a file watcher that re-execs its child (`cargo watch`,
    /// `watchexec`) passes the sockets on to a process whose pid differs,
    /// which listenfd-style apps then still accept.
    pub listen_pid: bool,
    /// A variable whose value (at most this many bytes) is known only
    /// after the fork, and given to [`Held::start_with`].
    pub late_env: Option<(String, usize)>,
    /// The child's stdin, stdout and stderr; `None` inherits ours.
    pub stdio: Option<[OwnedFd; 3]>,
    /// The directory the child starts in; `None` is ours.
    pub dir: Option<PathBuf>,
    /// Starts the child as the leader of a process group of its own, so
    /// that a signal for it reaches its whole tree (`pb up` stops each
    /// service so) and a terminal's Ctrl-C reaches only its supervisor.
    pub own_group: bool,
}

/// How long the rest of a tree gets between SIGTERM and SIGKILL, unless
/// the caller says otherwise.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// Signals that end a process by default: after pb passes one on, the tree
/// has the grace period to end before it is killed.
const TERMINATING: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// A running child under supervision, and everything it starts: this
/// process is their subreaper, so even a daemonizing grandchild stays in
/// the tree that [`Supervised::wait`] ends.
pub struct Supervised {
    pid: Pid,
    signals: SigSet,
    old_mask: SigSet,
}

impl Supervised {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Forwards signals until the child ends, then ends what is left of its
    /// tree (SIGTERM, and SIGKILL after `grace`), and returns only when the
    /// whole tree is gone. The result is the child's exit code, or 128 + the
    /// signal number if a signal ended it (as shells report it).
    ///
    /// A terminating signal sent to us by a process goes to every process
    /// in the tree, as a terminal's Ctrl-C goes to its foreground group;
    /// if the tree has not ended `grace` later, it is killed.
    pub fn wait(self, grace: Duration) -> std::io::Result<i32> {
        let result = self.wait_tree(grace);
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
        result
    }

    fn wait_tree(&self, grace: Duration) -> std::io::Result<i32> {
        let me = std::process::id();
        let mut code: Option<i32> = None;
        // When the tree is killed if it still stands.
        let mut kill_at: Option<Instant> = None;
        // Bounds the wait after SIGKILL, for processes stuck in the kernel.
        let mut give_up_at: Option<Instant> = None;
        loop {
            let (main, more) = self.reap();
            if main.is_some() {
                code = main;
            }
            if code.is_some() {
                if !more {
                    return Ok(code.unwrap_or(0));
                }
                if kill_at.is_none() && give_up_at.is_none() {
                    // The child is gone and left processes behind.
                    signal_tree(me, Signal::SIGTERM);
                    kill_at = Some(Instant::now() + grace);
                }
            }
            let now = Instant::now();
            if give_up_at.is_some_and(|t| now >= t) {
                return Ok(code.unwrap_or(128 + libc::SIGKILL));
            }
            if kill_at.is_some_and(|t| now >= t) {
                signal_tree(me, Signal::SIGKILL);
                kill_at = None;
                give_up_at = Some(now + grace.max(Duration::from_secs(1)));
                continue;
            }
            let deadline = kill_at.or(give_up_at);
            let info = match deadline {
                Some(t) => {
                    match crate::sys::wait_signal_for(
                        &self.signals,
                        t.saturating_duration_since(now),
                    )? {
                        Some(info) => info,
                        None => continue,
                    }
                }
                None => crate::sys::wait_signal(&self.signals)?,
            };
            if info.signo == libc::SIGCHLD {
                continue;
            }
            // A terminal's signal already reached the child, which shares
            // our foreground process group; only pass on what a process sent.
            if !info.from_process {
                continue;
            }
            let Ok(sig) = Signal::try_from(info.signo) else {
                continue;
            };
            signal_tree(me, sig);
            if TERMINATING.contains(&sig) && kill_at.is_none() && give_up_at.is_none() {
                kill_at = Some(Instant::now() + grace);
            }
        }
    }

    /// Reaps every child that has ended. Returns the main child's status if
    /// it was among them, and whether any child is left.
    fn reap(&self) -> (Option<i32>, bool) {
        let mut main = None;
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, c)) if pid == self.pid => main = Some(c),
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == self.pid => {
                    main = Some(128 + sig as i32)
                }
                Ok(WaitStatus::StillAlive) => return (main, true),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                // ECHILD: nobody is left.
                Err(_) => return (main, false),
            }
        }
    }
}

/// Sends `sig` to every process below `root`, parents first so that none
/// can fork a child the pass misses.
fn signal_tree(root: u32, sig: Signal) {
    for pid in crate::sys::descendants(root) {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }
}

/// Finds `program` the way execvp(3) would, and says what a shell would
/// if it cannot run: not found (127), or found but not executable (126).
pub fn find_program(program: &OsStr) -> Result<PathBuf, SpawnError> {
    let display = program.to_string_lossy().into_owned();
    let p = Path::new(program);
    if program.is_empty() {
        return Err(SpawnError::NotFound(display));
    }
    if program.as_bytes().contains(&b'/') {
        let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SpawnError::NotFound(display.clone()),
            _ => SpawnError::Exec {
                program: display.clone(),
                source: e,
            },
        })?;
        if !is_executable(&meta) {
            return Err(SpawnError::Exec {
                program: display,
                source: std::io::Error::from_raw_os_error(libc::EACCES),
            });
        }
        return Ok(p.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut not_executable = None;
    for cand in std::env::split_paths(&path).map(|dir| dir.join(p)) {
        match std::fs::metadata(&cand) {
            Ok(m) if is_executable(&m) => return Ok(cand),
            Ok(m) if m.is_file() => not_executable = not_executable.or(Some(cand)),
            _ => {}
        }
    }
    Err(match not_executable {
        // As bash says: found, but permission denied.
        Some(_) => SpawnError::Exec {
            program: display,
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        },
        None => SpawnError::NotFound(display),
    })
}

/// Whether the dynamic loader runs `path`, so that LD_PRELOAD reaches it:
/// `false` for a static ELF binary (no PT_INTERP: Go's, musl's static
/// builds), `true` for dynamic ones and for scripts (their interpreter
/// is dynamic), `None` when the file cannot be read as either.
pub fn loads_preload(path: &Path) -> Option<bool> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 64];
    let n = f.read(&mut head).ok()?;
    if head[..n].starts_with(b"#!") {
        return Some(true);
    }
    if n < 64 || &head[..4] != b"\x7fELF" || head[5] != 1 {
        return None;
    }
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]) as usize;
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (phoff, phentsize, phnum) = match head[4] {
        1 => (
            u32_at(&head, 0x1c) as u64,
            u16_at(&head, 0x2a),
            u16_at(&head, 0x2c),
        ),
        2 => (
            u64::from_le_bytes(head[0x20..0x28].try_into().ok()?),
            u16_at(&head, 0x36),
            u16_at(&head, 0x38),
        ),
        _ => return None,
    };
    if phentsize < 4 || phnum > 4096 {
        return None;
    }
    let mut table = vec![0u8; phentsize * phnum];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    const PT_INTERP: u32 = 3;
    Some(table.chunks(phentsize).any(|ph| u32_at(ph, 0) == PT_INTERP))
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.is_file() && m.permissions().mode() & 0o111 != 0
}

fn cstring(bytes: Vec<u8>) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "argument contains a NUL byte",
        )
    })
}

/// Starts the child. Signals we forward are blocked in this thread from
/// just before its exec until `Supervised::wait` returns, so none sent to a
/// running command is lost; one that comes earlier ends pb, and the held
/// child with it.
pub fn spawn(spec: ChildSpec) -> Result<Supervised, SpawnError> {
    spawn_held(spec)?.start()
}

/// A child forked but held before its exec, so that something can be
/// arranged for its pid first (`pb lock NAME -- CMD` takes the lock *for
/// the command's own process*, which then holds it even if pb dies). It
/// execs on [`Held::start`]; if this process dies or abandons it first, it
/// exits without running anything.
pub struct Held {
    pid: Pid,
    /// Writing to it lets the child go on; closing it unwritten makes the
    /// child exit without running anything.
    go: OwnedFd,
    /// Closed by the exec; carries errno if the exec failed.
    err_r: OwnedFd,
    display: String,
}

impl Held {
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Lets the child exec, and supervises it from here on.
    pub fn start(self) -> Result<Supervised, SpawnError> {
        self.start_with("")
    }

    /// The same, with the value of the spec's `late_env` (cut to its width).
    pub fn start_with(self, late_value: &str) -> Result<Supervised, SpawnError> {
        let mut signals = SigSet::empty();
        signals.add(Signal::SIGCHLD);
        for s in FORWARDED {
            signals.add(s);
        }
        let mut old_mask = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), Some(&mut old_mask))
            .map_err(std::io::Error::from)?;
        let mut go = std::fs::File::from(self.go);
        // A marker byte, then the late value; the close ends it. A failed
        // write means the child is gone: the exec pipe says how.
        let mut word = vec![b'g'];
        word.extend_from_slice(late_value.as_bytes());
        let _ = std::io::Write::write_all(&mut go, &word);
        drop(go);
        let mut buf = [0u8; 4];
        let mut err_r = std::fs::File::from(self.err_r);
        let got = std::io::Read::read(&mut err_r, &mut buf).unwrap_or(0);
        if got == 4 {
            let _ = waitpid(self.pid, None);
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old_mask), None);
            return Err(SpawnError::Exec {
                program: self.display,
                source: std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)),
            });
        }
        Ok(Supervised {
            pid: self.pid,
            signals,
            old_mask,
        })
    }

    /// Lets the child exec and leaves its supervision to the caller (which
    /// reaps it): for a supervisor of many children. Returns its pid.
    pub fn launch(self) -> Result<u32, SpawnError> {
        let pid = self.pid;
        let display = self.display;
        let mut go = std::fs::File::from(self.go);
        let _ = std::io::Write::write_all(&mut go, b"g");
        drop(go);
        let mut buf = [0u8; 4];
        let mut err_r = std::fs::File::from(self.err_r);
        if std::io::Read::read(&mut err_r, &mut buf).unwrap_or(0) == 4 {
            let _ = waitpid(pid, None);
            return Err(SpawnError::Exec {
                program: display,
                source: std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)),
            });
        }
        Ok(pid.as_raw() as u32)
    }

    /// The child exits without running anything; reaped here.
    pub fn abandon(self) {
        let pid = self.pid;
        drop(self.go);
        let _ = waitpid(pid, None);
    }
}

/// Forks the child and holds it before its exec (see [`Held`]).
pub fn spawn_held(spec: ChildSpec) -> Result<Held, SpawnError> {
    let display = spec.program.to_string_lossy().into_owned();
    let path = find_program(&spec.program)?;
    let path_c = cstring(path.into_os_string().into_vec())?;
    let mut argv = vec![cstring(spec.program.clone().into_vec())?];
    for a in &spec.args {
        argv.push(cstring(a.clone().into_vec())?);
    }

    let n = spec.listen_fds.len();
    let overridden: Vec<&OsStr> = spec.env.iter().map(|(k, _)| k.as_os_str()).collect();
    let systemd_vars = [
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
        "LISTEN_FDS_FIRST_FD",
    ];
    let mut envp: Vec<CString> = Vec::new();
    let late_name = spec.late_env.as_ref().map(|(n, _)| n.as_str());
    for (k, v) in std::env::vars_os() {
        if overridden.contains(&k.as_os_str())
            || spec.unset.contains(&k)
            || systemd_vars.iter().any(|s| k == *s)
            || late_name.is_some_and(|n| k == n)
        {
            continue;
        }
        let mut kv = k.into_vec();
        kv.push(b'=');
        kv.extend(v.into_vec());
        envp.push(cstring(kv)?);
    }
    for (k, v) in &spec.env {
        let mut kv = k.clone().into_vec();
        kv.push(b'=');
        kv.extend(v.as_bytes());
        envp.push(cstring(kv)?);
    }
    // The late variable's value comes over the go-ahead pipe, into room
    // made here (the child allocates nothing).
    let late_index = match &spec.late_env {
        Some((name, width)) => {
            envp.push(cstring(
                format!("{name}={}", " ".repeat(*width)).into_bytes(),
            )?);
            Some((envp.len() - 1, name.len() + 1, *width))
        }
        None => None,
    };
    // LISTEN_PID's digits are filled in by the child; 20 spaces of room.
    let listen_pid_index = if n > 0 {
        envp.push(cstring(format!("LISTEN_FDS={n}").into_bytes())?);
        envp.push(cstring(
            format!("LISTEN_FDNAMES={}", spec.fd_names.join(":")).into_bytes(),
        )?);
        envp.push(cstring(
            format!("LISTEN_FDS_FIRST_FD={LISTEN_FDS_START}").into_bytes(),
        )?);
        if spec.listen_pid {
            envp.push(cstring(
                format!("LISTEN_PID={}", " ".repeat(20)).into_bytes(),
            )?);
            Some(envp.len() - 1)
        } else {
            None
        }
    } else {
        None
    };

    // The child writes into two of these (LISTEN_PID's digits, the late
    // value) between fork and exec: owned byte buffers, written through
    // pointers taken from `as_mut_ptr`, never through a CString's `as_ptr`.
    let mut envp: Vec<Vec<u8>> = envp.into_iter().map(CString::into_bytes_with_nul).collect();

    // Move the sockets above the range they will occupy, so the dup2 calls
    // in the child cannot clobber one another.
    let floor = LISTEN_FDS_START + n as RawFd;
    let mut high: Vec<OwnedFd> = Vec::with_capacity(n);
    for fd in &spec.listen_fds {
        // SAFETY: F_DUPFD_CLOEXEC on a descriptor we hold; it returns a new
        // descriptor or -1.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
        if r < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `r` is a fresh descriptor that nothing else owns.
        high.push(unsafe { OwnedFd::from_raw_fd(r) });
    }
    drop(spec.listen_fds);
    let mut stdio_high: Vec<OwnedFd> = Vec::new();
    for fd in spec.stdio.into_iter().flatten() {
        // SAFETY: as above: a new descriptor or -1.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
        if r < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `r` is a fresh descriptor that nothing else owns.
        stdio_high.push(unsafe { OwnedFd::from_raw_fd(r) });
    }
    let dir_c = match &spec.dir {
        Some(d) => Some(cstring(d.clone().into_os_string().into_vec())?),
        None => None,
    };
    let own_group = spec.own_group;
    // The child starts with no signal blocked, whatever this thread blocks
    // (a supervisor that waits for signals blocks them everywhere).
    let no_signals = SigSet::empty();

    // exec failures travel back over a close-on-exec pipe; the go-ahead
    // comes over another.
    let (err_r, err_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let (go_r, go_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    // Above the listeners' range too, or a dup2 onto fd 3.. in the child
    // could overwrite one of them.
    let above = |fd: OwnedFd| -> std::io::Result<OwnedFd> {
        // SAFETY: as above: a new descriptor or -1.
        let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `r` is a fresh descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(r) })
    };
    let (err_r, err_w, go_r, go_w) = (above(err_r)?, above(err_w)?, above(go_r)?, above(go_w)?);

    // Orphans of the tree come to us, so that it ends with us.
    crate::sys::become_subreaper()?;

    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let high_raw: Vec<RawFd> = high.iter().map(|f| f.as_raw_fd()).collect();
    let stdio_raw: Vec<RawFd> = stdio_high.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY (both slots): the offset stays inside the buffer, which holds
    // the name, '=' and the padding the child writes into.
    let pid_slot: Option<*mut u8> =
        listen_pid_index.map(|i| unsafe { envp[i].as_mut_ptr().add("LISTEN_PID=".len()) });
    let late_slot: Option<(*mut u8, usize)> =
        late_index.map(|(i, offset, width)| (unsafe { envp[i].as_mut_ptr().add(offset) }, width));
    let envp_ptrs: Vec<*const libc::c_char> = envp
        .iter()
        .map(|a| a.as_ptr().cast())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let (go_r_raw, go_w_raw) = (go_r.as_raw_fd(), go_w.as_raw_fd());
    // SAFETY: between fork and exec the child only makes async-signal-safe
    // calls on memory prepared above (pipes, descriptors, the two slots in
    // `envp`); it allocates nothing and never returns into Rust code.
    match unsafe { nix::unistd::fork() }.map_err(std::io::Error::from)? {
        ForkResult::Child => unsafe {
            // Only the parent may hold the write end, so that its death
            // reads as end-of-file here.
            libc::close(go_w_raw);
            // pb (as every Rust program) ignores SIGPIPE; the command gets
            // the default back, as a shell would give it (`yes | head`).
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            // The marker byte, then the late value until end-of-file.
            let mut marker = 0u8;
            loop {
                match libc::read(go_r_raw, (&mut marker as *mut u8).cast(), 1) {
                    1 => break,
                    n if n < 0 && *libc::__errno_location() == libc::EINTR => continue,
                    // Abandoned, or the parent died: run nothing.
                    _ => libc::_exit(0),
                }
            }
            if let Some((slot, width)) = late_slot {
                let mut got = 0usize;
                while got < width {
                    let n = libc::read(go_r_raw, slot.add(got).cast(), width - got);
                    if n > 0 {
                        got += n as usize;
                    } else if n < 0 && *libc::__errno_location() == libc::EINTR {
                        continue;
                    } else {
                        break;
                    }
                }
                // End the value where it ended; the padding is never read.
                *slot.add(got) = 0;
            }
            for (i, fd) in stdio_raw.iter().enumerate() {
                if libc::dup2(*fd, i as RawFd) < 0 {
                    child_fail(err_w.as_raw_fd());
                }
            }
            for (i, fd) in high_raw.iter().enumerate() {
                if libc::dup2(*fd, LISTEN_FDS_START + i as RawFd) < 0 {
                    child_fail(err_w.as_raw_fd());
                }
            }
            if let Some(dir) = &dir_c {
                if libc::chdir(dir.as_ptr()) < 0 {
                    child_fail(err_w.as_raw_fd());
                }
            }
            if own_group && libc::setpgid(0, 0) < 0 {
                child_fail(err_w.as_raw_fd());
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, no_signals.as_ref(), std::ptr::null_mut());
            if let Some(slot) = pid_slot {
                write_decimal(slot, libc::getpid() as u64);
            }
            libc::execve(path_c.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            child_fail(err_w.as_raw_fd());
        },
        ForkResult::Parent { child } => {
            if own_group {
                // Also here, so that the group exists before the caller can
                // signal it, whichever of the two runs first.
                let _ = nix::unistd::setpgid(child, child);
            }
            drop(err_w);
            drop(go_r);
            drop(high);
            drop(stdio_high);
            Ok(Held {
                pid: child,
                go: go_w,
                err_r,
                display,
            })
        }
    }
}

/// Reports errno to the parent and exits, without allocating.
///
/// # Safety
///
/// Only in a forked child before exec: it ends the process with `_exit`,
/// running no destructor and no atexit handler of the parent's.
unsafe fn child_fail(fd: RawFd) -> ! {
    // last_os_error reads errno without allocating.
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    let bytes = errno.to_ne_bytes();
    libc::write(fd, bytes.as_ptr().cast(), 4);
    libc::_exit(127)
}

/// Writes `v` in decimal into the space-padded slot (20 bytes).
///
/// # Safety
///
/// `slot` must point at 21 writable bytes (20 digits and a NUL) that no
/// reference aliases.
unsafe fn write_decimal(slot: *mut u8, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (v % 10) as u8;
        len += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    for i in 0..len {
        *slot.add(i) = digits[len - 1 - i];
    }
    // Terminate right after the digits; the padding is never read.
    *slot.add(len) = 0;
}

/// The process side of a supervisor of many children (`pb up`): the
/// signals it waits for are blocked in the thread that makes it, and in
/// every thread started after (they inherit the mask), so that none is
/// lost between two waits; this process becomes the subreaper of every
/// tree it starts. Children are started with [`Held::launch`] and
/// [`ChildSpec::own_group`], and reaped by [`Fleet::wait`].
pub struct Fleet {
    signals: SigSet,
    old_mask: SigSet,
}

/// What one [`Fleet::wait`] saw.
#[derive(Debug, Default)]
pub struct FleetEvents {
    /// Children that ended: pid and exit code (128 + signal if a signal
    /// ended it, as shells say). Orphans of the trees are reaped too, and
    /// listed.
    pub exited: Vec<(u32, i32)>,
    /// A signal that asks this process to stop (INT, TERM, HUP, QUIT).
    pub stop: Option<i32>,
    /// SIGUSR1 arrived: someone left a request for the supervisor.
    pub poked: bool,
}

impl Fleet {
    pub fn new() -> std::io::Result<Fleet> {
        let mut signals = SigSet::empty();
        for s in [
            Signal::SIGCHLD,
            Signal::SIGINT,
            Signal::SIGTERM,
            Signal::SIGHUP,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
        ] {
            signals.add(s);
        }
        let mut old_mask = SigSet::empty();
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&signals), Some(&mut old_mask))
            .map_err(std::io::Error::from)?;
        crate::sys::become_subreaper()?;
        Ok(Fleet { signals, old_mask })
    }

    /// Waits up to `limit` for a signal, then reaps every child that has
    /// ended (whether or not a SIGCHLD was seen: they coalesce).
    pub fn wait(&self, limit: Duration) -> std::io::Result<FleetEvents> {
        let mut ev = FleetEvents::default();
        if let Some(info) = crate::sys::wait_signal_for(&self.signals, limit)? {
            match info.signo {
                libc::SIGCHLD => {}
                libc::SIGUSR1 => ev.poked = true,
                sig => ev.stop = Some(sig),
            }
        }
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, c)) => ev.exited.push((pid.as_raw() as u32, c)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    ev.exited.push((pid.as_raw() as u32, 128 + sig as i32))
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                // ECHILD: no child at all.
                Err(_) => break,
            }
        }
        Ok(ev)
    }

    /// Sends `sig` to the process group `pgid` (a child started with
    /// `own_group`, and what it started); `false` if the group is gone.
    pub fn signal_group(&self, pgid: u32, sig: i32) -> bool {
        let (Ok(pgid), Ok(sig)) = (i32::try_from(pgid), Signal::try_from(sig)) else {
            return false;
        };
        nix::sys::signal::killpg(Pid::from_raw(pgid), sig).is_ok()
    }

    /// Sends `sig` to every process below this one: what left its group
    /// (a daemonizing grandchild) is still in the tree, as an orphan of
    /// ours.
    pub fn signal_all(&self, sig: i32) {
        if let Ok(sig) = Signal::try_from(sig) {
            signal_tree(std::process::id(), sig);
        }
    }

    /// Whether any process is left below this one.
    pub fn any_left(&self) -> bool {
        !crate::sys::descendants(std::process::id()).is_empty()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_binaries_and_scripts_load_the_preload() {
        let sh = find_program(OsStr::new("sh")).unwrap();
        assert_eq!(loads_preload(&sh), Some(true));
        let dir = std::env::temp_dir().join(format!("pb-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s");
        std::fs::write(&script, "#!/bin/sh\n").unwrap();
        assert_eq!(loads_preload(&script), Some(true));
        let text = dir.join("t");
        std::fs::write(&text, "hello").unwrap();
        assert_eq!(loads_preload(&text), None);
        // An ELF header with no program headers at all: nothing to load it.
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x36] = 56;
        let stat = dir.join("static");
        std::fs::write(&stat, &elf).unwrap();
        assert_eq!(loads_preload(&stat), Some(false));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
