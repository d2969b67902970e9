//! `pb portserver` (issue 19): Python's portpicker, from PyPI, with
//! PORTSERVER_ADDRESS set to pb's portserver. Eight processes at once get
//! distinct ports, each of which the process binds itself in both families
//! without SO_REUSEADDR; each port is free again within 100 ms of its
//! process being killed. Bad requests (a garbage pid, a pid of another
//! user, a line too long, a caller of another user) get `0` and change
//! nothing.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pb_tests::*;
use serde_json::Value;

/// A running `pb portserver` on an abstract address of this test's own.
struct Portserver {
    /// Ended (by its pid) when the test ends.
    _proc: Proc,
    name: String,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Portserver {
    fn start(broker: &Broker, tag: &str) -> Portserver {
        let name = format!("pb-test-portserver-{tag}-{}", std::process::id());
        let mut child = broker
            .cmd()
            .args(["portserver", "--address", &format!("@{name}")])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = lines_of(child.stderr.take().unwrap());
        let mut ps = Portserver {
            _proc: Proc(child),
            name,
            stderr,
        };
        let line = ps.next_line("portserver on");
        assert!(line.contains(&ps.name), "{line}");
        ps
    }

    fn address(&self) -> String {
        format!("@{}", self.name)
    }

    /// The next line of its stderr that contains `what`.
    fn next_line(&mut self, what: &str) -> String {
        let mut seen = Vec::new();
        next_matching(&self.stderr, &mut seen, Duration::from_secs(10), |l| {
            l.contains(what)
        })
        .unwrap_or_else(|| panic!("no line with {what:?} from pb portserver"))
    }

    /// One raw request: what the portserver answers to `line`.
    fn ask(&self, line: &[u8]) -> String {
        let addr = SocketAddr::from_abstract_name(self.name.as_bytes()).unwrap();
        let mut s = UnixStream::connect_addr(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(line).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }
}

fn portserver_leases(broker: &Broker) -> Vec<(String, u16)> {
    broker
        .leases()
        .into_iter()
        .filter(|(id, _)| id.starts_with("portserver:"))
        .collect()
}

fn venv_python() -> std::path::PathBuf {
    let python = tests_dir().join("realapps/.venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `bash tests/realapps/install.sh` (the README's test command does)",
        python.display()
    );
    python
}

#[test]
fn portpicker_gets_distinct_bindable_ports_freed_when_each_process_dies() {
    let broker = Broker::start();
    let ps = Portserver::start(&broker, "eight");
    let python = venv_python();
    // Eight test processes at once, as a parallel test runner starts them.
    let mut users: Vec<(Proc, std::sync::mpsc::Receiver<String>)> = (0..8)
        .map(|_| {
            let mut child = Command::new(&python)
                .arg(tests_dir().join("clients/portpicker_user.py"))
                .env("PORTSERVER_ADDRESS", ps.address())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let out = lines_of(child.stdout.take().unwrap());
            (Proc(child), out)
        })
        .collect();
    let mut got: Vec<(u32, u16)> = Vec::new();
    for (p, out) in &mut users {
        let line = out
            .recv_timeout(Duration::from_secs(30))
            .expect("portpicker_user.py prints its port");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["bound"], true, "{v}");
        assert_eq!(v["pid"], p.pid());
        got.push((p.pid(), v["port"].as_u64().unwrap() as u16));
    }
    let mut ports: Vec<u16> = got.iter().map(|g| g.1).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(ports.len(), 8, "distinct ports: {got:?}");
    // Each came from pb: a lease of that pid's, in the broker's range.
    let leases = portserver_leases(&broker);
    for (pid, port) in &got {
        assert!(
            leases.contains(&(format!("portserver:{pid}:1"), *port)),
            "{pid} {port}: {leases:?}"
        );
        assert!((broker.range.0..=broker.range.1).contains(port));
    }
    // The broker holds none of them: the processes bound them themselves.
    let find = broker.pb_json(&["find", "portserver:*"]);
    for l in find["services"].as_array().unwrap() {
        assert_eq!(l["held"], false, "{l}");
    }

    // Killed, each process's port is free again within 100 ms.
    let mut client = broker.client();
    for ((pid, port), (p, _)) in got.iter().zip(&mut users) {
        let id = format!("portserver:{pid}:1");
        p.signal(libc::SIGKILL);
        let killed = Instant::now();
        let freed = wait_until(Duration::from_secs(5), || {
            let gone = client
                .call_as::<Value>(pb_proto::Op::Get { id: id.clone() })
                .is_err();
            gone.then(Instant::now)
        })
        .expect("the lease ends");
        let took = freed - killed;
        assert!(took < Duration::from_millis(100), "{id} took {took:?}");
        assert!(can_bind(v4(*port)), "port {port} is free");
        assert!(p.wait_for(Duration::from_secs(5)).is_some());
    }
    assert!(portserver_leases(&broker).is_empty());
    drop(ps);
}

#[test]
fn bad_requests_get_zero_and_change_nothing() {
    let broker = Broker::start();
    let mut ps = Portserver::start(&broker, "bad");
    // A garbage pid, pids 0 and 1, an empty line, a pid that is no process.
    for (line, why) in [
        (&b"hello\n"[..], "is not a pid"),
        (b"0\n", "cannot own a port"),
        (b"1\n", "cannot own a port"),
        (b"\n", "is not a pid"),
        (b"4294967295\n", "no process with pid"),
    ] {
        assert_eq!(ps.ask(line), "0\n", "{line:?}");
        ps.next_line(why);
    }
    // A line too long.
    assert_eq!(ps.ask(&[b'9'; 100]), "0\n");
    ps.next_line("longer than");
    // A pid of another user's: the broker's rule, as for `pb claim --pid`.
    let theirs = command_as(Some(other_user()), "sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let theirs = Proc(theirs);
    // setpriv changes user before it execs sleep: wait for that.
    use std::os::unix::fs::MetadataExt;
    let proc_dir = format!("/proc/{}", theirs.pid());
    wait_until(Duration::from_secs(5), || {
        std::fs::metadata(&proc_dir)
            .ok()
            .filter(|m| m.uid() == other_user().0)
    })
    .expect("the other user's process");
    assert_eq!(ps.ask(format!("{}\n", theirs.pid()).as_bytes()), "0\n");
    ps.next_line("belongs to another user");
    // A caller of another user: refused before its pid is read.
    let script = format!(
        "import socket; s = socket.socket(socket.AF_UNIX); s.connect('\\0{}'); \
         s.sendall(b'%d\\n' % __import__('os').getpid()); print(s.recv(64).decode(), end='')",
        ps.name
    );
    let out = command_as(Some(other_user()), "/usr/bin/python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n");
    ps.next_line("not this portserver's user");
    assert!(portserver_leases(&broker).is_empty());
    // And a good request still works afterwards.
    let me = std::process::id();
    let port: u16 = ps.ask(format!("{me}\n").as_bytes()).trim().parse().unwrap();
    assert!(port > 0);
    assert_eq!(
        portserver_leases(&broker),
        vec![(format!("portserver:{me}:1"), port)]
    );
    // A second request of the same pid is a second port.
    let second: u16 = ps.ask(format!("{me}\n").as_bytes()).trim().parse().unwrap();
    assert_ne!(second, port);
    assert_eq!(portserver_leases(&broker).len(), 2);
}

#[test]
fn a_number_only_claim_needs_an_owner_and_takes_no_sockets() {
    let broker = Broker::start();
    let mut client = broker.client();
    let claim = |client: &mut pb_proto::Client, args: pb_proto::ClaimArgs| {
        client.call_as::<pb_proto::ClaimReply>(pb_proto::Op::Claim(args))
    };
    let base = pb_proto::ClaimArgs {
        id: "np:web".into(),
        number_only: true,
        ..Default::default()
    };
    let e = claim(&mut client, base.clone()).unwrap_err().to_string();
    assert!(e.contains("needs an owner"), "{e}");
    let e = claim(
        &mut client,
        pb_proto::ClaimArgs {
            fds: true,
            owner: pb_proto::Owner::Caller,
            ..base.clone()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot take \"fds\""), "{e}");
    assert!(broker.leases().is_empty());
    // With an owner: reserved, held by nobody, bindable without
    // SO_REUSEADDR, and still reserved (no bind) after a broker restart.
    let (reply, _) = claim(
        &mut client,
        pb_proto::ClaimArgs {
            owner: pb_proto::Owner::Pid(std::process::id()),
            ..base
        },
    )
    .unwrap();
    let port = reply.lease.port;
    assert!(!reply.lease.held);
    assert!(can_bind(v4(port)) && can_bind(v6(port)));
    drop(client);
    let mut broker = broker;
    broker.restart();
    assert_eq!(broker.leases(), vec![("np:web".to_string(), port)]);
    assert!(can_bind(v4(port)), "a restart binds no placeholder");
    // Not handed to anyone else meanwhile.
    let other = broker.pb(&["claim", "np:other", "-p", &port.to_string()]);
    assert_eq!(other.status.code(), Some(5), "port {port} is reserved");
}
