//! The dashboard's one-time login: `pb dashboard` (over the Unix socket,
//! so only the broker's own user) gets a code that a browser exchanges,
//! once and within a minute, at `/login` for a session cookie. A session
//! admits that browser's requests the way the bearer token admits another
//! user's process: for browsers the kernel cannot attribute to the user
//! (another uid, a sandbox) and that cannot send an Authorization header.
//!
//! A session belongs to the uid (as the kernel named it) whose browser
//! redeemed the code, and is accepted from that uid only: browsers send
//! localhost cookies to every local port, so another user's server on
//! localhost may see the cookie, and must not be able to replay it.
//!
//! Codes and sessions live in memory only (a restart logs everyone out),
//! each kind bounded, each with an expiry.

use std::collections::HashMap;

use pb_proto::{ErrorCode, WireError};

/// How long a login code is valid.
pub const CODE_TTL_MS: u64 = 60_000;
/// How long a session lasts.
pub const SESSION_TTL_MS: u64 = 12 * 3_600_000;
/// Most codes waiting to be used.
pub const MAX_CODES: usize = 16;
/// Most live sessions; the oldest is dropped for a new one.
pub const MAX_SESSIONS: usize = 64;

#[derive(Debug, Default)]
pub struct Logins {
    /// Code → when it expires.
    codes: HashMap<String, u64>,
    /// Session secret → when it expires, and the uid it belongs to.
    sessions: HashMap<String, (u64, u32)>,
}

impl Logins {
    /// A new one-time code.
    pub fn new_code(&mut self, now: u64) -> Result<(String, u64), WireError> {
        self.codes.retain(|_, exp| *exp > now);
        if self.codes.len() >= MAX_CODES {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("{MAX_CODES} login codes are waiting to be used; try again in a minute"),
            ));
        }
        let code = random_hex(16)?;
        let exp = now + CODE_TTL_MS;
        self.codes.insert(code.clone(), exp);
        Ok((code, exp))
    }

    /// Uses up `code` and opens a session for it, for `uid`'s browser.
    pub fn redeem(&mut self, code: &str, uid: u32, now: u64) -> Result<(String, u64), WireError> {
        let valid = self
            .codes
            .iter()
            .find(|(c, _)| same(c, code))
            .map(|(c, exp)| (c.clone(), *exp));
        let Some((c, exp)) = valid else {
            return Err(unauthorized("the login code is unknown or already used"));
        };
        self.codes.remove(&c);
        if exp <= now {
            return Err(unauthorized("the login code has expired"));
        }
        self.sessions.retain(|_, (exp, _)| *exp > now);
        if self.sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, (exp, _))| *exp)
                .map(|(s, _)| s.clone())
            {
                self.sessions.remove(&oldest);
            }
        }
        let secret = random_hex(32)?;
        let exp = now + SESSION_TTL_MS;
        self.sessions.insert(secret.clone(), (exp, uid));
        Ok((secret, exp))
    }

    /// Whether `secret` names a live session of `uid`'s.
    pub fn session_valid(&self, secret: &str, uid: u32, now: u64) -> bool {
        self.sessions
            .iter()
            .any(|(s, (exp, owner))| *exp > now && *owner == uid && same(s, secret))
    }
}

fn unauthorized(why: &str) -> WireError {
    WireError::new(ErrorCode::Unauthorized, why)
}

/// Equality in time independent of where the strings differ.
pub fn same(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// `n` random bytes, hex-encoded.
pub fn random_hex(n: usize) -> Result<String, WireError> {
    let mut bytes = vec![0u8; n];
    pb_platform::os::random_bytes(&mut bytes)
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("getrandom: {e}")))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_used_once_and_in_time() {
        let mut l = Logins::default();
        let (code, exp) = l.new_code(1000).unwrap();
        assert_eq!(exp, 1000 + CODE_TTL_MS);
        let (session, _) = l.redeem(&code, 1000, 2000).unwrap();
        assert!(l.session_valid(&session, 1000, 3000));
        assert!(
            !l.session_valid(&session, 1001, 3000),
            "another uid's replay"
        );
        assert!(!l.session_valid("nope", 1000, 3000));
        assert!(!l.session_valid(&session, 1000, 2000 + SESSION_TTL_MS));
        assert_eq!(
            l.redeem(&code, 1000, 2000).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        let (late, _) = l.new_code(1000).unwrap();
        assert_eq!(
            l.redeem(&late, 1000, 1000 + CODE_TTL_MS).unwrap_err().code,
            ErrorCode::Unauthorized
        );
        assert!(
            l.redeem(&late, 1000, 1000).is_err(),
            "an expired code is gone, not reusable"
        );
    }

    #[test]
    fn codes_and_sessions_are_bounded() {
        let mut l = Logins::default();
        let codes: Vec<String> = (0..MAX_CODES).map(|_| l.new_code(0).unwrap().0).collect();
        assert_eq!(l.new_code(0).unwrap_err().code, ErrorCode::Limit);
        // Expired codes make room.
        assert!(l.new_code(CODE_TTL_MS).is_ok());
        let mut l = Logins::default();
        let mut first = None;
        for i in 0..=MAX_SESSIONS as u64 {
            let (c, _) = l.new_code(i).unwrap();
            let (s, _) = l.redeem(&c, 1000, i).unwrap();
            first.get_or_insert(s);
        }
        assert_eq!(l.sessions.len(), MAX_SESSIONS);
        assert!(
            !l.session_valid(first.as_ref().unwrap(), 1000, 100),
            "the oldest session made room"
        );
        drop(codes);
    }
}
