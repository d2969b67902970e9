//! The bearer token that lets another user's process use the HTTP API.
//!
//! Callers of the broker's own user (and root) are recognised by the kernel
//! and need nothing; anyone else must show this token, which lives in a
//! 0600 file in the broker's 0700 state directory, so only the broker's
//! user can read it and hand it on (`pb token` prints it).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The token file's name in the state directory.
pub const TOKEN_FILE: &str = "http-token";
/// Random bytes in a token (hex-encoded, so twice as many characters).
const TOKEN_BYTES: usize = 32;

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKEN_FILE)
}

#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token file, creating it (0600, from getrandom) when it does
    /// not exist. A file that others could read is refused: its token may
    /// have leaked.
    pub fn load_or_create(file: &Path) -> Result<Token> {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(file)
        {
            Ok(mut f) => {
                let token = crate::logins::random_hex(TOKEN_BYTES)
                    .map_err(|e| anyhow::anyhow!(e.message))?;
                f.write_all(token.as_bytes())?;
                f.sync_all()?;
                return Ok(Token(token));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", file.display())),
        }
        let meta = fs::metadata(file)?;
        if meta.permissions().mode() & 0o077 != 0 || meta.uid() != pb_platform::os::effective_uid()
        {
            bail!(
                "{} is readable by others or not ours; delete it and restart to make a new token",
                file.display()
            );
        }
        let text = fs::read_to_string(file)?;
        let text = text.trim();
        if text.len() < 2 * TOKEN_BYTES || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "{} does not hold a token; delete it and restart",
                file.display()
            );
        }
        Ok(Token(text.to_string()))
    }

    /// Compares in time independent of where the strings differ, so the
    /// token cannot be guessed a byte at a time.
    pub fn matches(&self, presented: &str) -> bool {
        crate::logins::same(&self.0, presented)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_then_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        let t = Token::load_or_create(&file).unwrap();
        assert_eq!(
            fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let again = Token::load_or_create(&file).unwrap();
        assert!(again.matches(&t.0));
        assert!(!again.matches("nope"));
        assert!(!again.matches(&t.0[1..]));
        assert_eq!(t.0.len(), 64);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Token::load_or_create(&file).is_err());
    }
}
