//! How results are printed: tables for people, `-j` JSON for programs, `-q`
//! bare values for shells.

use pb_proto::{LeaseInfo, ListenerInfo, WhoReply};

use crate::Format;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `90s`, `12m`, `3h`, `2d`: the coarsest unit that keeps a number >= 1.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

pub use pb_proto::names::{env_name, url};

/// Writes one line to stdout. A reader that went away (EPIPE) ends pb
/// with exit 0: nobody is left to read, and that is not a failure.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_fmt(format_args!("{args}\n"))
        .and_then(|_| out.flush())
    {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pb: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// `text` made safe for one table cell: control characters (a newline in
/// `python3 -c '…'`, a terminal escape) shown escaped, and at most `max`
/// characters, the rest cut to `…`.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n >= max {
            out.push('…');
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// A line on stderr that counts the seconds while pb waits (`pb wait`,
/// `pb lock --wait`), only when stderr is a terminal; cleared when dropped.
pub struct Progress {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    pub fn start(what: String) -> Progress {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return Progress {
                stop: None,
                thread: None,
            };
        }
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            // Quiet for the first half second: most waits end before.
            let mut tick = std::time::Duration::from_millis(500);
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(tick) {
                eprint!("\r\x1b[2Kpb: {what}… {}s", started.elapsed().as_secs());
                tick = std::time::Duration::from_secs(1);
            }
            if started.elapsed() >= std::time::Duration::from_millis(500) {
                eprint!("\r\x1b[2K");
            }
        });
        Progress {
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How much of a command line a table shows.
const COMMAND_WIDTH: usize = 100;

pub fn print_json(v: &impl serde::Serialize) {
    outln!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

pub fn lease_table(leases: &[LeaseInfo], fmt: Format) {
    if fmt == Format::Quiet {
        for l in leases {
            outln!("{}\t{}", l.id, l.port);
        }
        return;
    }
    if leases.is_empty() {
        eprintln!("no services (claim one: pb claim myapp:web, or pb exec web -- CMD)");
        return;
    }
    let width = leases.iter().map(|l| l.id.len()).max().unwrap_or(2).max(2);
    // A STACK column only when some lease is a stack's (`pb up`).
    let stacks = leases
        .iter()
        .filter_map(|l| l.stack.as_ref().map(|s| s.len()))
        .max()
        .map(|w| w.max(5));
    let stack_cell = |s: Option<&str>| match stacks {
        Some(w) => format!("{:<w$}  ", s.unwrap_or("-")),
        None => String::new(),
    };
    // A NAME column (the proxy's first name for each) when some lease has one.
    let names = leases
        .iter()
        .filter_map(|l| l.names.first().map(|n| n.len()))
        .max()
        .map(|w| w.max(4));
    let name_cell = |n: Option<&String>| match names {
        Some(w) => format!("{:<w$}  ", n.map_or("-", |n| n.as_str())),
        None => String::new(),
    };
    let colour = crate::color::stdout();
    let header = format!(
        "{:<width$}  {:>5}  {:<14}  {:<6}  {}{}{:>7}  {:>7}  {:>5}  COMMAND",
        "ID",
        "PORT",
        "STATE",
        "SERVED",
        name_cell(Some(&"NAME".to_string())),
        stack_cell(Some("STACK")),
        "PID",
        "EXPIRES",
        "AGE"
    );
    outln!(
        "{}",
        crate::color::paint(colour, crate::color::BOLD, &header)
    );
    let now = now_ms();
    for l in leases {
        let pid = l.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let expires = l
            .expires_ms
            .map(|e| human_ms(e.saturating_sub(now)))
            .unwrap_or_else(|| "-".into());
        use crate::color::{paint, CYAN, GREEN, RED, YELLOW};
        let (state, hue) = match (l.held, l.listening, l.number_only) {
            (_, _, true) => ("number-only", CYAN),
            (true, true, _) => ("listening", GREEN),
            (true, false, _) => ("reserved", YELLOW),
            (false, _, _) => ("held-elsewhere", RED),
        };
        // Padded first: the escapes take no columns.
        let state = paint(colour, hue, &format!("{state:<14}"));
        let served = match l.served {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        outln!(
            "{:<width$}  {:>5}  {state}  {served:<6}  {}{}{:>7}  {:>7}  {:>5}  {}",
            l.id,
            l.port,
            name_cell(l.names.first()),
            stack_cell(l.stack.as_deref()),
            pid,
            expires,
            human_ms(now.saturating_sub(l.created_ms)),
            printable(l.command.as_deref().unwrap_or("-"), COMMAND_WIDTH)
        );
    }
}

/// A user name for `uid`, or the number.
fn user(uid: u32) -> String {
    nix_user(uid).unwrap_or_else(|| uid.to_string())
}

fn nix_user(uid: u32) -> Option<String> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let id = f.nth(1)?;
        (id.parse::<u32>().ok()? == uid).then(|| name.to_string())
    })
}

pub fn listener_table(listeners: &[ListenerInfo], fmt: Format) {
    if fmt == Format::Quiet {
        for l in listeners {
            let pids: Vec<String> = l.holders.iter().map(|h| h.pid.to_string()).collect();
            outln!("{}\t{}\t{}", l.port, l.addr, pids.join(","));
        }
        return;
    }
    outln!(
        "{:>5}  {:<22}  {:>7}  {:<10}  {:<16}  COMMAND",
        "PORT",
        "ADDRESS",
        "PID",
        "USER",
        "SERVICE"
    );
    for l in listeners {
        let service = match (&l.service, l.brokered) {
            (Some(s), _) => s.clone(),
            (None, _) => "-".into(),
        };
        if l.holders.is_empty() {
            outln!(
                "{:>5}  {:<22}  {:>7}  {:<10}  {service:<16}  (not visible to pb)",
                l.port,
                l.addr,
                "-",
                user(l.uid)
            );
        }
        for h in &l.holders {
            outln!(
                "{:>5}  {:<22}  {:>7}  {:<10}  {service:<16}  {}",
                l.port,
                l.addr,
                h.pid,
                user(h.uid),
                printable(&h.command, COMMAND_WIDTH)
            );
        }
    }
}

pub fn who(reply: &WhoReply, fmt: Format) {
    if fmt == Format::Quiet {
        let mut pids: Vec<u32> = reply
            .listeners
            .iter()
            .flat_map(|l| l.holders.iter().map(|h| h.pid))
            .collect();
        pids.sort();
        pids.dedup();
        for p in pids {
            outln!("{p}");
        }
        return;
    }
    let now = now_ms();
    match &reply.service {
        Some(l) => outln!(
            "port {}: service {} (pb lease{})",
            reply.port,
            l.id,
            l.pid
                .map(|p| format!(", owner pid {p}"))
                .unwrap_or_default()
        ),
        None => outln!("port {}: not leased from pb", reply.port),
    }
    if reply.listeners.is_empty() {
        outln!("  nothing listens on it");
    }
    for l in &reply.listeners {
        if l.holders.is_empty() {
            outln!(
                "  {} listened on by uid {} (process not visible to pb)",
                l.addr,
                l.uid
            );
        }
        for h in &l.holders {
            let since = h
                .since_ms
                .map(|s| format!(", running for {}", human_ms(now.saturating_sub(s))))
                .unwrap_or_default();
            outln!(
                "  {} pid {} ({}) {}{since}",
                l.addr,
                h.pid,
                user(h.uid),
                printable(&h.command, COMMAND_WIDTH)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn table_cells_never_break_a_line() {
        assert_eq!(printable("python3 -c 'a\nb'", 100), "python3 -c 'a\\nb'");
        assert_eq!(printable("x\u{1b}[31m", 100), "x\\x1b[31m");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert!(!printable("a\r\n\tb", 100).contains(['\n', '\r', '\t']));
    }
}
