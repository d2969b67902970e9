//! Server-sent events: the conventions every streaming route follows
//! (Port Daddy's /subscribe/:channel and those after it). This is only the
//! transport side; what the events are, and where they come from, belongs
//! to the routes' own modules.
//!
//! - Every event has an id, increasing per stream (`id:` line), assigned by
//!   a [`History`], which also keeps the last few for resuming.
//! - A client that reconnects with `Last-Event-ID: N` gets the events after
//!   N that are still kept, then the live ones. If some were already
//!   forgotten, the replay starts with a `reset` event, so the client knows
//!   to reload its state instead of trusting an incomplete stream.
//! - When no event is due, a comment line (`: heartbeat`) goes out every
//!   [`HEARTBEAT`], so proxies keep the connection and clients notice a
//!   dead broker.
//! - Each subscriber has a bounded buffer ([`BUFFER`] events). Publishing
//!   never waits: a subscriber whose buffer is full is dropped (its stream
//!   ends after what it already has; it may reconnect and resume), so a slow
//!   reader never slows the publisher or the other subscribers.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::Response;
use pb_proto::ErrorCode;
use tokio::sync::mpsc;

use super::error::ApiError;
use crate::core::stream::{Stream, StreamNext};

/// How often an idle stream sends a comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events queued for one subscriber before it is dropped as too slow.
pub const BUFFER: usize = 256;
/// Events copied for one client of [`from_stream`] that wait for its
/// socket: few, since the core's own queue is the real buffer.
pub const HANDOFF: usize = 16;
/// Events a [`History`] keeps for resuming, by default.
pub const REPLAY: usize = 1024;

/// One event as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    /// The `event:` name; the client's default (`message`) when `None`.
    pub name: Option<String>,
    /// The payload, usually JSON; may span lines.
    pub data: String,
}

impl Event {
    /// The event in the text/event-stream format.
    pub fn encode(&self) -> String {
        let mut out = format!("id: {}\n", self.id);
        if let Some(name) = &self.name {
            // A line break in a name would start a field of its own.
            let name: String = name.chars().filter(|c| *c != '\n' && *c != '\r').collect();
            out.push_str(&format!("event: {name}\n"));
        }
        for line in self.data.split('\n') {
            out.push_str("data: ");
            out.push_str(line.strip_suffix('\r').unwrap_or(line));
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

/// The `Last-Event-ID` a reconnecting client sent, if any.
pub fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "Last-Event-ID is not an event id",
            )
        })
}

/// A stream's recent events: it numbers new ones and answers resumes.
#[derive(Debug)]
pub struct History {
    cap: usize,
    next_id: u64,
    events: VecDeque<Event>,
}

impl History {
    /// Keeps the last `cap` events; ids start at 1.
    pub fn new(cap: usize) -> History {
        History {
            cap: cap.max(1),
            next_id: 1,
            events: VecDeque::new(),
        }
    }

    /// Numbers and keeps a new event, forgetting the oldest past the cap.
    pub fn push(&mut self, name: Option<&str>, data: String) -> Event {
        let e = Event {
            id: self.next_id,
            name: name.map(String::from),
            data,
        };
        self.next_id += 1;
        if self.events.len() == self.cap {
            self.events.pop_front();
        }
        self.events.push_back(e.clone());
        e
    }

    /// What a client that saw up to `last` must be sent first: the kept
    /// events after it, preceded by a `reset` event when some in between
    /// are no longer kept.
    pub fn since(&self, last: u64) -> Vec<Event> {
        let mut out = Vec::new();
        let oldest = self.events.front().map_or(self.next_id, |e| e.id);
        if last.saturating_add(1) < oldest {
            out.push(Event {
                id: oldest.saturating_sub(1),
                name: Some("reset".into()),
                data: format!("{{\"missed_before\":{oldest}}}"),
            });
        }
        out.extend(self.events.iter().filter(|e| e.id > last).cloned());
        out
    }
}

/// The publishing side of one subscriber.
#[derive(Debug, Clone)]
pub struct Subscriber(mpsc::Sender<Event>);

impl Subscriber {
    /// Queues `e` without waiting. False when the subscriber is gone or its
    /// buffer is full: the publisher must then drop this `Subscriber`,
    /// which ends the client's stream once it has read what was queued.
    pub fn offer(&self, e: &Event) -> bool {
        self.0.try_send(e.clone()).is_ok()
    }
}

/// Sends the broker's own stream (a subscription, a followed log) as
/// server-sent events: `first`, then each item as an event whose id is the
/// item's own (a message or log entry id, so `Last-Event-ID` resumes
/// through the core's `since_id`), leaving out items up to `skip_through`.
/// The core's queue for the subscriber is its bounded buffer (its items
/// are shared by every subscriber); only [`HANDOFF`] events, copied for
/// this client, wait between it and the socket. A client that does not
/// read lets the core's queue fill, and
/// the core then drops the subscriber: that ending (`lagged`, or any other
/// error) goes out as a last `end` event, `{error, code, details}`, whose
/// id is the last item delivered, before the stream closes. A client that
/// goes away ends the subscription at once.
pub fn from_stream(first: Vec<Event>, mut stream: Stream, skip_through: u64) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(HANDOFF);
    tokio::spawn(async move {
        let mut last = skip_through;
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                _ = tx.closed() => return,
            };
            match next {
                StreamNext::Item { id, json } => {
                    if id <= skip_through {
                        continue;
                    }
                    last = id;
                    let e = Event {
                        id,
                        name: None,
                        data: json.to_string(),
                    };
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                StreamNext::End(None) => return,
                StreamNext::End(Some(err)) => {
                    let mut data = serde_json::json!({"error": err.message, "code": err.code});
                    if let Some(d) = err.details {
                        data["details"] = d;
                    }
                    let e = Event {
                        id: last,
                        name: Some("end".into()),
                        data: data.to_string(),
                    };
                    let _ = tx.send(e).await;
                    return;
                }
            }
        }
    });
    response(first, rx, HEARTBEAT)
}

/// A subscriber with a buffer of `buffer` events, and the receiving end
/// that [`response`] streams from.
pub fn subscriber(buffer: usize) -> (Subscriber, mpsc::Receiver<Event>) {
    let (tx, rx) = mpsc::channel(buffer.max(1));
    (Subscriber(tx), rx)
}

/// A text/event-stream response: `replay` first, then each event from
/// `live`, with a heartbeat comment after `heartbeat` of silence. It ends
/// when every [`Subscriber`] for `live` is dropped.
pub fn response(replay: Vec<Event>, live: mpsc::Receiver<Event>, heartbeat: Duration) -> Response {
    struct State {
        replay: VecDeque<Event>,
        live: mpsc::Receiver<Event>,
        heartbeat: Duration,
    }
    let state = State {
        replay: replay.into(),
        live,
        heartbeat,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        let chunk = match s.replay.pop_front() {
            Some(e) => e.encode(),
            None => match tokio::time::timeout(s.heartbeat, s.live.recv()).await {
                Ok(Some(e)) => e.encode(),
                Ok(None) => return None,
                Err(_) => ": heartbeat\n\n".to_string(),
            },
        };
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), s))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells reverse proxies not to hold events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn encoding() {
        let e = Event {
            id: 7,
            name: Some("claim\nevil: x".into()),
            data: "{\"a\":1}\r\nsecond".into(),
        };
        assert_eq!(
            e.encode(),
            "id: 7\nevent: claimevil: x\ndata: {\"a\":1}\ndata: second\n\n"
        );
    }

    #[test]
    fn last_event_ids() {
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h).unwrap(), None);
        h.insert("last-event-id", HeaderValue::from_static(" 42 "));
        assert_eq!(last_event_id(&h).unwrap(), Some(42));
        h.insert("last-event-id", HeaderValue::from_static("x"));
        assert_eq!(
            last_event_id(&h).unwrap_err().0.code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn resume_replays_what_is_kept_and_says_what_is_not() {
        let mut h = History::new(3);
        for i in 1..=5 {
            assert_eq!(h.push(None, format!("{i}")).id, i);
        }
        // Kept: 3, 4, 5.
        let ids = |v: Vec<Event>| v.iter().map(|e| (e.id, e.name.clone())).collect::<Vec<_>>();
        assert_eq!(ids(h.since(3)), [(4, None), (5, None)]);
        assert_eq!(ids(h.since(5)), []);
        assert_eq!(ids(h.since(2)), [(3, None), (4, None), (5, None)]);
        assert_eq!(
            ids(h.since(1)),
            [(2, Some("reset".into())), (3, None), (4, None), (5, None)]
        );
        assert_eq!(ids(History::new(3).since(0)), []);
    }

    #[test]
    fn a_slow_subscriber_is_dropped_and_never_slows_the_others() {
        let (slow, _slow_rx) = subscriber(4);
        let (fast, mut fast_rx) = subscriber(4);
        let mut h = History::new(16);
        let mut slow = Some(slow);
        let mut got = Vec::new();
        for i in 0..10 {
            let e = h.push(None, i.to_string());
            // Publishing never waits: the full subscriber is refused and
            // dropped, the other keeps receiving.
            if slow.as_ref().is_some_and(|s| !s.offer(&e)) {
                slow = None;
            }
            assert!(fast.offer(&e));
            got.push(fast_rx.try_recv().unwrap().id);
        }
        assert!(slow.is_none(), "the slow subscriber was dropped");
        assert_eq!(got, (1..=10).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_stream_replays_then_follows_with_heartbeats_and_ends() {
        let mut h = History::new(8);
        let first = h.push(Some("claim"), "{\"port\":3100}".into());
        let (sub, rx) = subscriber(BUFFER);
        let resp = response(h.since(0), rx, Duration::from_millis(30));
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "text/event-stream");
        let mut body = resp.into_body();
        async fn next(body: &mut Body) -> Option<String> {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("a frame within 5 s");
            frame.map(|f| String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap())
        }
        assert_eq!(next(&mut body).await.unwrap(), first.encode());
        assert_eq!(next(&mut body).await.unwrap(), ": heartbeat\n\n");
        let live = h.push(None, "later".into());
        assert!(sub.offer(&live));
        assert_eq!(next(&mut body).await.unwrap(), "id: 2\ndata: later\n\n");
        drop(sub);
        assert_eq!(
            next(&mut body).await,
            None,
            "the stream ends with its subscriber"
        );
    }
}
