//! How an error leaves the HTTP API: `{"error": message, "code": code}`
//! with the status the one list of codes (pb_proto::ErrorCode) gives it.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use pb_proto::{ErrorCode, WireError};

#[derive(Debug)]
pub struct ApiError(pub WireError);

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError(WireError::new(code, message))
    }
}

impl From<WireError> for ApiError {
    fn from(e: WireError) -> ApiError {
        ApiError(e)
    }
}

/// The JSON body of every error, for the OpenAPI document.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// For people.
    pub error: String,
    /// For programs: one of pb's error codes (docs/PROTOCOL.md).
    pub code: String,
    /// What the code is about, for some codes: a held lock's holder
    /// (`held`), the last id a dropped subscriber was sent (`lagged`).
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.0.code;
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut body = serde_json::json!({"error": self.0.message, "code": code});
        if let Some(d) = self.0.details {
            body["details"] = d;
        }
        let mut resp = (status, axum::Json(body)).into_response();
        match code {
            ErrorCode::Unauthorized => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ErrorCode::Limit => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

/// The whole response of a refused connection, written straight to the
/// socket before any HTTP parsing: the connection is closed right after.
pub fn raw_refusal(e: &WireError) -> Vec<u8> {
    let body = serde_json::json!({"error": e.message, "code": e.code}).to_string();
    let status = e.code.http_status();
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}
