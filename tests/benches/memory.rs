//! The broker's resident memory: idle, with 1 000 leases and with 10 000,
//! each on a fresh broker with the HTTP API on and nothing else configured
//! (10 000 needs PB_MAX_LEASES=10000, above the default 8 000).
//!
//! Run: `cargo build --release && cargo bench -p pb-tests --bench memory`.
//! Prints VmRSS, and its two parts: RssAnon (the broker's own heap, stacks
//! and written pages) and RssFile (pages of the binary and libraries it has
//! mapped, shared with the page cache).
//!
//! With PB_MEMORY_MAX_IDLE_KB set, only the idle broker is measured and the
//! run fails if its VmRSS is above that many KiB: .ci/run's regression
//! check, with a generous bound (8 MB), not the target.

use std::time::Duration;

use pb_proto::{ClaimArgs, Op};
use pb_tests::{Broker, PortBlock};

/// Fields of /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

fn rss(pid: u32) -> Rss {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("broker status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
    };
    Rss {
        total: field("VmRSS:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    }
}

/// The broker after it has settled: its start-up work done, then a second
/// of nothing, as a user's idle broker is.
fn settled(broker: &Broker) -> Rss {
    broker.client().call(Op::Status).expect("status");
    if let Some(port) = broker.http_port() {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(pb_tests::v4(port)).expect("the HTTP API");
        let req =
            format!("GET /health HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    std::thread::sleep(Duration::from_secs(1));
    rss(broker.pid())
}

/// `n` leases, each held in the kernel by the broker (two sockets: IPv4
/// and IPv6).
fn with_leases(n: usize) -> Rss {
    // A range of its own below the test blocks (benches run alone) and
    // far from the ephemeral ports.
    let block = PortBlock::outside_tests(1_100, n as u16 + 300);
    let max = n.max(8_000).to_string();
    let broker = Broker::start_in(block, &[("PB_MAX_LEASES", max.as_str())]);
    let mut c = broker.client();
    for i in 0..n {
        c.call(Op::Claim(ClaimArgs {
            id: format!("bench:mem:{i}"),
            ..Default::default()
        }))
        .expect("claim");
    }
    drop(c);
    let r = settled(&broker);
    assert_eq!(broker.leases().len(), n);
    r
}

fn print(what: &str, r: Rss) {
    println!(
        "{what:<22} VmRSS {:>6} KiB   RssAnon {:>6} KiB   RssFile {:>6} KiB",
        r.total, r.anon, r.file
    );
}

fn main() {
    // 10 000 leases hold 20 000 sockets: raise the limit the broker
    // inherits, where this user may.
    let hard = libc::rlimit {
        rlim_cur: 65_536,
        rlim_max: 65_536,
    };
    let mut got = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit and getrlimit with valid structs; a refused raise
    // leaves the limit as it was, and the hard limit is raised to instead.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &hard) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut got);
            got.rlim_cur = got.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &got);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut got);
    }

    let idle = settled(&Broker::start());
    print("idle", idle);
    if let Ok(max) = std::env::var("PB_MEMORY_MAX_IDLE_KB") {
        let max: u64 = max
            .parse()
            .unwrap_or_else(|_| panic!("PB_MEMORY_MAX_IDLE_KB={max:?} is not a number of KiB"));
        if idle.total > max {
            eprintln!("idle broker VmRSS {} KiB is over {max} KiB", idle.total);
            std::process::exit(1);
        }
        println!("idle broker VmRSS {} KiB is within {max} KiB", idle.total);
        return;
    }
    let counts = std::env::var("PB_MEMORY_LEASES").unwrap_or_else(|_| "1000,10000".into());
    for n in counts
        .split(',')
        .map(|n| n.trim().parse::<usize>().expect("PB_MEMORY_LEASES"))
    {
        // Two sockets a lease, and room for the broker's own files.
        let fits = (got.rlim_cur.saturating_sub(1_000) / 2 / 1_000 * 1_000) as usize;
        if n > fits {
            println!(
                "{n} leases: not measurable here (open-file limit {}); {fits} instead",
                got.rlim_cur
            );
            print(&format!("{fits} leases"), with_leases(fits));
        } else {
            print(&format!("{n} leases"), with_leases(n));
        }
    }
}
