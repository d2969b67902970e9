//! Pub/sub: channels with bounded retention, pattern subscriptions with a
//! bounded queue each, history and resume from a message id.
//!
//! A publish never waits for a subscriber: each subscriber has its own
//! queue of `subscriber_queue` messages, filled with `try_send`. A
//! subscriber whose queue is full is dropped on the spot (its stream ends
//! with `lagged` after what was already queued, naming the last id it got,
//! so it can resume), and every other subscriber goes on unaffected.
//!
//! Message ids come from the event bus's counter: unique and increasing
//! across channels and restarts, so one id is enough to resume a pattern
//! subscription. Each message is serialized once, when published; every
//! subscriber's transport sends those same bytes. Retained messages live
//! in memory (count and age bounded per channel) and do not survive a
//! broker restart; their ids do not repeat after one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use pb_proto::{
    Actor, ChannelInfo, ChannelsReply, ClearReply, ErrorCode, HistoryReply, MessageInfo,
    PublishReply, SubscribeReply, WireError, MESSAGE_META_KEY,
};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::CoordConfig;
use crate::core::events::{as_message_data, Event, EventKind};
use crate::core::stream::{Stream, StreamNext};
use crate::core::{now_ms, Caller, Core, Outcome};
use crate::names::{self, NamePattern};

/// Most patterns in one subscription.
pub const MAX_PATTERNS: usize = 16;
/// Most messages one history request returns.
pub const MAX_HISTORY: usize = 10_000;

/// A published message, shared by the channel's retention and every
/// subscriber queue it was put on. Kept small: a channel retains
/// PB_MSG_RETAIN of them, and every claim and release is one on
/// `pb:service.*` (BENCHMARKS.md, `memory`).
#[derive(Debug)]
pub struct Message {
    pub id: u64,
    /// The channel's name, shared with the channel's entry.
    pub channel: Arc<str>,
    pub time_ms: u64,
    body: Body,
    /// The message as JSON, made once, when first needed.
    json: OnceLock<Arc<str>>,
}

#[derive(Debug)]
enum Body {
    /// Boxed, so that the events' messages (most of those retained) are
    /// not the size of a published one.
    Published(Box<Published>),
    /// A broker event: turned into a message only when someone reads it,
    /// so events nobody subscribes to cost no serialization.
    Event(Arc<Event>),
}

#[derive(Debug)]
struct Published {
    data: Value,
    from: Option<Actor>,
}

impl Body {
    fn published(data: Value, from: Option<Actor>) -> Body {
        Body::Published(Box::new(Published { data, from }))
    }
}

impl Message {
    fn new(id: u64, channel: Arc<str>, time_ms: u64, body: Body) -> Arc<Message> {
        Arc::new(Message {
            id,
            channel,
            time_ms,
            body,
            json: OnceLock::new(),
        })
    }

    pub fn info(&self) -> MessageInfo {
        let (data, from) = match &self.body {
            Body::Published(p) => (p.data.clone(), p.from.clone()),
            Body::Event(ev) => (as_message_data(ev), ev.actor.clone()),
        };
        MessageInfo {
            id: self.id,
            channel: self.channel.to_string(),
            time_ms: self.time_ms,
            data,
            from,
        }
    }

    pub fn json(&self) -> Arc<str> {
        self.json
            .get_or_init(|| {
                serde_json::to_string(&self.info())
                    .expect("messages serialize")
                    .into()
            })
            .clone()
    }
}

struct Subscriber {
    patterns: Vec<NamePattern>,
    tx: mpsc::Sender<Arc<Message>>,
    dropped: Arc<AtomicBool>,
}

impl Subscriber {
    fn wants(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(channel))
    }
}

#[derive(Default)]
pub struct PubSub {
    channels: HashMap<Arc<str>, VecDeque<Arc<Message>>>,
    subscribers: Vec<Subscriber>,
    /// Subscribers dropped for lagging (`pb_subscribers_dropped_total`).
    dropped: Counter,
}

impl PubSub {
    pub fn counting_drops(dropped: Counter) -> PubSub {
        PubSub {
            dropped,
            ..PubSub::default()
        }
    }

    /// Live subscriptions, for a scrape (`live_subscribers` also forgets
    /// the closed ones, which needs `&mut`).
    pub fn subscriber_count(&self) -> usize {
        self.subscribers
            .iter()
            .filter(|s| !s.tx.is_closed())
            .count()
    }

    /// Queues `msg` for every subscriber that wants it and keeps it in its
    /// channel. Returns how many subscribers it was queued for.
    fn deliver(&mut self, msg: Arc<Message>, cfg: &CoordConfig) -> usize {
        let channel = &*msg.channel;
        let mut delivered = 0;
        self.subscribers.retain(|s| {
            if !s.wants(channel) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(msg.clone()) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Dropping the sender ends its stream after what it
                    // already has, with a notice.
                    s.dropped.store(true, Ordering::Release);
                    self.dropped.inc();
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        let kept = match self.channels.get_mut(channel) {
            Some(k) => k,
            None => self.channels.entry(msg.channel.clone()).or_default(),
        };
        kept.push_back(msg);
        while kept.len() > cfg.retain_count {
            kept.pop_front();
        }
        delivered
    }

    /// Whether a message on `channel` may be kept: it exists, or one more
    /// channel is within PB_MAX_CHANNELS.
    fn has_room(&self, channel: &str, cfg: &CoordConfig) -> bool {
        self.channels.contains_key(channel) || self.channels.len() < cfg.max_channels
    }

    /// The name a new message on `channel` carries: the channel's own, when
    /// it has retained messages, so that they share it.
    fn name(&self, channel: &str) -> Arc<str> {
        match self.channels.get_key_value(channel) {
            Some((name, _)) => name.clone(),
            None => channel.into(),
        }
    }

    /// An event from the bus, on channel `pb:<kind>`.
    pub fn republish(&mut self, ev: &Arc<Event>, cfg: &CoordConfig) {
        let channel = format!("pb:{}", ev.kind.name());
        if !self.has_room(&channel, cfg) {
            return;
        }
        let channel = self.name(&channel);
        let msg = Message::new(ev.id, channel, ev.time_ms, Body::Event(ev.clone()));
        self.deliver(msg, cfg);
    }

    /// A message the broker itself posts on one of its `pb:` channels
    /// (a stack's output): retained and delivered like any, without an
    /// event of its own.
    pub fn post(&mut self, id: u64, channel: String, time_ms: u64, data: Value, cfg: &CoordConfig) {
        if !self.has_room(&channel, cfg) {
            return;
        }
        let msg = Message::new(
            id,
            self.name(&channel),
            time_ms,
            Body::published(data, None),
        );
        self.deliver(msg, cfg);
    }

    /// Drops messages older than the retention age, and emptied channels.
    pub fn trim(&mut self, now: u64, cfg: &CoordConfig) -> usize {
        let before = now.saturating_sub(cfg.retain_age_ms);
        let mut removed = 0;
        self.channels.retain(|_, msgs| {
            while msgs.front().is_some_and(|m| m.time_ms < before) {
                msgs.pop_front();
                removed += 1;
            }
            !msgs.is_empty()
        });
        removed
    }

    fn live_subscribers(&mut self) -> usize {
        self.subscribers.retain(|s| !s.tx.is_closed());
        self.subscribers.len()
    }

    /// Retained messages after `since` on channels matching any pattern,
    /// oldest first, at most `limit` (the newest ones).
    fn retained(&self, patterns: &[NamePattern], since: u64, limit: usize) -> Vec<Arc<Message>> {
        let mut out: Vec<Arc<Message>> = self
            .channels
            .iter()
            .filter(|(c, _)| patterns.iter().any(|p| p.matches(c)))
            .flat_map(|(_, msgs)| {
                // Ids increase along a channel: skip to the first after `since`.
                let start = msgs.partition_point(|m| m.id <= since);
                msgs.range(start..).cloned()
            })
            .collect();
        out.sort_by_key(|m| m.id);
        if out.len() > limit {
            out.drain(..out.len() - limit);
        }
        out
    }
}

/// One subscriber's end: what was retained for it, then its queue.
pub struct Subscription {
    backlog: VecDeque<Arc<Message>>,
    rx: mpsc::Receiver<Arc<Message>>,
    dropped: Arc<AtomicBool>,
    last_id: u64,
}

impl Subscription {
    fn item(&mut self, m: Arc<Message>) -> StreamNext {
        self.last_id = m.id;
        StreamNext::Item {
            id: m.id,
            json: m.json(),
        }
    }

    fn ended(&self) -> StreamNext {
        if self.dropped.load(Ordering::Acquire) {
            StreamNext::End(Some(
                WireError::new(
                    ErrorCode::Lagged,
                    format!(
                        "subscriber dropped: it fell more than its queue behind; resume with since_id {}",
                        self.last_id
                    ),
                )
                .with_details(serde_json::json!({ "last_id": self.last_id })),
            ))
        } else {
            StreamNext::End(None)
        }
    }

    pub async fn next(&mut self) -> StreamNext {
        if let Some(m) = self.backlog.pop_front() {
            return self.item(m);
        }
        match self.rx.recv().await {
            Some(m) => self.item(m),
            None => self.ended(),
        }
    }

    pub fn try_next(&mut self) -> Option<StreamNext> {
        if let Some(m) = self.backlog.pop_front() {
            return Some(self.item(m));
        }
        match self.rx.try_recv() {
            Ok(m) => Some(self.item(m)),
            Err(mpsc::error::TryRecvError::Empty) => None,
            Err(mpsc::error::TryRecvError::Disconnected) => Some(self.ended()),
        }
    }
}

fn check_limit(limit: Option<i64>, default: usize, max: usize) -> Result<usize, WireError> {
    match limit {
        None => Ok(default),
        Some(n) if n >= 1 && n as u64 <= max as u64 => Ok(n as usize),
        Some(n) => Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!("limit {n} is out of range (1 to {max})"),
        )),
    }
}

impl Core {
    pub(crate) fn publish(
        &mut self,
        caller: &Caller,
        channel: String,
        data: Value,
        agent: Option<String>,
    ) -> Result<Outcome, WireError> {
        names::check_channel(&channel)?;
        if channel.starts_with("pb:") {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "channels under pb: carry the broker's own events",
            ));
        }
        if data
            .as_object()
            .is_some_and(|o| o.contains_key(MESSAGE_META_KEY))
        {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "a message's top-level key {MESSAGE_META_KEY} is reserved for pb's own \
                     fields on `pb sub --json` lines (docs/PROTOCOL.md)"
                ),
            ));
        }
        let size = serde_json::to_vec(&data).map(|b| b.len()).unwrap_or(0);
        let max = self.cfg.coord.max_message;
        if size > max {
            return Err(WireError::new(
                ErrorCode::TooLarge,
                format!("message is {size} bytes; the limit is {max}"),
            ));
        }
        self.check_agent(caller, agent.as_deref())?;
        if !self.pubsub.has_room(&channel, &self.cfg.coord) {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("too many channels (limit {})", self.cfg.coord.max_channels),
            ));
        }
        let actor = self.bus.actor(caller, agent.as_deref());
        let details = if size <= 1024 {
            serde_json::json!({ "size": size, "data": data })
        } else {
            serde_json::json!({ "size": size })
        };
        let id = self.emit(
            EventKind::MessagePublish,
            &channel,
            Some(actor.clone()),
            details,
        );
        let msg = Message::new(
            id,
            self.pubsub.name(&channel),
            now_ms(),
            Body::published(data, Some(actor)),
        );
        let delivered = self.pubsub.deliver(msg, &self.cfg.coord);
        Ok(Outcome::of(PublishReply {
            id,
            channel,
            delivered,
        }))
    }

    pub(crate) fn subscribe(
        &mut self,
        patterns: Vec<String>,
        since_id: Option<u64>,
    ) -> Result<Outcome, WireError> {
        if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                format!("a subscription takes 1 to {MAX_PATTERNS} patterns"),
            ));
        }
        let compiled = patterns
            .iter()
            .map(|p| NamePattern::parse_name(p))
            .collect::<Result<Vec<_>, _>>()?;
        let max = self.cfg.coord.max_subscribers;
        if self.pubsub.live_subscribers() >= max {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("too many subscribers (limit {max})"),
            ));
        }
        let backlog: VecDeque<Arc<Message>> = match since_id {
            Some(since) => self.pubsub.retained(&compiled, since, usize::MAX).into(),
            None => VecDeque::new(),
        };
        let (tx, rx) = mpsc::channel(self.cfg.coord.subscriber_queue);
        let dropped = Arc::new(AtomicBool::new(false));
        self.pubsub.subscribers.push(Subscriber {
            patterns: compiled,
            tx,
            dropped: dropped.clone(),
        });
        let last_id = self.bus.last_id();
        let reply = SubscribeReply {
            patterns,
            last_id,
            backlog: backlog.len(),
        };
        let sub = Subscription {
            backlog,
            rx,
            dropped,
            last_id: since_id.unwrap_or(last_id),
        };
        Ok(Outcome {
            stream: Some(Stream::Messages(sub)),
            ..Outcome::of(reply)
        })
    }

    pub(crate) fn history(
        &self,
        pattern: &str,
        since_id: Option<u64>,
        limit: Option<i64>,
    ) -> Result<Outcome, WireError> {
        let p = NamePattern::parse_name(pattern)?;
        let limit = check_limit(limit, 100, MAX_HISTORY)?;
        let messages = self
            .pubsub
            .retained(std::slice::from_ref(&p), since_id.unwrap_or(0), limit)
            .iter()
            .map(|m| m.info())
            .collect();
        Ok(Outcome::of(HistoryReply { messages }))
    }

    pub(crate) fn channels(&mut self) -> Outcome {
        self.pubsub.live_subscribers();
        let ps = &self.pubsub;
        let mut channels: Vec<ChannelInfo> = ps
            .channels
            .iter()
            .map(|(name, msgs)| ChannelInfo {
                channel: name.to_string(),
                messages: msgs.len(),
                last_id: msgs.back().map(|m| m.id),
                last_ms: msgs.back().map(|m| m.time_ms),
                subscribers: ps.subscribers.iter().filter(|s| s.wants(name)).count(),
            })
            .collect();
        channels.sort_by(|a, b| a.channel.cmp(&b.channel));
        Outcome::of(ChannelsReply { channels })
    }

    pub(crate) fn clear_channel(
        &mut self,
        caller: &Caller,
        channel: &str,
    ) -> Result<Outcome, WireError> {
        names::check_channel(channel)?;
        let Some(msgs) = self.pubsub.channels.remove(channel) else {
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!("channel {channel} has no messages"),
            ));
        };
        let removed = msgs.len();
        self.emit_by(
            EventKind::ChannelClear,
            channel,
            caller,
            None,
            serde_json::json!({ "removed": removed }),
        );
        Ok(Outcome::of(ClearReply {
            channel: channel.to_string(),
            removed: removed as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64) -> Arc<Event> {
        Arc::new(Event {
            id,
            time_ms: now_ms(),
            kind: EventKind::ServiceClaim,
            target: format!("app:{id}"),
            actor: None,
            details: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        })
    }

    /// What a retained event costs besides the event itself, which the
    /// activity log's queue and the followers share.
    #[test]
    fn an_events_message_is_small() {
        let size = std::mem::size_of::<Message>();
        assert!(size <= 72, "a Message is {size} bytes");
    }

    #[test]
    fn the_messages_of_a_channel_share_its_name() {
        let cfg = CoordConfig::default();
        let mut ps = PubSub::default();
        ps.republish(&event(1), &cfg);
        ps.republish(&event(2), &cfg);
        let kept: Vec<_> = ps.channels["pb:service.claim"].iter().cloned().collect();
        assert_eq!(kept.len(), 2);
        assert!(Arc::ptr_eq(&kept[0].channel, &kept[1].channel));
        let (name, _) = ps.channels.get_key_value("pb:service.claim").unwrap();
        assert!(Arc::ptr_eq(name, &kept[0].channel));
        assert_eq!(kept[1].info().channel, "pb:service.claim");
    }
}
