//! The wire types of agent coordination: locks, pub/sub, the agent
//! registry, readiness waits and the activity log. The `Op` variants that
//! carry them are in `message.rs`; docs/PROTOCOL.md describes each.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long a lock request that asks to wait, naming no timeout, waits
/// (`pb lock --wait`, Port Daddy's `wait: true`).
pub const DEFAULT_LOCK_WAIT_MS: i64 = 60_000;
/// How long `wait` waits for services when a client names no timeout.
pub const DEFAULT_WAIT_MS: i64 = 60_000;

/// Who holds a lock: whose death, release or staleness ends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockOwnerArg {
    /// The process on the other end of this connection (the default).
    #[default]
    Caller,
    /// Another live process of the caller's user.
    Pid(u32),
    /// A name: the lock lives until released under that name or expired.
    Name(String),
    /// A registered agent: the lock ends when the agent goes stale or dies.
    Agent(String),
    /// The shell or script that ran the caller (above any `$(…)` subshell):
    /// a command such as `pb lock` exits at once, its caller stays.
    CallerParent,
    /// A pid the client names as it is told (Port Daddy's X-PID or `pid`):
    /// the caller's own pid means the default (its agent, else
    /// `CallerParent`), any other is `Pid`.
    Hint(i64),
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockArgs {
    pub name: String,
    /// Time to live; the broker's default (5 min) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<i64>,
    /// Wait in the lock's FIFO queue for at most this long when it is held.
    /// Absent: fail at once with `held`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<i64>,
    /// Absent: the agent when `agent` is given, else the caller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<LockOwnerArg>,
    /// The agent acting; its `max_locks` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

/// A held lock as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockInfo {
    pub name: String,
    /// The fencing token of this holding: strictly greater than any token
    /// handed out before, for this lock, across restarts.
    pub token: u64,
    /// `process`, `name` or `agent`.
    pub owner: String,
    /// The owning process (process owners), or the agent's process.
    pub pid: Option<u32>,
    /// The owner name (`name` owners) or agent id (`agent` owners).
    pub owner_name: Option<String>,
    pub uid: u32,
    /// The owning process's command line.
    pub command: Option<String>,
    pub since_ms: u64,
    /// When it ends unless renewed; `null` for a holding that lasts while
    /// its owner process lives (`ttl_ms` 0).
    pub expires_ms: Option<u64>,
    pub ttl_ms: u64,
    /// How many requests wait in its queue.
    pub waiters: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockReply {
    pub lock: LockInfo,
    /// The same owner already held it; the TTL was renewed.
    pub existing: bool,
    /// How long the request waited in the queue.
    pub waited_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocksReply {
    pub locks: Vec<LockInfo>,
}

/// What `unlock` ended: the holding as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnlockReply {
    pub released: LockInfo,
}

/// A pub/sub message, as history and subscriptions deliver it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageInfo {
    /// Unique and increasing across all channels and restarts; resume with
    /// `since_id`.
    pub id: u64,
    pub channel: String,
    pub time_ms: u64,
    pub data: Value,
    /// Who published it: the agent, if named, and the process.
    #[serde(default)]
    pub from: Option<Actor>,
}

/// The top-level key of a message line (`MessageInfo::line`) that holds
/// pb's own fields. A message whose payload is an object with this key is
/// refused at publish, so it can never collide with a payload field.
pub const MESSAGE_META_KEY: &str = "_pb";

impl MessageInfo {
    /// The message as one line of `pb sub --json` and `pb history --json`:
    /// an object payload's own fields at the top, where Port Daddy's
    /// recipe (`jq 'select(.status=="complete")'`) looks for them, and
    /// pb's (`id`, `channel`, `time_ms`, `from`) under `_pb`. A payload
    /// that is not an object (or, retained from before the key was
    /// reserved, holds `_pb`) is `_pb.data`, and the line has no other key.
    pub fn line(&self) -> Value {
        let mut meta = serde_json::json!({
            "id": self.id,
            "channel": self.channel,
            "time_ms": self.time_ms,
            "from": self.from,
        });
        match &self.data {
            Value::Object(fields) if !fields.contains_key(MESSAGE_META_KEY) => {
                let mut line = fields.clone();
                line.insert(MESSAGE_META_KEY.to_string(), meta);
                Value::Object(line)
            }
            other => {
                meta["data"] = other.clone();
                serde_json::json!({ MESSAGE_META_KEY: meta })
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishReply {
    pub id: u64,
    pub channel: String,
    /// How many subscribers it was queued for.
    pub delivered: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReply {
    pub messages: Vec<MessageInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelInfo {
    pub channel: String,
    /// Messages retained.
    pub messages: usize,
    pub last_id: Option<u64>,
    pub last_ms: Option<u64>,
    /// Subscribers whose patterns match it.
    pub subscribers: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelsReply {
    pub channels: Vec<ChannelInfo>,
}

/// What `clear` removed from a channel's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClearReply {
    pub channel: String,
    pub removed: u64,
}

/// The first frame of a subscription stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeReply {
    pub patterns: Vec<String>,
    /// The newest message id at the moment of subscribing: resume later
    /// from the last id received.
    pub last_id: u64,
    /// Retained messages after `since_id` that follow as items first.
    pub backlog: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentArgs {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_services: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_locks: Option<i64>,
    /// The process the agent lives and dies with (`none`: heartbeats only).
    #[serde(default)]
    pub owner: crate::Owner,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub id: String,
    pub name: Option<String>,
    pub kind: Option<String>,
    pub uid: u32,
    /// The process it lives and dies with, if any.
    pub pid: Option<u32>,
    pub command: Option<String>,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
    /// When it goes stale unless it sends a heartbeat.
    pub stale_at_ms: u64,
    pub max_services: Option<u64>,
    pub max_locks: Option<u64>,
    /// Its leases' ids.
    pub services: Vec<String>,
    /// The locks it owns.
    pub locks: Vec<String>,
    pub metadata: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentReply {
    pub agent: AgentInfo,
    /// The id was registered already (by this user); it was updated.
    pub existing: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentsReply {
    pub agents: Vec<AgentInfo>,
}

/// The agent `agent_unregister` removed, as it was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnregisterReply {
    pub unregistered: AgentInfo,
}

/// Who did something, as the kernel says (plus the agent the request named).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Actor {
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    /// Shared: the broker keeps one copy per connection (and per lease's
    /// owner), however many events and retained messages carry it.
    #[serde(default)]
    pub command: Option<std::sync::Arc<str>>,
}

/// One activity-log entry, which is also one event on the broker's bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityEntry {
    /// Unique and increasing across restarts (shared with message ids).
    pub id: u64,
    pub time_ms: u64,
    /// The event kind: `service.claim`, `lock.acquire`, `agent.stale`, ...
    pub action: String,
    /// The service id, lock name, channel or agent id acted on.
    pub target: String,
    /// Absent for what the broker did on its own (expiry, reclaim).
    pub actor: Option<Actor>,
    pub details: Value,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivityArgs {
    /// An action, or a prefix ending in `*` (`lock.*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// Entries at or after this time (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// The newest this many (default 100, at most 10 000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// Stream: after the matching entries, follow new ones as they happen.
    #[serde(default)]
    pub follow: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivityReply {
    /// Oldest first.
    pub entries: Vec<ActivityEntry>,
}

/// The first frame of `activity` with `follow`: the matching entries
/// (`backlog` of them) follow as items, then each new one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FollowReply {
    pub following: bool,
    pub backlog: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub id: String,
    pub port: u16,
    /// How long after the request the service was found accepting.
    pub waited_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaitReply {
    pub services: Vec<ReadyInfo>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{Actor, MessageInfo};

    fn message(data: serde_json::Value) -> MessageInfo {
        MessageInfo {
            id: 7,
            channel: "build:api".into(),
            time_ms: 1_700_000_000_000,
            data,
            from: Some(Actor {
                agent: Some("a".into()),
                pid: Some(42),
                uid: Some(1000),
                command: None,
            }),
        }
    }

    #[test]
    fn a_line_puts_an_object_payloads_fields_on_top_and_pbs_under_its_key() {
        let line = message(json!({"status": "complete", "port": 3100})).line();
        assert_eq!(
            line.to_string(),
            r#"{"status":"complete","port":3100,"_pb":{"id":7,"channel":"build:api","time_ms":1700000000000,"from":{"agent":"a","pid":42,"uid":1000,"command":null}}}"#
        );
    }

    #[test]
    fn a_payload_that_is_not_an_object_or_holds_the_key_is_pbs_data() {
        for data in [
            json!("text"),
            json!(3),
            json!([1, 2]),
            json!({"_pb": 1, "x": 2}),
        ] {
            let line = message(data.clone()).line();
            let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
            assert_eq!(keys, ["_pb"], "{line}");
            assert_eq!(line["_pb"]["data"], data, "{line}");
            assert_eq!(line["_pb"]["id"], 7);
        }
    }
}
