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
