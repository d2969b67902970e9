//! The broker's home (issue 14, defects 3 and 5): a PB_HOME others can
//! write to is refused and never chmod'ed; one only we can write is used as
//! it is, with every file in it private; a planted link is refused before
//! anything is written through it.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use pb_tests::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `pb claim x` with autostart in `home`; its output.
fn claim_in(home: &std::path::Path, block: &PortBlock) -> std::process::Output {
    Command::new(pb_bin())
        .args(["claim", "x", "-q"])
        .env("PB_HOME", home)
        .env("PB_RANGE", format!("{}-{}", block.range.0, block.range.1))
        .env("PB_HTTP_ADDR", "off")
        .env("PB_PROXY_ADDR", "off")
        .env_remove("PB_NO_AUTOSTART")
        .output()
        .unwrap()
}

fn stop_in(home: &std::path::Path) {
    let out = Command::new(pb_bin())
        .arg("stop")
        .env("PB_HOME", home)
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_home_others_can_write_is_refused_and_left_as_it_was() {
    let base = tempfile::tempdir().unwrap();
    let block = PortBlock::take(20);
    for shared in [0o777, 0o1777, 0o770] {
        let home = base.path().join(format!("shared-{shared:o}"));
        std::fs::create_dir(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(shared)).unwrap();
        let t = Instant::now();
        let out = claim_in(&home, &block);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "at once: {:?}",
            t.elapsed()
        );
        assert!(err.contains("can be written by other users"), "{err}");
        assert!(err.contains(&home.display().to_string()), "names it: {err}");
        assert!(err.contains("chmod go-w"), "says how to fix it: {err}");
        assert_eq!(mode(&home), shared, "the mode was not changed");
        assert!(!home.join("pb.db").exists(), "nothing was written there");
    }
}

#[test]
fn a_home_only_we_can_write_is_used_as_it_is_with_private_files() {
    let base = tempfile::tempdir().unwrap();
    let block = PortBlock::take(20);
    let home = base.path().join("open");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = claim_in(&home, &block);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&home), 0o755, "the user's directory keeps its mode");
    for f in [
        "pb.db",
        "activity.db",
        "http-token",
        "broker.log",
        "pb.lock",
        "pb.sock",
    ] {
        let p = home.join(f);
        assert!(p.exists(), "{f}");
        assert_eq!(mode(&p) & 0o077, 0, "{f} is private: {:o}", mode(&p));
    }
    stop_in(&home);
    // A home pb makes itself is 0700.
    let made = base.path().join("made/by/pb");
    let out = claim_in(&made, &block);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&made), 0o700);
    stop_in(&made);
}

#[test]
fn a_planted_database_link_is_refused_and_nothing_is_written_through_it() {
    let base = tempfile::tempdir().unwrap();
    let block = PortBlock::take(20);
    let home = base.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    // What a planter could read back: the leases and webhook secrets.
    let loot = base.path().join("loot");
    std::fs::write(&loot, "").unwrap();
    for planted in ["pb.db", "pb.db-wal", "activity.db", "broker.log"] {
        let link = home.join(planted);
        // The last start's own file of that name goes first.
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&loot, &link).unwrap();
        let out = claim_in(&home, &block);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{planted}: started anyway");
        assert!(
            err.contains("symbolic link") && err.contains(planted),
            "{planted}: {err}"
        );
        assert_eq!(
            std::fs::read(&loot).unwrap().len(),
            0,
            "{planted}: written through"
        );
        std::fs::remove_file(&link).unwrap();
    }
    let out = claim_in(&home, &block);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop_in(&home);
}

#[test]
fn a_malformed_setting_stops_the_broker_naming_it_and_nothing_is_made() {
    let base = tempfile::tempdir().unwrap();
    let block = PortBlock::take(20);
    for (var, value, says) in [
        (
            "PB_MAX_LEASES",
            "8k",
            "PB_MAX_LEASES=\"8k\" is not a whole number above 0",
        ),
        (
            "PB_MAX_LOCKS",
            "0",
            "PB_MAX_LOCKS=\"0\" is not a whole number above 0",
        ),
        (
            "PB_WEBHOOK_ALLOW_PRIVATE",
            "maybe",
            "PB_WEBHOOK_ALLOW_PRIVATE=\"maybe\" is not one of",
        ),
        ("PB_LOCK_TTL", "5 minutes", "PB_LOCK_TTL"),
    ] {
        let home = base.path().join(var);
        let out = Command::new(pb_bin())
            .args(["claim", "x", "-q"])
            .env("PB_HOME", &home)
            .env("PB_RANGE", format!("{}-{}", block.range.0, block.range.1))
            .env("PB_HTTP_ADDR", "off")
            .env("PB_PROXY_ADDR", "off")
            .env(var, value)
            .env_remove("PB_NO_AUTOSTART")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}={value}: {err}");
        assert!(err.contains(says), "{var}={value}: {err}");
        assert!(!home.join("pb.db").exists(), "no store was made: {err}");
    }
}
