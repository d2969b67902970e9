//! The broker's Prometheus metrics (`GET /metrics`, `pb metrics`): the
//! counters and histograms that the core, the reaper and the HTTP
//! transport move as things happen, and the gauges read from the core's
//! state at each scrape ([`Gauges`]). Written by prometheus-client in the
//! OpenMetrics text format, which Prometheus scrapes.
//!
//! Every label comes from a closed set (event kinds, lease states, route
//! templates, methods, status codes, delivery outcomes), never from an id,
//! a name or a path a client chose, so a scrape stays the same size however
//! many services, locks or channels there are. docs/HTTP.md lists them.

use std::time::Duration;

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Death-to-free, in seconds: from half a millisecond (a pidfd wake-up and
/// one commit) to ten seconds (a reclaim that waited on a busy machine).
const DEATH_TO_FREE_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `delivered`, `failed` (for good) or `retrying`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The route's template (`/claim/{id}`), `unmatched` for a path no
    /// route serves, `refused` for a request the guard turned away.
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// A method from the closed set HTTP defines; anything else (a client may
/// send any token) is `other`.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

fn request_duration() -> Histogram {
    // 50 µs to 1.6 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The metrics that move as things happen. Cloning shares them: every
/// handle is one atomic (or one set of them) behind an `Arc`.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Every event on the broker's bus, by kind (`service.claim`, ...).
    pub events: Family<KindLabel, Counter>,
    pub claims: Counter,
    pub releases: Counter,
    /// Leases ended because their owner died and nobody held the socket.
    pub reclaims: Counter,
    pub expiries: Counter,
    /// From the moment the kernel says an owner is gone (its pidfd is
    /// readable) to the moment its port is free again.
    pub death_to_free: Histogram,
    /// Subscribers dropped for falling a whole queue behind.
    pub subscribers_dropped: Counter,
    /// Webhook delivery attempts, by how each ended.
    pub webhook_attempts: Family<OutcomeLabel, Counter>,
    pub http_requests: Family<RequestLabels, Counter>,
    /// Until the response's head is ready (a stream's first byte).
    pub http_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    /// Unix-socket connections accepted since start.
    pub ipc_connections: Counter,
    registry: std::sync::Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            events: Family::default(),
            claims: Counter::default(),
            releases: Counter::default(),
            reclaims: Counter::default(),
            expiries: Counter::default(),
            death_to_free: Histogram::new(DEATH_TO_FREE_BUCKETS),
            subscribers_dropped: Counter::default(),
            webhook_attempts: Family::default(),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(request_duration as fn() -> Histogram),
            ipc_connections: Counter::default(),
            registry: Default::default(),
        };
        let mut r = Registry::with_prefix("pb");
        r.register("events", "Events on the broker's bus", m.events.clone());
        r.register("claims", "Leases claimed", m.claims.clone());
        r.register("releases", "Leases released", m.releases.clone());
        r.register(
            "reclaims",
            "Leases ended because their owner died and nobody held the socket",
            m.reclaims.clone(),
        );
        r.register("expiries", "Leases ended by their TTL", m.expiries.clone());
        r.register_with_unit(
            "death_to_free",
            "From an owner's death (its pidfd readable) to its port free",
            Unit::Seconds,
            m.death_to_free.clone(),
        );
        r.register(
            "subscribers_dropped",
            "Subscribers dropped for falling a whole queue behind",
            m.subscribers_dropped.clone(),
        );
        r.register(
            "webhook_attempts",
            "Webhook delivery attempts, by how each ended",
            m.webhook_attempts.clone(),
        );
        r.register(
            "http_requests",
            "HTTP requests, by method, route template and status",
            m.http_requests.clone(),
        );
        r.register_with_unit(
            "http_request_duration",
            "HTTP requests, until the response's head is ready",
            Unit::Seconds,
            m.http_duration.clone(),
        );
        r.register(
            "ipc_connections",
            "Unix-socket connections accepted",
            m.ipc_connections.clone(),
        );
        Metrics {
            registry: std::sync::Arc::new(r),
            ..m
        }
    }

    /// Counts one event of `kind` (its name on the bus).
    pub fn event(&self, kind: &'static str) {
        self.events.get_or_create(&KindLabel { kind }).inc();
    }

    /// One HTTP request answered.
    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let route = route.to_string();
        self.http_requests
            .get_or_create(&RequestLabels {
                method: method_label(method),
                route: route.clone(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabel { route })
            .observe(took.as_secs_f64());
    }

    /// The text of a scrape: what moved, then `gauges`, the core's state
    /// now, and the process's own figures.
    pub fn encode(&self, gauges: &Gauges, rss_bytes: Option<u64>, uptime: Duration) -> String {
        let mut now = Registry::with_prefix("pb");
        let leases = Family::<StateLabel, Gauge>::default();
        for (state, n) in gauges.leases {
            leases.get_or_create(&StateLabel { state }).set(n as i64);
        }
        now.register("leases", "Leases, by state", leases);
        let gauge = |n: usize| {
            let g = Gauge::<i64>::default();
            g.set(n as i64);
            g
        };
        now.register("locks_held", "Locks held", gauge(gauges.locks_held));
        now.register(
            "lock_waiters",
            "Requests queued for a held lock",
            gauge(gauges.lock_waiters),
        );
        now.register(
            "subscribers",
            "Live subscriptions",
            gauge(gauges.subscribers),
        );
        now.register(
            "webhook_queue",
            "Webhook deliveries waiting for an attempt",
            gauge(gauges.webhook_queue),
        );
        now.register(
            "ipc_connections_open",
            "Unix-socket connections open",
            gauge(gauges.ipc_open),
        );
        if let Some(rss) = rss_bytes {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(rss).unwrap_or(i64::MAX));
            now.register_with_unit("resident_memory", "The broker's RSS", Unit::Bytes, g);
        }
        let up = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        up.set(uptime.as_secs_f64());
        now.register_with_unit("uptime", "Since the broker started", Unit::Seconds, up);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut text, &self.registry);
        let _ = encode_registry(&mut text, &now);
        let _ = encode_eof(&mut text);
        text
    }
}

/// The core's state at a scrape, read under its mutex and nothing else.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    /// Leases by state, every state present (zero when none is in it).
    pub leases: [(&'static str, usize); 4],
    pub locks_held: usize,
    pub lock_waiters: usize,
    pub subscribers: usize,
    pub webhook_queue: usize,
    pub ipc_open: usize,
}
