//! Decides whether the dashboard's browser tests (tests/dashboard.rs) can
//! run here: they need Debian's Chromium (or $PB_CHROMIUM), Node.js, and
//! playwright-core installed by `npm ci --prefix tests/browser`. Without
//! them the tests are compiled as ignored, so `cargo test` lists them as
//! such, never as passed; under CI=true a missing piece fails the build.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(pb_browser)");
    for var in ["PB_CHROMIUM", "CI", "PATH"] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let chromium = std::env::var("PB_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let playwright = Path::new("browser/node_modules/playwright-core/package.json");
    println!("cargo::rerun-if-changed={chromium}");
    println!("cargo::rerun-if-changed={}", playwright.display());
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!Path::new(&chromium).exists()).then_some("chromium (apt-get install chromium)"),
        (!node).then_some("node"),
        (!playwright.exists()).then_some("playwright-core (npm ci --prefix tests/browser)"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if missing.is_empty() {
        println!("cargo::rustc-cfg=pb_browser");
    } else if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!(
            "CI=true and the dashboard's browser tests cannot run: missing {}",
            missing.join(", ")
        );
    } else {
        println!(
            "cargo::warning=dashboard browser tests ignored: missing {}",
            missing.join(", ")
        );
    }
}
