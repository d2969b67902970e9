//! The core in-process, over an in-memory store: no broker, no client, no
//! socket but the ones a claim binds. These reach cheaply what the
//! end-to-end suite cannot: limit edges, undo, expiry against renewal, and
//! the order in which a lock's queue is served.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use pb_proto::{
    AgentArgs, ClaimArgs, ClaimManyReply, ClaimReply, ErrorCode, FindReply, HistoryReply, LockArgs,
    LockInfo, LockOwnerArg, LockReply, Op, PublishReply, ReleaseReply,
};

use super::answer::ReplyType;
use super::{lock, now_ms, Caller, Core, Outcome, Shared, SharedCore};
use crate::config::Config;
use crate::store::Store;

/// A fresh core in a home of its own (its activity log is a file); the
/// settings come from this test process's environment, set once (a range
/// no end-to-end test uses).
fn core_with(tune: impl FnOnce(&mut Config)) -> Core {
    static ENV: OnceLock<()> = OnceLock::new();
    ENV.get_or_init(|| {
        std::env::set_var("PB_RANGE", "26000-26999");
        std::env::set_var("PB_HTTP_ADDR", "off");
    });
    let home = tempfile::tempdir().unwrap().keep();
    let mut cfg = Config::from_env().unwrap();
    cfg.paths.state_dir = home.clone();
    cfg.paths.runtime_dir = home;
    tune(&mut cfg);
    Core::open(cfg, Store::open_in_memory().unwrap()).unwrap()
}

pub(crate) fn core() -> Core {
    core_with(|_| {})
}

/// A core whose range no other core of this process shares, for a test
/// that frees a port and then looks at it: in the shared range, a test
/// running beside it takes the lowest free port the moment it is freed.
fn core_alone() -> Core {
    static NEXT_BLOCK: AtomicU16 = AtomicU16::new(0);
    let block = NEXT_BLOCK.fetch_add(1, Ordering::Relaxed);
    assert!(block < 20, "blocks of 25_800-25_999 are used up");
    let low = 25_800 + block * 10;
    core_with(|c| c.range = (low, low + 9))
}

/// Held while this process forks, and while a test frees a port and looks
/// at it: a child that has forked but not yet exec'd holds a copy of every
/// socket open at the fork, close-on-exec or not.
fn forks() -> std::sync::MutexGuard<'static, ()> {
    static FORKS: Mutex<()> = Mutex::new(());
    FORKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child of this test process, once it holds none of its sockets and
/// sleeps in its own program (a command that sleeps, then: `sleep N`).
/// `spawn` returns when the child execs, but the kernel closes the
/// child's close-on-exec files a moment after that.
pub(crate) fn spawned(command: &mut std::process::Command) -> std::process::Child {
    let _forking = forks();
    let child = command.spawn().unwrap();
    let sockets = |pid: &str, close_on_exec_only: bool| -> Vec<std::path::PathBuf> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|fd| {
                !close_on_exec_only || {
                    let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
                    std::fs::read_to_string(info).is_ok_and(|text| {
                        text.lines()
                            .find_map(|l| l.strip_prefix("flags:"))
                            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
                            .is_some_and(|f| f & libc::O_CLOEXEC as u32 != 0)
                    })
                }
            })
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|to| to.to_string_lossy().starts_with("socket:"))
            .collect()
    };
    let pid = child.id().to_string();
    let holds_ours = || {
        let ours = sockets("self", true);
        sockets(&pid, false).iter().any(|s| ours.contains(s))
    };
    // Asleep in its own program (`sleep`, say): exec is over, and the
    // sockets the kernel took from it are released too.
    let asleep = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('S'))
            })
            .unwrap_or(false)
    };
    let by = std::time::Instant::now() + Duration::from_secs(10);
    while holds_ours() || !asleep() {
        assert!(
            std::time::Instant::now() < by,
            "child {pid} still holds our sockets, or never slept, after 10 s"
        );
        std::thread::yield_now();
    }
    child
}

pub(crate) fn me() -> Caller {
    let uid = pb_platform::os::effective_uid();
    Caller {
        uid,
        peer_uid: uid,
        process: None,
        session: None,
        command: None,
        exit_watch: None,
    }
}

pub(crate) fn reply<T: ReplyType>(out: Result<Outcome, pb_proto::WireError>) -> T {
    out.expect("applied")
        .result
        .into_reply()
        .expect("the reply's type")
}

fn claim(core: &mut Core, id: &str) -> Result<Outcome, pb_proto::WireError> {
    core.apply(
        &me(),
        Op::Claim(ClaimArgs {
            id: id.into(),
            ..Default::default()
        }),
    )
}

fn release(core: &mut Core, target: &str) -> ReleaseReply {
    reply(core.apply(
        &me(),
        Op::Release {
            target: target.into(),
            more: Vec::new(),
        },
    ))
}

/// The leases' ids in id order (other tests of this process bind ports
/// of the same range at the same time, so port order can differ).
fn sorted_ids(core: &mut Core) -> Vec<String> {
    let mut v = ids(core);
    v.sort();
    v
}

fn ids(core: &mut Core) -> Vec<String> {
    let found: FindReply = reply(core.apply(&me(), Op::Find { pattern: None }));
    found.services.into_iter().map(|l| l.id).collect()
}

/// Whether a plain bind (no SO_REUSEADDR, as most apps do it; std's
/// `TcpListener` sets it) of 127.0.0.1:`port` succeeds.
fn bindable(port: u16) -> bool {
    // SAFETY: a socket of our own, closed before returning; the address
    // is a local value of the size passed.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(s >= 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::bind(
            s,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        libc::close(s);
        r == 0
    }
}

#[test]
fn a_claim_is_held_found_repeated_and_released() {
    let mut core = core_alone();
    let first: ClaimReply = reply(claim(&mut core, "app:web"));
    let port = first.lease.port;
    assert!(!first.existing);
    assert!(!bindable(port), "the core holds the port");
    let again: ClaimReply = reply(claim(&mut core, "app:web"));
    assert!(again.existing);
    assert_eq!(again.lease.port, port);
    assert_eq!(ids(&mut core), ["app:web"]);
    let _no_forks = forks();
    let gone = release(&mut core, "app:web");
    assert_eq!(gone.released.len(), 1);
    assert!(ids(&mut core).is_empty());
    assert!(bindable(port), "released means free");
}

#[test]
fn the_one_claim_too_many_is_refused_and_changes_nothing() {
    let mut core = core_with(|c| c.max_leases = 3);
    for i in 0..3 {
        claim(&mut core, &format!("app:s{i}")).unwrap();
    }
    let err = claim(&mut core, "app:s3").unwrap_err();
    assert_eq!(err.code, ErrorCode::Limit, "{}", err.message);
    assert_eq!(ids(&mut core).len(), 3);
    // The edge moves with a release: one more fits, and only one.
    release(&mut core, "app:s0");
    claim(&mut core, "app:s3").unwrap();
    assert_eq!(
        claim(&mut core, "app:s4").unwrap_err().code,
        ErrorCode::Limit
    );
}

#[test]
fn an_undelivered_claim_is_undone_entirely() {
    let mut core = core_alone();
    let mut out = claim(&mut core, "app:api").unwrap();
    let undo = out.undo.take().expect("a new claim can be taken back");
    let port: ClaimReply = out.result.into_reply().unwrap();
    let _no_forks = forks();
    core.undo(undo);
    assert!(ids(&mut core).is_empty());
    assert!(bindable(port.lease.port));
    // A claim that found its lease already there has nothing to undo.
    claim(&mut core, "app:api").unwrap();
    assert!(claim(&mut core, "app:api").unwrap().undo.is_none());
    assert_eq!(ids(&mut core), ["app:api"]);
}

#[test]
fn expiry_ends_a_lease_at_its_time_and_a_renewal_moves_that_time() {
    let mut core = core();
    let t0 = now_ms();
    for id in ["app:short", "app:renewed"] {
        core.apply(
            &me(),
            Op::Claim(ClaimArgs {
                id: id.into(),
                expires_ms: Some(60_000),
                ..Default::default()
            }),
        )
        .unwrap();
    }
    assert!(
        core.expire_due(t0 + 30_000).is_empty(),
        "not before its time"
    );
    // Renewed just before the deadline: the old deadline no longer applies.
    core.apply(
        &me(),
        Op::Heartbeat {
            id: Some("app:renewed".into()),
            port: None,
            ttl_ms: Some(600_000),
        },
    )
    .unwrap();
    let ended: Vec<String> = core
        .expire_due(now_ms() + 61_000)
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ended, ["app:short"]);
    assert_eq!(ids(&mut core), ["app:renewed"]);
    assert!(core.expire_due(now_ms() + 61_000).is_empty(), "once only");
}

/// Runs `f` on a runtime of its own: lock waits are awaited there.
pub(crate) fn on_runtime(f: impl std::future::Future<Output = ()>) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn acquire(owner: &str, wait_ms: Option<i64>) -> Op {
    Op::LockAcquire(LockArgs {
        name: "db".into(),
        ttl_ms: None,
        wait_ms,
        owner: Some(LockOwnerArg::Name(owner.into())),
        agent: None,
    })
}

fn unlock(owner: &str) -> Op {
    Op::LockRelease {
        name: "db".into(),
        owner: Some(LockOwnerArg::Name(owner.into())),
        agent: None,
        force: false,
    }
}

#[test]
fn a_locks_queue_is_served_first_come_first_served_with_rising_tokens() {
    let core: SharedCore = Shared::new(core());
    on_runtime(async {
        let first: LockReply = reply(lock(&core).apply(&me(), acquire("a", None)));
        let mut waiting = Vec::new();
        for owner in ["b", "c", "d"] {
            let out = lock(&core).apply(&me(), acquire(owner, Some(10_000)));
            let pending = out.unwrap().pending.expect("queued behind a");
            let core = core.clone();
            waiting.push(tokio::spawn(async move { pending.wait(&core).await }));
        }
        // Without a wait, a request is refused at once and not queued.
        let held = lock(&core).apply(&me(), acquire("e", None)).unwrap_err();
        assert_eq!(held.code, ErrorCode::Held);
        let mut last = first.lock.token;
        for (holder, next) in [("a", 0), ("b", 1), ("c", 2)] {
            lock(&core).apply(&me(), unlock(holder)).unwrap();
            let granted: LockReply = reply(
                tokio::time::timeout(Duration::from_secs(5), &mut waiting[next])
                    .await
                    .expect("granted at the release")
                    .unwrap(),
            );
            assert_eq!(
                granted.lock.owner_name.as_deref(),
                Some(["b", "c", "d"][next])
            );
            assert!(granted.lock.token > last, "tokens rise");
            last = granted.lock.token;
            // The rest still wait, in order.
            for later in &waiting[next + 1..] {
                assert!(!later.is_finished());
            }
        }
    });
}

#[test]
fn a_full_lock_queue_refuses_the_next_waiter() {
    let core: SharedCore = Shared::new(core_with(|c| c.coord.max_waiters = 2));
    on_runtime(async {
        lock(&core).apply(&me(), acquire("a", None)).unwrap();
        let mut queued = Vec::new();
        for owner in ["b", "c"] {
            queued.push(
                lock(&core)
                    .apply(&me(), acquire(owner, Some(10_000)))
                    .unwrap(),
            );
        }
        let err = lock(&core)
            .apply(&me(), acquire("d", Some(10_000)))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Limit, "{}", err.message);
    });
}

#[test]
fn history_keeps_a_channels_messages_in_order_and_resumes_after_an_id() {
    let mut core = core();
    let mut sent = Vec::new();
    for n in 0..5 {
        let out: PublishReply = reply(core.apply(
            &me(),
            Op::Publish {
                channel: "build:api".into(),
                data: serde_json::json!({ "n": n }),
                agent: None,
            },
        ));
        sent.push(out.id);
    }
    assert!(sent.windows(2).all(|w| w[0] < w[1]), "{sent:?}");
    let history = |core: &mut Core, since_id| -> HistoryReply {
        reply(core.apply(
            &me(),
            Op::History {
                pattern: "build:*".into(),
                since_id,
                limit: None,
            },
        ))
    };
    let all = history(&mut core, None);
    let got: Vec<u64> = all.messages.iter().map(|m| m.id).collect();
    assert_eq!(got, sent);
    let rest = history(&mut core, Some(sent[2]));
    let got: Vec<u64> = rest.messages.iter().map(|m| m.id).collect();
    assert_eq!(got, sent[3..]);
}

#[test]
fn an_agents_service_limit_refuses_the_one_too_many() {
    let mut core = core();
    core.apply(
        &me(),
        Op::AgentRegister(AgentArgs {
            id: "agent:a1".into(),
            max_services: Some(1),
            ..Default::default()
        }),
    )
    .unwrap();
    let as_agent = |id: &str| {
        Op::Claim(ClaimArgs {
            id: id.into(),
            agent: Some("agent:a1".into()),
            ..Default::default()
        })
    };
    core.apply(&me(), as_agent("app:one")).unwrap();
    let err = core.apply(&me(), as_agent("app:two")).unwrap_err();
    assert_eq!(err.code, ErrorCode::Limit, "{}", err.message);
    assert_eq!(ids(&mut core), ["app:one"]);
    // Its own lease again is no new one.
    core.apply(&me(), as_agent("app:one")).unwrap();
}

#[test]
fn a_lock_held_until_its_owner_exits_outlives_any_expiry_and_a_timed_one_does_not() {
    let mut core = core();
    let mut caller = me();
    caller.process = Some(pb_platform::ProcessId::current());
    for (name, ttl_ms) in [("forever", 0), ("timed", 60_000)] {
        let op = Op::LockAcquire(LockArgs {
            name: name.into(),
            ttl_ms: Some(ttl_ms),
            wait_ms: None,
            owner: Some(LockOwnerArg::Caller),
            agent: None,
        });
        core.apply(&caller, op).unwrap();
    }
    core.expire_locks(now_ms() + 366 * 86_400_000);
    let held = |core: &mut Core, name: &str| {
        core.apply(&me(), Op::LockInfo { name: name.into() })
            .is_ok_and(|o| o.result.into_reply::<LockInfo>().is_ok())
    };
    assert!(held(&mut core, "forever"));
    assert!(!held(&mut core, "timed"));
}

#[test]
fn an_expired_holding_passes_to_the_head_of_the_queue_with_a_higher_token() {
    let core: SharedCore = Shared::new(core());
    on_runtime(async {
        let timed = Op::LockAcquire(LockArgs {
            name: "db".into(),
            ttl_ms: Some(1_000),
            wait_ms: None,
            owner: Some(LockOwnerArg::Name("a".into())),
            agent: None,
        });
        let first: LockReply = reply(lock(&core).apply(&me(), timed));
        let pending = lock(&core)
            .apply(&me(), acquire("b", Some(10_000)))
            .unwrap()
            .pending
            .expect("queued");
        let waiting = {
            let core = core.clone();
            tokio::spawn(async move { pending.wait(&core).await })
        };
        // Not before its time; then the tick that passes it hands it on.
        lock(&core).expire_locks(now_ms() + 500);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        lock(&core).expire_locks(now_ms() + 2_000);
        let granted: LockReply = reply(
            tokio::time::timeout(Duration::from_secs(5), waiting)
                .await
                .expect("granted at the expiry")
                .unwrap(),
        );
        assert_eq!(granted.lock.owner_name.as_deref(), Some("b"));
        assert!(granted.lock.token > first.lock.token);
        // The expired holder cannot let go of what is no longer its own.
        let err = lock(&core).apply(&me(), unlock("a")).unwrap_err();
        assert_eq!(err.code, ErrorCode::Held, "{}", err.message);
    });
}

#[test]
fn claim_many_claims_all_or_none() {
    let mut core = core();
    let taken: ClaimReply = reply(claim(&mut core, "other:db"));
    let want = |id: &str, port: Option<u16>| ClaimArgs {
        id: id.into(),
        port: port.map(i64::from),
        ..Default::default()
    };
    // The third fails (its port is leased): the two before it are taken
    // back, and the error names it.
    let err = core
        .apply(
            &me(),
            Op::ClaimMany {
                claims: vec![
                    want("shop:api", None),
                    want("shop:web", None),
                    want("shop:db", Some(taken.lease.port)),
                ],
            },
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::PortTaken, "{}", err.message);
    assert!(err.message.starts_with("shop:db: "), "{}", err.message);
    assert_eq!(ids(&mut core), ["other:db"]);
    let all: ClaimManyReply = reply(core.apply(
        &me(),
        Op::ClaimMany {
            claims: vec![want("shop:api", None), want("shop:web", None)],
        },
    ));
    let ports: Vec<u16> = all.claims.iter().map(|c| c.lease.port).collect();
    assert_eq!(sorted_ids(&mut core), ["other:db", "shop:api", "shop:web"]);
    assert!(ports.iter().all(|p| !bindable(*p)), "{ports:?} held");
    // Undone as one when the reply is not delivered.
    let out = core
        .apply(
            &me(),
            Op::ClaimMany {
                claims: vec![want("x:a", None), want("x:b", None)],
            },
        )
        .unwrap();
    core.undo(out.undo.expect("a batch undo"));
    assert_eq!(sorted_ids(&mut core), ["other:db", "shop:api", "shop:web"]);
    // Bad batches change nothing.
    for (claims, code) in [
        (Vec::new(), ErrorCode::InvalidRequest),
        (
            vec![want("y:a", None), want("y:a", None)],
            ErrorCode::IdConflict,
        ),
        (
            vec![ClaimArgs {
                fds: true,
                ..want("y:b", None)
            }],
            ErrorCode::InvalidRequest,
        ),
        (
            (0..=crate::rules::MAX_CLAIM_BATCH)
                .map(|i| want(&format!("y:s{i}"), None))
                .collect(),
            ErrorCode::InvalidRequest,
        ),
    ] {
        let err = core.apply(&me(), Op::ClaimMany { claims }).unwrap_err();
        assert_eq!(err.code, code, "{}", err.message);
    }
    assert_eq!(sorted_ids(&mut core), ["other:db", "shop:api", "shop:web"]);
}

fn register(core: &mut Core, agent: &str) {
    core.apply(
        &me(),
        Op::AgentRegister(AgentArgs {
            id: agent.into(),
            owner: pb_proto::Owner::None,
            ..Default::default()
        }),
    )
    .unwrap();
}

fn begin(core: &mut Core, agent: &str, files: &[&str]) -> Result<Outcome, pb_proto::WireError> {
    core.apply(
        &me(),
        Op::SessionBegin(pb_proto::SessionArgs {
            purpose: format!("work of {agent}"),
            dir: Some("/proj".into()),
            agent: Some(agent.into()),
            files: files.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        }),
    )
}

#[test]
fn work_sessions_claim_files_without_overlap_and_hand_over_when_abandoned() {
    use pb_proto::{FilesReply, NotesReply, SessionEndReply, SessionReply};
    let mut core = core();
    register(&mut core, "agent-a");
    register(&mut core, "agent-b");
    let a: SessionReply = reply(begin(&mut core, "agent-a", &["src/auth"]));
    assert_eq!(a.session.files, ["/proj/src/auth"]);
    // B's overlapping claim is refused, with the conflict, and changes
    // nothing: its session never began.
    let err = begin(&mut core, "agent-b", &["src/auth/login.rs"]).unwrap_err();
    assert_eq!(err.code, ErrorCode::Held, "{}", err.message);
    assert!(err.message.contains(&a.session.id), "{}", err.message);
    let conflicts = &err.details.as_ref().unwrap()["conflicts"];
    assert_eq!(conflicts[0]["claimed"], "/proj/src/auth");
    let b: SessionReply = reply(begin(&mut core, "agent-b", &["src/api/*.rs"]));
    assert_ne!(a.session.id, b.session.id);
    let err = core
        .apply(
            &me(),
            Op::FilesClaim {
                session: b.session.id.clone(),
                paths: vec!["src/api/x.py".into(), "../elsewhere".into()],
            },
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidPath, "{}", err.message);
    let got: FilesReply = reply(core.apply(
        &me(),
        Op::FilesClaim {
            session: b.session.id.clone(),
            paths: vec!["src/api/x.py".into()],
        },
    ));
    assert_eq!(got.files, ["/proj/src/api/*.rs", "/proj/src/api/x.py"]);
    // A's agent goes away: A's session is abandoned, its claims kept.
    core.apply(
        &me(),
        Op::NoteAdd {
            session: a.session.id.clone(),
            text: "auth half done".into(),
            agent: None,
        },
    )
    .unwrap();
    core.apply(
        &me(),
        Op::AgentUnregister {
            id: "agent-a".into(),
        },
    )
    .unwrap();
    let err = core
        .apply(
            &me(),
            Op::NoteAdd {
                session: a.session.id.clone(),
                text: "late".into(),
                agent: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Closed, "{}", err.message);
    assert!(begin(&mut core, "agent-b", &["src/auth"]).is_err());
    // B takes it over: notes and claims come along, with a handoff note.
    let t: SessionReply = reply(core.apply(
        &me(),
        Op::SessionTakeover {
            id: a.session.id.clone(),
            owner: None,
            agent: Some("agent-b".into()),
        },
    ));
    assert_eq!(t.session.state, "active");
    assert_eq!(t.session.agent.as_deref(), Some("agent-b"));
    assert_eq!(t.session.files, ["/proj/src/auth"]);
    let notes: NotesReply = reply(core.apply(
        &me(),
        Op::Notes {
            session: a.session.id.clone(),
            after: None,
            limit: None,
        },
    ));
    let kinds: Vec<&str> = notes.notes.iter().map(|n| n.kind.as_str()).collect();
    assert_eq!(kinds, ["note", "handoff"]);
    assert_eq!(notes.notes[0].text, "auth half done");
    // Ending releases its files; a second end is refused.
    let end: SessionEndReply = reply(core.apply(
        &me(),
        Op::SessionEnd {
            id: a.session.id.clone(),
            note: Some("done".into()),
            agent: None,
        },
    ));
    assert_eq!(end.released, ["/proj/src/auth"]);
    let err = core
        .apply(
            &me(),
            Op::SessionEnd {
                id: a.session.id.clone(),
                note: None,
                agent: None,
            },
        )
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Closed);
    reply::<SessionReply>(begin(&mut core, "agent-b", &["src/auth/login.rs"]));
}

#[test]
fn sessions_are_bounded_per_user_and_the_longest_ended_are_forgotten_first() {
    use super::work::{KEEP_ENDED, MAX_LIVE};
    use pb_proto::{SessionEndReply, SessionReply};
    let mut core = core();
    register(&mut core, "agent-a");
    let end = |core: &mut Core, id: &str| {
        reply::<SessionEndReply>(core.apply(
            &me(),
            Op::SessionEnd {
                id: id.into(),
                note: None,
                agent: None,
            },
        ))
    };
    // The first session begun ends last: it is kept, though oldest.
    let first: SessionReply = reply(begin(&mut core, "agent-a", &[]));
    let mut ended = Vec::new();
    for _ in 0..KEEP_ENDED {
        let s: SessionReply = reply(begin(&mut core, "agent-a", &[]));
        end(&mut core, &s.session.id);
        ended.push(s.session.id);
    }
    end(&mut core, &first.session.id);
    let get = |core: &mut Core, id: &str| core.apply(&me(), Op::SessionGet { id: id.into() });
    assert!(get(&mut core, &first.session.id).is_ok());
    let err = get(&mut core, &ended[0]).unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::NotFound,
        "the first to end is forgotten"
    );
    assert!(get(&mut core, &ended[1]).is_ok());
    // At most MAX_LIVE sessions not ended, per user.
    for _ in 0..MAX_LIVE {
        reply::<SessionReply>(begin(&mut core, "agent-a", &[]));
    }
    let err = begin(&mut core, "agent-a", &[]).unwrap_err();
    assert_eq!(err.code, ErrorCode::Limit, "{}", err.message);
}

/// A lease claimed with its sockets by a process that then exited (a
/// `sleep` this test started and reaped), and the claim's port.
fn lease_of_a_dead_owner(core: &mut Core, id: &str) -> (pb_platform::ProcessId, u16) {
    let mut child = spawned(std::process::Command::new("sleep").arg("60"));
    let owner = pb_platform::ProcessId::of(child.id()).unwrap();
    let mut caller = me();
    caller.process = Some(owner);
    let got: ClaimReply = reply(core.apply(
        &caller,
        Op::Claim(ClaimArgs {
            id: id.into(),
            fds: true,
            owner: pb_proto::Owner::Caller,
            ..Default::default()
        }),
    ));
    child.kill().unwrap();
    child.wait().unwrap();
    (owner, got.lease.port)
}

fn verdict(holder: Option<super::facts::ProcessFacts>, let_go: bool) -> super::jobs::Verdict {
    super::jobs::Verdict {
        holder,
        back: None,
        let_go,
    }
}

#[test]
fn a_let_go_lease_frees_its_port_and_takes_only_the_verdict_of_its_let_go() {
    let mut core = core_alone();
    let (dead, port) = lease_of_a_dead_owner(&mut core, "gone");
    assert!(!bindable(port));
    let _no_forks = forks();
    assert!(core.let_go("gone", dead));
    // Nobody else held the sockets: they closed with the broker's copies.
    assert!(bindable(port), "the port is free once the broker lets go");
    assert!(!core.let_go("gone", dead), "already let go");
    // A verdict from a look that was not the let-go's does not apply.
    assert!(!core.settle("gone", Some(dead), verdict(None, false)));
    assert_eq!(ids(&mut core), ["gone"]);
    assert!(core.settle("gone", Some(dead), verdict(None, true)));
    assert!(ids(&mut core).is_empty());
}

#[test]
fn a_let_go_lease_that_a_claim_bound_again_is_left_to_the_scan() {
    let mut core = core_alone();
    let (dead, port) = lease_of_a_dead_owner(&mut core, "again");
    let _no_forks = forks();
    assert!(core.let_go("again", dead));
    let again: ClaimReply = reply(core.apply(
        &me(),
        Op::Claim(ClaimArgs {
            id: "again".into(),
            fds: true,
            ..Default::default()
        }),
    ));
    assert_eq!(again.lease.port, port);
    assert!(again.lease.held && again.lease.listening);
    // The let-go's verdict (nobody held the old sockets) is not about the
    // sockets this claim handed out.
    assert!(!core.settle("again", Some(dead), verdict(None, true)));
    assert_eq!(ids(&mut core), ["again"]);
    assert!(!bindable(port));
    // With the let-go settled, the scan's next verdict applies.
    assert!(core.settle("again", Some(dead), verdict(None, false)));
}

#[test]
fn a_let_go_that_is_given_up_leaves_the_lease_to_the_scan() {
    let mut core = core();
    let (dead, _) = lease_of_a_dead_owner(&mut core, "kept");
    assert!(core.let_go("kept", dead));
    core.keep_after_let_go(&["kept".to_string()].into());
    assert!(!core.settle("kept", Some(dead), verdict(None, true)));
    assert!(core.settle("kept", Some(dead), verdict(None, false)));
    assert!(ids(&mut core).is_empty());
}
