//! The transports: they turn bytes into typed ops for `service::dispatch`
//! and its outcomes back into bytes (and descriptors). No rule lives here.

pub mod http;
pub mod ipc;
pub mod mcp;
pub mod proxy;
