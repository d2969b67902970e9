//! Staying awake a moment after each answer.
//!
//! Where idle CPUs sleep deeply (a virtual machine's above all), waking a
//! sleeping process costs more than the request it carries: on the 2-core
//! KVM guest of BENCHMARKS.md a Unix round trip between two processes on
//! different CPUs is 60 µs when each sleeps between messages and 3 µs
//! when both are awake. A client's next request usually follows its last
//! answer within microseconds (a claim's release, the next `pb` command of
//! a script, the next call of an agent), so after each answer the broker
//! keeps polling its sockets, without sleeping, for [`AWAKE_FOR`]. A broker
//! nobody asks anything still sleeps: only an answer starts the polling,
//! and it ends by itself.

use std::time::{Duration, Instant};

use futures_util::FutureExt;

use crate::core::SharedCore;

/// How long the broker polls after its last answer before it sleeps; the
/// most CPU time one answer can cost beyond its own work.
pub const AWAKE_FOR: Duration = Duration::from_micros(200);

/// Runs for the broker's life on its runtime: after each answer, yields to
/// the runtime until [`AWAKE_FOR`] has passed with no answer. A yield asks the runtime to poll for events without sleeping
/// and to come back.
pub async fn keep(core: SharedCore) {
    loop {
        core.answered.notified().await;
        let mut until = Instant::now() + AWAKE_FOR;
        loop {
            tokio::task::yield_now().await;
            // Answers meanwhile left a permit: each one moves the end.
            if core.answered.notified().now_or_never().is_some() {
                until = Instant::now() + AWAKE_FOR;
                continue;
            }
            if Instant::now() >= until {
                break;
            }
            // Polling with nothing to answer: yield to the kernel too, so
            // that a thread woken onto this CPU (a client handed a lock,
            // the activity log's writer) runs now, not when the polling
            // ends. While answers keep coming the broker keeps the CPU.
            std::thread::yield_now();
        }
    }
}
