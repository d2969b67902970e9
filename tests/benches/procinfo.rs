//! Why pb reads processes with procfs rather than sysinfo (both on the
//! design card): the cost of what the broker asks about one process, its
//! start time, command line, exe, cwd and uid, each way, in the same run.
//! Run: `cargo bench -p pb-tests --bench procinfo`.

use std::time::{Duration, Instant};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let pid = std::process::id();
    let (mut with_sysinfo, mut with_procfs) = (Vec::new(), Vec::new());
    for _ in 0..200 {
        let t = Instant::now();
        let mut s = sysinfo::System::new();
        let spid = sysinfo::Pid::from_u32(pid);
        s.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[spid]), true);
        let p = s.process(spid).expect("ourselves");
        std::hint::black_box((p.cmd().len(), p.exe(), p.cwd(), p.start_time(), p.user_id()));
        with_sysinfo.push(t.elapsed());

        let t = Instant::now();
        let info = pb_platform::ProcessInfo::of(pid).expect("ourselves");
        std::hint::black_box(info);
        with_procfs.push(t.elapsed());
    }
    let (a, b) = (median(with_sysinfo), median(with_procfs));
    println!(
        "one process's identity and command: sysinfo median {:.1} µs, pb_platform (procfs) median {:.1} µs, ratio {:.1}x",
        a.as_secs_f64() * 1e6,
        b.as_secs_f64() * 1e6,
        a.as_secs_f64() / b.as_secs_f64()
    );
}
