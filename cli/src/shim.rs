//! The preload shim that `pb exec --shim` loads into the app. It is built
//! with pb and embedded in the binary (see build.rs), and written out once
//! per build to the runtime directory, where LD_PRELOAD can load it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use std::ffi::OsString;

use anyhow::{Context, Result};
use pb_proto::paths::Paths;
use pb_proto::shim::{PortMap, ENV_MAP, ENV_SOCKET};

static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libpb_shim.so"));

/// The shim's path: `PB_SHIM_PATH` if set, else the embedded copy, written
/// out first if this build's copy is not there yet.
pub fn path(paths: &Paths) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PB_SHIM_PATH").filter(|p| !p.is_empty()) {
        return Ok(p.into());
    }
    let dir = paths.runtime_dir.join("shim");
    let file = dir.join(format!("libpb_shim-{}.so", env!("PB_SHIM_HASH")));
    if std::fs::metadata(&file).is_ok_and(|m| m.len() == SHIM.len() as u64) {
        return Ok(file);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // Written aside and renamed, so an app never loads a half-written file.
    let tmp = dir.join(format!(".libpb_shim-{}.tmp", std::process::id()));
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(SHIM)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
    drop(f);
    std::fs::rename(&tmp, &file).with_context(|| format!("installing {}", file.display()))?;
    Ok(file)
}

/// What loads the shim with `map` into an app: LD_PRELOAD (ours first,
/// before any the caller already had), the map, and the broker's socket.
pub fn env(paths: &Paths, map: &PortMap) -> Result<Vec<(OsString, OsString)>> {
    let lib = path(paths)?;
    let preload = match std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        Some(old) => {
            let mut v = lib.into_os_string();
            v.push(" ");
            v.push(old);
            v
        }
        None => lib.into_os_string(),
    };
    Ok(vec![
        ("LD_PRELOAD".into(), preload),
        (ENV_MAP.into(), map.to_env().into()),
        (ENV_SOCKET.into(), paths.socket().into_os_string()),
    ])
}
