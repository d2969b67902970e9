//! Error codes: the one list of everything that can go wrong, each with the
//! CLI exit code and HTTP status it maps to.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame could not be read: bad length, not JSON, not an object.
    InvalidFrame,
    /// The request's `v` is not one this broker speaks.
    UnsupportedVersion,
    /// Well-formed JSON, but not a valid request: unknown op, missing or
    /// unknown field, wrong type.
    InvalidRequest,
    InvalidId,
    InvalidPort,
    InvalidRange,
    InvalidDuration,
    InvalidMetadata,
    /// The port is on the reserved list and is never handed out.
    ReservedPort,
    /// Another process (or another lease) holds the port.
    PortTaken,
    /// The id is already claimed, on a different port than asked for.
    IdConflict,
    /// The caller may not touch this lease (another user's).
    Forbidden,
    NotFound,
    /// Every port in the range is taken.
    Exhausted,
    /// A configured limit (leases, connections) is reached.
    Limit,
    Internal,
}

impl ErrorCode {
    /// The `pb` exit code for this error; see docs/CLI.md.
    pub fn exit_code(self) -> i32 {
        use ErrorCode::*;
        match self {
            InvalidFrame | UnsupportedVersion | InvalidRequest | InvalidId | InvalidPort
            | InvalidRange | InvalidDuration | InvalidMetadata => 2,
            NotFound => 4,
            ReservedPort | PortTaken | IdConflict | Forbidden => 5,
            Exhausted | Limit => 6,
            Internal => 1,
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidFrame | UnsupportedVersion | InvalidRequest | InvalidId | InvalidPort
            | InvalidRange | InvalidDuration | InvalidMetadata => 400,
            Forbidden => 403,
            NotFound => 404,
            ReservedPort | PortTaken | IdConflict => 409,
            Limit => 429,
            Exhausted => 503,
            Internal => 500,
        }
    }
}

/// An error as it travels in a reply: a code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({code:?})")]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
        }
    }
}
