//! The wire types of work sessions (Port Daddy's agent hand-off): a session
//! of work with a purpose and a phase, its immutable notes, and its
//! advisory claims on files of its project. The `Op` variants that carry
//! them are in `message.rs`; docs/PROTOCOL.md describes each.

use serde::{Deserialize, Serialize};

use crate::coord::{Actor, LockOwnerArg};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionArgs {
    /// What the session is for, in a line.
    pub purpose: String,
    /// The project's directory, absolute: file claims are paths within it.
    /// Absent: the session claims no files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// A short label for where the work is (`planning`, `testing`, ...);
    /// `started` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// Whose session it is: a process, or a registered agent (not a
    /// name). Absent: the agent when `agent` is given, else the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<LockOwnerArg>,
    /// The agent acting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// A note to begin with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Files to claim at once (as `files_claim`): the session begins only
    /// if every one is free.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// A work session as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// `s` and a number that is never reused.
    pub id: String,
    pub purpose: String,
    pub dir: Option<String>,
    pub phase: String,
    /// `active`; `abandoned` (its owner died or its agent went away; another
    /// may take it over); or `ended`.
    pub state: String,
    pub uid: u32,
    /// `process` or `agent`.
    pub owner: String,
    /// The owning process (process owners), or the agent's process.
    pub pid: Option<u32>,
    pub agent: Option<String>,
    pub command: Option<String>,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub abandoned_ms: Option<u64>,
    /// How many times another owner took it over.
    pub takeovers: u32,
    pub notes: u32,
    /// Claimed paths and globs, absolute, sorted.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionReply {
    pub session: SessionInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionsReply {
    pub sessions: Vec<SessionInfo>,
}

/// What ending a session did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionEndReply {
    pub session: SessionInfo,
    /// The file claims it released.
    pub released: Vec<String>,
}

/// One note: immutable once written, numbered in its session's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteInfo {
    pub session: String,
    /// 1, 2, ... within the session.
    pub n: u32,
    pub time_ms: u64,
    /// `note`; `handoff` (written by the broker when a session is taken
    /// over); `end` (the note a session ended with).
    pub kind: String,
    pub text: String,
    #[serde(default)]
    pub from: Option<Actor>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteReply {
    pub note: NoteInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotesReply {
    pub session: String,
    pub notes: Vec<NoteInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesReply {
    pub session: String,
    /// The paths this request claimed, absolute.
    pub claimed: Vec<String>,
    /// Every path the session now claims.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesReleaseReply {
    pub session: String,
    pub released: Vec<String>,
}

/// A claim that covers a path: whose, and since when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileClaimInfo {
    /// The claimed path or glob, absolute.
    pub path: String,
    pub session: String,
    pub state: String,
    pub agent: Option<String>,
    pub pid: Option<u32>,
    pub purpose: String,
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FilesWhoReply {
    /// The path asked about, absolute.
    pub path: String,
    /// Every claim of a live (active or abandoned) session that covers it.
    pub claims: Vec<FileClaimInfo>,
}
