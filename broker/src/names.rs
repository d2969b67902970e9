//! Names of locks, channels and agents, and channel patterns.
//!
//! A name is 1 to 8 segments separated by `:`, each 1 to 64 characters of
//! `[A-Za-z0-9._-]`, at most 255 characters in all (`db-migrations`,
//! `build:api`, `pb:agent.stale`). A pattern may use `*` as a whole
//! segment: it matches one segment, and as the last segment also any
//! deeper ones (`build:*` matches `build:api` and `build:api:x`, not
//! `build`), the same rule as service-id patterns.

use pb_proto::{ErrorCode, WireError};

pub const MAX_SEGMENTS: usize = 8;
pub const MAX_SEGMENT_LEN: usize = 64;
pub const MAX_NAME_LEN: usize = 255;

fn invalid(what: &str, text: &str, why: &str) -> WireError {
    let shown: String = text.chars().take(80).collect();
    WireError::new(
        ErrorCode::InvalidName,
        format!("invalid {what} {shown:?}: {why}"),
    )
}

fn check(what: &str, text: &str, allow_star: bool) -> Result<(), WireError> {
    if text.is_empty() {
        return Err(invalid(what, text, "empty"));
    }
    if text.len() > MAX_NAME_LEN {
        return Err(invalid(what, text, "at most 255 characters"));
    }
    let segs: Vec<&str> = text.split(':').collect();
    if segs.len() > MAX_SEGMENTS {
        return Err(invalid(what, text, "at most 8 ':'-separated segments"));
    }
    for s in segs {
        if s.is_empty() {
            return Err(invalid(what, text, "empty segment"));
        }
        if s == "*" {
            if allow_star {
                continue;
            }
            return Err(invalid(what, text, "'*' is only allowed in patterns"));
        }
        if s.len() > MAX_SEGMENT_LEN {
            return Err(invalid(what, text, "a segment is at most 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
        {
            return Err(invalid(
                what,
                text,
                "segments use only letters, digits, '.', '_' and '-'",
            ));
        }
    }
    Ok(())
}

pub fn check_lock(name: &str) -> Result<(), WireError> {
    check("lock name", name, false)
}

pub fn check_channel(name: &str) -> Result<(), WireError> {
    check("channel", name, false)
}

pub fn check_agent(id: &str) -> Result<(), WireError> {
    check("agent id", id, false)
}

pub fn check_owner(name: &str) -> Result<(), WireError> {
    check("owner name", name, false)
}

/// A compiled channel (or lock-name) pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern {
    text: String,
    segs: Vec<String>,
}

impl NamePattern {
    pub fn parse(text: &str) -> Result<NamePattern, WireError> {
        check("pattern", text, true)?;
        Ok(NamePattern {
            text: text.to_string(),
            segs: text.split(':').map(str::to_string).collect(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, name: &str) -> bool {
        let open_tail = self.segs.last().is_some_and(|s| s == "*");
        let mut parts = name.split(':');
        let mut n = 0;
        for p in &self.segs {
            match parts.next() {
                Some(part) if p == "*" || p == part => n += 1,
                _ => return false,
            }
        }
        debug_assert_eq!(n, self.segs.len());
        parts.next().is_none() || open_tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "db",
            "build:api",
            "pb:agent.stale",
            "a:b:c:d:e:f:g:h",
            "123",
        ] {
            check_channel(ok).unwrap();
        }
        for bad in [
            "",
            "a::b",
            "a b",
            "a:*",
            "a:b:c:d:e:f:g:h:i",
            "é",
            &"x".repeat(65),
        ] {
            assert_eq!(
                check_lock(bad).unwrap_err().code,
                ErrorCode::InvalidName,
                "{bad}"
            );
        }
    }

    #[test]
    fn patterns() {
        let p = NamePattern::parse("build:*").unwrap();
        assert!(p.matches("build:api") && p.matches("build:api:x"));
        assert!(!p.matches("build") && !p.matches("builds:api"));
        let p = NamePattern::parse("*:api").unwrap();
        assert!(p.matches("build:api") && !p.matches("build:api:x") && !p.matches("api"));
        let p = NamePattern::parse("errors").unwrap();
        assert!(p.matches("errors") && !p.matches("errors:x"));
        assert!(NamePattern::parse("a:b*").is_err());
    }
}
