//! Harness for pb's end-to-end tests: a real broker (`pb daemon`) in a
//! temporary PB_HOME, the real `pb` binary as client, and helpers to probe
//! ports the way an outside process would.
//!
//! Every process a test starts is recorded by pid and killed on drop; every
//! wait loop has a deadline.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `pb` binary under test: $PB_BIN, or the one built beside this test.
pub fn pb_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PB_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/pb
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("pb");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// The repository's tests/ directory (for helper scripts).
pub fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` to its end and asserts that it succeeded, with its stderr in
/// the failure.
pub fn output_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run the command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `f` every 10 ms until it returns `Some`, for at most `limit`.
pub fn wait_until<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Ports handed to test brokers: 12000-31999, below the usual ephemeral
/// range (32768+) and above common dev ports, in blocks of 100.
const BLOCKS_START: u16 = 12000;
const BLOCK: u16 = 100;
const BLOCKS: u16 = 200;
/// Blocks holding ports the broker never allocates from a range (Expo's
/// 19000-19002, Vite's HMR 24678, MongoDB's 27017: `DEV_DEFAULT_PORTS` in
/// broker/src/rules.rs), so that tests may expect a block's ports in order.
const AVOIDED_BLOCKS: [u16; 3] = [70, 126, 150];
/// Blocks that pb-broker's own unit tests bind from in-process cores
/// (25 800-26 999: broker/src/core/tests.rs), should a runner start both
/// test binaries at once.
const BROKER_UNIT_TEST_BLOCKS: std::ops::Range<u16> = 138..150;

/// Whether the broker could bind `port` exclusively now (no socket on it
/// at all, TIME_WAIT remnants included).
fn exclusively_free(port: u16) -> bool {
    use pb_platform::net::{BindMode, LoopbackSockets, SocketPool};
    LoopbackSockets::bind(port, false, BindMode::Exclusive, &mut SocketPool::default()).is_ok()
}

/// A range of ports reserved for one test broker. Tests run in parallel
/// threads and processes; each block is claimed with an flock on a file in
/// the temp dir, held until this value is dropped, so no two running tests
/// ever share a port.
pub struct PortBlock {
    pub range: (u16, u16),
    _locks: Vec<std::fs::File>,
}

impl PortBlock {
    pub fn take(size: u16) -> PortBlock {
        use std::os::fd::AsRawFd;
        let n = size.div_ceil(BLOCK).max(1);
        let dir = std::env::temp_dir().join("pb-test-ports");
        std::fs::create_dir_all(&dir).expect("port lock dir");
        let seed = std::process::id() as u16
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos() as u16;
        for attempt in 0..BLOCKS {
            let first = (seed.wrapping_add(attempt)) % (BLOCKS - n + 1);
            if (first..first + n)
                .any(|b| AVOIDED_BLOCKS.contains(&b) || BROKER_UNIT_TEST_BLOCKS.contains(&b))
            {
                continue;
            }
            let mut locks = Vec::new();
            for b in first..first + n {
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(dir.join(format!("block-{b}")))
                    .expect("port lock file");
                // SAFETY: flock on a file we own; released when it closes.
                if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                    break;
                }
                locks.push(f);
            }
            let start = BLOCKS_START + first * BLOCK;
            // A block a test used a moment ago may still have ports in
            // TIME_WAIT, which the broker's exclusive binds avoid; a test
            // expecting its range's first port would then see the next.
            if locks.len() == n as usize && (start..start + n * BLOCK).all(exclusively_free) {
                return PortBlock {
                    range: (start, start + size - 1),
                    _locks: locks,
                };
            }
        }
        panic!("no free block of {size} test ports");
    }

    /// A range outside the test blocks, locked by nobody: for a bench,
    /// which runs alone, that needs more ports than the blocks hold. It
    /// must also stay below the kernel's ephemeral ports, which a bench
    /// run just before may have left in TIME_WAIT.
    pub fn outside_tests(start: u16, size: u16) -> PortBlock {
        let end = u32::from(start) + u32::from(size) - 1;
        assert!(
            end < u32::from(BLOCKS_START) || start >= BLOCKS_START + BLOCKS * BLOCK,
            "inside the test blocks"
        );
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
            .unwrap_or(32768);
        assert!(
            end < ephemeral,
            "{start}-{end} reaches the ephemeral ports ({ephemeral}-)"
        );
        PortBlock {
            range: (start, start + size - 1),
            _locks: Vec::new(),
        }
    }
}

/// Whether an outside process could bind `addr` right now with a plain
/// bind(2): no SO_REUSEADDR, as a careful app or another port allocator
/// probing for a free port would do. (Rust's std `TcpListener::bind` sets
/// SO_REUSEADDR, so it is not used here.)
pub fn can_bind(addr: SocketAddr) -> bool {
    bind_raw(addr, false)
}

/// Whether a bind with SO_REUSEADDR (Node, Python's http.server, Go, Rust's
/// std) would succeed, and the socket then listen.
pub fn can_bind_and_listen_reuseaddr(addr: SocketAddr) -> bool {
    bind_raw(addr, true)
}

fn bind_raw(addr: SocketAddr, reuse: bool) -> bool {
    use std::os::fd::FromRawFd;
    let (family, storage, len) = sockaddr(addr);
    // SAFETY: plain socket calls on a descriptor we own and close.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let _owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        if addr.is_ipv6() {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&one as *const i32).cast(),
                4,
            );
        }
        if reuse {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                (&one as *const i32).cast(),
                4,
            );
        }
        let ok = libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) == 0;
        ok && (!reuse || libc::listen(fd, 1) == 0)
    }
}

fn sockaddr(addr: SocketAddr) -> (i32, libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, large enough for either family.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (
                libc::AF_INET,
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as u16,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                libc::AF_INET6,
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as u32,
            )
        }
    }
}

pub fn v4(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

pub fn v6(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv6Addr::LOCALHOST, port))
}

/// A running broker in its own PB_HOME.
pub struct Broker {
    pub home: tempfile::TempDir,
    pub range: (u16, u16),
    _ports: PortBlock,
    env: Vec<(String, String)>,
    daemon: Option<Child>,
    /// The uid and gid the broker runs as, when not the test's own.
    user: Option<(u32, u32)>,
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(&[])
    }

    /// Starts a broker with extra environment, on a private block of 200
    /// ports.
    pub fn start_with(env: &[(&str, &str)]) -> Broker {
        Broker::start_in(PortBlock::take(200), env)
    }

    /// Starts a broker on `block`: its last port serves the HTTP API
    /// (PB_HTTP_ADDR, on 127.0.0.1 and ::1, unless `env` sets it, to `off`
    /// say), the one before it the proxy (PB_PROXY_ADDR), the rest is
    /// PB_RANGE. No test broker ever binds the default
    /// HTTP port 9876.
    /// Starts a broker running as another user (root only: setpriv), its
    /// PB_HOME that user's; the test's own processes are then another user
    /// to it (root is served as itself, not as the broker's user).
    pub fn start_as(uid: u32, gid: u32, env: &[(&str, &str)]) -> Broker {
        Broker::start_in_as(PortBlock::take(200), env, Some((uid, gid)))
    }

    pub fn start_in(block: PortBlock, env: &[(&str, &str)]) -> Broker {
        Broker::start_in_as(block, env, None)
    }

    fn start_in_as(block: PortBlock, env: &[(&str, &str)], user: Option<(u32, u32)>) -> Broker {
        assert!(
            env.iter().all(|(k, _)| *k != "PB_RANGE"),
            "the range comes from the block"
        );
        let home = tempfile::Builder::new()
            .prefix("pb-test-")
            .tempdir()
            .expect("temp dir");
        let http = block.range.1;
        let proxy = block.range.1 - 1;
        let range = (block.range.0, block.range.1 - 2);
        let mut all: Vec<(String, String)> = vec![
            ("PB_HOME".into(), home.path().display().to_string()),
            ("PB_RANGE".into(), format!("{}-{}", range.0, range.1)),
            ("PB_NO_AUTOSTART".into(), "1".into()),
            (
                "PB_HTTP_ADDR".into(),
                format!("127.0.0.1:{http},[::1]:{http}"),
            ),
            (
                "PB_PROXY_ADDR".into(),
                format!("127.0.0.1:{proxy},[::1]:{proxy}"),
            ),
        ];
        for (k, v) in env {
            all.retain(|(key, _)| key != k);
            all.push((k.to_string(), v.to_string()));
        }
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(home.path(), Some(uid), Some(gid)).expect("chown PB_HOME");
        }
        let mut b = Broker {
            home,
            range,
            _ports: block,
            env: all,
            daemon: None,
            user,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log_path = self.home.path().join("broker.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        // The broker uses no file of another user's in its home, this
        // test's included.
        if let Some((uid, gid)) = self.user {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid)).expect("chown the log");
        }
        // setpriv execs pb: the child is the daemon itself.
        let mut cmd = command_as(self.user, pb_bin());
        let child = cmd
            .arg("daemon")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pb daemon");
        self.daemon = Some(child);
        let sock = self.socket();
        let up = wait_until(Duration::from_secs(10), || {
            pb_proto::Client::connect(&sock).ok()
        });
        assert!(up.is_some(), "broker did not come up; log:\n{}", self.log());
        // The Unix socket accepts connections from its bind on, a moment
        // before the HTTP listeners exist: a test's first HTTP request must
        // not race them. (A connection, not a bind probe, which could take
        // the port from the broker.)
        if let Some(port) = self.http_port() {
            wait_until(Duration::from_secs(10), || {
                std::net::TcpStream::connect(v4(port)).ok()
            });
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.home.path().join("pb.sock")
    }

    /// The HTTP API's port (on 127.0.0.1 and ::1), unless it is off.
    pub fn http_port(&self) -> Option<u16> {
        let addrs = &self.env.iter().find(|(k, _)| k == "PB_HTTP_ADDR")?.1;
        let first: SocketAddr = addrs.split(',').next()?.trim().parse().ok()?;
        Some(first.port())
    }

    /// The named-URL proxy's port (on 127.0.0.1 and ::1), unless it is off.
    pub fn proxy_port(&self) -> Option<u16> {
        let addrs = &self.env.iter().find(|(k, _)| k == "PB_PROXY_ADDR")?.1;
        let first: SocketAddr = addrs.split(',').next()?.trim().parse().ok()?;
        Some(first.port())
    }

    /// `http://127.0.0.1:PORT`, the HTTP API's base URL.
    pub fn http_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}",
            self.http_port().expect("this broker's HTTP API is off")
        )
    }

    /// This broker's environment (to run other programs against it).
    pub fn env(&self) -> &[(String, String)] {
        &self.env
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.home.path().join("broker.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.daemon.as_ref().expect("running").id()
    }

    pub fn client(&self) -> pb_proto::Client {
        pb_proto::Client::connect(&self.socket()).expect("connect to broker")
    }

    /// A `pb` command with this broker's environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(pb_bin());
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn pb(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run pb")
    }

    /// Runs pb, asserts success, returns stdout.
    pub fn pb_ok(&self, args: &[&str]) -> String {
        let out = self.pb(args);
        assert!(
            out.status.success(),
            "pb {args:?} failed ({:?}): {}{}\nbroker log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn pb_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.pb_ok(&a)).expect("pb -j prints JSON")
    }

    /// `pb -j ARGS` for a command that prints one JSON object a line
    /// (`history`, `log`).
    pub fn pb_json_lines(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        self.pb_ok(&a)
            .lines()
            .map(|l| serde_json::from_str(l).expect("pb -j prints a JSON object a line"))
            .collect()
    }

    /// Starts tests/clients/holder.py with `args` (what to take and hold
    /// until killed) and returns it with the JSON line it printed once it
    /// held everything.
    pub fn holder(&self, args: &[&str]) -> (Proc, Value) {
        use std::io::{BufRead, BufReader};
        let mut holder = Proc(
            Command::new("python3")
                .arg(tests_dir().join("clients/holder.py"))
                .arg(self.socket())
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .expect("python3"),
        );
        let mut line = String::new();
        BufReader::new(holder.0.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let held = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("holder.py printed {line:?}: {e}"));
        (holder, held)
    }

    /// `pb -j log ARGS...`: the activity log's entries, one per line.
    pub fn activity(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["log"];
        a.extend_from_slice(args);
        self.pb_json_lines(&a)
    }

    /// `pb claim ID -q ...`, as a port.
    pub fn claim(&self, id: &str, extra: &[&str]) -> u16 {
        let mut a = vec!["claim", id, "-q"];
        a.extend_from_slice(extra);
        self.pb_ok(&a).trim().parse().expect("a port")
    }

    /// Starts `pb exec ARGS...` (ARGS begins with the id) and reads the
    /// port from its banner.
    pub fn exec(&self, args: &[&str]) -> (Proc, u16) {
        self.exec_as("exec", args)
    }

    /// `exec` under another of its names (`run`).
    pub fn exec_as(&self, word: &str, args: &[&str]) -> (Proc, u16) {
        use std::io::{BufRead, BufReader};
        let mut child = self
            .cmd()
            .arg(word)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pb exec");
        let mut line = String::new();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        stderr.read_line(&mut line).unwrap();
        // Keep draining, so the child's own logging never hits a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in banner {line:?}"));
        (Proc(child), port)
    }

    /// The ids and ports of every lease, sorted by port.
    pub fn leases(&self) -> Vec<(String, u16)> {
        let v = self.pb_json(&["find"]);
        v["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["port"].as_u64().unwrap() as u16,
                )
            })
            .collect()
    }

    /// Waits (at most `limit`) for the broker to exit on its own; how it did.
    pub fn exited(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.daemon.as_mut()?;
        let status = wait_until(limit, || child.try_wait().ok().flatten());
        if status.is_some() {
            self.daemon = None;
        }
        status
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same home.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A server that knows nothing of pb: python's http.server on
/// 127.0.0.1:`port`, started (not yet necessarily listening).
pub fn foreign_http_server(port: u16) -> Proc {
    Proc(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3"),
    )
}

/// tests/servers/webhook_receiver.py serving on 127.0.0.1:`port`: it
/// records each request it gets as a JSON line, and checks both webhook
/// signatures with its own code.
pub struct WebhookReceiver {
    _proc: Proc,
    pub port: u16,
    pub record: PathBuf,
}

impl WebhookReceiver {
    /// Starts one recording into `dir/name.jsonl`, with the script's
    /// `serve` options `args` (`--fail N`, `--status CODE`, ...), and waits
    /// until it listens.
    pub fn start(dir: &Path, port: u16, name: &str, args: &[&str]) -> WebhookReceiver {
        use std::io::{BufRead, BufReader};
        let record = dir.join(format!("{name}.jsonl"));
        let mut child = Command::new("python3")
            .arg(tests_dir().join("servers/webhook_receiver.py"))
            .arg("serve")
            .arg(port.to_string())
            .arg(&record)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "receiver did not start");
        WebhookReceiver {
            _proc: Proc(child),
            port,
            record,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// The requests recorded so far.
    pub fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.record)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits (at most `limit`) until at least `n` requests are recorded.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Value> {
        wait_until(limit, || {
            let r = self.records();
            (r.len() >= n).then_some(r)
        })
        .unwrap_or_else(|| panic!("receiver got {:?}, wanted {n}", self.records()))
    }

    /// The script's own check of both signatures of request `index`, with
    /// its `verify` options `flags` (`--tamper`, ...): Ok, or the reasons.
    pub fn verify(&self, secret: &str, index: usize, flags: &[&str]) -> Result<(), String> {
        let out = Command::new("python3")
            .arg(tests_dir().join("servers/webhook_receiver.py"))
            .arg("verify")
            .arg(secret)
            .arg(&self.record)
            .arg(index.to_string())
            .args(flags)
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && text == "ok" {
            Ok(())
        } else {
            Err(text)
        }
    }
}

/// A child process that is killed (by its pid) when dropped.
pub struct Proc(pub Child);

impl Proc {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a pid we spawned and have not reaped.
        unsafe {
            libc::kill(self.0.id() as i32, sig);
        }
    }

    /// Waits for exit, at most `limit`; kills it past that.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let st = wait_until(limit, || self.0.try_wait().ok().flatten());
        if st.is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        st
    }

    /// Waits for exit (at most `limit`, killed past it) and reads all it
    /// wrote to its piped stderr.
    pub fn finish(&mut self, limit: Duration) -> (Option<std::process::ExitStatus>, String) {
        let st = self.wait_for(limit);
        let mut err = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        (st, err)
    }
}

impl Drop for Proc {
    /// SIGTERM first, so a `pb exec` passes it on to its child and nothing
    /// outlives the test; SIGKILL if it has not gone within 5 s.
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.signal(libc::SIGTERM);
            self.wait_for(Duration::from_secs(5));
        }
    }
}

/// A process that one of the test's own processes started (`pb exec`'s
/// child, a claimant's fork), known by pid and start time: SIGKILLed on
/// drop if it is still that process, so that a failing test leaves
/// nothing behind that holds a port.
pub struct Started(pub pb_platform::ProcessId);

impl Started {
    pub fn of(pid: u32) -> Started {
        Started(pb_platform::ProcessId::of(pid).expect("the process is alive"))
    }

    pub fn kill(&self) {
        if self.0.is_alive() {
            // SAFETY: a plain syscall, to the process checked just above.
            unsafe { libc::kill(self.0.pid as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        self.kill();
    }
}

/// GETs `http://localhost:PORT/` with curl over one family ("-4" or "-6").
pub fn curl(family: &str, port: u16) -> Option<String> {
    let out = Command::new("curl")
        .args([
            family,
            "-sS",
            "--max-time",
            "5",
            &format!("http://localhost:{port}/"),
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Retries `curl` until it answers (a server that is still starting), at
/// most 10 s.
pub fn curl_until(family: &str, port: u16) -> Option<String> {
    wait_until(Duration::from_secs(10), || curl(family, port))
}

/// GETs `http://HOST:PORT/` with curl, HOST being `127.0.0.1`, `[::1]` or
/// `localhost` (which curl tries over both families); 5 s at most.
pub fn curl_host(host: &str, port: u16) -> Option<String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", &format!("http://{host}:{port}/")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Retries `curl_host` until it answers, at most 10 s.
pub fn curl_host_until(host: &str, port: u16) -> Option<String> {
    wait_until(Duration::from_secs(10), || curl_host(host, port))
}

/// The app on `port` answers at 127.0.0.1, [::1] and localhost (within
/// 10 s each, never hanging): the three bodies, or which address failed.
pub fn reachable_everywhere(port: u16) -> Result<[String; 3], String> {
    let mut out: Vec<String> = Vec::new();
    for host in ["127.0.0.1", "[::1]", "localhost"] {
        out.push(curl_host_until(host, port).ok_or_else(|| format!("no answer at {host}:{port}"))?);
    }
    Ok(out.try_into().expect("three hosts"))
}

/// Starts tests/clients/claimant.py (a python3 client that claims `id` with
/// its sockets and holds them; `mode` as that script describes). Returns
/// it, its stdout for further lines, and the port it claimed.
pub fn claimant(
    broker: &Broker,
    id: &str,
    mode: &str,
) -> (Proc, std::io::BufReader<std::process::ChildStdout>, u16) {
    use std::io::BufRead;
    let mut child = Command::new("python3")
        .arg(tests_dir().join("clients/claimant.py"))
        .arg(broker.socket())
        .arg(id)
        .args(mode.split_whitespace())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("claimant printed no port: {line:?}"));
    (Proc(child), out, port)
}

/// Splits curl's output under `-w '\n%{http_code}'` into the HTTP status
/// and the JSON body (`Null` when the body is not JSON).
pub fn curl_status_json(stdout: &[u8]) -> (u16, Value) {
    let (status, body) = curl_status_text(stdout);
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The HTTP status and the body, from the stdout of curl run with
/// `-w "\n%{http_code}"`.
pub fn curl_status_text(stdout: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(stdout);
    let (body, code) = text.rsplit_once('\n').expect("curl printed a status");
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Runs `node SCRIPT ARGS...` (a client under tests/clients/), asserts it
/// succeeded, and returns the one JSON document it printed.
pub fn node_json(script: &str, args: &[&str]) -> Value {
    let out = Command::new("node")
        .arg(tests_dir().join("clients").join(script))
        .args(args)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON summary")
}

/// A self-signed ECDSA P-256 certificate for `subject` (`/CN=...`), valid
/// a day, made by openssl into `cert` and `key`; `extra` adds options
/// (`-addext ...`).
pub fn self_signed_cert(subject: &str, cert: &Path, key: &Path, extra: &[&str]) {
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", subject])
        .args(extra)
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// `program` run as this process's user, or (root only) as `user` (uid,
/// gid), through setpriv, which execs it: the child is the program itself.
pub fn command_as(user: Option<(u32, u32)>, program: impl AsRef<std::ffi::OsStr>) -> Command {
    match user {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={gid}"),
                "--clear-groups",
            ])
            .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Runs curl with `args`, at most `max_secs`, as this process's user or
/// (root only, through setpriv) as `user` (uid, gid); returns the HTTP
/// status and the JSON body.
pub fn curl_json(user: Option<(u32, u32)>, max_secs: u32, args: &[&str]) -> (u16, Value) {
    let out = command_as(user, "curl")
        .args(["-sS", "--max-time", &max_secs.to_string()])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    curl_status_json(&out.stdout)
}

/// The lines `r` yields, as they come, on a channel.
pub fn lines_of(r: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line from `rx` that `pred` accepts, within `limit`; every
/// line read is kept in `seen`, for failure messages.
pub fn next_matching(
    rx: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> Option<String> {
    let deadline = std::time::Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if pred(&line) {
                    return Some(line);
                }
            }
            Err(_) => return None,
        }
    }
    None
}

/// The port in a line such as `pb: web → http://localhost:3100 (…)`.
pub fn port_in(line: &str) -> Option<u16> {
    line.split("http://localhost:")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Every live process below `root`, as (pid, start time) so that a reused
/// pid is never taken for one of them.
pub fn process_tree(root: u32) -> Vec<(u32, u64)> {
    let mut parent_of: Vec<(u32, u32, u64)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Some((ppid, start)) = stat_parent_start(pid) {
            parent_of.push((pid, ppid, start));
        }
    }
    let mut out: Vec<(u32, u64)> = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (pid, ppid, start) in &parent_of {
            if *ppid == p && !out.iter().any(|(q, _)| q == pid) {
                out.push((*pid, *start));
                frontier.push(*pid);
            }
        }
    }
    out
}

/// The CPU time (user and system, in clock ticks) process `pid` has used.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    // After the command: state (0), ..., utime (11), stime (12).
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The fields of /proc/`pid`/stat after the command (whose parentheses
/// may hold anything), from the state on.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// (parent pid, start time) of a live, non-zombie process.
fn stat_parent_start(pid: u32) -> Option<(u32, u64)> {
    let fields = stat_fields(pid)?;
    if matches!(fields.first().map(String::as_str), Some("Z") | Some("X")) {
        return None;
    }
    // After the command: state (0), ppid (1), ..., starttime (19).
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Which of `procs` still run (the same process, not a reused pid).
pub fn still_running(procs: &[(u32, u64)]) -> Vec<u32> {
    procs
        .iter()
        .filter(|(pid, start)| stat_parent_start(*pid).is_some_and(|(_, s)| s == *start))
        .map(|(pid, _)| *pid)
        .collect()
}

/// Ends (SIGKILL, by pid) whichever of `procs` still run: what a failed
/// test would otherwise leave behind.
pub fn end_all(procs: &[(u32, u64)]) {
    for pid in still_running(procs) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// What the benches share: medians, units, an interleaved run of variants,
/// and compiling a C server.
pub mod bench {
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    pub fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }

    pub fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    pub fn us(d: Duration) -> f64 {
        d.as_secs_f64() * 1e6
    }

    /// Runs `one` (which times each of K variants once, in turn) `n` times
    /// after `n / 10` warm-up rounds, and returns each variant's median: the
    /// machine's noise falls on every variant alike.
    pub fn interleaved<const K: usize>(
        n: usize,
        mut one: impl FnMut() -> [Duration; K],
    ) -> [Duration; K] {
        let mut all: [Vec<Duration>; K] = std::array::from_fn(|_| Vec::with_capacity(n));
        for i in 0..n + n / 10 {
            let got = one();
            if i >= n / 10 {
                for (v, d) in all.iter_mut().zip(got) {
                    v.push(d);
                }
            }
        }
        all.map(median)
    }

    /// A small server: binds its port (argv[1], else $PORT) on 127.0.0.1
    /// with SO_REUSEADDR, listens, prints the port it got and exits. Its
    /// own start-up is about a millisecond, so pb's cost around it shows.
    pub const C_SERVER: &str = r#"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {0};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    a.sin_family = AF_INET;
    a.sin_port = htons(atoi(argc > 1 ? argv[1] : getenv("PORT")));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) return 1;
    getsockname(s, (struct sockaddr *)&a, &len);
    printf("%d\n", ntohs(a.sin_port));
    close(s);
    return 0;
}
"#;

    /// Compiles C source `src` with `cc -O2` into `dir`; the binary's path.
    pub fn cc(dir: &Path, src: &str) -> PathBuf {
        let c_src = dir.join("server.c");
        std::fs::write(&c_src, src).expect("writing the C source");
        let bin = dir.join("server");
        let built = std::process::Command::new("cc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(&c_src)
            .status()
            .expect("cc");
        assert!(built.success(), "cc failed");
        bin
    }
}

/// uid and gid of a user made for this test (created once; CI runs as
/// root, which this test needs to act as someone else).
pub fn other_user() -> (u32, u32) {
    static USER: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    *USER.get_or_init(make_other_user)
}

fn make_other_user() -> (u32, u32) {
    const NAME: &str = "pb-http-test";
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test needs root, to run curl as a second user (CI runs as root)"
    );
    let id = |flag: &str| {
        std::process::Command::new("id")
            .args([flag, NAME])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u32>()
                    .ok()
            })
    };
    if id("-u").is_none() {
        let st = std::process::Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                NAME,
            ])
            .status()
            .expect("useradd");
        assert!(st.success() || id("-u").is_some(), "useradd {NAME} failed");
    }
    (id("-u").unwrap(), id("-g").unwrap())
}
