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
    /// A configured limit (leases, connections, requests per second) is
    /// reached.
    Limit,
    /// HTTP: the caller must present the bearer token (another user).
    Unauthorized,
    /// HTTP: a state-changing request whose body is not `application/json`.
    UnsupportedMediaType,
    /// HTTP: the route exists, but not with this method.
    MethodNotAllowed,
    Internal,
    /// A lock, channel or agent name breaks the naming rules.
    InvalidName,
    /// A message (or other payload, an HTTP body) is over its size limit.
    TooLarge,
    /// The lock is held by another owner; `details` says by whom, since
    /// when and until when.
    Held,
    /// A wait (for a lock, for a service) ran out of time; over HTTP also
    /// a request whose headers or body did not arrive in time.
    Timeout,
    /// A subscriber fell too far behind and was dropped; resume from the
    /// last id it received.
    Lagged,
    /// A webhook URL that cannot be used: not a URL, a scheme other than
    /// http and https, credentials in it.
    InvalidUrl,
    /// The address is one webhooks never reach (link-local, cloud
    /// metadata, private unless allowed): docs/SECURITY.md.
    BlockedAddress,
    /// A work session has ended, or is abandoned and must be taken over
    /// before it takes notes or claims.
    Closed,
    /// A file claim's path is outside its session's project, or is not a
    /// path or glob pb can judge (docs/PROTOCOL.md, "Work sessions").
    InvalidPath,
    /// A name for the proxy (an alias) that another live lease answers to.
    NameTaken,
}

impl ErrorCode {
    /// The code as it appears on the wire: `port_taken`.
    pub fn name(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The `pb` exit code for this error; see docs/CLI.md.
    pub fn exit_code(self) -> i32 {
        use ErrorCode::*;
        match self {
            InvalidFrame | UnsupportedVersion | InvalidRequest | InvalidId | InvalidPort
            | InvalidRange | InvalidDuration | InvalidMetadata | InvalidName | TooLarge
            | UnsupportedMediaType | MethodNotAllowed | InvalidUrl | InvalidPath => 2,
            NotFound => 4,
            ReservedPort | PortTaken | IdConflict | Forbidden | Held | Unauthorized
            | BlockedAddress | Closed | NameTaken => 5,
            Exhausted | Limit | Lagged => 6,
            Timeout => 7,
            Internal => 1,
        }
    }

    /// The HTTP status for this error.
    pub fn http_status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidFrame | UnsupportedVersion | InvalidRequest | InvalidId | InvalidPort
            | InvalidRange | InvalidDuration | InvalidMetadata | InvalidName | InvalidUrl
            | InvalidPath => 400,
            Unauthorized => 401,
            Forbidden | BlockedAddress => 403,
            NotFound => 404,
            MethodNotAllowed => 405,
            Timeout => 408,
            ReservedPort | PortTaken | IdConflict | Held | Closed | NameTaken => 409,
            TooLarge => 413,
            UnsupportedMediaType => 415,
            Limit | Lagged => 429,
            Exhausted => 503,
            Internal => 500,
        }
    }
}

/// An error as it travels in a reply: a code, a human message and, for
/// some codes (`held`), details as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message} ({})", code.name())]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl WireError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> WireError {
        WireError {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> WireError {
        self.details = Some(details);
        self
    }
}
