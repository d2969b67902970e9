//! The one entry point every transport calls: it sends each operation to
//! the core, except the inspections (`who`, `listeners`), whose walk over
//! the machine's processes runs on a blocking thread so that no other
//! request waits for it.

use pb_proto::{Op, WireError};

use crate::core::{Caller, Outcome};
use crate::inspect;
use crate::ipc::{lock, SharedCore};

pub async fn dispatch(core: &SharedCore, caller: &Caller, op: Op) -> Result<Outcome, WireError> {
    match op {
        Op::Who { port } => inspect::who(core, port).await,
        Op::Listeners => inspect::listeners(core).await,
        op => lock(core).apply(caller, op),
    }
}
