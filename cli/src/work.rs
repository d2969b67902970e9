//! `pb session ...`, `pb note ...` and `pb files ...`: work sessions with
//! notes and file claims (docs/CLI.md, "Work sessions"). Each command is
//! one request; the broker checks everything. A session begun here belongs
//! to the shell that ran pb (as `pb lock` does), or to `--agent`.
//!
//! Relative paths are taken from the current directory, as every shell
//! command takes them; the broker then requires them within the session's
//! project.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use pb_proto::paths::Paths;
use pb_proto::{
    FilesReleaseReply, FilesReply, FilesWhoReply, LockOwnerArg, NoteInfo, NoteReply, NotesReply,
    Op, SessionArgs, SessionEndReply, SessionInfo, SessionReply, SessionsReply,
};

use crate::output::{self, human_ms, now_ms};
use crate::{connect, Format};

/// The session a note or file command is about.
#[derive(Args)]
pub struct Which {
    /// The session's id (default: $PB_SESSION).
    #[arg(short = 's', long = "session", env = "PB_SESSION", value_name = "ID")]
    pub session: String,
}

#[derive(Subcommand)]
pub enum SessionCmd {
    /// Begin a session of work; prints its id (export PB_SESSION=...).
    Begin {
        /// What the session is for.
        purpose: String,
        /// The project's directory: file claims are within it (default:
        /// the current directory).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Where the work is: planning, testing, ... (default: started).
        #[arg(long)]
        phase: Option<String>,
        /// A first note.
        #[arg(long)]
        note: Option<String>,
        /// Claim these files at once: the session begins only if all are free.
        #[arg(long = "files", num_args = 1.., value_name = "PATH")]
        files: Vec<String>,
        /// The process that owns it (default: the shell that ran pb).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// End a session and release its file claims.
    End {
        /// The session's id (default: $PB_SESSION).
        #[arg(env = "PB_SESSION")]
        id: String,
        /// A last note: what was done, what is left.
        #[arg(long)]
        note: Option<String>,
    },
    /// Set a session's phase.
    Phase {
        /// The session's id.
        id: String,
        /// Where the work is: planning, implementing, testing, ...
        phase: String,
    },
    /// Take over an abandoned session, its notes and file claims.
    #[command(visible_alias = "salvage")]
    Takeover {
        /// The session's id.
        id: String,
        /// The process that owns it from now (default: the shell that ran pb).
        #[arg(long)]
        pid: Option<u32>,
    },
    /// List sessions.
    #[command(visible_alias = "list")]
    Ls {
        /// live (default), active, abandoned, ended or all.
        #[arg(long, value_name = "STATE")]
        state: Option<String>,
    },
    /// One session, with its notes.
    Show {
        /// The session's id.
        #[arg(env = "PB_SESSION")]
        id: String,
    },
}

#[derive(Subcommand)]
pub enum NoteCmd {
    /// Add a note to a session (notes are never changed).
    Add {
        #[command(flatten)]
        which: Which,
        /// The note (at most 4 KiB).
        text: String,
    },
    /// A session's notes, oldest first.
    #[command(visible_alias = "list")]
    Ls {
        #[command(flatten)]
        which: Which,
        /// Only notes after this number.
        #[arg(long, value_name = "N")]
        after: Option<u32>,
    },
}

#[derive(Subcommand)]
pub enum FilesCmd {
    /// Claim paths or globs (src/auth, 'src/**/*.rs') for a session: all,
    /// or none if another session claims any of them.
    Claim {
        #[command(flatten)]
        which: Which,
        /// Paths or globs within the session's project.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Release claims (all of the session's when none is named).
    Release {
        #[command(flatten)]
        which: Which,
        /// The claims to release, as claimed (all when none is named).
        paths: Vec<String>,
    },
    /// Which sessions claim a path.
    Who {
        /// A path (a file or a directory).
        path: String,
    },
}

/// `p` made absolute from the current directory, lexically (a glob or a
/// file not yet made is as good as any).
fn absolute(p: &str) -> Result<String> {
    if p.starts_with('/') {
        return Ok(p.to_string());
    }
    let cwd = std::env::current_dir().context("reading the current directory")?;
    Ok(cwd.join(p).to_string_lossy().into_owned())
}

fn owner(pid: Option<u32>, agent: &Option<String>) -> Option<LockOwnerArg> {
    match (pid, agent) {
        (Some(p), _) => Some(LockOwnerArg::Pid(p)),
        (None, Some(_)) => None,
        (None, None) => Some(LockOwnerArg::CallerParent),
    }
}

fn session_line(s: &SessionInfo) -> String {
    let now = now_ms();
    let who = match (&s.agent, s.pid) {
        (Some(a), _) => format!("agent {a}"),
        (None, Some(p)) => format!("pid {p}"),
        _ => "-".into(),
    };
    format!(
        "{}\t{}\t{}\t{}\t{} ago\t{} notes\t{} files\t{}",
        s.id,
        s.state,
        s.phase,
        who,
        human_ms(now.saturating_sub(s.started_ms)),
        s.notes,
        s.files.len(),
        s.purpose
    )
}

fn note_line(n: &NoteInfo) -> String {
    let by = n
        .from
        .as_ref()
        .and_then(|f| f.agent.clone().or(f.pid.map(|p| format!("pid {p}"))))
        .unwrap_or_else(|| "pb".into());
    let kind = if n.kind == "note" {
        String::new()
    } else {
        format!("[{}] ", n.kind)
    };
    format!(
        "#{} {} ago, {by}: {kind}{}",
        n.n,
        human_ms(now_ms().saturating_sub(n.time_ms)),
        n.text
    )
}

fn print_session(reply: &SessionReply, fmt: Format, verb: &str) {
    match fmt {
        Format::Json => output::print_json(reply),
        Format::Quiet => outln!("{}", reply.session.id),
        Format::Human => {
            outln!("{}", reply.session.id);
            eprintln!("pb: session {} {verb}", reply.session.id);
        }
    }
}

pub fn session(paths: &Paths, cmd: SessionCmd, fmt: Format, agent: Option<String>) -> Result<i32> {
    let mut client = connect::connect(paths)?;
    match cmd {
        SessionCmd::Begin {
            purpose,
            dir,
            phase,
            note,
            files,
            pid,
        } => {
            let dir = match dir {
                Some(d) => d,
                None => std::env::current_dir().context("reading the current directory")?,
            };
            let dir = std::path::absolute(&dir).unwrap_or(dir);
            let files = files.iter().map(|f| absolute(f)).collect::<Result<_>>()?;
            let (reply, _): (SessionReply, _) = client.call_as(Op::SessionBegin(SessionArgs {
                purpose,
                dir: Some(dir.to_string_lossy().into_owned()),
                phase,
                owner: owner(pid, &agent),
                agent,
                note,
                files,
            }))?;
            print_session(&reply, fmt, "begun");
        }
        SessionCmd::End { id, note } => {
            let (reply, _): (SessionEndReply, _) =
                client.call_as(Op::SessionEnd { id, note, agent })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => {}
                Format::Human => eprintln!(
                    "pb: session {} ended; released {} file claims",
                    reply.session.id,
                    reply.released.len()
                ),
            }
        }
        SessionCmd::Phase { id, phase } => {
            let (reply, _): (SessionReply, _) = client.call_as(Op::SessionPhase { id, phase })?;
            print_session(&reply, fmt, &format!("is {}", reply.session.phase));
        }
        SessionCmd::Takeover { id, pid } => {
            let (reply, _): (SessionReply, _) = client.call_as(Op::SessionTakeover {
                id,
                owner: owner(pid, &agent),
                agent,
            })?;
            print_session(&reply, fmt, "taken over");
        }
        SessionCmd::Ls { state } => {
            let (reply, _): (SessionsReply, _) = client.call_as(Op::Sessions { state })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => reply.sessions.iter().for_each(|s| outln!("{}", s.id)),
                Format::Human if reply.sessions.is_empty() => eprintln!("no sessions"),
                Format::Human => reply
                    .sessions
                    .iter()
                    .for_each(|s| outln!("{}", session_line(s))),
            }
        }
        SessionCmd::Show { id } => {
            let (s, _): (SessionReply, _) = client.call_as(Op::SessionGet { id: id.clone() })?;
            let (notes, _): (NotesReply, _) = client.call_as(Op::Notes {
                session: id,
                after: None,
                limit: None,
            })?;
            match fmt {
                Format::Json => output::print_json(&serde_json::json!({
                    "session": s.session, "notes": notes.notes,
                })),
                _ => {
                    outln!("{}", session_line(&s.session));
                    if let Some(d) = &s.session.dir {
                        outln!("  project {d}");
                    }
                    for f in &s.session.files {
                        outln!("  file {f}");
                    }
                    for n in &notes.notes {
                        outln!("  {}", note_line(n));
                    }
                }
            }
        }
    }
    Ok(0)
}

pub fn note(paths: &Paths, cmd: NoteCmd, fmt: Format, agent: Option<String>) -> Result<i32> {
    let mut client = connect::connect(paths)?;
    match cmd {
        NoteCmd::Add { which, text } => {
            let (reply, _): (NoteReply, _) = client.call_as(Op::NoteAdd {
                session: which.session,
                text,
                agent,
            })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => outln!("{}", reply.note.n),
                Format::Human => {
                    eprintln!("pb: note #{} added to {}", reply.note.n, reply.note.session)
                }
            }
        }
        NoteCmd::Ls { which, after } => {
            let (reply, _): (NotesReply, _) = client.call_as(Op::Notes {
                session: which.session,
                after,
                limit: None,
            })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => reply.notes.iter().for_each(|n| outln!("{}", n.text)),
                Format::Human if reply.notes.is_empty() => eprintln!("no notes"),
                Format::Human => reply.notes.iter().for_each(|n| outln!("{}", note_line(n))),
            }
        }
    }
    Ok(0)
}

pub fn files(paths: &Paths, cmd: FilesCmd, fmt: Format) -> Result<i32> {
    let mut client = connect::connect(paths)?;
    let absolute_all =
        |ps: &[String]| -> Result<Vec<String>> { ps.iter().map(|p| absolute(p)).collect() };
    match cmd {
        FilesCmd::Claim { which, paths } => {
            let (reply, _): (FilesReply, _) = client.call_as(Op::FilesClaim {
                session: which.session,
                paths: absolute_all(&paths)?,
            })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => reply.claimed.iter().for_each(|p| outln!("{p}")),
                Format::Human => {
                    reply.claimed.iter().for_each(|p| outln!("{p}"));
                    eprintln!("pb: {} claims {} paths", reply.session, reply.files.len());
                }
            }
        }
        FilesCmd::Release { which, paths } => {
            let (reply, _): (FilesReleaseReply, _) = client.call_as(Op::FilesRelease {
                session: which.session,
                paths: absolute_all(&paths)?,
            })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => {}
                Format::Human => eprintln!(
                    "pb: {} released {} claims",
                    reply.session,
                    reply.released.len()
                ),
            }
        }
        FilesCmd::Who { path } => {
            let (reply, _): (FilesWhoReply, _) = client.call_as(Op::FilesWho {
                path: absolute(&path)?,
            })?;
            match fmt {
                Format::Json => output::print_json(&reply),
                Format::Quiet => reply.claims.iter().for_each(|c| outln!("{}", c.session)),
                Format::Human if reply.claims.is_empty() => {
                    eprintln!("pb: nobody claims {}", Path::new(&reply.path).display())
                }
                Format::Human => reply.claims.iter().for_each(|c| {
                    outln!(
                        "{}\t{}\t{}\t{}\t{}",
                        c.path,
                        c.session,
                        c.state,
                        c.agent
                            .clone()
                            .or(c.pid.map(|p| format!("pid {p}")))
                            .unwrap_or("-".into()),
                        c.purpose
                    )
                }),
            }
        }
    }
    Ok(0)
}
