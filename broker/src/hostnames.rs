//! The names a lease answers to through the proxy: the one derived from
//! its id (`myapp:api` is `api.myapp.localhost`) and the aliases given
//! when it was claimed. One grammar for both, for the core (which keeps
//! them unique), the proxy (which reads a request's Host) and the CLI.
//!
//! `*.localhost` is reserved for loopback (RFC 6761 §6.3): browsers and
//! curl resolve every name under it to 127.0.0.1 and ::1 without DNS.
//!
//! A service id's segments (`[A-Za-z0-9._-]`, up to 64) are made DNS
//! labels by one rule: lower case, `.` and `_` become `-`, runs of `-`
//! become one, leading and trailing `-` go, and a label is cut to 63
//! characters. A segment left empty (`___`) gives the id no derived name.
//! The rule is not one-to-one (`my_app` and `My.App` both give `my-app`):
//! the first live lease keeps a name, a later one with the same derived
//! name gets none (an alias can name it).

use pb_proto::{ErrorCode, WireError};

/// The domain every name lives under.
pub const DOMAIN: &str = "localhost";

/// Most aliases one lease may have.
pub const MAX_ALIASES: usize = 8;

/// Longest host name (RFC 1035's 253 characters of text).
const MAX_HOST: usize = 253;
const MAX_LABEL: usize = 63;

/// `id`'s derived host: `context.stack.project.localhost`.
pub fn derived(id: &str) -> Option<String> {
    let mut labels = Vec::with_capacity(4);
    for seg in id.split(':').rev() {
        labels.push(label_of(seg)?);
    }
    labels.push(DOMAIN.to_string());
    let host = labels.join(".");
    (host.len() <= MAX_HOST).then_some(host)
}

/// One id segment as a DNS label, or `None` when nothing of it is left.
fn label_of(seg: &str) -> Option<String> {
    let mut out = String::with_capacity(seg.len());
    for c in seg.chars() {
        let c = match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9') => c,
            _ => '-',
        };
        if c == '-' && (out.is_empty() || out.ends_with('-')) {
            continue;
        }
        out.push(c);
    }
    while out.ends_with('-') {
        out.pop();
    }
    out.truncate(MAX_LABEL);
    while out.ends_with('-') {
        out.pop();
    }
    (!out.is_empty()).then_some(out)
}

/// An alias as given (`docs`, `docs.myapp`, or `docs.myapp.localhost`),
/// checked and made the full host it stands for. Aliases are taken as
/// written: lower case letters, digits and `-` in dot-separated labels of
/// 1 to 63 characters, none starting or ending with `-`.
pub fn alias(text: &str) -> Result<String, WireError> {
    let bad = |why: &str| {
        let shown: String = text.chars().take(80).collect();
        WireError::new(
            ErrorCode::InvalidName,
            format!("invalid name {shown:?}: {why}"),
        )
    };
    let lower = text.trim_end_matches('.').to_ascii_lowercase();
    let host = if lower == DOMAIN || lower.ends_with(".localhost") {
        lower
    } else {
        format!("{lower}.{DOMAIN}")
    };
    if host == DOMAIN {
        return Err(bad(
            "`localhost` itself lists the services; a name is under it",
        ));
    }
    if host.len() > MAX_HOST {
        return Err(bad("a host name is at most 253 characters"));
    }
    for l in host.split('.') {
        if l.is_empty() {
            return Err(bad("empty label"));
        }
        if l.len() > MAX_LABEL {
            return Err(bad("a label is at most 63 characters"));
        }
        if !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(bad("labels use only letters, digits and '-'"));
        }
        if l.starts_with('-') || l.ends_with('-') {
            return Err(bad("a label neither starts nor ends with '-'"));
        }
    }
    Ok(host)
}

/// What a request's Host (or `:authority`) names: the host in lower case,
/// without its port or a trailing dot. `None` when it is not a host name
/// at all (empty, bad characters, an unclosed `[`).
pub fn request_host(authority: &str) -> Option<String> {
    let a = authority.trim();
    let host = if let Some(rest) = a.strip_prefix('[') {
        let end = rest.find(']')?;
        &a[..end + 2]
    } else {
        match a.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return None,
            None => a,
        }
    };
    let host = host.trim_end_matches('.');
    if host.is_empty()
        || host.len() > MAX_HOST
        || !host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        })
    {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

/// Whether `host` (from [`request_host`]) is `localhost` or under it.
pub fn is_ours(host: &str) -> bool {
    host == DOMAIN || host.ends_with(".localhost")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_names() {
        assert_eq!(derived("myapp").as_deref(), Some("myapp.localhost"));
        assert_eq!(derived("myapp:api").as_deref(), Some("api.myapp.localhost"));
        assert_eq!(
            derived("myapp:api:feature-x").as_deref(),
            Some("feature-x.api.myapp.localhost")
        );
        assert_eq!(
            derived("My_App:v1.2").as_deref(),
            Some("v1-2.my-app.localhost")
        );
        assert_eq!(derived("-x-:__a__").as_deref(), Some("a.x.localhost"));
        assert_eq!(derived("app:___"), None);
        let long = "a".repeat(64);
        assert_eq!(
            derived(&long).unwrap(),
            format!("{}.localhost", "a".repeat(63))
        );
    }

    #[test]
    fn aliases() {
        assert_eq!(alias("docs").unwrap(), "docs.localhost");
        assert_eq!(alias("Docs.MyApp").unwrap(), "docs.myapp.localhost");
        assert_eq!(
            alias("docs.myapp.localhost.").unwrap(),
            "docs.myapp.localhost"
        );
        for bad in [
            "",
            "localhost",
            "a..b",
            "-a",
            "a-",
            "a_b",
            "a b",
            "é",
            &"a".repeat(64),
        ] {
            let e = alias(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidName, "{bad:?}");
        }
    }

    #[test]
    fn request_hosts() {
        assert_eq!(
            request_host("Api.MyApp.localhost:2080").as_deref(),
            Some("api.myapp.localhost")
        );
        assert_eq!(request_host("localhost").as_deref(), Some("localhost"));
        assert_eq!(request_host("x.localhost.").as_deref(), Some("x.localhost"));
        assert_eq!(request_host("[::1]:2080").as_deref(), Some("[::1]"));
        assert_eq!(request_host(""), None);
        assert_eq!(request_host("a:b"), None);
        assert_eq!(request_host("a/b"), None);
        assert!(is_ours("api.myapp.localhost") && is_ours("localhost"));
        assert!(!is_ours("example.com") && !is_ours("notlocalhost") && !is_ours("[::1]"));
    }
}
