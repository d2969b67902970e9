//! The pb broker: it binds every port it hands out, keeps the bound sockets,
//! and passes listeners to clients over its Unix socket.
//!
//! Layered, each layer importing only those beneath it (a test,
//! tests/tests/house.rs, keeps it so):
//!
//! - `transport` (`ipc`, `http`): bytes in, typed ops to `service`, bytes out;
//! - `service`: the one entry point, for what waits or asks the machine
//!   (`inspect`, `readiness`), and `tasks` (`reaper`, `deliver`);
//! - `core`: applies every request; coordination (`locks`, `pubsub`,
//!   `agents`, `activity`, `webhooks`) joined by the event bus (`events`);
//! - `store`, over the foundation (`config`, `ids`, `names`, `rules`,
//!   `ssrf`, `token`, ...) and the crates pb-platform and pb-proto.
//!
//! `daemon` starts and stops it all. See ARCHITECTURE.md.

// The foundation: rules, names and parsers with no state of their own.
pub mod config;
pub mod filepaths;
pub mod fingerprint;
pub mod home;
pub mod hostnames;
pub mod ids;
pub mod localca;
pub mod log;
pub mod logins;
pub mod metrics;
pub mod names;
pub mod relay;
pub mod rules;
pub mod ssrf;
pub mod token;
// What is kept.
pub mod store;
// The one place every request is applied.
pub mod core;
// Above the core: what waits or asks the machine, and the tasks.
pub mod service;
pub mod tasks;
// On top: bytes in, ops to the service, bytes out.
pub mod daemon;
pub mod transport;

pub use config::Config;
pub use daemon::run;
