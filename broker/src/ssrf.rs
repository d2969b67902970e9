//! Where webhooks may send: the SSRF policy, and the parsing of webhook
//! URLs that it depends on.
//!
//! The policy judges IP addresses, never host names: a name is resolved by
//! the delivery worker, every address it resolves to is judged here, and
//! the connection goes to exactly the address that passed (no second
//! resolution, so DNS rebinding between check and connect cannot happen).
//! Literal addresses in a URL are judged already at registration, in every
//! spelling the WHATWG URL parser (the `url` crate) reads as an IPv4
//! address (`2852039166`, `0251.0376.0251.0376`, `0xa9.0xfe.0xa9.0xfe`,
//! `169.254.43518`, as `inet_aton` does), and in IPv6 forms that embed an
//! IPv4 address (`::ffff:169.254.169.254`, `64:ff9b::a9fe:a9fe`), which
//! are judged as that IPv4 address. docs/SECURITY.md lists each rule and
//! the attack it stops.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use pb_proto::{ErrorCode, WireError};

/// What the policy allows beyond public addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// 10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7, fec0::/10
    /// (PB_WEBHOOK_ALLOW_PRIVATE).
    pub allow_private: bool,
    /// 127/8 and ::1 (on by default: pb is a localhost tool).
    pub allow_loopback: bool,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            allow_private: false,
            allow_loopback: true,
        }
    }
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    LinkLocal,
    Metadata,
    Unspecified,
    Multicast,
    Broadcast,
    Reserved,
    Private,
    Loopback,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::LinkLocal => "link-local (where cloud metadata services live); always refused",
            Refusal::Metadata => "a cloud metadata address; always refused",
            Refusal::Unspecified => "unspecified (0.0.0.0/8 or ::); always refused",
            Refusal::Multicast => "multicast; always refused",
            Refusal::Broadcast => "broadcast; always refused",
            Refusal::Reserved => "reserved (240.0.0.0/4); always refused",
            Refusal::Private => "private; refused unless PB_WEBHOOK_ALLOW_PRIVATE=1",
            Refusal::Loopback => "loopback, which this broker's configuration refuses",
        }
    }
}

/// The AWS IPv6 metadata endpoint.
const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);

/// The IPv4 address an IPv6 address carries, for the forms that reach an
/// IPv4 host: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`) and
/// NAT64 (`64:ff9b::a.b.c.d`).
fn embedded_v4(a: &Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        // ::/96, except :: and ::1 themselves.
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(tail),
        _ => None,
    }
}

fn judge_v4(a: Ipv4Addr, policy: Policy) -> Result<(), Refusal> {
    let o = a.octets();
    if o[0] == 169 && o[1] == 254 {
        return Err(Refusal::LinkLocal);
    }
    if o[0] == 0 {
        return Err(Refusal::Unspecified);
    }
    if a.is_broadcast() {
        return Err(Refusal::Broadcast);
    }
    if a.is_multicast() {
        return Err(Refusal::Multicast);
    }
    if o[0] >= 240 {
        return Err(Refusal::Reserved);
    }
    if a.is_loopback() {
        return if policy.allow_loopback {
            Ok(())
        } else {
            Err(Refusal::Loopback)
        };
    }
    let private = o[0] == 10
        || (o[0] == 172 && (16..32).contains(&o[1]))
        || (o[0] == 192 && o[1] == 168)
        || (o[0] == 100 && (64..128).contains(&o[1]));
    if private && !policy.allow_private {
        return Err(Refusal::Private);
    }
    Ok(())
}

/// Judges one address.
pub fn judge(ip: IpAddr, policy: Policy) -> Result<(), Refusal> {
    match ip {
        IpAddr::V4(a) => judge_v4(a, policy),
        IpAddr::V6(a) => {
            if let Some(v4) = embedded_v4(&a) {
                return judge_v4(v4, policy);
            }
            let s = a.segments();
            if a == AWS_METADATA_V6 {
                return Err(Refusal::Metadata);
            }
            if s[0] & 0xffc0 == 0xfe80 {
                return Err(Refusal::LinkLocal);
            }
            if a.is_unspecified() {
                return Err(Refusal::Unspecified);
            }
            if s[0] & 0xff00 == 0xff00 {
                return Err(Refusal::Multicast);
            }
            if a.is_loopback() {
                return if policy.allow_loopback {
                    Ok(())
                } else {
                    Err(Refusal::Loopback)
                };
            }
            let private = s[0] & 0xfe00 == 0xfc00 || s[0] & 0xffc0 == 0xfec0;
            if private && !policy.allow_private {
                return Err(Refusal::Private);
            }
            Ok(())
        }
    }
}

/// `judge` as a reply error.
pub fn check(ip: IpAddr, policy: Policy) -> Result<(), WireError> {
    judge(ip, policy).map_err(|r| {
        WireError::new(
            ErrorCode::BlockedAddress,
            format!("webhooks may not send to {ip}: {}", r.describe()),
        )
    })
}

/// The host of a webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// An address, in whatever spelling the URL used.
    Ip(IpAddr),
    /// A name, lowercased; resolved at each delivery.
    Name(String),
}

/// A parsed webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub https: bool,
    pub host: Host,
    /// The `Host` header: the host as written (lowercased), with the port
    /// when it is not the scheme's default.
    pub authority: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// The longest URL accepted.
pub const MAX_URL: usize = 2048;

fn bad_url(url: &str, why: &str) -> WireError {
    let shown: String = url.chars().take(120).collect();
    WireError::new(
        ErrorCode::InvalidUrl,
        format!("invalid webhook URL {shown:?}: {why}"),
    )
}

/// Parses a webhook URL: `http(s)://host[:port][/path][?query]`, with
/// the `url` crate (WHATWG's parser, as browsers read URLs): an IPv4 host
/// in any spelling it accepts (`2852039166`, `0251.0376.0251.0376`,
/// `0xa9.0xfe.0xa9.0xfe`, `169.254.43518`) comes out as the address, so
/// the policy judges what a connection would reach. pb adds its own
/// refusals: no credentials, no port 0, no percent-encoding or
/// non-ASCII in the URL (so no spelling of a host slips past the policy),
/// and host names of `[a-z0-9.-_]` only. The fragment is never sent.
pub fn parse_url(text: &str) -> Result<Target, WireError> {
    if text.len() > MAX_URL {
        return Err(bad_url(text, "longer than 2048 bytes"));
    }
    if text.bytes().any(|b| b <= b' ' || b >= 0x7f) {
        return Err(bad_url(
            text,
            "contains spaces, control or non-ASCII characters",
        ));
    }
    let authority_text = text
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""))
        .ok_or_else(|| bad_url(text, "not an absolute URL (http://host/path)"))?;
    if authority_text.contains('%') {
        return Err(bad_url(
            text,
            "percent-encoding in the host is not accepted",
        ));
    }
    let u = url::Url::parse(text).map_err(|e| bad_url(text, &e.to_string()))?;
    let https = match u.scheme() {
        "http" => false,
        "https" => true,
        _ => return Err(bad_url(text, "the scheme must be http or https")),
    };
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad_url(text, "credentials in the URL are not accepted"));
    }
    let port = u
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    if port == 0 {
        return Err(bad_url(text, "the port must be a number from 1 to 65535"));
    }
    let (host, host_text) = match u.host() {
        Some(url::Host::Ipv4(a)) => (Host::Ip(IpAddr::V4(a)), a.to_string()),
        Some(url::Host::Ipv6(a)) => (Host::Ip(IpAddr::V6(a)), format!("[{a}]")),
        Some(url::Host::Domain(d)) => {
            if d.len() > 253
                || !d
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
            {
                return Err(bad_url(
                    text,
                    "the host must be a name of letters, digits, '.', '-' and '_', or an address",
                ));
            }
            (Host::Name(d.to_string()), d.to_string())
        }
        None => return Err(bad_url(text, "no host")),
    };
    let authority = match u.port() {
        None => host_text,
        Some(p) => format!("{host_text}:{p}"),
    };
    let path = match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    };
    Ok(Target {
        https,
        host,
        authority,
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn always_refused() {
        let open = Policy {
            allow_private: true,
            allow_loopback: true,
        };
        for (a, why) in [
            ("169.254.169.254", Refusal::LinkLocal),
            ("169.254.0.1", Refusal::LinkLocal),
            ("fe80::1", Refusal::LinkLocal),
            ("febf::1", Refusal::LinkLocal),
            ("fd00:ec2::254", Refusal::Metadata),
            ("::ffff:169.254.169.254", Refusal::LinkLocal),
            ("::ffff:a9fe:a9fe", Refusal::LinkLocal),
            ("64:ff9b::a9fe:a9fe", Refusal::LinkLocal),
            ("::169.254.169.254", Refusal::LinkLocal),
            ("0.0.0.0", Refusal::Unspecified),
            ("0.1.2.3", Refusal::Unspecified),
            ("::", Refusal::Unspecified),
            ("::ffff:0.0.0.0", Refusal::Unspecified),
            ("224.0.0.1", Refusal::Multicast),
            ("ff02::1", Refusal::Multicast),
            ("255.255.255.255", Refusal::Broadcast),
            ("240.0.0.1", Refusal::Reserved),
        ] {
            assert_eq!(judge(ip(a), open), Err(why), "{a}");
            assert_eq!(judge(ip(a), Policy::default()), Err(why), "{a}");
        }
    }

    #[test]
    fn private_only_when_allowed() {
        for a in [
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "fc00::1",
            "fd12:3456::1",
            "::ffff:10.1.2.3",
            "::ffff:192.168.0.1",
        ] {
            assert_eq!(
                judge(ip(a), Policy::default()),
                Err(Refusal::Private),
                "{a}"
            );
            let open = Policy {
                allow_private: true,
                ..Policy::default()
            };
            assert_eq!(judge(ip(a), open), Ok(()), "{a}");
        }
        for a in ["172.15.0.1", "172.32.0.1", "100.63.0.1", "100.128.0.1"] {
            assert_eq!(judge(ip(a), Policy::default()), Ok(()), "{a}");
        }
    }

    #[test]
    fn loopback_and_public() {
        for a in ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(judge(ip(a), Policy::default()), Ok(()), "{a}");
            let closed = Policy {
                allow_loopback: false,
                ..Policy::default()
            };
            assert_eq!(judge(ip(a), closed), Err(Refusal::Loopback), "{a}");
        }
        for a in ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"] {
            assert_eq!(judge(ip(a), Policy::default()), Ok(()), "{a}");
        }
    }

    #[test]
    fn every_ipv4_spelling_is_the_address_it_reaches() {
        let meta = ip("169.254.169.254");
        for s in [
            "169.254.169.254",
            "2852039166",
            "0251.0376.0251.0376",
            "0xa9.0xfe.0xa9.0xfe",
            "0xA9FEA9FE",
            "025177524776",
            "169.254.43518",
            "169.16689662",
            "0251.0xfe.169.0376",
            "169.254.169.254.",
        ] {
            let t = parse_url(&format!("http://{s}/")).unwrap();
            assert_eq!(t.host, Host::Ip(meta), "{s}");
        }
        let t = parse_url("http://127.1:8080/").unwrap();
        assert_eq!(t.host, Host::Ip(ip("127.0.0.1")));
        for s in [
            "256.1.1.1",
            "1.2.3.4.5",
            "4294967296",
            "1.2.65536",
            "08.1.1.1",
            "1..2",
        ] {
            assert_eq!(
                parse_url(&format!("http://{s}/")).unwrap_err().code,
                ErrorCode::InvalidUrl,
                "{s}"
            );
        }
    }

    #[test]
    fn urls() {
        let t = parse_url("http://127.0.0.1:8080/hook?x=1#frag").unwrap();
        assert_eq!(t.host, Host::Ip(ip("127.0.0.1")));
        assert_eq!((t.port, t.path.as_str()), (8080, "/hook?x=1"));
        assert_eq!(t.authority, "127.0.0.1:8080");
        let t = parse_url("HTTPS://Example.COM").unwrap();
        assert!(t.https);
        assert_eq!(t.host, Host::Name("example.com".into()));
        assert_eq!(
            (t.port, t.path.as_str(), t.authority.as_str()),
            (443, "/", "example.com")
        );
        let t = parse_url("http://[::ffff:169.254.169.254]:81/x").unwrap();
        assert_eq!(t.host, Host::Ip(ip("::ffff:169.254.169.254")));
        let t = parse_url("http://2852039166/").unwrap();
        assert_eq!(t.host, Host::Ip(ip("169.254.169.254")));
        assert_eq!(t.authority, "169.254.169.254");
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "gopher://127.0.0.1:70/",
            "example.com/hook",
            "http://",
            "http://user:pw@example.com/",
            "http://exa mple.com/",
            "http://example.com:0/",
            "http://example.com:99999/",
            "http://example.com:12ab/",
            "http://[fe80::1%25eth0]/",
            "http://%31%32%37.0.0.1/",
            "http://1.2.3.256/",
            "http://[::1/",
        ] {
            assert_eq!(
                parse_url(bad).unwrap_err().code,
                ErrorCode::InvalidUrl,
                "{bad}"
            );
        }
    }
}
