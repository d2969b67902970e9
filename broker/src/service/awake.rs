//! Staying awake a moment after each answer.
//!
//! Where idle CPUs sleep deeply (a virtual machine's above all), waking a
//! sleeping process costs more than the request it carries: on the 2-core
//! KVM guest of BENCHMARKS.md a Unix round trip between two processes is
//! 60 µs when each sleeps on its own CPU between messages, and 3 µs when
//! the scheduler keeps both on one CPU, awake. A client's next request
//! often follows its last answer within microseconds (a claim's release,
//! the next lease of a `claim_many` client, a lock's release after its
//! acquire), so after each dispatched request the broker keeps polling its
//! sockets, without sleeping, for [`AWAKE_FOR`]. A broker nobody asks
//! anything still sleeps: only an answer starts the polling, and it ends
//! by itself. Polling that ends with nothing answered is also capped at
//! [`IDLE_POLL_PER_SECOND`], so that requests that come just too far
//! apart to meet it (a `pb up` log forwarder's trickle, heartbeats) cannot
//! keep the broker polling most of the time.

use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::core::SharedCore;

/// How long the broker polls after its last answer before it sleeps; the
/// most CPU time one answer can cost beyond its own work.
pub const AWAKE_FOR: Duration = Duration::from_micros(200);

/// The most time, in any one second, spent in polling that ended with
/// nothing answered: 5% of a CPU. Past it, the broker sleeps between
/// requests until the second is over.
pub const IDLE_POLL_PER_SECOND: Duration = Duration::from_millis(50);

/// Runs for the broker's life on its runtime: after each answer, yields to
/// the runtime until [`AWAKE_FOR`] has passed with no answer. A yield asks
/// the runtime to poll for events without sleeping and to come back.
pub async fn keep(core: SharedCore) {
    let mut budget = IdleBudget::new(Instant::now());
    loop {
        core.answered.notified().await;
        let mut last_answer = Instant::now();
        if !budget.left(last_answer) {
            continue;
        }
        loop {
            tokio::task::yield_now().await;
            let now = Instant::now();
            // Answers meanwhile left a permit: each one moves the end.
            if core.answered.notified().now_or_never().is_some() {
                last_answer = now;
                continue;
            }
            if now >= last_answer + AWAKE_FOR {
                // Polled for nothing: that is what the budget counts.
                budget.spend(now - last_answer);
                break;
            }
            // Polling with nothing to answer yet: yield to the kernel too,
            // so that a thread woken onto this CPU (a client handed a
            // lock, the activity log's writer) runs now, not when the
            // polling ends. While answers keep coming the broker keeps
            // the CPU.
            std::thread::yield_now();
        }
    }
}

/// What is left of this second's [`IDLE_POLL_PER_SECOND`].
struct IdleBudget {
    second_began: Instant,
    spent: Duration,
}

impl IdleBudget {
    fn new(now: Instant) -> IdleBudget {
        IdleBudget {
            second_began: now,
            spent: Duration::ZERO,
        }
    }

    fn left(&mut self, now: Instant) -> bool {
        if now.duration_since(self.second_began) >= Duration::from_secs(1) {
            *self = IdleBudget::new(now);
        }
        self.spent < IDLE_POLL_PER_SECOND
    }

    fn spend(&mut self, idle: Duration) {
        self.spent += idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_polling_is_capped_per_second() {
        let t0 = Instant::now();
        let mut budget = IdleBudget::new(t0);
        let mut polled = Duration::ZERO;
        let mut now = t0;
        // A request every 0.5 ms for a second, each followed by a whole
        // AWAKE_FOR of polling for nothing, while the budget allows.
        while now < t0 + Duration::from_secs(1) {
            if budget.left(now) {
                budget.spend(AWAKE_FOR);
                polled += AWAKE_FOR;
            }
            now += Duration::from_micros(500);
        }
        let most = IDLE_POLL_PER_SECOND + AWAKE_FOR;
        assert!(
            polled <= most,
            "polled {polled:?} in a second, over {most:?}"
        );
        assert!(polled >= IDLE_POLL_PER_SECOND, "the budget is used");
        // The next second has a budget of its own.
        assert!(budget.left(t0 + Duration::from_secs(1)));
    }
}
