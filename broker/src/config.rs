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
    /// Coordination limits and retention (locks, pub/sub, agents, activity).
    pub coord: CoordConfig,
    /// Webhook limits, retries and the SSRF policy.
    pub webhooks: WebhookConfig,
}

/// Webhook limits, retries and where deliveries may go.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Most webhooks (PB_MAX_WEBHOOKS, 100).
    pub max_webhooks: usize,
    /// Attempts per delivery before it is given up (PB_WEBHOOK_MAX_ATTEMPTS,
    /// 8, at most 50).
    pub max_attempts: u32,
    /// The longest wait between attempts (PB_WEBHOOK_MAX_DELAY, 1 h).
    pub max_delay_ms: u64,
    /// Attempts in flight at once, over all webhooks
    /// (PB_WEBHOOK_CONCURRENCY, 16). Each webhook has at most one.
    pub concurrency: usize,
    /// Deliveries waiting per webhook; events beyond are dropped with a
    /// log line (PB_WEBHOOK_QUEUE, 10 000).
    pub max_queue: usize,
    /// Finished deliveries kept in each webhook's log (100).
    pub log_retain: usize,
    /// Each attempt's limit, connect to last byte (10 s).
    pub timeout_ms: u64,
    pub policy: crate::ssrf::Policy,
    /// Extra trusted CA certificates for https receivers, PEM
    /// (PB_WEBHOOK_CA), beside the Mozilla roots.
    pub extra_ca: Option<std::path::PathBuf>,
    /// A test seam: a file of `name address` lines consulted before DNS
    /// (PB_TEST_HOSTS; read only when the variable is set).
    pub test_hosts: Option<std::path::PathBuf>,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            max_webhooks: 100,
            max_attempts: 8,
            max_delay_ms: 3_600_000,
            concurrency: 16,
            max_queue: 10_000,
            log_retain: 100,
            timeout_ms: 10_000,
            policy: crate::ssrf::Policy::default(),
            extra_ca: None,
            test_hosts: None,
        }
    }
}

fn env_flag(name: &str, default: bool) -> bool {
    match std::env::var(name) {
        Ok(v) => matches!(v.trim(), "1" | "true" | "yes" | "on"),
        Err(_) => default,
    }
}

impl WebhookConfig {
    fn from_env() -> Result<WebhookConfig, WireError> {
        let d = WebhookConfig::default();
        Ok(WebhookConfig {
            max_webhooks: env_usize("PB_MAX_WEBHOOKS", d.max_webhooks).min(10_000),
            max_attempts: env_usize("PB_WEBHOOK_MAX_ATTEMPTS", d.max_attempts as usize).min(50)
                as u32,
            max_delay_ms: env_duration_ms(
                "PB_WEBHOOK_MAX_DELAY",
                d.max_delay_ms,
                1000,
                7 * 86_400_000,
            )?,
            concurrency: env_usize("PB_WEBHOOK_CONCURRENCY", d.concurrency).min(1024),
            max_queue: env_usize("PB_WEBHOOK_QUEUE", d.max_queue).min(1_000_000),
            policy: crate::ssrf::Policy {
                allow_private: env_flag("PB_WEBHOOK_ALLOW_PRIVATE", false),
                allow_loopback: env_flag("PB_WEBHOOK_ALLOW_LOOPBACK", true),
            },
            extra_ca: std::env::var_os("PB_WEBHOOK_CA")
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from),
            test_hosts: std::env::var_os("PB_TEST_HOSTS")
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from),
            ..d
        })
    }
}

/// Limits and retention of locks, pub/sub, agents and the activity log.
#[derive(Debug, Clone)]
pub struct CoordConfig {
    /// A lock's TTL when the request names none (PB_LOCK_TTL, 5 min).
    pub lock_ttl_ms: u64,
    /// The longest TTL a lock may ask for (24 h).
    pub lock_max_ttl_ms: u64,
    /// The longest a request may wait for a lock (1 h).
    pub lock_max_wait_ms: u64,
    /// Most locks held at once (PB_MAX_LOCKS, 10 000).
    pub max_locks: usize,
    /// Most requests waiting for one lock (1024).
    pub max_waiters: usize,
    /// Largest message, as JSON (PB_MAX_MESSAGE, 16 KiB; at most 60 KiB so
    /// a publish fits a request frame).
    pub max_message: usize,
    /// Messages kept per channel (PB_MSG_RETAIN, 1000).
    pub retain_count: usize,
    /// How long messages are kept (PB_MSG_MAX_AGE, 24 h).
    pub retain_age_ms: u64,
    /// Most channels with retained messages (PB_MAX_CHANNELS, 1000).
    pub max_channels: usize,
    /// Most subscribers at once (PB_MAX_SUBSCRIBERS, 256).
    pub max_subscribers: usize,
    /// Messages queued for one subscriber before it is dropped
    /// (PB_SUB_QUEUE, 4096).
    pub subscriber_queue: usize,
    /// An agent without a heartbeat for this long is stale
    /// (PB_AGENT_STALE, 2 min).
    pub agent_stale_ms: u64,
    /// Most registered agents (PB_MAX_AGENTS, 1000).
    pub max_agents: usize,
    /// Activity entries kept (PB_ACTIVITY_RETAIN, 100 000).
    pub activity_retain: usize,
    /// How long activity entries are kept (PB_ACTIVITY_MAX_AGE, 7 d).
    pub activity_max_age_ms: u64,
}

impl Default for CoordConfig {
    fn default() -> CoordConfig {
        CoordConfig {
            lock_ttl_ms: 5 * 60_000,
            lock_max_ttl_ms: 24 * 3_600_000,
            lock_max_wait_ms: 3_600_000,
            max_locks: 10_000,
            max_waiters: 1024,
            max_message: 16 * 1024,
            retain_count: 1000,
            retain_age_ms: 24 * 3_600_000,
            max_channels: 1000,
            max_subscribers: 256,
            subscriber_queue: 4096,
            agent_stale_ms: 2 * 60_000,
            max_agents: 1000,
            activity_retain: 100_000,
            activity_max_age_ms: 7 * 86_400_000,
        }
    }
}

impl CoordConfig {
    fn from_env() -> Result<CoordConfig, WireError> {
        let d = CoordConfig::default();
        let lock_ttl_ms = env_duration_ms("PB_LOCK_TTL", d.lock_ttl_ms, 1, d.lock_max_ttl_ms)?;
        Ok(CoordConfig {
            lock_ttl_ms,
            max_locks: env_usize("PB_MAX_LOCKS", d.max_locks),
            max_message: env_usize("PB_MAX_MESSAGE", d.max_message).min(60 * 1024),
            retain_count: env_usize("PB_MSG_RETAIN", d.retain_count).min(1_000_000),
            retain_age_ms: env_duration_ms(
                "PB_MSG_MAX_AGE",
                d.retain_age_ms,
                1000,
                366 * 86_400_000,
            )?,
            max_channels: env_usize("PB_MAX_CHANNELS", d.max_channels),
            max_subscribers: env_usize("PB_MAX_SUBSCRIBERS", d.max_subscribers),
            subscriber_queue: env_usize("PB_SUB_QUEUE", d.subscriber_queue).min(1 << 20),
            agent_stale_ms: env_duration_ms(
                "PB_AGENT_STALE",
                d.agent_stale_ms,
                100,
                366 * 86_400_000,
            )?,
            max_agents: env_usize("PB_MAX_AGENTS", d.max_agents),
            activity_retain: env_usize("PB_ACTIVITY_RETAIN", d.activity_retain),
            activity_max_age_ms: env_duration_ms(
                "PB_ACTIVITY_MAX_AGE",
                d.activity_max_age_ms,
                1000,
                366 * 86_400_000,
            )?,
            ..d
        })
    }
}

/// A duration variable (`90s`, `2m`, or a bare number of seconds), within
/// `[min_ms, max_ms]`.
fn env_duration_ms(name: &str, default: u64, min_ms: u64, max_ms: u64) -> Result<u64, WireError> {
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => {
            let d = pb_proto::duration::parse(&text)
                .map_err(|e| WireError::new(pb_proto::ErrorCode::InvalidDuration, e.to_string()))?;
            let ms = d.as_millis() as u64;
            if ms < min_ms || ms > max_ms {
                return Err(WireError::new(
                    pb_proto::ErrorCode::InvalidDuration,
                    format!("{name} must be between {min_ms} ms and {max_ms} ms"),
                ));
            }
            Ok(ms)
        }
        _ => Ok(default),
    }
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
            coord: CoordConfig::from_env()?,
            webhooks: WebhookConfig::from_env()?,
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
