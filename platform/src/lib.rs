//! The only code in pb that talks to the kernel about processes and sockets.
//!
//! The broker and the CLI ask this crate questions ("who is calling?", "is
//! this process still the one that made the claim?", "bind me this port on
//! loopback") and never issue those syscalls themselves. Everything
//! OS-specific lives in a `sys` module per OS; today only Linux exists, so
//! macOS support means adding `sys/macos.rs`, not touching the callers.

/// Descriptor passing lives in its own crate (pb-fdpass) for the shim's sake.
pub use pb_fdpass as fdpass;
pub mod activation;
pub mod login_service;
pub mod net;
pub mod os;
pub mod process;
pub mod sockets;
pub mod startup;
pub mod supervise;

#[cfg(target_os = "linux")]
#[path = "sys/linux.rs"]
mod sys;

pub use net::{BindError, BindMode, LoopbackSockets, SocketPool};
pub use process::{ExitWatch, PeerIdentity, ProcessId, ProcessInfo};

/// Raises this process's soft limit on open files to its hard limit.
///
/// The broker holds two sockets per lease plus one per client connection,
/// which outgrows the common soft limit of 1024 long before its own lease
/// limit. Returns the soft limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(hard.max(soft))
}
