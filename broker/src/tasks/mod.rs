//! The broker's own tasks, beside the requests: the Reaper, which frees a
//! dead owner's port, and the webhook deliverer. Each takes the core's
//! mutex only to read a view or apply a settled result.

pub mod deliver;
pub mod reaper;
