//! What every HTTP request passes before any route runs, in this order:
//! the Host allow-list (DNS rebinding), the Origin check (cross-site
//! requests from web pages), the per-user rate limit, the caller's identity
//! (another user needs the bearer token), the content type of
//! state-changing requests (form and text/plain posts), and the body size
//! and time limits. A request that passes carries the [`Caller`] the routes
//! hand to the core (and the connection, for routes that describe it).
//! docs/SECURITY.md explains each defence.

use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use pb_proto::ErrorCode;

use super::error::ApiError;
use super::{Conn, HttpState};
use crate::config::{HTTP_MAX_BODY, HTTP_READ_TIMEOUT};
use crate::core::Caller;
use crate::token::Token;

/// Admits a request, or says why not.
pub async fn admit(
    state: &HttpState,
    conn: &std::sync::Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Request<Body>, ApiError> {
    check_single(req.headers())?;
    // Over the Unix socket no browser can be the client: there is no Host
    // or Origin to hold to a port.
    if let Some(port) = conn.host_port() {
        check_host(req.headers(), req.uri(), port)?;
        check_origin(req.headers(), port)?;
    }
    // Before identification, so that refused requests count too (token or
    // login-code guessing is held to the same rate).
    state.rate.take(conn.peer_uid, Instant::now())?;
    // The login route's credential is its one-time code: it is reachable
    // without the token, and can do nothing but exchange that code. The
    // dashboard's pages and files hold no data: anyone may load them.
    let caller = if public(req.method(), req.uri().path()) {
        Caller {
            uid: conn.peer_uid,
            peer_uid: conn.peer_uid,
            process: None,
            command: None,
            session: None,
            exit_watch: None,
        }
    } else {
        identify(state, conn, req.headers())?
    };
    let changes = changes_state(req.method());
    if changes {
        check_content_type(req.headers())?;
    }
    let (mut parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body).await?;
    // The caller's pid (for what records who did what) is looked up only
    // for admitted requests that change state, and only for the broker's
    // own user (and root): a token holder's processes are another user's.
    let mut caller = caller;
    if changes && caller.uid == conn.peer_uid {
        (caller.process, caller.command) = conn.process(state).await;
    }
    parts.extensions.insert(caller);
    parts.extensions.insert(conn.clone());
    Ok(Request::from_parts(parts, Body::from(body)))
}

/// Headers that decide who a request is for, from whom and what it carries:
/// sent twice, the checks and the routes could read different copies (the
/// first `Host` passes the check, another reaches a proxy), so RFC 9110
/// and 9112 make such a request invalid.
const SINGLE: [header::HeaderName; 5] = [
    header::HOST,
    header::ORIGIN,
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::CONTENT_LENGTH,
];

/// Refuses a request that sends any of [`SINGLE`] more than once.
pub fn check_single(headers: &HeaderMap) -> Result<(), ApiError> {
    for name in &SINGLE {
        if headers.get_all(name).iter().nth(1).is_some() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the {name} header is sent more than once"),
            ));
        }
    }
    Ok(())
}

/// The token of an `Authorization: Bearer TOKEN` header; the scheme is
/// case-insensitive (RFC 9110 §11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.trim_start().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

/// Requests that need no identification (see [`admit`]).
fn public(method: &Method, path: &str) -> bool {
    method == Method::GET
        && (path == LOGIN_PATH || path == "/" || path.starts_with(super::dashboard::FILES_PREFIX))
}

fn changes_state(m: &Method) -> bool {
    !matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The names this broker answers to on `port`.
fn allowed_hosts(port: u16) -> [String; 3] {
    [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
    ]
}

/// A DNS-rebinding page reaches 127.0.0.1 under its own name, and its
/// requests carry that name in Host: only our own names pass.
pub fn check_host(headers: &HeaderMap, uri: &axum::http::Uri, port: u16) -> Result<(), ApiError> {
    let forbidden = |what: &str| {
        ApiError::new(
            ErrorCode::Forbidden,
            format!("Host {what} is not this broker (use localhost:{port}, 127.0.0.1:{port} or [::1]:{port})"),
        )
    };
    let allowed = allowed_hosts(port);
    let host = match headers.get(header::HOST) {
        Some(h) => h.to_str().map_err(|_| forbidden("(not text)"))?,
        None => return Err(forbidden("(missing)")),
    };
    if !allowed.iter().any(|a| a.eq_ignore_ascii_case(host)) {
        return Err(forbidden(&format!("{host:?}")));
    }
    // An absolute-form request line names a host too; it must agree.
    if let Some(authority) = uri.authority() {
        if !allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(authority.as_str()))
        {
            return Err(forbidden(&format!("{:?}", authority.as_str())));
        }
    }
    Ok(())
}

/// Browsers send Origin with cross-site requests (and with every POST);
/// only the broker's own origin may act. No Origin (curl, SDKs) is fine:
/// such clients are not a web page acting for someone else.
pub fn check_origin(headers: &HeaderMap, port: u16) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("(not text)");
    let ok = allowed_hosts(port)
        .iter()
        .any(|h| origin.eq_ignore_ascii_case(&format!("http://{h}")));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("Origin {origin:?} may not use this broker"),
        ))
    }
}

/// The caller as the kernel named it. The broker's own user and root are
/// served as themselves; another user must present the bearer token and
/// then acts for the broker's user (the token is that user's to give), with
/// no process of theirs able to own a lease.
fn identify(state: &HttpState, conn: &Conn, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let foreign = conn.peer_uid != state.broker_uid && conn.peer_uid != 0;
    // The session lookup takes the core's lock: only when it can matter.
    let session = foreign && has_session(state, conn, headers);
    let uid = authorize(
        conn.peer_uid,
        state.broker_uid,
        &state.token,
        presented,
        session,
    )?;
    Ok(Caller {
        uid,
        peer_uid: conn.peer_uid,
        process: None,
        command: None,
        session: None,
        exit_watch: None,
    })
}

/// The path where a browser exchanges a one-time login code.
pub const LOGIN_PATH: &str = "/login";

/// The cookie that carries a dashboard session for the broker on `port`.
/// Browsers keep localhost cookies per host, not per port: each broker
/// (each user's, each test's) names its own.
pub fn session_cookie_name(port: u16) -> String {
    format!("pb_session_{port}")
}

/// The session secret in a request's cookies for the broker on `port`.
pub fn session_cookie(headers: &HeaderMap, port: u16) -> Option<&str> {
    let name = session_cookie_name(port);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

/// Whether the request carries a live session of its connection's uid.
pub fn has_session(state: &HttpState, conn: &Conn, headers: &HeaderMap) -> bool {
    conn.host_port()
        .and_then(|port| session_cookie(headers, port))
        .is_some_and(|s| crate::core::lock(&state.core).session_valid(s, conn.peer_uid))
}

/// The uid a request acts as, given the uid the kernel says made its
/// connection, the Authorization header it sent, if any, and whether it
/// carries a live dashboard session.
pub fn authorize(
    peer_uid: u32,
    broker_uid: u32,
    token: &Token,
    authorization: Option<&str>,
    session: bool,
) -> Result<u32, ApiError> {
    if peer_uid == broker_uid || peer_uid == 0 {
        return Ok(peer_uid);
    }
    match authorization.and_then(bearer) {
        Some(t) if token.matches(t) => Ok(broker_uid),
        None if session => Ok(broker_uid),
        Some(_) => Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the bearer token is wrong",
        )),
        None => Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!(
                "uid {peer_uid} is not this broker's user: send Authorization: Bearer <token> (`pb token` prints it)"
            ),
        )),
    }
}

/// A page can post text/plain or a form anywhere without asking; it cannot
/// post application/json to another origin without a preflight, which this
/// broker never grants. A request without a body needs no type.
pub fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    match headers.get(header::CONTENT_TYPE) {
        None if !has_body => Ok(()),
        None => Err(ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a request with a body must say Content-Type: application/json",
        )),
        Some(v) => {
            let v = v.to_str().unwrap_or("");
            let essence = v.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(ApiError::new(
                    ErrorCode::UnsupportedMediaType,
                    format!("Content-Type {v:?} is not application/json"),
                ))
            }
        }
    }
}

/// The whole body, at most [`HTTP_MAX_BODY`] bytes, within
/// [`HTTP_READ_TIMEOUT`].
async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<axum::body::Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::TooLarge,
            format!("the body is over {HTTP_MAX_BODY} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > HTTP_MAX_BODY as u64) {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, HTTP_MAX_BODY);
    match tokio::time::timeout(HTTP_READ_TIMEOUT, limited.collect()).await {
        Err(_) => Err(ApiError::new(
            ErrorCode::Timeout,
            format!("the body did not arrive within {HTTP_READ_TIMEOUT:?}"),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("cannot read the body: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn hosts() {
        let uri: axum::http::Uri = "/health".parse().unwrap();
        for ok in [
            "localhost:9876",
            "LOCALHOST:9876",
            "127.0.0.1:9876",
            "[::1]:9876",
        ] {
            check_host(&headers(&[(header::HOST, ok)]), &uri, 9876).unwrap();
        }
        for bad in [
            "evil.example",
            "evil.example:9876",
            "localhost",
            "localhost:9877",
            "127.0.0.2:9876",
        ] {
            let e = check_host(&headers(&[(header::HOST, bad)]), &uri, 9876).unwrap_err();
            assert_eq!(e.0.code, ErrorCode::Forbidden, "{bad}");
        }
        assert!(check_host(&HeaderMap::new(), &uri, 9876).is_err());
        let absolute: axum::http::Uri = "http://evil.example/health".parse().unwrap();
        assert!(check_host(
            &headers(&[(header::HOST, "localhost:9876")]),
            &absolute,
            9876
        )
        .is_err());
    }

    #[test]
    fn each_deciding_header_is_sent_once() {
        for name in SINGLE {
            let mut h = headers(&[(header::HOST, "localhost:9876")]);
            if name != header::HOST {
                h.append(name.clone(), "a".parse().unwrap());
            }
            check_single(&h).unwrap();
            h.append(name.clone(), "b".parse().unwrap());
            let e = check_single(&h).unwrap_err();
            assert!(e.0.message.contains("more than once"), "{name}");
        }
    }

    #[test]
    fn origins() {
        check_origin(&HeaderMap::new(), 9876).unwrap();
        check_origin(&headers(&[(header::ORIGIN, "http://localhost:9876")]), 9876).unwrap();
        for bad in [
            "https://evil.example",
            "null",
            "http://localhost:3000",
            "https://localhost:9876",
        ] {
            assert!(
                check_origin(&headers(&[(header::ORIGIN, bad)]), 9876).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn other_users_need_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let token = Token::load_or_create(&dir.path().join("t")).unwrap();
        let secret = std::fs::read_to_string(dir.path().join("t")).unwrap();
        let bearer = format!("Bearer {secret}");
        // The broker's own user and root: no token needed.
        assert_eq!(authorize(1000, 1000, &token, None, false).unwrap(), 1000);
        assert_eq!(authorize(0, 1000, &token, None, false).unwrap(), 0);
        // Another user: refused without it or with a wrong one...
        for auth in [None, Some("Bearer nope"), Some(secret.as_str())] {
            let e = authorize(1001, 1000, &token, auth, false).unwrap_err();
            assert_eq!(e.0.code, ErrorCode::Unauthorized, "{auth:?}");
        }
        // ...and with it, or with a dashboard session, acts as the
        // broker's user; a wrong token is not excused by a session.
        assert_eq!(
            authorize(1001, 1000, &token, Some(&bearer), false).unwrap(),
            1000
        );
        assert_eq!(authorize(1001, 0, &token, Some(&bearer), false).unwrap(), 0);
        assert_eq!(authorize(1001, 1000, &token, None, true).unwrap(), 1000);
        assert!(authorize(1001, 1000, &token, Some("Bearer nope"), true).is_err());
        // The scheme is case-insensitive.
        for scheme in ["bearer", "BEARER", "BeArEr"] {
            let auth = format!("{scheme} {secret}");
            assert_eq!(
                authorize(1001, 1000, &token, Some(&auth), false).unwrap(),
                1000
            );
        }
        assert!(authorize(1001, 1000, &token, Some(&format!("Basic {secret}")), false).is_err());
    }

    #[test]
    fn session_cookies() {
        let h = headers(&[(header::COOKIE, "a=1; pb_session_9876=abc ; b=2")]);
        assert_eq!(session_cookie(&h, 9876), Some("abc"));
        assert_eq!(session_cookie(&h, 9877), None, "another broker's");
        assert_eq!(
            session_cookie(&headers(&[(header::COOKIE, "xpb_session_9876=abc")]), 9876),
            None
        );
        assert_eq!(session_cookie(&HeaderMap::new(), 9876), None);
    }

    #[test]
    fn content_types() {
        check_content_type(&HeaderMap::new()).unwrap();
        check_content_type(&headers(&[(header::CONTENT_LENGTH, "0")])).unwrap();
        check_content_type(&headers(&[
            (header::CONTENT_TYPE, "application/json; charset=utf-8"),
            (header::CONTENT_LENGTH, "2"),
        ]))
        .unwrap();
        for bad in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            let e = check_content_type(&headers(&[
                (header::CONTENT_TYPE, bad),
                (header::CONTENT_LENGTH, "2"),
            ]))
            .unwrap_err();
            assert_eq!(e.0.code, ErrorCode::UnsupportedMediaType);
        }
        let e = check_content_type(&headers(&[(header::CONTENT_LENGTH, "2")])).unwrap_err();
        assert_eq!(e.0.code, ErrorCode::UnsupportedMediaType);
    }
}
