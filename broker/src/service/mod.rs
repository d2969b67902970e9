//! The one entry point every transport calls. Operations go to the core,
//! except the inspections (`who`, `listeners`), whose walk over the
//! machine's processes runs on a blocking thread, and `wait`, which probes
//! ports, and `activity`, whose query reads the log's own database; none
//! holds the core's mutex meanwhile. A request that waits
//! in a lock's queue is awaited here, with the mutex released. A stream
//! (`subscribe`, `activity` with `follow`) comes back in `Outcome::stream`
//! for the transport to send on. The webhook deliveries a request caused
//! are stored before it is answered. `metrics` reads the core's counts
//! under the mutex and the process's memory after it.

pub mod awake;
pub mod inspect;
pub mod readiness;

use pb_proto::{MetricsReply, Op, WireError};

use crate::core::activity;
use crate::core::facts::{unanswered, Facts, MAX_ROUNDS};
use crate::core::{lock, SharedCore};
use crate::core::{Caller, Outcome};

pub async fn dispatch(core: &SharedCore, caller: &Caller, op: Op) -> Result<Outcome, WireError> {
    let out = answer(core, caller, op).await;
    core.answered.notify_one();
    out
}

async fn answer(core: &SharedCore, caller: &Caller, op: Op) -> Result<Outcome, WireError> {
    match op {
        Op::Who { port } => inspect::who(core, port).await,
        Op::Listeners { follow } => inspect::listeners(core, follow).await,
        Op::Activity(a) => activity::query(core, a).await,
        Op::Wait {
            ids,
            timeout_ms,
            http_path,
        } => readiness::wait(core, ids, timeout_ms, http_path).await,
        Op::Metrics => Ok(metrics(core)),
        op => {
            let mut out = apply(core, caller, op).await?;
            match out.pending.take() {
                Some(pending) => pending.wait(core).await,
                None => Ok(out),
            }
        }
    }
}

/// A scrape: the core's counts under its mutex, the process's RSS from the
/// kernel after it is let go.
fn metrics(core: &SharedCore) -> Outcome {
    let (metrics, gauges, uptime) = {
        let core = lock(core);
        (core.metrics(), core.gauges(), core.uptime())
    };
    let rss = pb_platform::process::own_resident_bytes();
    Outcome::of(MetricsReply {
        text: metrics.encode(&gauges, rss, uptime),
    })
}

/// Applies `op` under the core's mutex; what the core finds it must know
/// from the machine first is asked with the mutex released, and the op
/// applied again (`core/facts.rs`).
async fn apply(core: &SharedCore, caller: &Caller, op: Op) -> Result<Outcome, WireError> {
    let mut facts = Facts::default();
    let mut op = Some(op);
    for round in 1..=MAX_ROUNDS {
        let this = op.take().expect("kept for each round");
        // A copy for the next round, in case this one asks.
        op = (round < MAX_ROUNDS).then(|| this.clone());
        let out = {
            let mut core = lock(core);
            core.facts = std::mem::take(&mut facts);
            let out = core.apply(caller, this);
            facts = std::mem::take(&mut core.facts);
            // Webhook deliveries of what this request did are stored
            // before its reply goes out (one commit, and only when a
            // webhook wants one of its events).
            core.flush_webhooks();
            out
        };
        if out.is_ok() || !facts.has_questions() {
            return out;
        }
        facts = tokio::task::spawn_blocking(move || {
            facts.answer_questions();
            facts
        })
        .await
        .map_err(|_| unanswered())?;
    }
    Err(unanswered())
}

#[cfg(test)]
mod tests {
    use pb_proto::{ClaimArgs, ClaimReply, ErrorCode, FindReply, Op};

    use super::dispatch;
    use crate::core::tests::{core, me, on_runtime, reply, spawned};
    use crate::core::{lock, Shared, SharedCore};
    #[test]
    fn a_shared_core_asks_nothing_itself_and_dispatch_asks_for_it() {
        let core: SharedCore = Shared::new(core());
        let mut child = spawned(std::process::Command::new("sleep").arg("30"));
        // `spawned` returns once the child sleeps in `sleep 30`: its command
        // line is the one the claim reads.
        let pid = child.id();
        let owned = |id: &str| {
            Op::Claim(ClaimArgs {
                id: id.into(),
                owner: pb_proto::Owner::Pid(pid),
                ..Default::default()
            })
        };
        on_runtime(async {
            // Under the mutex the core only says what it lacks, and changes
            // nothing.
            let err = lock(&core).apply(&me(), owned("app:raw")).unwrap_err();
            assert_eq!(err.code, ErrorCode::Internal, "{}", err.message);
            assert!(lock(&core).facts.has_questions());
            let none: FindReply = reply(lock(&core).apply(&me(), Op::Find { pattern: None }));
            assert!(none.services.is_empty(), "{none:?}");
            // Through the service it is asked first, then applied.
            let got: ClaimReply = reply(dispatch(&core, &me(), owned("app:api")).await);
            assert_eq!(got.lease.pid, Some(pid));
            let found: FindReply = reply(lock(&core).apply(&me(), Op::Find { pattern: None }));
            assert_eq!(found.services.len(), 1);
            assert!(
                found.services[0]
                    .command
                    .as_deref()
                    .is_some_and(|c| c.starts_with("sleep 30")),
                "{found:?}"
            );
            // A pid with no process is refused as before, after the asking.
            let gone = Op::Claim(ClaimArgs {
                id: "app:gone".into(),
                owner: pb_proto::Owner::Pid(u32::MAX - 1),
                ..Default::default()
            });
            let err = dispatch(&core, &me(), gone).await.unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{}", err.message);
        });
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
