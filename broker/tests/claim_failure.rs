//! Issue 14, defect 9: a claim whose sockets cannot be handed over fails
//! *before* anything is stored. Here the relay of the other family cannot
//! start (the core runs without the broker's runtime, as a relay's failed
//! `dup` or EMFILE would make it fail in a real broker): the claim is an
//! error, and neither the core nor the store keeps a lease.

use pb_broker::core::{Caller, Core};
use pb_broker::store::Store;
use pb_broker::Config;
use pb_proto::{ClaimArgs, FindReply, IpFamily, Op};

#[test]
fn a_claim_that_cannot_hand_its_sockets_over_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // This test is its own process: the environment is its own.
    std::env::set_var("PB_HOME", dir.path());
    std::env::set_var("PB_RANGE", "23500-23599");
    let cfg = Config::from_env().unwrap();
    let db = cfg.paths.database();
    let mut core = Core::open(cfg, Store::open(&db).unwrap()).unwrap();
    let me = pb_platform::os::effective_uid();
    let caller = Caller {
        uid: me,
        peer_uid: me,
        process: None,
        session: None,
        command: None,
        exit_watch: None,
    };
    let v6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    assert!(v6, "this test needs IPv6 on loopback, for the relay");
    let err = core
        .apply(
            &caller,
            Op::Claim(ClaimArgs {
                id: "app:web".into(),
                fds: true,
                family: Some(IpFamily::V4),
                ..Default::default()
            }),
        )
        .expect_err("no runtime: the relay cannot start");
    assert!(err.message.contains("relay"), "{}", err.message);
    let found = core.apply(&caller, Op::Find { pattern: None }).unwrap();
    let found: FindReply = found.result.into_reply().unwrap();
    assert!(found.services.is_empty(), "no lease in the core");
    drop(core);
    let store = Store::open(&db).unwrap();
    assert!(
        store.load_leases().unwrap().is_empty(),
        "no lease in the store"
    );
}
