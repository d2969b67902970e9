//! Builds the preload shim and embeds it in `pb`, so that `pb exec --shim`
//! finds it with no configuration, after `cargo install` too (which installs
//! binaries only). The shim is a shared library of this workspace; cargo cannot yet
//! depend on another package's cdylib (artifact dependencies are unstable),
//! so this runs a nested cargo with its own target directory, which keeps
//! it clear of the outer build's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let cli = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = cli.parent().expect("cli/ sits in the workspace");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo"));
    for watched in [
        "preload-shim/src",
        "preload-shim/Cargo.toml",
        "proto/src",
        "proto/Cargo.toml",
        "platform/src",
        "platform/Cargo.toml",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=PB_SHIM_LIB");

    let lib = match std::env::var_os("PB_SHIM_LIB") {
        // A shim built elsewhere (cross builds, packagers).
        Some(p) => PathBuf::from(p),
        None => build_shim(root, &out.join("shim-target")),
    };
    let bytes = std::fs::read(&lib).unwrap_or_else(|e| panic!("reading {}: {e}", lib.display()));
    std::fs::write(out.join("libpb_shim.so"), &bytes).expect("writing the embedded shim");
    // A content hash names the extracted file, so two pb builds never
    // overwrite each other's shim while an app loads it.
    println!("cargo:rustc-env=PB_SHIM_HASH={:016x}", fnv1a(&bytes));
    println!("cargo:rustc-env=PB_GIT_REV={}", git_revision(root));
    function_order(&cli);
}

/// Release links lay pb's functions out in the order of
/// `symbol-order.txt` (tools/orderfile/make.sh writes it): the code an idle
/// broker and the common commands run sits together, so the 64 KiB the
/// kernel maps around each page they touch holds more of what they use
/// (BENCHMARKS.md, `memory`). A name the file lists that a build no
/// longer has is skipped; a function it does not list goes after. Debug
/// builds keep the linker's own order, and so does a link by anything but
/// rust-lld (the options are lld's), which `links_with_lld` tells.
///
/// Relative relocations packed (DT_RELR) too: about 18 000 of them, which
/// the start-up code applies at every start, in a table of 430 KB that
/// shrinks to 5 KB. glibc reads the packed table from 2.36 on, and a
/// static link brings the building machine's glibc, so this is done only
/// where that glibc is so new (a dynamic binary would need as new a one
/// where it runs; PB_RELR=0 turns it off).
///
/// PB_LINK_MAP=FILE writes the link's map there (every function's name and
/// address, which the stripped binary no longer has): make.sh traces the
/// release binary itself, because a build with other settings (symbols
/// kept, say) gives its functions other names.
fn function_order(cli: &Path) {
    let order = cli.join("symbol-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=PB_LINK_MAP");
    println!("cargo:rerun-if-env-changed=PB_RELR");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if !(release && links_with_lld()) {
        return;
    }
    if order.exists() {
        println!(
            "cargo:rustc-link-arg-bin=pb=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=pb=-Wl,--no-warn-symbol-ordering");
    }
    // Identical functions folded into one (generic code instantiated for
    // types of the same layout, mostly): 106 KB. Rust promises no two
    // functions distinct addresses, and pb compares none.
    println!("cargo:rustc-link-arg-bin=pb=-Wl,--icf=all");
    if std::env::var("PB_RELR").as_deref() != Ok("0") && glibc_at_least(2, 36) {
        println!("cargo:rustc-link-arg-bin=pb=-Wl,-z,pack-relative-relocs");
    }
    if let Ok(map) = std::env::var("PB_LINK_MAP") {
        println!("cargo:rustc-link-arg-bin=pb=-Wl,-Map={map}");
        println!("cargo:rustc-link-arg-bin=pb=-Wl,--no-demangle");
    }
}

/// Whether this link is rust-lld's: the default for x86_64-unknown-linux-gnu
/// from Rust 1.90 on, unless a linker of one's own is configured.
fn links_with_lld() -> bool {
    let target = std::env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let own_linker = std::env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some()
        || flags.contains("linker")
        || flags.contains("fuse-ld");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.split_whitespace()
                .nth(1)?
                .split('.')
                .nth(1)?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    !own_linker && minor >= 90
}

/// Whether the glibc this builds against (the host's: a cross build says
/// no) is at least `major.minor`.
fn glibc_at_least(major: u32, minor: u32) -> bool {
    if std::env::var("HOST").ok() != std::env::var("TARGET").ok() {
        return false;
    }
    let Ok(out) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    // "glibc 2.36"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut version = text.trim().trim_start_matches("glibc ").split('.');
    let got_major: u32 = version.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let got_minor: u32 = version.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (got_major, got_minor) >= (major, minor)
}

/// The commit this pb is built from, for `pb --version`: `git rev-parse`
/// when git and the repository are there (with `-dirty` for uncommitted
/// changes), else `unknown` (a source tarball). Rebuilt when HEAD moves.
fn git_revision(root: &Path) -> String {
    let git = root.join(".git");
    println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD")) {
        if let Some(r) = head.trim().strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed={}", git.join(r).display());
        }
    }
    println!("cargo:rerun-if-env-changed=PB_GIT_REV");
    if let Ok(v) = std::env::var("PB_GIT_REV") {
        return v;
    }
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{rev}-dirty")
            } else {
                rev
            }
        }
        None => "unknown".into(),
    }
}

fn build_shim(root: &Path, target_dir: &Path) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target = std::env::var("TARGET").expect("set by cargo");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args(["rustc", "--release", "--lib", "-p", "pb-preload-shim"])
        .args(["--crate-type", "cdylib", "--target", &target])
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--config", "profile.release.debug=0"])
        .args(["--config", "profile.release.strip=true"])
        // The shim catches its own panics so that one never takes the app
        // down with it (preload-shim/src/lib.rs): it unwinds, whatever
        // pb's own profile says.
        .args(["--config", "profile.release.panic=\"unwind\""])
        // No flags: neither the outer build's nor the workspace's
        // static link (.cargo/config.toml), which a shared library
        // cannot have. (Set and empty, this variable wins over both.)
        .env("CARGO_ENCODED_RUSTFLAGS", "");
    // The outer build's settings for this package (clippy's wrapper, its
    // flags, the target dir) must not leak into the nested one.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "CLIPPY_ARGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo for the preload shim");
    assert!(status.success(), "building the preload shim failed");
    target_dir.join(target).join("release/libpb_shim.so")
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
