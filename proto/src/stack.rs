//! Stacks (`pb up`) as the broker knows them: what a stack's supervisor
//! reports over its connection (its services' states, and what happened),
//! what every client can list, and the restart a client asks of it. The
//! broker runs no service itself: it records, announces (`stack.*`
//! events) and relays.

use serde::{Deserialize, Serialize};

/// A stack as its supervisor last reported it. Also the supervisor's own
/// `state.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackInfo {
    /// `project[:context]`.
    pub id: String,
    /// The stack file.
    pub file: String,
    /// The supervisor's pid.
    pub supervisor: u32,
    /// The supervisor's start time (clock ticks since boot): with the pid,
    /// that very process.
    #[serde(default)]
    pub supervisor_start: u64,
    pub status: StackStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub services: Vec<StackService>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackStatus {
    Starting,
    Up,
    Stopping,
    Down,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackService {
    pub name: String,
    /// Its lease's id, `project:name[:context]`.
    pub id: String,
    /// waiting, starting, ready, restarting, stopping or exited.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub pid: Option<u32>,
    pub port: Option<u16>,
    pub url: Option<String>,
    pub restarts: u32,
    pub ready: bool,
}

/// What a supervisor reports happened (an activity-log entry and a
/// `stack.*` event).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StackEventKind {
    /// Every service is ready.
    Up,
    /// The stack stopped.
    Down,
    /// A service was restarted (asked, or on a file change).
    Restart,
    /// A service ended on its own (its exit code in `detail`).
    Crash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackEvent {
    pub kind: StackEventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Why, in words: an exit code, "requested", "file changed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StacksReply {
    pub stacks: Vec<StackInfo>,
}

/// `stack_restart`'s answer: the request is with the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackRestartReply {
    pub stack: String,
    pub service: String,
    pub requested: bool,
}

/// One line a service printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackLogLine {
    pub service: String,
    pub time_ms: u64,
    pub line: String,
}

/// `stack_log`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StackLogReply {
    pub posted: usize,
}
