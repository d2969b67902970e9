//! pb's IPC wire format: the typed requests and replies shared by the
//! broker, the CLI and the preload shim, the frame codec, and a small
//! blocking client. docs/PROTOCOL.md is the prose version of this crate.

pub mod client;
pub mod coord;
pub mod duration;
pub mod error;
pub mod frame;
pub mod message;
pub mod names;
pub mod paths;
pub mod shim;
pub mod stack;
pub mod webhook;
pub mod work;

pub use client::Client;
pub use coord::*;
pub use error::{ErrorCode, WireError};
pub use message::*;
pub use stack::*;
pub use webhook::*;
pub use work::*;

/// The protocol version this build speaks. Every request carries it in `v`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest request payload the broker accepts, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The largest reply payload a client accepts, in bytes: a `find` over the
/// most leases the broker allows, each with its largest metadata, fits.
pub const MAX_REPLY: usize = 64 * 1024 * 1024;

/// The most file descriptors one reply carries.
pub const MAX_FDS: usize = pb_fdpass::MAX_FDS;

/// Splits range text `A-B` into its two numbers. Whether they make a valid
/// range is the broker's decision.
pub fn parse_range_text(text: &str) -> Result<(i64, i64), WireError> {
    let bad = || {
        WireError::new(
            ErrorCode::InvalidRange,
            format!("invalid range {text:?}: use START-END, such as 3100-3199"),
        )
    };
    let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
    let a = a.trim().parse::<i64>().map_err(|_| bad())?;
    let b = b.trim().parse::<i64>().map_err(|_| bad())?;
    Ok((a, b))
}
