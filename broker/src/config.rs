//! The broker's settings, read once from the environment at start. Every
//! limit the broker enforces is here, with its default.

use std::net::SocketAddr;

use pb_proto::paths::Paths;
use pb_proto::{ErrorCode, WireError};

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
    /// How long a number-only lease outlives the app that adopted it, for
    /// a reloader's next run to bind the port (PB_RELOAD_GRACE, 10s).
    pub reload_grace: std::time::Duration,
    /// Test seam (PB_TEST_PANIC_ON_CLAIM): a claim of this id panics inside
    /// the core, so a test can watch the broker abort and recover.
    pub test_panic_on_claim: Option<String>,
    /// Where the HTTP API listens (PB_HTTP_ADDR: comma-separated
    /// `host:port`, loopback only, or `off`; else PORT_DADDY_PORT or
    /// PORT_DADDY_URL). Empty: no HTTP.
    pub http_addrs: Vec<SocketAddr>,
    /// A file the broker writes the HTTP API's port to once it listens,
    /// for Port Daddy's clients (PORT_DADDY_PORT_FILE), and removes when
    /// it stops.
    pub port_file: Option<std::path::PathBuf>,
    /// A Unix socket the HTTP API is also served on, for Port Daddy's
    /// clients, which prefer it (PORT_DADDY_SOCK; off when unset).
    pub http_socket: Option<std::path::PathBuf>,
    /// Where the named-URL proxy listens (PB_PROXY_ADDR, the same form;
    /// `localhost:2080` by default). Empty: no proxy, unless sockets were
    /// passed by socket activation.
    pub proxy_addrs: Vec<SocketAddr>,
    /// How long a backend may take to begin its answer through the proxy
    /// (PB_PROXY_TIMEOUT, 60 s: a dev server's first compile can be slow).
    pub proxy_timeout: std::time::Duration,
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
    /// Coordination limits and retention (locks, pub/sub, agents, activity).
    pub coord: CoordConfig,
    /// Webhook limits, retries and the SSRF policy.
    pub webhooks: WebhookConfig,
    /// `/mcp` lists every tool, not only the essential ones
    /// ([`mcp_all_tools`]).
    pub mcp_all_tools: bool,
}

/// PB_MCP_TOOLS: `essential` (the default: the essential tools and
/// `pd_discover`) or `all`, for both `pb mcp` and `/mcp`.
pub fn mcp_all_tools() -> Result<bool, WireError> {
    match std::env::var("PB_MCP_TOOLS").as_deref() {
        Err(_) | Ok("") | Ok("essential") => Ok(false),
        Ok("all") => Ok(true),
        Ok(other) => Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("PB_MCP_TOOLS={other:?} is not `essential` or `all`"),
        )),
    }
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

/// A yes/no setting: `default` when unset or empty.
fn env_flag(name: &str, default: bool) -> Result<bool, WireError> {
    match std::env::var(name) {
        Ok(v) => match v.trim() {
            "" => Ok(default),
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("{name}={v:?} is not one of 1, true, yes, on, 0, false, no, off"),
            )),
        },
        Err(_) => Ok(default),
    }
}

impl WebhookConfig {
    fn from_env() -> Result<WebhookConfig, WireError> {
        let d = WebhookConfig::default();
        Ok(WebhookConfig {
            max_webhooks: env_usize("PB_MAX_WEBHOOKS", d.max_webhooks)?.min(10_000),
            max_attempts: env_usize("PB_WEBHOOK_MAX_ATTEMPTS", d.max_attempts as usize)?.min(50)
                as u32,
            max_delay_ms: env_duration_ms(
                "PB_WEBHOOK_MAX_DELAY",
                d.max_delay_ms,
                1000,
                7 * 86_400_000,
            )?,
            concurrency: env_usize("PB_WEBHOOK_CONCURRENCY", d.concurrency)?.min(1024),
            max_queue: env_usize("PB_WEBHOOK_QUEUE", d.max_queue)?.min(1_000_000),
            policy: crate::ssrf::Policy {
                allow_private: env_flag("PB_WEBHOOK_ALLOW_PRIVATE", false)?,
                allow_loopback: env_flag("PB_WEBHOOK_ALLOW_LOOPBACK", true)?,
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

/// The longest retention or staleness a setting may ask for.
const YEAR_MS: u64 = 366 * 86_400_000;

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
            max_locks: env_usize("PB_MAX_LOCKS", d.max_locks)?,
            max_message: env_usize("PB_MAX_MESSAGE", d.max_message)?.min(60 * 1024),
            retain_count: env_usize("PB_MSG_RETAIN", d.retain_count)?.min(1_000_000),
            retain_age_ms: env_duration_ms("PB_MSG_MAX_AGE", d.retain_age_ms, 1000, YEAR_MS)?,
            max_channels: env_usize("PB_MAX_CHANNELS", d.max_channels)?,
            max_subscribers: env_usize("PB_MAX_SUBSCRIBERS", d.max_subscribers)?,
            subscriber_queue: env_usize("PB_SUB_QUEUE", d.subscriber_queue)?.min(1 << 20),
            agent_stale_ms: env_duration_ms("PB_AGENT_STALE", d.agent_stale_ms, 100, YEAR_MS)?,
            max_agents: env_usize("PB_MAX_AGENTS", d.max_agents)?,
            activity_retain: env_usize("PB_ACTIVITY_RETAIN", d.activity_retain)?,
            activity_max_age_ms: env_duration_ms(
                "PB_ACTIVITY_MAX_AGE",
                d.activity_max_age_ms,
                1000,
                YEAR_MS,
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
                .map_err(|e| WireError::new(ErrorCode::InvalidDuration, format!("{name}: {e}")))?;
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

/// Every variable the broker's settings are read from (here, in
/// `home`'s paths and in `log`), so that `pb install` can carry the ones
/// set at install into the service it writes, and nothing else of the
/// caller's environment (a client's PB_LOCK_TOKEN, say). Test seams
/// (PB_TEST_*) are left out on purpose.
pub const SETTINGS: &[&str] = &[
    "PB_HOME",
    "XDG_STATE_HOME",
    "PB_LOG",
    "PB_RANGE",
    "PB_RESERVED",
    "PB_MAX_LEASES",
    "PB_MAX_CONNECTIONS",
    "PB_MAX_STICKY",
    "PB_SCAN_INTERVAL",
    "PB_RELOAD_GRACE",
    "PB_HTTP_ADDR",
    "PB_HTTP_MAX_CONNECTIONS",
    "PB_HTTP_MAX_CONNECTIONS_PER_CLIENT",
    "PB_HTTP_RATE",
    "PB_PROXY_ADDR",
    "PB_PROXY_TIMEOUT",
    "PB_MCP_TOOLS",
    "PB_LOCK_TTL",
    "PB_MAX_LOCKS",
    "PB_MAX_MESSAGE",
    "PB_MSG_RETAIN",
    "PB_MSG_MAX_AGE",
    "PB_MAX_CHANNELS",
    "PB_MAX_SUBSCRIBERS",
    "PB_SUB_QUEUE",
    "PB_AGENT_STALE",
    "PB_MAX_AGENTS",
    "PB_ACTIVITY_RETAIN",
    "PB_ACTIVITY_MAX_AGE",
    "PB_MAX_WEBHOOKS",
    "PB_WEBHOOK_MAX_ATTEMPTS",
    "PB_WEBHOOK_MAX_DELAY",
    "PB_WEBHOOK_CONCURRENCY",
    "PB_WEBHOOK_QUEUE",
    "PB_WEBHOOK_ALLOW_PRIVATE",
    "PB_WEBHOOK_ALLOW_LOOPBACK",
    "PB_WEBHOOK_CA",
    "PORT_DADDY_PORT",
    "PORT_DADDY_URL",
    "PORT_DADDY_PORT_FILE",
    "PORT_DADDY_SOCK",
    "PORT_DADDY_RANGE_START",
    "PORT_DADDY_RANGE_END",
];

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
/// The proxy's port (PB_PROXY_ADDR), for `http://NAME.localhost:2080` and
/// `https://` on the same port. Chosen to be below the allocation range
/// (so no lease can want it), below every ephemeral range (Linux's
/// 32768-60999, IANA's 49152-65535, so no outgoing connection holds it),
/// off the browsers' blocked-port lists, and no common dev server's
/// default; "80" in it says what it stands for.
pub const DEFAULT_PROXY_PORT: u16 = 2080;
/// 9876 is the broker's own HTTP port.
pub const DEFAULT_RESERVED: [u16; 3] = [8000, 8080, 9876];

impl Config {
    pub fn from_env() -> Result<Config, WireError> {
        let range = match std::env::var("PB_RANGE") {
            Ok(text) if !text.is_empty() => {
                let (a, b) = pb_proto::parse_range_text(&text)?;
                rules::check_range(a, b)?
            }
            _ => port_daddy_range()?.unwrap_or(DEFAULT_RANGE),
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
        let http_addrs = match std::env::var("PB_HTTP_ADDR") {
            Ok(text) if !text.trim().is_empty() => parse_http_addrs(Some(&text))?,
            _ => match (port_daddy_var("PORT_DADDY_PORT")?, port_daddy_url()?) {
                (Some(port), Some((_, url_port))) if port != url_port => {
                    return Err(WireError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "PORT_DADDY_PORT={port} and PORT_DADDY_URL (port {url_port}) disagree; set one, or PB_HTTP_ADDR"
                        ),
                    ))
                }
                (Some(port), _) => parse_addrs("PORT_DADDY_PORT", None, port)?,
                (None, Some((host_port, _))) => {
                    parse_addrs("PORT_DADDY_URL", Some(&host_port), DEFAULT_HTTP_PORT)?
                }
                (None, None) => parse_http_addrs(None)?,
            },
        };
        let proxy_addrs = parse_addrs(
            "PB_PROXY_ADDR",
            std::env::var("PB_PROXY_ADDR").ok().as_deref(),
            DEFAULT_PROXY_PORT,
        )?;
        Ok(Config {
            paths: Paths::from_env(),
            http_addrs,
            port_file: std::env::var_os("PORT_DADDY_PORT_FILE")
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from),
            http_socket: std::env::var_os("PORT_DADDY_SOCK")
                .filter(|v| !v.is_empty())
                .map(std::path::PathBuf::from),
            proxy_addrs,
            proxy_timeout: env_duration(
                "PB_PROXY_TIMEOUT",
                std::time::Duration::from_secs(60),
                (
                    std::time::Duration::from_millis(100),
                    std::time::Duration::from_secs(3600),
                ),
                "between 100ms and 1h",
            )?,
            http_max_connections: env_usize("PB_HTTP_MAX_CONNECTIONS", 512)?,
            http_max_connections_per_client: env_usize("PB_HTTP_MAX_CONNECTIONS_PER_CLIENT", 256)?,
            http_rate: env_usize("PB_HTTP_RATE", 5000)?.min(u32::MAX as usize) as u32,
            range,
            reserved,
            max_leases: env_usize("PB_MAX_LEASES", 8000)?,
            max_connections: env_usize("PB_MAX_CONNECTIONS", 2048)?,
            max_sticky: env_usize("PB_MAX_STICKY", 10_000)?,
            scan_interval: env_duration(
                "PB_SCAN_INTERVAL",
                std::time::Duration::from_secs(2),
                (
                    std::time::Duration::from_millis(100),
                    std::time::Duration::from_secs(3600),
                ),
                "between 100ms and 1h",
            )?,
            reload_grace: env_duration(
                "PB_RELOAD_GRACE",
                std::time::Duration::from_secs(10),
                (
                    std::time::Duration::ZERO,
                    std::time::Duration::from_secs(3600),
                ),
                "at most 1h",
            )?,
            test_panic_on_claim: std::env::var("PB_TEST_PANIC_ON_CLAIM")
                .ok()
                .filter(|v| !v.is_empty()),
            coord: CoordConfig::from_env()?,
            webhooks: WebhookConfig::from_env()?,
            mcp_all_tools: mcp_all_tools()?,
        })
    }
}

/// A port from one of Port Daddy's variables (PORT_DADDY_PORT,
/// PORT_DADDY_RANGE_START, PORT_DADDY_RANGE_END), read only where pb's own
/// variable is unset: `None` when unset or empty; a value that is not a
/// port pb can use stops the broker, naming the variable.
fn port_daddy_var(name: &str) -> Result<Option<u16>, WireError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => {
            let n = v.trim().parse::<i64>().map_err(|_| {
                WireError::new(
                    ErrorCode::InvalidPort,
                    format!("{name}={v:?} is not a port number"),
                )
            })?;
            rules::check_port(n)
                .map(Some)
                .map_err(|e| WireError::new(e.code, format!("{name}: {}", e.message)))
        }
        _ => Ok(None),
    }
}

/// PORT_DADDY_URL, where Port Daddy's clients find it (`localhost:9876`,
/// `http://127.0.0.1:9876`): the `host:port` the HTTP API is to listen on,
/// and its port, read only where PB_HTTP_ADDR is unset. It must be plain
/// http on a loopback host with a port pb can use, and no path.
fn port_daddy_url() -> Result<Option<(String, u16)>, WireError> {
    let var = "PORT_DADDY_URL";
    let Ok(text) = std::env::var(var) else {
        return Ok(None);
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bad =
        |why: &str| WireError::new(ErrorCode::InvalidRequest, format!("{var}={text:?} {why}"));
    let full = if text.contains("://") {
        text.to_string()
    } else {
        format!("http://{text}")
    };
    let url = url::Url::parse(&full).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if url.scheme() != "http" {
        return Err(bad(
            "is not http:// (the HTTP API speaks plain HTTP on loopback)",
        ));
    }
    if !(url.path().is_empty() || url.path() == "/") || url.query().is_some() {
        return Err(bad("has a path; give only scheme, host and port"));
    }
    let port = url
        .port_or_known_default()
        .ok_or_else(|| bad("has no port"))?;
    let port = rules::check_port(i64::from(port))
        .map_err(|e| WireError::new(e.code, format!("{var}: {}", e.message)))?;
    let host = match url.host() {
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
            "localhost".to_string()
        }
        Some(url::Host::Ipv4(ip)) if ip.is_loopback() => ip.to_string(),
        Some(url::Host::Ipv6(ip)) if ip.is_loopback() => format!("[{ip}]"),
        _ => return Err(bad("is not on loopback (localhost, 127.0.0.1 or [::1])")),
    };
    Ok(Some((format!("{host}:{port}"), port)))
}

/// Port Daddy's allocation range, where PB_RANGE is unset: either bound
/// alone keeps pb's default for the other.
fn port_daddy_range() -> Result<Option<(u16, u16)>, WireError> {
    let start = port_daddy_var("PORT_DADDY_RANGE_START")?;
    let end = port_daddy_var("PORT_DADDY_RANGE_END")?;
    if start.is_none() && end.is_none() {
        return Ok(None);
    }
    let (a, b) = (
        start.unwrap_or(DEFAULT_RANGE.0),
        end.unwrap_or(DEFAULT_RANGE.1),
    );
    rules::check_range(i64::from(a), i64::from(b))
        .map(Some)
        .map_err(|e| {
            WireError::new(
                e.code,
                format!("PORT_DADDY_RANGE_START/END ({a}-{b}): {}", e.message),
            )
        })
}

/// PB_HTTP_ADDR: unset or empty for the defaults, `off` for no HTTP, or a
/// comma-separated list of loopback `host:port` (`[::1]:9876`). `localhost`
/// means both families.
pub fn parse_http_addrs(text: Option<&str>) -> Result<Vec<SocketAddr>, WireError> {
    parse_addrs("PB_HTTP_ADDR", text, DEFAULT_HTTP_PORT)
}

/// A loopback listener setting (`var`): unset or empty for both families
/// on `default_port`, `off` for none, or a comma-separated list of
/// loopback `host:port`; `localhost:P` means both families.
pub fn parse_addrs(
    var: &str,
    text: Option<&str>,
    default_port: u16,
) -> Result<Vec<SocketAddr>, WireError> {
    let bad = |why: String| WireError::new(pb_proto::ErrorCode::InvalidRequest, why);
    let text = text.map(str::trim).unwrap_or("");
    if text.is_empty() {
        return Ok(vec![
            SocketAddr::from(([127, 0, 0, 1], default_port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, default_port)),
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
                    .map_err(|_| bad(format!("{var}: bad port in {item:?}")))?;
                vec![
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                ]
            }
            None => vec![item
                .parse()
                .map_err(|_| bad(format!("{var}: {item:?} is not host:port (or off)")))?],
        };
        for a in addrs {
            if !a.ip().is_loopback() || a.port() == 0 {
                return Err(bad(format!(
                    "{var}: {a} is not a loopback address with a port; pb listens on loopback only"
                )));
            }
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    Ok(out)
}

/// A count setting: `default` when unset or empty; anything but a whole
/// number above 0 stops the broker, naming the variable.
fn env_usize(name: &str, default: usize) -> Result<usize, WireError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("{name}={v:?} is not a whole number above 0"),
                )
            }),
        _ => Ok(default),
    }
}

/// A duration setting: `default` when unset or empty, else within `range`.
fn env_duration(
    name: &str,
    default: std::time::Duration,
    range: (std::time::Duration, std::time::Duration),
    range_words: &str,
) -> Result<std::time::Duration, WireError> {
    match std::env::var(name) {
        Ok(text) if !text.is_empty() => {
            let d = pb_proto::duration::parse(&text).map_err(|e| {
                WireError::new(pb_proto::ErrorCode::InvalidDuration, format!("{name}: {e}"))
            })?;
            if d < range.0 || d > range.1 {
                return Err(WireError::new(
                    pb_proto::ErrorCode::InvalidDuration,
                    format!("{name} must be {range_words}"),
                ));
            }
            Ok(d)
        }
        _ => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_every_variable_this_file_reads() {
        // Each quoted PB_/PORT_DADDY_ name in this file (test seams
        // aside) is one `pb install` must carry.
        let src = include_str!("config.rs");
        let src = &src[..src.find("#[cfg(test)]").unwrap()];
        for prefix in ["\"PB_", "\"PORT_DADDY_"] {
            for (i, _) in src.match_indices(prefix) {
                let name: String = src[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                    .collect();
                if !name.starts_with("PB_TEST_") {
                    assert!(
                        SETTINGS.contains(&name.as_str()),
                        "{name} is read but not in SETTINGS"
                    );
                }
            }
        }
        assert!(SETTINGS.contains(&crate::log::ENV));
    }

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
