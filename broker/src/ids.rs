//! Service ids (`project[:stack[:context]]`) and the patterns that select
//! them (`myapp:*`, `*:api:*`).
//!
//! A segment is 1 to 64 characters of `[A-Za-z0-9._-]`. `*` stands only in
//! patterns. A segment that is `*` matches one whole segment, and as the
//! last segment it also matches any deeper ones: `myapp:*` is every service
//! of myapp, as in Port Daddy's README. Inside a segment, `*` matches any
//! run of characters within it (`bulk*`, `*-test`, `a*z`), as Port Daddy's
//! `release` takes them.

use pb_proto::{ErrorCode, WireError};

pub const MAX_SEGMENTS: usize = 3;
pub const MAX_SEGMENT_LEN: usize = 64;

fn invalid(text: &str, why: &str) -> WireError {
    let shown: String = text.chars().take(80).collect();
    WireError::new(ErrorCode::InvalidId, format!("invalid id {shown:?}: {why}"))
}

fn check_segments(text: &str, allow_star: bool) -> Result<Vec<&str>, WireError> {
    if text.is_empty() {
        return Err(invalid(text, "empty"));
    }
    let segs: Vec<&str> = text.split(':').collect();
    if segs.len() > MAX_SEGMENTS {
        return Err(invalid(text, "at most 3 segments: project:stack:context"));
    }
    for s in &segs {
        if s.is_empty() {
            return Err(invalid(text, "empty segment"));
        }
        if s.contains('*') && !allow_star {
            return Err(invalid(text, "'*' is only allowed in patterns"));
        }
        if s.len() > MAX_SEGMENT_LEN {
            return Err(invalid(text, "a segment is at most 64 characters"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' || b == b'*')
        {
            return Err(invalid(
                text,
                "segments use only letters, digits, '.', '_' and '-'",
            ));
        }
    }
    Ok(segs)
}

/// Validates a concrete service id.
pub fn check_id(text: &str) -> Result<(), WireError> {
    check_segments(text, false)?;
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(text, "a bare number names a port, not a service"));
    }
    Ok(())
}

/// A compiled id pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    segs: Vec<String>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, WireError> {
        let segs = check_segments(text, true)?;
        Ok(Pattern {
            segs: segs.into_iter().map(str::to_string).collect(),
        })
    }

    pub fn is_literal(&self) -> bool {
        !self.segs.iter().any(|s| s.contains('*'))
    }

    pub fn matches(&self, id: &str) -> bool {
        let parts: Vec<&str> = id.split(':').collect();
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
