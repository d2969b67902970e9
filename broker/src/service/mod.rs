//! The one entry point every transport calls. Operations go to the core,
//! except the inspections (`who`, `listeners`), whose walk over the
//! machine's processes runs on a blocking thread, and `wait`, which probes
//! ports, and `activity`, whose query reads the log's own database; none
//! holds the core's mutex meanwhile. A request that waits
//! in a lock's queue is awaited here, with the mutex released. A stream
//! (`subscribe`, `activity` with `follow`) comes back in `Outcome::stream`
//! for the transport to send on. The webhook deliveries a request caused
//! are stored before it is answered.

pub mod inspect;
pub mod readiness;

use pb_proto::{Op, WireError};

use crate::core::activity;
use crate::core::{lock, SharedCore};
use crate::core::{Caller, Outcome};

pub async fn dispatch(core: &SharedCore, caller: &Caller, op: Op) -> Result<Outcome, WireError> {
    match op {
        Op::Who { port } => inspect::who(core, port).await,
        Op::Listeners { follow } => inspect::listeners(core, follow).await,
        Op::Activity(a) => activity::query(core, a).await,
        Op::Wait {
            ids,
            timeout_ms,
            http_path,
        } => readiness::wait(core, ids, timeout_ms, http_path).await,
        op => {
            let mut out = {
                let mut core = lock(core);
                let out = core.apply(caller, op);
                // Webhook deliveries of what this request did are stored
                // before its reply goes out (one commit, and only when a
                // webhook wants one of its events).
                core.flush_webhooks();
                out?
            };
            match out.pending.take() {
                Some(pending) => pending.wait(core).await,
                None => Ok(out),
            }
        }
    }
}
