//! Validation of the values in a request: ports, ranges, durations,
//! metadata. Every transport reaches these through the core, so each rule
//! exists once.

use pb_proto::{ErrorCode, WireError};
use serde_json::Value;

/// The lowest port pb hands out: below it are privileged ports.
pub const MIN_PORT: i64 = 1024;
/// The longest lease TTL: a year.
pub const MAX_TTL_MS: i64 = 366 * 86_400_000;
pub const MAX_METADATA_BYTES: usize = 4096;
/// The most claims one `claim_many` makes (a stack's services).
pub const MAX_CLAIM_BATCH: usize = 64;

/// Ports that dev tools and databases take by default, which allocation
/// from a range never hands out (a port asked for by number still may):
/// a stray `npm run dev` or `python -m http.server` then never lands on a
/// leased port. docs/CLI.md lists them.
pub const DEV_DEFAULT_PORTS: &[u16] = &[
    // Web dev servers: Rails/Express/Next (3000-3003), Gatsby and Phoenix
    // (4000), Angular (4200), Astro (4321), Flask (5000, 5001), Vite (5173,
    // 5174, preview 4173), Live Server (5500), Storybook (6006), Django,
    // http.server and uvicorn (8000, 8001), Jupyter (8888), webpack/Tomcat
    // (8080, 8081), 8443, 9000 (PHP-FPM, SonarQube, MinIO).
    3000, 3001, 3002, 3003, 4000, 4173, 4200, 4321, 5000, 5001, 5173, 5174, 5500, 6006, 8000, 8001,
    8008, 8080, 8081, 8443, 8888, 9000,
    // Databases and brokers: MySQL, Postgres, Redis, MongoDB, Memcached,
    // Elasticsearch, RabbitMQ, Kafka, CouchDB, InfluxDB, Neo4j, Cassandra,
    // MSSQL, Oracle.
    3306, 5432, 6379, 27017, 11211, 9200, 9300, 5672, 15672, 9092, 5984, 8086, 7474, 9042, 1433,
    1521,
    // Tooling: Node's inspector, Prometheus, Docker, livereload, Vite's
    // HMR, Expo, the seeds' daemons (PortManager 3030, Port Daddy and pb
    // 9876).
    9229, 9090, 2375, 2376, 35729, 24678, 19000, 19001, 19002, 3030, 9876,
];

pub fn check_port(p: i64) -> Result<u16, WireError> {
    if !(1..=65535).contains(&p) {
        return Err(WireError::new(
            ErrorCode::InvalidPort,
            format!("port {p} is out of range (1024-65535)"),
        ));
    }
    if p < MIN_PORT {
        return Err(WireError::new(
            ErrorCode::InvalidPort,
            format!("port {p} is privileged; pb hands out 1024-65535"),
        ));
    }
    Ok(p as u16)
}

/// Any TCP port, privileged ones included: for questions, not claims.
pub fn check_any_port(p: i64) -> Result<u16, WireError> {
    if !(1..=65535).contains(&p) {
        return Err(WireError::new(
            ErrorCode::InvalidPort,
            format!("port {p} is out of range (1-65535)"),
        ));
    }
    Ok(p as u16)
}

pub fn check_range(a: i64, b: i64) -> Result<(u16, u16), WireError> {
    let bad = |why: String| WireError::new(ErrorCode::InvalidRange, why);
    let a = check_port(a).map_err(|e| bad(format!("range start: {}", e.message)))?;
    let b = check_port(b).map_err(|e| bad(format!("range end: {}", e.message)))?;
    if a > b {
        return Err(bad(format!("range {a}-{b} is inverted")));
    }
    Ok((a, b))
}

pub fn check_ttl(ms: i64) -> Result<u64, WireError> {
    if ms <= 0 || ms > MAX_TTL_MS {
        return Err(WireError::new(
            ErrorCode::InvalidDuration,
            format!("duration of {ms} ms is out of range (1 ms to 366 days)"),
        ));
    }
    Ok(ms as u64)
}

pub fn check_metadata(m: Option<Value>) -> Result<Option<Value>, WireError> {
    match m {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => {
            let size = serde_json::to_vec(&v)
                .map(|b| b.len())
                .unwrap_or(usize::MAX);
            if size > MAX_METADATA_BYTES {
                return Err(WireError::new(
                    ErrorCode::InvalidMetadata,
                    format!("metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}"),
                ));
            }
            Ok(Some(v))
        }
        Some(_) => Err(WireError::new(
            ErrorCode::InvalidMetadata,
            "metadata must be a JSON object",
        )),
    }
}
