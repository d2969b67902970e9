//! A stack's output: each service's lines go to the terminal with an
//! aligned, coloured `name |` prefix (as `--color` and NO_COLOR say:
//! crate::color), and to a file of its own under PB_HOME, bounded: past
//! [`LOG_MAX`] bytes the file becomes `NAME.log.1` (replacing the one
//! before) and a new one starts. Each stored line begins with its time in
//! ms since the epoch, so `pb logs` can interleave services as they ran.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use pb_proto::paths::Paths;
use pb_proto::{Op, StackLogLine};
use std::sync::mpsc::{Receiver, SyncSender};

/// A service's log file is rotated past this size.
pub const LOG_MAX: u64 = 1 << 20;
/// Lines kept in memory per service, to show when it fails.
pub const TAIL_LINES: usize = 20;
/// A longer line is cut (a runaway process without newlines).
const LINE_MAX: usize = 16 * 1024;

const COLOURS: [&str; 6] = ["36", "33", "32", "35", "34", "31"];

/// Where the terminal output goes, shared by every service's reader.
pub struct Printer {
    width: usize,
    colour: bool,
    /// Detached: the files only.
    quiet: bool,
}

impl Printer {
    pub fn new(names: &[&str], quiet: bool) -> Printer {
        let colour = crate::color::stdout();
        Printer {
            width: names.iter().map(|n| n.len()).max().unwrap_or(0),
            colour,
            quiet,
        }
    }

    fn line(&self, index: usize, name: &str, line: &str) {
        if self.quiet {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = if self.colour {
            let c = COLOURS[index % COLOURS.len()];
            writeln!(out, "\x1b[{c}m{name:<w$} |\x1b[0m {line}", w = self.width)
        } else {
            writeln!(out, "{name:<w$} | {line}", w = self.width)
        };
    }
}

/// One service's file, rotated when it grows past [`LOG_MAX`].
pub struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl LogFile {
    pub fn open(path: PathBuf) -> LogFile {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .ok();
        let size = file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map_or(0, |m| m.len());
        LogFile { path, file, size }
    }

    pub fn write(&mut self, line: &str) {
        if self.size >= LOG_MAX {
            let _ = std::fs::rename(&self.path, rotated(&self.path));
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
            self.size = 0;
        }
        if let Some(f) = &mut self.file {
            let text = format!("{} {line}\n", crate::up::now_ms());
            if f.write_all(text.as_bytes()).is_ok() {
                self.size += text.len() as u64;
            }
        }
    }
}

fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// The last lines of a service's output, for error messages.
pub type Tail = Arc<Mutex<VecDeque<String>>>;

/// Reads a service's output until every writer has closed it: to the
/// terminal, its file, its tail, and the broker (`forward`; a line is
/// dropped there, never waited for, when the broker falls behind).
pub fn pump(
    from: File,
    index: usize,
    name: String,
    printer: Arc<Printer>,
    file: Arc<Mutex<LogFile>>,
    tail: Tail,
    forward: SyncSender<StackLogLine>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from.take(u64::MAX));
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader
                .by_ref()
                .take(LINE_MAX as u64)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&buf);
            let line = text.trim_end_matches(['\n', '\r']);
            printer.line(index, &name, line);
            file.lock().unwrap_or_else(|e| e.into_inner()).write(line);
            let _ = forward.try_send(StackLogLine {
                service: name.clone(),
                time_ms: crate::up::now_ms(),
                line: line.to_string(),
            });
            let mut t = tail.lock().unwrap_or_else(|e| e.into_inner());
            if t.len() >= TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.to_string());
        }
    })
}

/// Lines waiting for the broker, at most.
pub const FORWARD_QUEUE: usize = 4096;

/// Sends the stack's output to the broker (`stack_log`), in batches of
/// what has queued, so that the dashboard can follow it live. Ends when
/// every service's reader has. A batch the broker cannot take (it is away)
/// is dropped: the files keep everything.
pub fn forward(paths: Paths, stack: String, from: Receiver<StackLogLine>) {
    std::thread::spawn(move || {
        let mut client = None;
        while let Ok(first) = from.recv() {
            let mut lines = vec![first];
            while lines.len() < 512 {
                match from.try_recv() {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            if client.is_none() {
                client = crate::connect::existing(&paths).ok();
            }
            let op = Op::StackLog {
                stack: stack.clone(),
                lines,
            };
            if let Some(c) = client.as_mut() {
                if let Err(pb_proto::client::ClientError::Io(_)) = c.call(op) {
                    client = None;
                }
            }
        }
    });
}

/// One stored line: its time, its service, its text.
struct Stored {
    ms: u64,
    service: String,
    text: String,
}

fn read_file(path: &Path, service: &str, from: u64) -> (Vec<Stored>, u64) {
    let Ok(mut f) = File::open(path) else {
        return (Vec::new(), from);
    };
    let len = f.metadata().map_or(0, |m| m.len());
    // A rotation since: start the new file from its beginning.
    let from = if len < from { 0 } else { from };
    if f.seek(SeekFrom::Start(from)).is_err() {
        return (Vec::new(), from);
    }
    let mut text = String::new();
    let _ = f.take(len - from).read_to_string(&mut text);
    // Only whole lines; a partial last one is read next time.
    let whole = text.rfind('\n').map_or(0, |i| i + 1);
    let lines = text[..whole]
        .lines()
        .map(|l| {
            let (ms, rest) = l.split_once(' ').unwrap_or(("0", l));
            Stored {
                ms: ms.parse().unwrap_or(0),
                service: service.to_string(),
                text: rest.to_string(),
            }
        })
        .collect();
    (lines, from + whole as u64)
}

/// `pb logs`: the last `n` lines of `services` (interleaved by time), then,
/// with `follow`, every new one for as long as `up` says the stack is up
/// (or until interrupted).
pub fn show(
    dir: &Path,
    services: &[String],
    n: usize,
    follow: bool,
    up: impl Fn() -> bool,
) -> Result<()> {
    if !dir.is_dir() {
        bail!("no logs yet for this stack ({})", dir.display());
    }
    let width = services.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut all = Vec::new();
    let mut offsets = Vec::new();
    for s in services {
        let path = dir.join(format!("{s}.log"));
        let (mut old, _) = read_file(&rotated(&path), s, 0);
        let (new, end) = read_file(&path, s, 0);
        old.extend(new);
        all.extend(old);
        offsets.push((path, end));
    }
    all.sort_by_key(|l| l.ms);
    let skip = all.len().saturating_sub(n);
    let print = |l: &Stored| {
        if services.len() == 1 {
            outln!("{}", l.text);
        } else {
            outln!("{:<width$} | {}", l.service, l.text);
        }
    };
    all[skip..].iter().for_each(print);
    let mut going = follow;
    while going {
        std::thread::sleep(Duration::from_millis(200));
        // One last read after the stack went down.
        going = up();
        let mut fresh = Vec::new();
        for ((path, at), s) in offsets.iter_mut().zip(services) {
            let (lines, end) = read_file(path, s, *at);
            *at = end;
            fresh.extend(lines);
        }
        fresh.sort_by_key(|l| l.ms);
        fresh.iter().for_each(print);
    }
    Ok(())
}

/// The directory a stack keeps its logs in.
pub fn dir(stack_dir: &Path) -> PathBuf {
    stack_dir.join("logs")
}

/// Makes `dir` (private to the user, as PB_HOME is).
pub fn make_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_file_is_rotated_past_its_bound_keeping_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.log");
        let mut f = LogFile::open(path.clone());
        let line = "x".repeat(1000);
        // Past two rotations' worth: only the current file and one before
        // are kept, neither much over the bound.
        for _ in 0..(3 * LOG_MAX as usize / 1000) {
            f.write(&line);
        }
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        assert!(size(&path) <= LOG_MAX + 1100, "{}", size(&path));
        assert!(size(&rotated(&path)) > LOG_MAX / 2);
        assert!(size(&rotated(&path)) <= LOG_MAX + 1100);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 2);
        // Each stored line starts with its time, for `pb logs` to merge.
        let (stored, _) = read_file(&path, "api", 0);
        assert!(stored.iter().all(|l| l.ms > 0 && l.text == line));
    }
}
