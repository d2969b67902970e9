//! The broker's settings, read once from the environment at start. Every
//! limit the broker enforces is here, with its default.

use pb_proto::paths::Paths;
use pb_proto::WireError;

use crate::rules;

#[derive(Debug, Clone)]
pub struct Config {
    pub paths: Paths,
    /// Default allocation range, inclusive (PB_RANGE, `A-B`).
    pub range: (u16, u16),
    /// Never handed out (PB_RESERVED, comma-separated).
    pub reserved: Vec<u16>,
    /// Most leases at once (PB_MAX_LEASES).
    pub max_leases: usize,
    /// Most client connections at once (PB_MAX_CONNECTIONS).
    pub max_connections: usize,
    /// How many released ids keep their sticky port in memory and on disk.
    pub max_sticky: usize,
    /// How often the reaper scans the socket tables (PB_SCAN_INTERVAL, in
    /// milliseconds or with a unit).
    pub scan_interval: std::time::Duration,
}

pub const DEFAULT_RANGE: (u16, u16) = (3100, 9999);
/// 9876 is the broker's own HTTP port.
pub const DEFAULT_RESERVED: [u16; 3] = [8000, 8080, 9876];

impl Config {
    pub fn from_env() -> Result<Config, WireError> {
        let range = match std::env::var("PB_RANGE") {
            Ok(text) if !text.is_empty() => {
                let (a, b) = pb_proto::parse_range_text(&text)?;
                rules::check_range(a, b)?
            }
            _ => DEFAULT_RANGE,
        };
        let reserved = match std::env::var("PB_RESERVED") {
            Ok(text) => text
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| rules::check_port(s.parse::<i64>().unwrap_or(-1)))
                .collect::<Result<Vec<u16>, _>>()?,
            Err(_) => DEFAULT_RESERVED.to_vec(),
        };
        Ok(Config {
            paths: Paths::from_env(),
            range,
            reserved,
            max_leases: env_usize("PB_MAX_LEASES", 8000),
            max_connections: env_usize("PB_MAX_CONNECTIONS", 2048),
            max_sticky: env_usize("PB_MAX_STICKY", 10_000),
            scan_interval: match std::env::var("PB_SCAN_INTERVAL") {
                Ok(text) if !text.is_empty() => {
                    let d = pb_proto::duration::parse(&text).map_err(|e| {
                        WireError::new(pb_proto::ErrorCode::InvalidDuration, e.to_string())
                    })?;
                    if d < std::time::Duration::from_millis(100)
                        || d > std::time::Duration::from_secs(3600)
                    {
                        return Err(WireError::new(
                            pb_proto::ErrorCode::InvalidDuration,
                            "PB_SCAN_INTERVAL must be between 100ms and 1h",
                        ));
                    }
                    d
                }
                _ => std::time::Duration::from_secs(2),
            },
        })
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}
