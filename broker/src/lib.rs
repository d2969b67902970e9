//! The pb broker: it binds every port it hands out, keeps the bound sockets,
//! and passes listeners to clients over its Unix socket.
//!
//! `core` applies every request; `ipc` is the Unix-socket transport; `store`
//! persists leases; `daemon` starts and stops it all. See ARCHITECTURE.md.

pub mod config;
pub mod core;
pub mod daemon;
pub mod http;
pub mod ids;
pub mod inspect;
pub mod ipc;
pub mod logins;
pub mod reaper;
pub mod rules;
pub mod service;
pub mod store;

pub use config::Config;
pub use daemon::run;
