//! The broker's settings, read once from the environment at start. Every
//! limit the broker enforces is here, with its default.

use std::net::SocketAddr;

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
    /// Where the HTTP API listens (PB_HTTP_ADDR: comma-separated
    /// `host:port`, loopback only, or `off`). Empty: no HTTP.
    pub http_addrs: Vec<SocketAddr>,
    /// Most HTTP connections at once, from everyone
    /// (PB_HTTP_MAX_CONNECTIONS), kept apart from the Unix socket's so that
    /// an HTTP flood never locks out local clients.
    pub http_max_connections: usize,
    /// Most HTTP connections at once from one user
    /// (PB_HTTP_MAX_CONNECTIONS_PER_CLIENT).
    pub http_max_connections_per_client: usize,
    /// HTTP requests per second one user may make, sustained
    /// (PB_HTTP_RATE); bursts may reach [`HTTP_RATE_BURST_SECONDS`] times it.
    pub http_rate: u32,
}

/// The HTTP API's default addresses: loopback, both families, port 9876.
pub const DEFAULT_HTTP_PORT: u16 = 9876;
/// Largest HTTP request body; bigger ones get 413 before they are read.
pub const HTTP_MAX_BODY: usize = 64 * 1024;
/// How long a client has to send a request's headers, and separately its
/// body, once it started; also how long an idle keep-alive connection
/// lives. Slow-loris clients are cut off after this.
pub const HTTP_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A client's token bucket holds this many seconds of its rate.
pub const HTTP_RATE_BURST_SECONDS: u32 = 2;
/// Most users tracked by the rate limiter; beyond it, idle buckets go.
pub const HTTP_RATE_MAX_CLIENTS: usize = 4096;

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
        let http_addrs = parse_http_addrs(std::env::var("PB_HTTP_ADDR").ok().as_deref())?;
        Ok(Config {
            paths: Paths::from_env(),
            http_addrs,
            http_max_connections: env_usize("PB_HTTP_MAX_CONNECTIONS", 512),
            http_max_connections_per_client: env_usize("PB_HTTP_MAX_CONNECTIONS_PER_CLIENT", 256),
            http_rate: env_usize("PB_HTTP_RATE", 5000).min(u32::MAX as usize) as u32,
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

/// PB_HTTP_ADDR: unset or empty for the defaults, `off` for no HTTP, or a
/// comma-separated list of loopback `host:port` (`[::1]:9876`). `localhost`
/// means both families.
pub fn parse_http_addrs(text: Option<&str>) -> Result<Vec<SocketAddr>, WireError> {
    let bad = |why: String| WireError::new(pb_proto::ErrorCode::InvalidRequest, why);
    let text = text.map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Ok(vec![
            SocketAddr::from(([127, 0, 0, 1], DEFAULT_HTTP_PORT)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, DEFAULT_HTTP_PORT)),
        ]);
    }
    if text.eq_ignore_ascii_case("off") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let addrs: Vec<SocketAddr> = match item.strip_prefix("localhost:") {
            Some(port) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| bad(format!("PB_HTTP_ADDR: bad port in {item:?}")))?;
                vec![
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                ]
            }
            None => vec![item
                .parse()
                .map_err(|_| bad(format!("PB_HTTP_ADDR: {item:?} is not host:port (or off)")))?],
        };
        for a in addrs {
            if !a.ip().is_loopback() || a.port() == 0 {
                return Err(bad(format!(
                    "PB_HTTP_ADDR: {a} is not a loopback address with a port; pb serves HTTP on loopback only"
                )));
            }
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_addrs() {
        assert_eq!(parse_http_addrs(None).unwrap().len(), 2);
        assert!(parse_http_addrs(Some("off")).unwrap().is_empty());
        assert_eq!(
            parse_http_addrs(Some("127.0.0.1:12001, [::1]:12001")).unwrap(),
            vec![
                "127.0.0.1:12001".parse().unwrap(),
                "[::1]:12001".parse().unwrap()
            ]
        );
        assert_eq!(parse_http_addrs(Some("localhost:12002")).unwrap().len(), 2);
        for bad in [
            "0.0.0.0:9876",
            "192.168.1.2:80",
            "127.0.0.1:0",
            "nonsense",
            "localhost:x",
        ] {
            assert!(parse_http_addrs(Some(bad)).is_err(), "{bad}");
        }
    }
}
