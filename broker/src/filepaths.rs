//! The paths of file claims (work sessions): a claim's text made into one
//! absolute, normalised path or glob within its project, and whether two
//! claims overlap.
//!
//! A claim covers what it names and everything beneath it, as an entry of
//! a `.gitignore` does: `src/auth` covers `src/auth/login.rs`, and so does
//! `src/*`. Globs are `*` and `?` (within one component), `[...]`, and
//! `**` (any number of components); braces are refused, since an
//! alternative may cross a `/`. Overlap is decided component by
//! component: exactly when either claim is a plain path, and for two globs
//! as "some path could be covered by both", which may report an overlap
//! no file shows but never misses one.

use globset::{GlobBuilder, GlobMatcher};
use pb_proto::{ErrorCode, WireError};

/// The longest path a claim (or a project directory) may be.
pub const MAX_PATH: usize = 1024;

fn invalid(message: String) -> WireError {
    WireError::new(ErrorCode::InvalidPath, message)
}

fn check_text(what: &str, p: &str) -> Result<(), WireError> {
    if p.is_empty() || p.len() > MAX_PATH || p.chars().any(char::is_control) {
        return Err(invalid(format!(
            "{what} {p:?} must be 1 to {MAX_PATH} bytes of printable text"
        )));
    }
    Ok(())
}

/// `p`'s components with `.` dropped and `..` applied; `None` if a `..`
/// would climb above the root.
fn components(p: &str) -> Option<Vec<&str>> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop()?;
            }
            c => out.push(c),
        }
    }
    Some(out)
}

fn join(parts: &[&str]) -> String {
    if parts.is_empty() {
        "/".to_string()
    } else {
        parts.iter().map(|c| format!("/{c}")).collect()
    }
}

fn is_glob(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// A project directory: absolute, normalised, no glob.
pub fn project_dir(dir: &str) -> Result<String, WireError> {
    check_text("the project directory", dir)?;
    if !dir.starts_with('/') {
        return Err(invalid(format!(
            "the project directory {dir:?} must be an absolute path"
        )));
    }
    let parts = components(dir).ok_or_else(|| invalid(format!("{dir:?} climbs above /")))?;
    if parts
        .iter()
        .any(|c| is_glob(c) || c.contains(['{', '}', '\\']))
    {
        return Err(invalid(format!(
            "the project directory {dir:?} must be a plain path, not a glob"
        )));
    }
    Ok(join(&parts))
}

/// A claim on `p` (relative to the project `dir`, or absolute within it),
/// as an absolute normalised path or glob.
pub fn claim_path(dir: &str, p: &str) -> Result<String, WireError> {
    check_text("the path", p)?;
    if p.contains(['{', '}']) {
        return Err(invalid(format!(
            "{p:?}: alternatives ({{a,b}}) are not supported; claim each path"
        )));
    }
    if p.contains('\\') {
        return Err(invalid(format!(
            "{p:?}: backslashes are not supported in claims"
        )));
    }
    let full = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{dir}/{p}")
    };
    let parts = components(&full).ok_or_else(|| invalid(format!("{p:?} climbs above /")))?;
    let root = components(dir).unwrap_or_default();
    if parts.len() < root.len() || parts[..root.len()] != root[..] {
        return Err(invalid(format!(
            "{p:?} is outside the session's project {dir}"
        )));
    }
    for c in &parts {
        if c.contains("**") && *c != "**" {
            return Err(invalid(format!(
                "{p:?}: `**` must be a whole component (a/**/b)"
            )));
        }
        if is_glob(c) && *c != "**" {
            GlobBuilder::new(c)
                .build()
                .map_err(|e| invalid(format!("{p:?} is not a valid glob: {}", e.kind())))?;
        }
    }
    Ok(join(&parts))
}

/// A path asked about (`files_who`): absolute, normalised.
pub fn query_path(p: &str) -> Result<String, WireError> {
    check_text("the path", p)?;
    if !p.starts_with('/') {
        return Err(invalid(format!("{p:?} must be an absolute path")));
    }
    let parts = components(p).ok_or_else(|| invalid(format!("{p:?} climbs above /")))?;
    Ok(join(&parts))
}

/// A claim ready to be compared: its components, and its globs compiled
/// once, when it is made (a check against many claims compiles nothing).
#[derive(Debug, Clone)]
pub struct Claim {
    parts: Vec<Part>,
    /// The whole glob, for a claim with any glob in it.
    whole: Option<GlobMatcher>,
    plain: bool,
}

#[derive(Debug, Clone)]
struct Part {
    text: String,
    /// `None` for a literal component or `**`.
    glob: Option<GlobMatcher>,
}

fn matcher(glob: &str) -> Option<GlobMatcher> {
    GlobBuilder::new(glob)
        .literal_separator(true)
        .backslash_escape(false)
        .build()
        .ok()
        .map(|g| g.compile_matcher())
}

impl Claim {
    /// `path`: what [`claim_path`] or [`query_path`] made.
    pub fn new(path: &str) -> Claim {
        let texts = components(path).unwrap_or_default();
        let plain = !texts.iter().any(|c| is_glob(c));
        let parts = texts
            .iter()
            .map(|t| Part {
                text: t.to_string(),
                glob: (is_glob(t) && *t != "**").then(|| matcher(t)).flatten(),
            })
            .collect();
        Claim {
            parts,
            whole: (!plain).then(|| matcher(path)).flatten(),
            plain,
        }
    }
}

/// Could one string match both components?
fn may_meet(a: &Part, b: &Part) -> bool {
    match (is_glob(&a.text), is_glob(&b.text)) {
        (false, false) => a.text == b.text,
        (true, false) => matches(a, &b.text),
        (false, true) => matches(b, &a.text),
        (true, true) => {
            // Whatever matches both starts with both literal heads and
            // ends with both literal tails.
            let (ha, hb) = (head(&a.text), head(&b.text));
            let (ta, tb) = (tail(&a.text), tail(&b.text));
            (ha.starts_with(hb) || hb.starts_with(ha)) && (ta.ends_with(tb) || tb.ends_with(ta))
        }
    }
}

/// Whether a glob component matches `text`. Claims were checked when made;
/// one that did not compile is taken as matching everything, never nothing.
fn matches(glob: &Part, text: &str) -> bool {
    match &glob.glob {
        Some(g) => g.is_match(text),
        None => true,
    }
}

fn head(glob: &str) -> &str {
    &glob[..glob.find(['*', '?', '[']).unwrap_or(glob.len())]
}

fn tail(glob: &str) -> &str {
    &glob[glob.rfind(['*', '?', ']']).map_or(0, |i| i + 1)..]
}

/// Do two claims (or a claim and a path asked about) cover a common path?
pub fn overlap(a: &Claim, b: &Claim) -> bool {
    match (a.plain, b.plain) {
        (true, true) => {
            let n = a.parts.len().min(b.parts.len());
            a.parts[..n]
                .iter()
                .zip(&b.parts[..n])
                .all(|(x, y)| x.text == y.text)
        }
        (true, false) => glob_meets_path(b, a),
        (false, true) => glob_meets_path(a, b),
        (false, false) => globs_meet(&a.parts, &b.parts),
    }
}

/// A glob and a plain path overlap when the glob matches the path or one
/// of its ancestors, or could match something beneath it.
fn glob_meets_path(glob: &Claim, path: &Claim) -> bool {
    let Some(whole) = &glob.whole else {
        return true;
    };
    let texts: Vec<&str> = path.parts.iter().map(|p| p.text.as_str()).collect();
    if (0..=texts.len()).any(|n| whole.is_match(join(&texts[..n]))) {
        return true;
    }
    // Beneath the path: the glob's first components meet the path's, and
    // it has more of them (or a `**` that can stand for them).
    for (i, p) in path.parts.iter().enumerate() {
        match glob.parts.get(i) {
            None => return false,
            Some(g) if g.text == "**" => return true,
            Some(g) if !may_meet(g, p) => return false,
            Some(_) => {}
        }
    }
    glob.parts.len() > path.parts.len()
}

fn globs_meet(a: &[Part], b: &[Part]) -> bool {
    for (x, y) in a.iter().zip(b) {
        if x.text == "**" || y.text == "**" {
            return true;
        }
        if !may_meet(x, y) {
            return false;
        }
    }
    // One ends here: what it matches is an ancestor of (or the same as)
    // something the other may match.
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overlap(a: &str, b: &str) -> bool {
        super::overlap(&Claim::new(a), &Claim::new(b))
    }

    #[test]
    fn claims_are_normalised_within_the_project() {
        let d = "/home/u/app";
        assert_eq!(
            claim_path(d, "src/./auth/").unwrap(),
            "/home/u/app/src/auth"
        );
        assert_eq!(
            claim_path(d, "/home/u/app/x.rs").unwrap(),
            "/home/u/app/x.rs"
        );
        assert_eq!(claim_path(d, "src/../lib").unwrap(), "/home/u/app/lib");
        assert_eq!(claim_path(d, ".").unwrap(), "/home/u/app");
        for bad in [
            "../other",
            "/etc/passwd",
            "/home/u/application",
            "src/../../x",
        ] {
            let e = claim_path(d, bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidPath, "{bad}");
        }
        for bad in ["", "a\nb", "{a,b}", "a**b/c", "[z-a]", "\\src/*"] {
            assert!(claim_path(d, bad).is_err(), "{bad:?}");
        }
        assert!(claim_path(d, &"a".repeat(MAX_PATH + 1)).is_err());
        assert!(project_dir("relative").is_err());
        assert!(project_dir("/a/*").is_err());
        assert_eq!(project_dir("/a/b/../c/").unwrap(), "/a/c");
    }

    #[test]
    fn plain_paths_overlap_by_ancestry() {
        assert!(overlap("/p/src/auth", "/p/src/auth/login.rs"));
        assert!(overlap("/p/src/auth/login.rs", "/p/src/auth"));
        assert!(overlap("/p/a", "/p/a"));
        assert!(!overlap("/p/src/auth", "/p/src/authz"));
        assert!(!overlap("/p/src/a.rs", "/p/src/b.rs"));
    }

    #[test]
    fn globs_against_paths_are_exact() {
        assert!(overlap("/p/src/*.rs", "/p/src/main.rs"));
        assert!(!overlap("/p/src/*.rs", "/p/src/main.py"));
        // `*` stays within a component; `**` does not.
        assert!(!overlap("/p/src/*.rs", "/p/src/a/b.rs"));
        assert!(overlap("/p/src/**/*.rs", "/p/src/a/b.rs"));
        // A glob matching a directory covers what is beneath it.
        assert!(overlap("/p/src/*", "/p/src/auth/login.rs"));
        // A directory covers what a glob beneath it matches.
        assert!(overlap("/p/src", "/p/src/*.rs"));
        assert!(overlap("/p", "/p/**/*.rs"));
        assert!(!overlap("/p/docs", "/p/src/*.rs"));
        assert!(!overlap("/p/src/auth", "/p/src/*.rs"));
    }

    #[test]
    fn globs_against_globs_never_miss() {
        assert!(overlap("/p/src/*.rs", "/p/src/m*"));
        assert!(!overlap("/p/src/*.rs", "/p/src/*.py"));
        assert!(!overlap("/p/src/a*", "/p/src/b*"));
        assert!(overlap("/p/**/*.rs", "/p/src/*.py"));
        assert!(!overlap("/p/docs/*", "/p/src/*"));
        assert!(overlap("/p/*/x", "/p/src/*"));
    }
}
