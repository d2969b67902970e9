//! How results are printed: tables for people, `-j` JSON for programs, `-q`
//! bare values for shells.

use pb_proto::LeaseInfo;

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

pub fn url(port: u16) -> String {
    format!("http://localhost:{port}")
}

/// The environment variable that carries `id`'s port: `myapp:api` becomes
/// `MYAPP_API_PORT`.
pub fn env_name(id: &str) -> String {
    let mut name: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name + "_PORT"
}

pub fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

pub fn lease_table(leases: &[LeaseInfo], fmt: Format) {
    if fmt == Format::Quiet {
        for l in leases {
            println!("{}\t{}", l.id, l.port);
        }
        return;
    }
    if leases.is_empty() {
        eprintln!("no services (claim one: pb claim myapp:web, or pb exec web -- CMD)");
        return;
    }
    let width = leases.iter().map(|l| l.id.len()).max().unwrap_or(2).max(2);
    println!(
        "{:<width$}  {:>5}  {:>7}  {:>7}  {:>5}  STATE",
        "ID", "PORT", "PID", "EXPIRES", "AGE"
    );
    let now = now_ms();
    for l in leases {
        let pid = l.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let expires = l
            .expires_ms
            .map(|e| human_ms(e.saturating_sub(now)))
            .unwrap_or_else(|| "-".into());
        let state = match (l.held, l.listening) {
            (true, true) => "listening",
            (true, false) => "reserved",
            (false, _) => "held-elsewhere",
        };
        println!(
            "{:<width$}  {:>5}  {:>7}  {:>7}  {:>5}  {state}",
            l.id,
            l.port,
            pid,
            expires,
            human_ms(now.saturating_sub(l.created_ms))
        );
    }
}
