//! The pb broker: it binds every port it hands out, keeps the bound sockets,
//! and passes listeners to clients over its Unix socket.
//!
//! `core` applies every request; `ipc` is the Unix-socket transport; `store`
//! persists leases, locks, agents and the activity log; `daemon` starts and
//! stops it all. Coordination lives in `locks`, `pubsub`, `agents`,
//! `activity`, `readiness`, joined by the event bus in `events`.
//! Webhooks: `webhooks` (the core's side), `deliver` (the worker that
//! sends) and `ssrf` (where they may send). See
//! ARCHITECTURE.md.

pub mod activity;
pub mod agents;
pub mod config;
pub mod coord;
pub mod core;
pub mod daemon;
pub mod deliver;
pub mod events;
pub mod fingerprint;
pub mod home;
pub mod http;
pub mod ids;
pub mod inspect;
pub mod ipc;
pub mod locks;
pub mod logins;
pub mod names;
pub mod pubsub;
pub mod readiness;
pub mod reaper;
pub mod relay;
pub mod rules;
pub mod service;
pub mod ssrf;
pub mod store;
pub mod stream;
pub mod webhooks;

pub use config::Config;
pub use daemon::run;
