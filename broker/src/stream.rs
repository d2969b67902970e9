//! Replies that go on: a subscription's messages, the activity log or the
//! machine's listeners followed live. A transport sends the first reply, then each item as
//! its own frame (IPC) or event (SSE), then the end: normal, or an error
//! such as `lagged`.

use std::sync::Arc;

use pb_proto::WireError;

use crate::activity::Follow;
use crate::inspect::ListenerFollow;
use crate::pubsub::Subscription;

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
