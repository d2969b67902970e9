//! Names of locks, channels, agents and owners, and channel patterns: the
//! one grammar of `ids` ([`crate::ids::NAMES`]), under the name each is
//! refused as.

use pb_proto::WireError;

use crate::ids::{Pattern, NAMES};

/// A channel (or lock-name) pattern: whole-segment `*` only.
pub type NamePattern = Pattern;

impl Pattern {
    /// A pattern over names (channels, locks).
    pub fn parse_name(text: &str) -> Result<Pattern, WireError> {
        Pattern::parse_in(&NAMES, text)
    }
}

pub fn check_lock(name: &str) -> Result<(), WireError> {
    NAMES.check("lock name", name, false).map(drop)
}

pub fn check_channel(name: &str) -> Result<(), WireError> {
    NAMES.check("channel", name, false).map(drop)
}

pub fn check_agent(id: &str) -> Result<(), WireError> {
    NAMES.check("agent id", id, false).map(drop)
}

pub fn check_owner(name: &str) -> Result<(), WireError> {
    NAMES.check("owner name", name, false).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb_proto::ErrorCode;

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
        let p = NamePattern::parse_name("build:*").unwrap();
        assert!(p.matches("build:api") && p.matches("build:api:x"));
        assert!(!p.matches("build") && !p.matches("builds:api"));
        let p = NamePattern::parse_name("*:api").unwrap();
        assert!(p.matches("build:api") && !p.matches("build:api:x") && !p.matches("api"));
        let p = NamePattern::parse_name("errors").unwrap();
        assert!(p.matches("errors") && !p.matches("errors:x"));
        assert!(NamePattern::parse_name("a:b*").is_err());
    }
}
