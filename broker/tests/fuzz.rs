//! The fuzz harness (issue 14): every parser and validator that reads what
//! a client sends, fed generated input, must answer (an error is fine)
//! without panicking: the frame header, the request decoder and every
//! op's arguments applied to a real core, ids and patterns, durations, the
//! webhook URL and address parsers, and the HTTP admission checks.
//!
//! CI runs a bounded number of cases per target (PB_FUZZ_CASES, default
//! 1 000). The hour-long run (docs/SECURITY.md) is
//! `PB_FUZZ_CASES=2000000 cargo test --release -p pb-broker --test fuzz`.
//! A stable toolchain is all it needs; proptest shrinks any failure to a
//! small input and prints it.

use std::sync::{Mutex, OnceLock};

use axum::http::{header, HeaderMap, HeaderValue, Uri};
use pb_broker::core::{Caller, Core};
use pb_broker::store::Store;
use pb_broker::transport::http::guard;
use pb_broker::{ids, ssrf, Config};
use pb_proto::duration::{self, Bare};
use pb_proto::{frame, Request};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn cases() -> u32 {
    std::env::var("PB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One core for every case, in a private home with a range of its own.
fn core() -> &'static Mutex<Core> {
    static CORE: OnceLock<Mutex<Core>> = OnceLock::new();
    CORE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        // This test binary is its own process: the environment is its own.
        std::env::set_var("PB_HOME", &dir);
        std::env::set_var("PB_RANGE", "24000-24199");
        std::env::set_var("PB_HTTP_ADDR", "off");
        let cfg = Config::from_env().unwrap();
        let db = cfg.paths.database();
        Mutex::new(Core::open(cfg, Store::open(&db).unwrap()).unwrap())
    })
}

fn caller() -> Caller {
    let me = pb_platform::os::effective_uid();
    Caller {
        uid: me,
        peer_uid: me,
        process: None,
        session: None,
        command: None,
        exit_watch: None,
    }
}

const OPS: &[&str] = &[
    "status",
    "claim",
    "release",
    "find",
    "get",
    "heartbeat",
    "who",
    "listeners",
    "login_code",
    "login",
    "lock_acquire",
    "lock_release",
    "lock_extend",
    "locks",
    "lock_info",
    "publish",
    "history",
    "channels",
    "clear_channel",
    "agent_register",
    "agent_heartbeat",
    "agent_unregister",
    "agents",
    "agent_info",
    "activity",
    "webhook_add",
    "webhooks",
    "webhook_get",
    "webhook_update",
    "webhook_delete",
    "webhook_test",
    "webhook_deliveries",
    "webhook_events",
    "bogus",
];

/// Field names the ops take (and some they do not).
const FIELDS: &[&str] = &[
    "id",
    "port",
    "range",
    "expires_ms",
    "fds",
    "session",
    "fallback",
    "owner",
    "metadata",
    "family",
    "agent",
    "claimant",
    "target",
    "more",
    "pattern",
    "ttl_ms",
    "name",
    "wait_ms",
    "force",
    "channel",
    "data",
    "patterns",
    "since_id",
    "limit",
    "max_services",
    "max_locks",
    "pid",
    "parent",
    "kind",
    "url",
    "events",
    "secret",
    "filter",
    "active",
    "code",
    "action",
    "since_ms",
    "follow",
    "v",
    "tag",
    "extra",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        (0u32..70_000).prop_map(Value::from),
        "[a-z0-9:*._ -]{0,20}".prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("caller"),
            Just("none"),
            Just("v4"),
            Just("v6"),
            Just("http://127.0.0.1:1/x")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::vec(("[a-z]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn request() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(OPS),
        prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..6),
    )
        .prop_map(|(op, fields)| {
            let mut obj = Map::new();
            obj.insert("v".into(), json!(1));
            obj.insert("op".into(), json!(op));
            for (k, v) in fields {
                obj.insert(k.to_string(), v);
            }
            Value::Object(obj)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_headers_are_judged_without_panic(h in any::<[u8; 4]>(), limit in 0usize..1 << 20) {
        if let Ok(n) = frame::payload_len(h, limit) {
            prop_assert!(n <= limit);
        }
    }

    #[test]
    fn any_bytes_decode_to_a_request_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Request::from_json(&bytes);
    }

    #[test]
    fn every_op_with_any_arguments_is_applied_or_refused(req in request()) {
        let bytes = serde_json::to_vec(&req).unwrap();
        if let Ok(r) = Request::from_json(&bytes) {
            let mut core = core().lock().unwrap();
            // Answered, or refused with a code: never a panic.
            let _ = core.apply(&caller(), r.op);
        }
    }

    #[test]
    fn ids_and_patterns_are_judged_and_literal_patterns_match_exactly(
        text in "[a-zA-Z0-9:*._é -]{0,80}",
        other in "[a-z0-9:._-]{0,30}",
    ) {
        let id_ok = ids::check_id(&text).is_ok();
        if let Ok(p) = ids::Pattern::parse(&text) {
            if p.is_literal() && id_ok {
                prop_assert!(p.matches(&text));
                prop_assert_eq!(p.matches(&other), other == text);
            }
            let _ = p.matches(&other);
        }
    }

    #[test]
    fn durations_parse_or_refuse_and_sums_add_up(
        text in ".{0,40}",
        parts in prop::collection::vec((0u64..10_000, prop::sample::select(&["ms", "s", "m", "h", "d", "w"][..])), 1..4),
    ) {
        let _ = duration::parse_bare(&text, Bare::Millis);
        let _ = duration::parse(&text);
        let spelled: String = parts.iter().map(|(n, u)| format!("{n}{u}")).collect();
        let ms: u64 = parts.iter().map(|(n, u)| n * match *u {
            "ms" => 1, "s" => 1_000, "m" => 60_000, "h" => 3_600_000, "d" => 86_400_000, _ => 604_800_000,
        }).sum();
        if spelled.len() <= 32 {
            prop_assert_eq!(duration::parse(&spelled).unwrap().as_millis() as u64, ms);
        }
    }

    #[test]
    fn webhook_urls_and_addresses_are_judged_without_panic(
        host in "[0-9a-fx.:\\[\\]%a-z-]{0,40}",
        rest in "[/?#a-z0-9%@:.-]{0,20}",
        any_text in ".{0,60}",
    ) {
        for scheme in ["http://", "https://", "ftp://", ""] {
            let _ = ssrf::parse_url(&format!("{scheme}{host}{rest}"));
        }
        let _ = ssrf::parse_url(&any_text);
    }

    #[test]
    fn http_admission_checks_judge_any_header_values(
        host in "[ -~]{0,40}",
        origin in "[ -~]{0,40}",
        ctype in "[ -~]{0,40}",
        len in "[ -~]{0,12}",
        twice in any::<bool>(),
        port in 1u16..,
    ) {
        let mut h = HeaderMap::new();
        for (name, v) in [
            (header::HOST, &host),
            (header::ORIGIN, &origin),
            (header::CONTENT_TYPE, &ctype),
            (header::CONTENT_LENGTH, &len),
        ] {
            if let Ok(value) = HeaderValue::from_str(v) {
                h.append(name.clone(), value.clone());
                if twice {
                    h.append(name, value);
                }
            }
        }
        let uri: Uri = "/claim/x".parse().unwrap();
        let single = guard::check_single(&h);
        if twice && h.get(header::HOST).is_some() {
            prop_assert!(single.is_err());
        }
        let _ = guard::check_host(&h, &uri, port);
        let _ = guard::check_origin(&h, port);
        let _ = guard::check_content_type(&h);
    }
}
