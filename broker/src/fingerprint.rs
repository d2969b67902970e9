//! The store's own witness of what it was told: a fingerprint of the live
//! leases (how many, and the XOR of a hash of each id), kept in a small
//! file beside the database, outside SQLite and its write-ahead log.
//!
//! A lost or truncated WAL, or a database file zeroed or replaced, leaves
//! SQLite consistent but holding less (or other) than was acknowledged;
//! SQLite cannot know. The fingerprint can: it is written before each
//! commit that changes the live set, holding the set before and after, so
//! a crash between the two leaves a database that matches one of them.
//! Anything else means acknowledged leases are missing, and the broker
//! will not start on it (issue 14).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The live set, as a count and an order-free hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fingerprint {
    pub count: u64,
    pub xor: u64,
}

impl Fingerprint {
    /// The set with `id` added or taken away (XOR is its own inverse).
    pub fn with(self, id: &str, added: bool) -> Fingerprint {
        Fingerprint {
            count: if added {
                self.count + 1
            } else {
                self.count.saturating_sub(1)
            },
            xor: self.xor ^ fnv1a(id.as_bytes()),
        }
    }

    pub fn of<'a>(ids: impl IntoIterator<Item = &'a str>) -> Fingerprint {
        ids.into_iter()
            .fold(Fingerprint::default(), |f, id| f.with(id, true))
    }

    /// Writes `count xor` as 20 decimal and 16 hex digits (`FIELD`
    /// bytes). By hand: `format!` with widths was 3% of the broker's time
    /// under load, for two numbers a commit.
    fn put(self, out: &mut [u8; FIELD]) {
        let mut c = self.count;
        for b in out[..20].iter_mut().rev() {
            *b = b'0' + (c % 10) as u8;
            c /= 10;
        }
        out[20] = b' ';
        for (i, b) in out[21..].iter_mut().enumerate() {
            *b = b"0123456789abcdef"[(self.xor >> (60 - 4 * i) & 0xf) as usize];
        }
    }

    fn parse(text: &str) -> Option<Fingerprint> {
        let (count, xor) = text.trim().split_once(' ')?;
        Some(Fingerprint {
            count: count.parse().ok()?,
            xor: u64::from_str_radix(xor, 16).ok()?,
        })
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The file beside `db`.
pub fn path_of(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-fingerprint");
    PathBuf::from(p)
}

/// What the file says: the set before and after the last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Witness {
    pub before: Fingerprint,
    pub after: Fingerprint,
}

impl Witness {
    pub fn accepts(&self, found: Fingerprint) -> bool {
        found == self.before || found == self.after
    }
}

/// The open witness file, rewritten in place (one fixed-size record).
#[derive(Debug)]
pub struct WitnessFile {
    file: File,
}

/// One fingerprint's text: `count xor`, fixed width.
const FIELD: usize = 37;
/// One record: "before after\n".
const RECORD: usize = 2 * FIELD + 2;

impl WitnessFile {
    /// Opens (or creates, 0600, never through a link) the file, and reads
    /// what it says; `None` for a new or empty file (a first start).
    pub fn open(path: &Path) -> std::io::Result<(WitnessFile, Option<Witness>)> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)?;
        let mut text = String::new();
        file.read_to_string(&mut text)?;
        let parts: Vec<&str> = text.split_whitespace().collect();
        let said = match parts.as_slice() {
            [c1, x1, c2, x2] => Fingerprint::parse(&format!("{c1} {x1}"))
                .zip(Fingerprint::parse(&format!("{c2} {x2}")))
                .map(|(before, after)| Witness { before, after }),
            _ => None,
        };
        Ok((WitnessFile { file }, said))
    }

    /// Records that the live set goes from `before` to `after`: called
    /// before the commit that makes the change. A failed write changes
    /// nothing in the database (the caller does not commit).
    pub fn record(&self, before: Fingerprint, after: Fingerprint) -> std::io::Result<()> {
        let mut text = [b' '; RECORD];
        before.put((&mut text[..FIELD]).try_into().expect("FIELD bytes"));
        after.put(
            (&mut text[FIELD + 1..2 * FIELD + 1])
                .try_into()
                .expect("FIELD bytes"),
        );
        text[RECORD - 1] = b'\n';
        self.file.write_all_at(&text, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_set_is_order_free_and_round_trips_through_the_file() {
        let a = Fingerprint::of(["x", "y", "z"]);
        let b = Fingerprint::of(["z", "x", "y"]);
        assert_eq!(a, b);
        assert_eq!(a.with("y", false), Fingerprint::of(["x", "z"]));
        assert_ne!(a, Fingerprint::of(["x", "y"]));
        let dir = tempfile::tempdir().unwrap();
        let p = path_of(&dir.path().join("pb.db"));
        let (f, said) = WitnessFile::open(&p).unwrap();
        assert_eq!(said, None);
        f.record(Fingerprint::default(), a).unwrap();
        f.record(a, a.with("w", true)).unwrap();
        drop(f);
        let max = Fingerprint {
            count: u64::MAX,
            xor: 0x0123_4567_89ab_cdef,
        };
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            format!(
                "{:020} {:016x} {:020} {:016x}\n",
                a.count,
                a.xor,
                a.count + 1,
                a.with("w", true).xor
            )
        );
        let mut field = [0; FIELD];
        max.put(&mut field);
        assert_eq!(&field, b"18446744073709551615 0123456789abcdef");
        let (_, said) = WitnessFile::open(&p).unwrap();
        let w = said.unwrap();
        assert!(w.accepts(a) && w.accepts(a.with("w", true)));
        assert!(!w.accepts(Fingerprint::default()));
    }
}
