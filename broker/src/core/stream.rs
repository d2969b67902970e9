//! Replies that go on: a subscription's messages, the activity log or the
//! machine's listeners followed live. A transport sends the first reply, then each item as
//! its own frame (IPC) or event (SSE), then the end: normal, or an error
//! such as `lagged`.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use pb_proto::{ListenersReply, WireError};
use tokio::sync::watch;

use crate::core::activity::Follow;
use crate::core::pubsub::Subscription;

pub enum Stream {
    Messages(Subscription),
    Activity(Follow),
    Listeners(ListenerFollow),
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Messages(_) => "Stream::Messages",
            Stream::Activity(_) => "Stream::Activity",
            Stream::Listeners(_) => "Stream::Listeners",
        })
    }
}

/// What a stream yields next.
#[derive(Debug)]
pub enum StreamNext {
    /// One item, already JSON (shared, made once for every recipient), and
    /// its id (a message or event id: an SSE transport's `id:` field, for
    /// resuming with `since_id`).
    Item { id: u64, json: Arc<str> },
    /// The stream is over: normally (`None`) or with an error.
    End(Option<WireError>),
}

impl Stream {
    /// Waits for the next item or the end.
    pub async fn next(&mut self) -> StreamNext {
        match self {
            Stream::Messages(s) => s.next().await,
            Stream::Activity(f) => f.next().await,
            Stream::Listeners(l) => l.next().await,
        }
    }

    /// The next item if one is ready, without waiting: lets a transport
    /// send everything queued in one write.
    pub fn try_next(&mut self) -> Option<StreamNext> {
        match self {
            Stream::Messages(s) => s.try_next(),
            Stream::Activity(f) => f.try_next(),
            Stream::Listeners(l) => l.try_next(),
        }
    }
}

/// The machine's listeners, read again for whoever follows them. The
/// kernel announces no new listening socket, so one task re-reads the
/// tables every scan interval, and soon after each of the broker's service
/// events, for as long as any follower is left; a follower is sent a
/// reading only when it differs from the last one.
#[derive(Debug, Default)]
pub struct ListenerFeed {
    pub(crate) tx: watch::Sender<Option<Reading>>,
    pub(crate) running: AtomicBool,
    /// Numbers readings across the feed's idle spells, so ids only grow.
    pub(crate) generation: AtomicU64,
}

/// One reading of the tables (with its generation), serialized once for
/// every follower.
#[derive(Debug, Clone)]
pub struct Reading {
    pub reply: Arc<ListenersReply>,
    pub json: Arc<str>,
}

/// One follower of the [`ListenerFeed`]: each new reading is an item,
/// whose id is its generation.
pub struct ListenerFollow {
    pub(crate) rx: watch::Receiver<Option<Reading>>,
}

impl ListenerFollow {
    pub async fn next(&mut self) -> StreamNext {
        loop {
            if self.rx.changed().await.is_err() {
                return StreamNext::End(None);
            }
            if let Some(item) = self.current() {
                return item;
            }
        }
    }

    pub fn try_next(&mut self) -> Option<StreamNext> {
        if self.rx.has_changed().unwrap_or(false) {
            self.current()
        } else {
            None
        }
    }

    fn current(&mut self) -> Option<StreamNext> {
        self.rx
            .borrow_and_update()
            .as_ref()
            .map(|r| StreamNext::Item {
                id: r.reply.generation.unwrap_or(0),
                json: r.json.clone(),
            })
    }
}
