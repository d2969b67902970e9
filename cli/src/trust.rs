//! `pb trust`: makes the proxy's local CA trusted where browsers and tools
//! look, and `--remove` takes it out again. Two kinds of store:
//!
//! - the system's, on Debian-like systems: the CA's certificate copied to
//!   `/usr/local/share/ca-certificates`, then `update-ca-certificates`
//!   (curl, Python, Node with `--use-openssl-ca`, most of the rest);
//! - NSS databases, through `certutil` (Chromium's `~/.pki/nssdb`, each
//!   Firefox profile): the browsers on Linux read those, not the system's.
//!
//! `--root DIR` treats DIR as `/` for the system store, and `--nss-db` names
//! databases instead of finding them, so that both can be tried on
//! throwaway copies. Every step says what it did, or what to run instead.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;
use pb_proto::paths::Paths;
use pb_proto::{Op, StatusReply};

use crate::{connect, output, Format};

#[derive(Args)]
pub struct TrustCmd {
    /// Take the CA out of the stores instead.
    #[arg(long)]
    remove: bool,
    /// An NSS database directory to use (repeatable); without it, the
    /// ones found under $HOME (~/.pki/nssdb, Firefox profiles).
    #[arg(long = "nss-db", value_name = "DIR")]
    nss_db: Vec<PathBuf>,
    /// Leave the system's store alone.
    #[arg(long)]
    no_system: bool,
    /// Treat DIR as the root of the system's store (for a throwaway copy).
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
}

/// One store, and what happened to it.
#[derive(serde::Serialize)]
struct Step {
    store: &'static str,
    path: String,
    done: bool,
    detail: String,
}

pub fn run(paths: &Paths, cmd: TrustCmd, fmt: Format) -> Result<i32> {
    let ca = if cmd.remove {
        None
    } else {
        Some(ca_file(paths)?)
    };
    let nickname = nickname();
    let mut steps = Vec::new();
    if !cmd.no_system {
        steps.push(system(cmd.root.as_deref(), ca.as_deref(), &nickname));
    }
    let dbs = if cmd.nss_db.is_empty() {
        found_nss_dbs()
    } else {
        cmd.nss_db.clone()
    };
    for db in dbs {
        steps.push(nss(&db, ca.as_deref(), &nickname));
    }
    let ok = steps.iter().all(|s| s.done);
    match fmt {
        Format::Json => output::print_json(&serde_json::json!({
            "ca": ca.map(|p| p.display().to_string()),
            "removed": cmd.remove,
            "steps": steps,
        })),
        _ => {
            if steps.is_empty() {
                outln!("nothing to do: no store was asked for or found");
            }
            for s in &steps {
                let mark = if s.done { "ok" } else { "NOT DONE" };
                outln!("{:<6} {}: {mark}: {}", s.store, s.path, s.detail);
            }
        }
    }
    Ok(if ok { 0 } else { 1 })
}

/// The CA's certificate, as the running broker names it (starting one, so
/// that the CA exists).
fn ca_file(paths: &Paths) -> Result<PathBuf> {
    let (s, _): (StatusReply, _) = connect::connect(paths)?.call_as(Op::Status)?;
    match s.proxy {
        Some(p) => Ok(PathBuf::from(p.ca)),
        None => Err(pb_proto::WireError::new(
            pb_proto::ErrorCode::InvalidRequest,
            format!(
                "the proxy is off ({}), so there is no CA to trust",
                s.proxy_off.as_deref().unwrap_or("PB_PROXY_ADDR")
            ),
        )
        .into()),
    }
}

/// The CA's name in every store: one per user, since each user's broker
/// has its own CA.
fn nickname() -> String {
    let user = std::env::var("USER")
        .ok()
        .filter(|u| {
            !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .unwrap_or_else(|| pb_platform::os::effective_uid().to_string());
    format!("pb-local-ca-{user}")
}

/// The system's store, Debian's way.
fn system(root: Option<&Path>, ca: Option<&Path>, nickname: &str) -> Step {
    let under = |p: &str| match root {
        Some(r) => r.join(p.trim_start_matches('/')),
        None => PathBuf::from(p),
    };
    let local = under("/usr/local/share/ca-certificates");
    let file = local.join(format!("{nickname}.crt"));
    let step = |done: bool, detail: String| Step {
        store: "system",
        path: file.display().to_string(),
        done,
        detail,
    };
    let result: Result<String> = (|| {
        match ca {
            Some(ca) => {
                std::fs::create_dir_all(&local)
                    .with_context(|| format!("creating {}", local.display()))?;
                std::fs::copy(ca, &file).with_context(|| format!("writing {}", file.display()))?;
                // Certificates are public; update-ca-certificates reads as root.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644))?;
            }
            None => match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok("was not there".into())
                }
                Err(e) => return Err(e).with_context(|| format!("removing {}", file.display())),
            },
        }
        let mut update = Command::new("update-ca-certificates");
        if ca.is_none() {
            update.arg("--fresh");
        }
        if let Some(r) = root {
            let etc = under("/etc/ssl/certs");
            for d in [
                &etc,
                &under("/usr/share/ca-certificates"),
                &under("/etc/ca-certificates/update.d"),
            ] {
                std::fs::create_dir_all(d)?;
            }
            update
                .arg("--localcertsdir")
                .arg(&local)
                .arg("--certsdir")
                .arg(under("/usr/share/ca-certificates"))
                .arg("--certsconf")
                .arg(under("/etc/ca-certificates.conf"))
                .arg("--etccertsdir")
                .arg(&etc)
                .arg("--hooksdir")
                .arg(under("/etc/ca-certificates/update.d"));
            let _ = r;
        }
        let out = update
            .output()
            .context("running update-ca-certificates (Debian's ca-certificates package)")?;
        anyhow::ensure!(
            out.status.success(),
            "update-ca-certificates failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(if ca.is_some() {
            "added; update-ca-certificates ran".into()
        } else {
            "removed; update-ca-certificates ran".into()
        })
    })();
    match result {
        Ok(detail) => step(true, detail),
        Err(e) => {
            let how = match ca {
                Some(ca) => format!(
                    "as root: install -m 644 {} {} && update-ca-certificates",
                    ca.display(),
                    file.display()
                ),
                None => format!(
                    "as root: rm {} && update-ca-certificates --fresh",
                    file.display()
                ),
            };
            step(false, format!("{e:#}; {how}"))
        }
    }
}

/// NSS databases under $HOME: Chromium's and each Firefox profile's.
fn found_nss_dbs() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME").map(PathBuf::from) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut consider = |d: PathBuf| {
        if d.join("cert9.db").exists() {
            out.push(d);
        }
    };
    consider(home.join(".pki/nssdb"));
    consider(home.join("snap/chromium/current/.pki/nssdb"));
    for profiles in [".mozilla/firefox", "snap/firefox/common/.mozilla/firefox"] {
        if let Ok(entries) = std::fs::read_dir(home.join(profiles)) {
            for e in entries.flatten() {
                consider(e.path());
            }
        }
    }
    out
}

fn nss(db: &Path, ca: Option<&Path>, nickname: &str) -> Step {
    let step = |done: bool, detail: String| Step {
        store: "nss",
        path: db.display().to_string(),
        done,
        detail,
    };
    let dir = format!("sql:{}", db.display());
    let mut certutil = Command::new("certutil");
    certutil.arg("-d").arg(&dir).arg("-n").arg(nickname);
    match ca {
        // C: a trusted CA for TLS servers, and nothing else.
        Some(ca) => certutil.args(["-A", "-t", "C,,"]).arg("-i").arg(ca),
        None => certutil.arg("-D"),
    };
    match certutil.output() {
        Err(e) => step(
            false,
            format!("cannot run certutil ({e}); install it (Debian: libnss3-tools)"),
        ),
        Ok(out) if out.status.success() => {
            step(true, if ca.is_some() { "added" } else { "removed" }.into())
        }
        Ok(out) => {
            let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if ca.is_none() && err.contains("could not find certificate") {
                step(true, "was not there".into())
            } else {
                step(false, format!("certutil failed: {err}"))
            }
        }
    }
}
