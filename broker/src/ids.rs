//! The one grammar of pb's names: service ids (`project[:stack[:context]]`),
//! lock, channel, agent and owner names, and the patterns that select
//! them.
//!
//! A name is `:`-separated segments, each 1 to 64 characters of
//! `[A-Za-z0-9._-]`. Service ids have at most 3 segments and are never a
//! bare number (that names a port); other names at most 8 segments and 255
//! characters in all (`db-migrations`, `build:api`, `pb:agent.stale`).
//!
//! `*` stands only in patterns. A segment that is `*` matches one whole
//! segment, and as the last segment it also matches any deeper ones:
//! `myapp:*` is every service of myapp, as in Port Daddy's README, and
//! `build:*` matches `build:api` and `build:api:x`, not `build`. In a
//! service-id pattern `*` may also stand inside a segment, for any run of
//! characters within it (`bulk*`, `*-test`, `a*z`), as Port Daddy's
//! `release` takes them.

use pb_proto::{ErrorCode, WireError};

/// One kind of name: its limits and the error code that refuses it.
#[derive(Debug, Clone, Copy)]
pub struct Grammar {
    pub max_segments: usize,
    pub max_len: usize,
    pub code: ErrorCode,
    /// Whether a pattern's `*` may stand inside a segment.
    pub star_inside: bool,
}

pub const MAX_SEGMENT_LEN: usize = 64;

/// Service ids.
pub const IDS: Grammar = Grammar {
    max_segments: 3,
    max_len: 3 * (MAX_SEGMENT_LEN + 1),
    code: ErrorCode::InvalidId,
    star_inside: true,
};

/// Lock, channel, agent and owner names.
pub const NAMES: Grammar = Grammar {
    max_segments: 8,
    max_len: 255,
    code: ErrorCode::InvalidName,
    star_inside: false,
};

impl Grammar {
    fn invalid(&self, what: &str, text: &str, why: &str) -> WireError {
        let shown: String = text.chars().take(80).collect();
        WireError::new(self.code, format!("invalid {what} {shown:?}: {why}"))
    }

    /// Checks `text` as a `what` (`"id"`, `"lock name"`, ...), or as a
    /// pattern when `pattern`; its segments.
    pub fn check<'a>(
        &self,
        what: &str,
        text: &'a str,
        pattern: bool,
    ) -> Result<Vec<&'a str>, WireError> {
        if text.is_empty() {
            return Err(self.invalid(what, text, "empty"));
        }
        if text.len() > self.max_len {
            let why = format!("at most {} characters", self.max_len);
            return Err(self.invalid(what, text, &why));
        }
        let segs: Vec<&str> = text.split(':').collect();
        if segs.len() > self.max_segments {
            let why = match self.max_segments {
                3 => "at most 3 segments: project:stack:context".to_string(),
                n => format!("at most {n} ':'-separated segments"),
            };
            return Err(self.invalid(what, text, &why));
        }
        for s in &segs {
            if s.is_empty() {
                return Err(self.invalid(what, text, "empty segment"));
            }
            let starred = s.contains('*');
            if starred && !pattern {
                return Err(self.invalid(what, text, "'*' is only allowed in patterns"));
            }
            if starred && !self.star_inside && *s != "*" {
                return Err(self.invalid(what, text, "'*' stands only as a whole segment"));
            }
            if s.len() > MAX_SEGMENT_LEN {
                return Err(self.invalid(what, text, "a segment is at most 64 characters"));
            }
            if !s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' || b == b'*'
            }) {
                return Err(self.invalid(
                    what,
                    text,
                    "segments use only letters, digits, '.', '_' and '-'",
                ));
            }
        }
        Ok(segs)
    }
}

/// Validates a concrete service id.
pub fn check_id(text: &str) -> Result<(), WireError> {
    IDS.check("id", text, false)?;
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IDS.invalid("id", text, "a bare number names a port, not a service"));
    }
    Ok(())
}

/// A compiled pattern, of service ids or of names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    segs: Vec<String>,
}

impl Pattern {
    /// A service-id pattern.
    pub fn parse(text: &str) -> Result<Pattern, WireError> {
        Pattern::parse_in(&IDS, text)
    }

    pub fn parse_in(grammar: &Grammar, text: &str) -> Result<Pattern, WireError> {
        let segs = grammar.check("pattern", text, true)?;
        Ok(Pattern {
            text: text.to_string(),
            segs: segs.into_iter().map(str::to_string).collect(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_literal(&self) -> bool {
        !self.segs.iter().any(|s| s.contains('*'))
    }

    pub fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split(':').collect();
        let open_tail = self.segs.last().is_some_and(|s| s == "*");
        if parts.len() < self.segs.len() || (parts.len() > self.segs.len() && !open_tail) {
            return false;
        }
        self.segs
            .iter()
            .zip(&parts)
            .all(|(p, part)| glob(p.as_bytes(), part.as_bytes()))
    }
}

/// `pattern` (where `*` is any run of characters) matches all of `text`.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    // The classic two-pointer match: on a mismatch, retry from the last
    // star with one more character swallowed. Linear in practice; segments
    // are at most 64 bytes.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in [
            "myapp",
            "myapp:api",
            "myapp:api:feature-auth",
            "a.b_c-d",
            "3d:web",
        ] {
            check_id(ok).unwrap();
        }
        for bad in [
            "",
            "a::b",
            "a:b:c:d",
            "my app",
            "a:*",
            "*",
            "3100",
            "é",
            &"x".repeat(65),
        ] {
            assert_eq!(
                check_id(bad).unwrap_err().code,
                ErrorCode::InvalidId,
                "{bad}"
            );
        }
    }

    #[test]
    fn patterns() {
        let p = Pattern::parse("myapp:*").unwrap();
        assert!(p.matches("myapp:api") && p.matches("myapp:api:main"));
        assert!(!p.matches("myapp") && !p.matches("other:api"));
        let p = Pattern::parse("*:api:*").unwrap();
        assert!(p.matches("x:api:main") && !p.matches("x:web:main") && !p.matches("x:api"));
        let p = Pattern::parse("myapp:*:feature-auth").unwrap();
        assert!(p.matches("myapp:api:feature-auth") && !p.matches("myapp:api:main"));
        let p = Pattern::parse("*").unwrap();
        assert!(p.matches("a") && p.matches("a:b:c"));
        let p = Pattern::parse("myapp").unwrap();
        assert!(p.is_literal() && p.matches("myapp") && !p.matches("myapp:api"));
        let p = Pattern::parse("bulk*").unwrap();
        assert!(!p.is_literal() && p.matches("bulk1") && p.matches("bulk"));
        assert!(!p.matches("xbulk") && !p.matches("bulk1:api"));
        let p = Pattern::parse("myapp:*-test:a*z").unwrap();
        assert!(p.matches("myapp:unit-test:abcz") && !p.matches("myapp:unit-test:abc"));
        assert!(Pattern::parse("a:b c*").is_err());
        assert!(check_id("bulk*").is_err());
    }
}
