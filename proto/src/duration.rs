//! Durations as people type them: `90s`, `30m`, `2h`, `1d`, or a sum such as
//! `1h30m`. A bare number is seconds, or milliseconds where a seed says so
//! ([`Bare`]). Used by every transport, so a duration
//! means the same thing on the CLI and over HTTP.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {0:?}: use a number with a unit, such as 90s, 30m, 2h or 1d")]
pub struct DurationError(pub String);

/// What a number without a unit means. Units always mean the same; only
/// a bare number differs, because the seeds differ: PortManager's TTLs
/// and pb's `--expires` are seconds, Port Daddy's lock TTLs and wait
/// timeouts milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bare {
    Seconds,
    Millis,
}

/// A duration where a bare number is seconds.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    parse_bare(text, Bare::Seconds)
}

/// A duration where a bare number means `bare`.
pub fn parse_bare(text: &str, bare: Bare) -> Result<Duration, DurationError> {
    let err = || DurationError(text.to_string());
    let t = text.trim();
    if t.is_empty() || t.len() > 32 {
        return Err(err());
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        let n = t.parse::<u64>().map_err(|_| err())?;
        return Ok(match bare {
            Bare::Seconds => Duration::from_secs(n),
            Bare::Millis => Duration::from_millis(n),
        });
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if c == 'm' && chars.peek() == Some(&'s') {
            unit.push(chars.next().unwrap());
        }
        if digits.is_empty() {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        digits.clear();
        let ms_per = match unit.as_str() {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return Err(err()),
        };
        total = n
            .checked_mul(ms_per)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    if !digits.is_empty() {
        return Err(err());
    }
    Ok(Duration::from_millis(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("1d").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("45").unwrap(), Duration::from_secs(45));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "m",
            "5x",
            "1.5h",
            "-3m",
            "h2",
            "2h3",
            "99999999999999999999d",
            "1 h",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
