//! Per-client limits of the HTTP API: how many connections each user (and
//! everyone together) may hold open, and how many requests per second each
//! user may make. On loopback every client has the same address, so a
//! "client" is the uid the kernel says made the connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pb_proto::{ErrorCode, WireError};

/// Open HTTP connections, in total and per uid.
#[derive(Debug)]
pub struct Connections {
    max_total: usize,
    max_per_client: usize,
    open: Mutex<(usize, HashMap<u32, usize>)>,
}

/// One admitted connection: it frees its place when dropped.
#[derive(Debug)]
pub struct Slot {
    pool: Arc<Connections>,
    uid: Option<u32>,
}

impl Connections {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max_total,
            max_per_client,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    fn open(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<u32, usize>)> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place among all connections: checked before anything else is
    /// spent on a new connection.
    pub fn enter(self: &Arc<Self>) -> Result<Slot, WireError> {
        let mut open = self.open();
        if open.0 >= self.max_total {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("too many HTTP connections (limit {})", self.max_total),
            ));
        }
        open.0 += 1;
        Ok(Slot {
            pool: self.clone(),
            uid: None,
        })
    }

    /// The connection is `uid`'s: counts it against that user's share.
    pub fn assign(&self, slot: &mut Slot, uid: u32) -> Result<(), WireError> {
        let mut open = self.open();
        let mine = open.1.entry(uid).or_insert(0);
        if *mine >= self.max_per_client {
            if *mine == 0 {
                open.1.remove(&uid);
            }
            return Err(WireError::new(
                ErrorCode::Limit,
                format!(
                    "too many HTTP connections from uid {uid} (limit {})",
                    self.max_per_client
                ),
            ));
        }
        *mine += 1;
        slot.uid = Some(uid);
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.open().0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.pool.open();
        open.0 = open.0.saturating_sub(1);
        if let Some(uid) = self.uid {
            if let Some(n) = open.1.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    open.1.remove(&uid);
                }
            }
        }
    }
}

/// A token bucket per uid: `rate` requests a second, bursts up to
/// `burst`.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_clients: usize,
    buckets: Mutex<HashMap<u32, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter {
            rate: rate.max(1) as f64,
            burst: burst.max(1) as f64,
            max_clients,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one request from `uid`'s bucket, or says it is empty.
    pub fn take(&self, uid: u32, now: Instant) -> Result<(), WireError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.max_clients && !buckets.contains_key(&uid) {
            // Full buckets carry no information: forget them first.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (level, at)| {
                *level + now.duration_since(*at).as_secs_f64() * rate < burst
            });
            if buckets.len() >= self.max_clients {
                return Err(WireError::new(
                    ErrorCode::Limit,
                    "too many HTTP clients at once",
                ));
            }
        }
        let (level, at) = buckets.entry(uid).or_insert((self.burst, now));
        *level = (*level + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *level < 1.0 {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!(
                    "too many requests from uid {uid} (limit {} a second)",
                    self.rate
                ),
            ));
        }
        *level -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connections_are_limited_in_total_and_per_user() {
        let pool = Connections::new(3, 2);
        let mut a = pool.enter().unwrap();
        pool.assign(&mut a, 1000).unwrap();
        let mut b = pool.enter().unwrap();
        pool.assign(&mut b, 1000).unwrap();
        let mut c = pool.enter().unwrap();
        assert_eq!(
            pool.assign(&mut c, 1000).unwrap_err().code,
            ErrorCode::Limit
        );
        pool.assign(&mut c, 1001).unwrap();
        assert_eq!(pool.enter().unwrap_err().code, ErrorCode::Limit);
        drop(a);
        let mut d = pool.enter().unwrap();
        pool.assign(&mut d, 1000).unwrap();
        drop((b, c, d));
        assert_eq!(pool.count(), 0);
        assert!(pool.open().1.is_empty());
    }

    #[test]
    fn rate_is_limited_per_user_and_refills() {
        let limiter = RateLimiter::new(10, 20, 2);
        let t0 = Instant::now();
        for _ in 0..20 {
            limiter.take(1, t0).unwrap();
        }
        assert_eq!(limiter.take(1, t0).unwrap_err().code, ErrorCode::Limit);
        // Another user has a bucket of their own.
        limiter.take(2, t0).unwrap();
        // A third, past the table's size, while both others are busy.
        assert!(limiter.take(3, t0).is_err());
        // A tenth of a second later, one more request for uid 1.
        let later = t0 + Duration::from_millis(100);
        limiter.take(1, later).unwrap();
        assert!(limiter.take(1, later).is_err());
        // Much later every bucket is full again and may be forgotten.
        let much_later = t0 + Duration::from_secs(10);
        limiter.take(3, much_later).unwrap();
    }
}
