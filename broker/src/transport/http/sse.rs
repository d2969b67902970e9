//! Server-sent events: the conventions every streaming route follows
//! (Port Daddy's /subscribe/:channel and those after it), on axum's
//! [`Sse`]. This is only the transport side; what the events are, and
//! where they come from, belongs to the routes' own modules and the core.
//!
//! - Every event has an id (`id:` line): the item's own, a message or log
//!   entry id, or a listener reading's generation.
//! - A client that reconnects with `Last-Event-ID: N` resumes after N: the
//!   route passes N to the core as `since_id`, and the core replays what it
//!   still keeps.
//! - When no event is due, a comment line (`: heartbeat`) goes out every
//!   [`HEARTBEAT`], so proxies keep the connection and clients notice a
//!   dead broker.
//! - The core's queue for each subscriber is bounded; a client that does
//!   not read lets it fill, and the core drops the subscriber: the stream
//!   ends with an `end` event saying why (`lagged`). Only [`HANDOFF`]
//!   events wait between the core and the socket.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{self as axum_sse, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use pb_proto::ErrorCode;
use tokio::sync::mpsc;

use super::error::ApiError;
use crate::core::stream::{Stream, StreamNext};

/// How often an idle stream sends a comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// Events copied for one client of [`from_stream`] that wait for its
/// socket: few, since the core's own queue is the real buffer.
pub const HANDOFF: usize = 16;

/// One event as it goes on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: u64,
    /// The `event:` name; the client's default (`message`) when `None`.
    pub name: Option<String>,
    /// The payload, JSON (so on one line, with no carriage return).
    pub data: String,
}

impl Event {
    fn to_sse(&self) -> axum_sse::Event {
        let e = axum_sse::Event::default()
            .id(self.id.to_string())
            .data(&self.data);
        match &self.name {
            Some(name) => e.event(name),
            None => e,
        }
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

/// A text/event-stream response: `replay` first, then each event from
/// `live`, with a heartbeat comment after `heartbeat` of silence. It ends
/// when `live`'s sender is dropped.
fn response(replay: Vec<Event>, live: mpsc::Receiver<Event>, heartbeat: Duration) -> Response {
    let replay = futures_util::stream::iter(replay);
    let live =
        futures_util::stream::unfold(
            live,
            |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
        );
    use futures_util::StreamExt;
    let events = replay.chain(live).map(|e| Ok::<_, Infallible>(e.to_sse()));
    let mut resp = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response();
    // Tells reverse proxies not to hold events back.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

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

    #[tokio::test(flavor = "current_thread")]
    async fn the_stream_replays_then_follows_with_heartbeats_and_ends() {
        let first = Event {
            id: 1,
            name: Some("claim".into()),
            data: "{\"port\":3100}".into(),
        };
        let (tx, rx) = mpsc::channel(4);
        let resp = response(vec![first], rx, Duration::from_millis(30));
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        let mut body = resp.into_body();
        async fn next(body: &mut axum::body::Body) -> Option<String> {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("a frame within 5 s");
            frame.map(|f| String::from_utf8(f.unwrap().into_data().unwrap().to_vec()).unwrap())
        }
        let lines = |text: String| {
            let mut l: Vec<String> = text.lines().map(String::from).collect();
            l.sort();
            l
        };
        assert_eq!(
            lines(next(&mut body).await.unwrap()),
            ["", "data: {\"port\":3100}", "event: claim", "id: 1"]
        );
        assert_eq!(next(&mut body).await.unwrap(), ": heartbeat\n\n");
        tx.send(Event {
            id: 2,
            name: None,
            data: "\"later\"".into(),
        })
        .await
        .unwrap();
        assert_eq!(
            lines(next(&mut body).await.unwrap()),
            ["", "data: \"later\"", "id: 2"]
        );
        drop(tx);
        assert_eq!(
            next(&mut body).await,
            None,
            "the stream ends with its sender"
        );
    }
}
