//! What the machine says about the processes and ports one request names,
//! asked before the core's mutex is taken: the core never waits on /proc or
//! a socket-table dump while every other client waits on it.
//!
//! The core reads facts from here. One it lacks it records as a
//! [`Question`] and fails the request with [`unanswered`], which changes
//! nothing (every error leaves the state as it was). The service then asks
//! the machine with the mutex released and applies the request again, now
//! with the answer; a request asks a few questions at most, so this ends
//! within [`MAX_ROUNDS`]. Only a core nobody shares yet (while it opens, or
//! in a test that owns it) answers its questions on the spot.

use std::collections::HashMap;
use std::sync::Arc;

use pb_platform::ProcessId;
use pb_proto::{ErrorCode, WireError};

/// How many times a request is applied at most: each round answers every
/// question the last one raised, and the answers of a round raise at most
/// one more (a parent's own facts after the parent was found).
pub const MAX_ROUNDS: usize = 4;

/// A live process as the core needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessFacts {
    pub id: ProcessId,
    pub uid: Option<u32>,
    /// Shared by every event, message and lease that names it.
    pub command: Option<Arc<str>>,
}

impl ProcessFacts {
    /// Asks the kernel: `None` if no live process has this pid.
    pub fn ask(pid: u32) -> Option<ProcessFacts> {
        let id = ProcessId::of(pid).filter(ProcessId::is_alive)?;
        Some(ProcessFacts {
            id,
            uid: pb_platform::process::uid_of(pid),
            command: pb_platform::process::command_of(pid).map(Into::into),
        })
    }

    /// Asks about `p`: `None` if that very process is gone.
    pub fn of(p: ProcessId) -> Option<ProcessFacts> {
        ProcessFacts::ask(p.pid).filter(|f| f.id == p)
    }
}

/// Something the core needs to know from the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Question {
    /// Whether a process lives, whose it is and what it runs.
    Process(u32),
    /// A process's lasting ancestor (the shell that ran it).
    Ancestor(ProcessId),
    /// Whether the kernel lists TIME_WAIT connections on a port.
    TimeWait(u16),
}

#[derive(Debug, Default)]
pub struct Facts {
    processes: HashMap<u32, Option<ProcessFacts>>,
    ancestors: HashMap<ProcessId, Option<ProcessId>>,
    time_wait: HashMap<u16, bool>,
    /// Answer questions on the spot (a core nobody else can be waiting on).
    direct: bool,
    /// What the core found it lacked while applying.
    unanswered: Vec<Question>,
}

/// The error a request fails with while a fact it needs is unknown. It
/// reaches a client only if [`MAX_ROUNDS`] did not settle the request.
pub fn unanswered() -> WireError {
    WireError::new(
        ErrorCode::Internal,
        "the broker could not learn what it needed about the machine's processes and ports",
    )
}

impl Facts {
    /// Facts that are asked for when first needed, for a core that no other
    /// request can be waiting on.
    pub fn direct() -> Facts {
        Facts {
            direct: true,
            ..Facts::default()
        }
    }

    /// The live process `pid`, or `None` if there is none.
    pub fn process(&mut self, pid: u32) -> Result<Option<&ProcessFacts>, WireError> {
        if !self.processes.contains_key(&pid) && !self.try_answer(Question::Process(pid)) {
            return Err(unanswered());
        }
        Ok(self.processes[&pid].as_ref())
    }

    /// A process already asked about: for what follows from a check that
    /// asked (the command of an owner that was validated).
    pub fn known(&self, pid: u32) -> Option<&ProcessFacts> {
        self.processes.get(&pid).and_then(Option::as_ref)
    }

    /// `p`'s lasting ancestor, if it has one.
    pub fn ancestor(&mut self, p: ProcessId) -> Result<Option<ProcessId>, WireError> {
        if !self.ancestors.contains_key(&p) && !self.try_answer(Question::Ancestor(p)) {
            return Err(unanswered());
        }
        Ok(self.ancestors[&p])
    }

    /// Whether the kernel lists TIME_WAIT connections on `port`.
    pub fn time_wait(&mut self, port: u16) -> Result<bool, WireError> {
        if !self.time_wait.contains_key(&port) && !self.try_answer(Question::TimeWait(port)) {
            return Err(unanswered());
        }
        Ok(self.time_wait[&port])
    }

    /// Answers `q` now if this core may ask; else records it.
    fn try_answer(&mut self, q: Question) -> bool {
        if self.direct {
            self.answer(q);
        } else {
            self.unanswered.push(q);
        }
        self.direct
    }

    /// Whether applying left questions to answer.
    pub fn has_questions(&self) -> bool {
        !self.unanswered.is_empty()
    }

    /// Asks the machine every question the last round raised. Call without
    /// the core's mutex.
    pub fn answer_questions(&mut self) {
        let questions = std::mem::take(&mut self.unanswered);
        for q in questions {
            self.answer(q);
        }
    }

    /// Asks the machine one question.
    pub fn answer(&mut self, q: Question) {
        match q {
            Question::Process(pid) => {
                self.processes.insert(pid, ProcessFacts::ask(pid));
            }
            Question::Ancestor(p) => {
                self.ancestors.insert(p, p.lasting_ancestor());
            }
            Question::TimeWait(port) => {
                self.time_wait
                    .insert(port, pb_platform::net::time_wait_on(port));
            }
        }
    }

    /// Adds what a caller of the core already asked (the reaper, from its
    /// own scan).
    pub fn insert_process(&mut self, facts: ProcessFacts) {
        self.processes.insert(facts.id.pid, Some(facts));
    }
}
