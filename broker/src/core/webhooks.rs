//! Webhooks, the core's side: registering, listing, updating, deleting and
//! testing them; turning events from the bus into queued deliveries; and
//! deciding, after each attempt the delivery worker (`deliver`) reports,
//! whether a delivery is done, retried later or given up.
//!
//! Every event goes through `Core::emit`, which hands it to `on_event`
//! here: a webhook subscribed to its kind, whose filter matches its target,
//! gets a delivery, written to SQLite before the request that caused the
//! event is answered (or, for what the broker does on its own, with the
//! activity log's next flush, within one coordination tick), and from then
//! on surviving crashes and restarts. The worker does the network I/O without the core's mutex and
//! comes back here only to fetch due deliveries and to record results.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use pb_proto::{
    AttemptInfo, DeliveriesReply, DeliveryInfo, ErrorCode, WebhookArgs, WebhookCreated,
    WebhookDeleted, WebhookEventsReply, WebhookInfo, WebhookTestReply, WebhookUpdateArgs,
    WebhooksReply, WireError,
};
use serde_json::Value;
use tokio::sync::Notify;

use crate::core::events::{Event, EventKind};
use crate::core::{now_ms, Core, Outcome};
use crate::ids::Pattern;
use crate::metrics::OutcomeLabel;
use crate::ssrf::{self, Host, Target};
use crate::store::{DeliveryRecord, StoreError, WebhookRecord};

/// The kinds a webhook may ask for (`webhook_events`).
pub(crate) fn events_list() -> Outcome {
    Outcome::of(WebhookEventsReply {
        events: WEBHOOK_KINDS.map(|k| k.name().to_string()).to_vec(),
    })
}

/// The event kinds a webhook can subscribe to (`GET /webhooks/events`).
pub const WEBHOOK_KINDS: [EventKind; 16] = [
    EventKind::ServiceClaim,
    EventKind::ServiceRelease,
    EventKind::ServiceReclaim,
    EventKind::ServiceOwnerChanged,
    EventKind::AgentRegister,
    EventKind::AgentUnregister,
    EventKind::AgentStale,
    EventKind::LockAcquire,
    EventKind::LockRelease,
    EventKind::MessagePublish,
    EventKind::StackUp,
    EventKind::StackDown,
    EventKind::StackRestart,
    EventKind::StackCrash,
    EventKind::DaemonStart,
    EventKind::DaemonStop,
];

/// The event `webhook_test` sends.
pub const TEST_EVENT: &str = "webhook.test";
/// The longest secret accepted, in bytes.
pub const MAX_SECRET: usize = 256;
/// Most deliveries one `webhook_deliveries` returns.
const MAX_DELIVERIES_LISTED: usize = 1000;
/// The first retry's delay; each next one doubles, up to the configured
/// maximum, plus up to a quarter of itself as jitter.
pub const FIRST_RETRY_MS: u64 = 1000;
/// Finished deliveries between trims of a webhook's log: the trim scans
/// the webhook's rows, so it runs once per this many, and the log holds at
/// most `log_retain` + this many.
const TRIM_EVERY: usize = 32;

/// `N` bytes from the kernel's random source.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], WireError> {
    let mut buf = [0u8; N];
    pb_platform::os::random_bytes(&mut buf)
        .map_err(|e| WireError::new(ErrorCode::Internal, format!("getrandom: {e}")))?;
    Ok(buf)
}

/// A random UUID (version 4), the form Port Daddy's delivery ids take.
fn uuid() -> Result<String, WireError> {
    let mut b = random_bytes::<16>()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// A generated secret in the Standard Webhooks form: `whsec_` and the
/// base64 of 32 random bytes.
fn generate_secret() -> Result<String, WireError> {
    use base64::Engine;
    let key = random_bytes::<32>()?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    ))
}

fn kind_named(name: &str) -> Option<EventKind> {
    WEBHOOK_KINDS.into_iter().find(|k| k.name() == name)
}

struct Hook {
    rec: WebhookRecord,
    target: Target,
    /// `None`: every kind in `WEBHOOK_KINDS`.
    kinds: Option<Vec<EventKind>>,
    filter: Option<Pattern>,
    /// Deliveries pending (stored or about to be).
    queued: u64,
    /// Deliveries finished since the log was last trimmed.
    untrimmed: usize,
}

impl Hook {
    fn info(&self) -> WebhookInfo {
        WebhookInfo {
            id: self.rec.id.clone(),
            url: self.rec.url.clone(),
            events: self.rec.events.clone(),
            filter: self.rec.filter.clone(),
            active: self.rec.active,
            disabled_reason: self.rec.disabled_reason.clone(),
            created_ms: self.rec.created_ms,
            pending: self.queued,
        }
    }

    fn wants(&self, ev: &Event) -> bool {
        self.rec.active
            && self
                .kinds
                .as_ref()
                .map_or(WEBHOOK_KINDS.contains(&ev.kind), |k| k.contains(&ev.kind))
            && self.filter.as_ref().is_none_or(|p| p.matches(&ev.target))
    }
}

/// The webhooks and their in-memory bookkeeping.
#[derive(Default)]
pub struct Webhooks {
    hooks: BTreeMap<String, Hook>,
    /// Deliveries made since the last flush.
    unwritten: Vec<DeliveryRecord>,
    /// Webhooks with an attempt in flight (at most one each).
    in_flight: HashSet<String>,
    /// Wakes the delivery worker.
    notify: Arc<Notify>,
}

impl Webhooks {
    /// Deliveries pending over every webhook.
    pub fn queued(&self) -> usize {
        self.hooks.values().map(|h| h.queued as usize).sum()
    }
}

/// One attempt for the worker to make: everything it needs, so that it
/// never touches the core during network I/O.
#[derive(Debug, Clone)]
pub struct Job {
    pub delivery: DeliveryRecord,
    pub target: Target,
    pub secret: String,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum AttemptResult {
    /// The receiver answered.
    Status {
        code: u16,
        /// `Retry-After`, in milliseconds.
        retry_after_ms: Option<u64>,
    },
    /// The SSRF policy refused every way to the receiver: not retried.
    Refused(String),
    /// Resolution, connection, timeout or protocol failure: retried.
    Failed(String),
}

/// Checks a URL for registration: parseable, http or https, and, when its
/// host is an address, one the policy allows.
fn check_url(url: &str, policy: ssrf::Policy) -> Result<Target, WireError> {
    let target = ssrf::parse_url(url)?;
    if let Host::Ip(ip) = target.host {
        ssrf::check(ip, policy)?;
    }
    Ok(target)
}

fn check_events(events: &[String]) -> Result<(Vec<String>, Option<Vec<EventKind>>), WireError> {
    let mut names: Vec<String> = Vec::new();
    let mut kinds = Vec::new();
    for e in events {
        let k = kind_named(e).ok_or_else(|| {
            let shown: String = e.chars().take(60).collect();
            WireError::new(
                ErrorCode::InvalidName,
                format!(
                    "unknown event {shown:?}; webhooks can subscribe to: {}",
                    WEBHOOK_KINDS.map(EventKind::name).join(", ")
                ),
            )
        })?;
        if !kinds.contains(&k) {
            kinds.push(k);
            names.push(k.name().to_string());
        }
    }
    Ok(if kinds.is_empty() {
        (names, None)
    } else {
        (names, Some(kinds))
    })
}

fn check_secret(secret: &str) -> Result<(), WireError> {
    if secret.len() > MAX_SECRET {
        return Err(WireError::new(
            ErrorCode::TooLarge,
            format!(
                "the secret is {} bytes; the limit is {MAX_SECRET}",
                secret.len()
            ),
        ));
    }
    if secret.is_empty() || secret.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            "the secret must be 1 to 256 printable ASCII characters without spaces",
        ));
    }
    Ok(())
}

fn check_filter(filter: Option<&str>) -> Result<Option<Pattern>, WireError> {
    filter
        .filter(|f| !f.is_empty())
        .map(Pattern::parse)
        .transpose()
}

fn not_found(id: &str) -> WireError {
    let shown: String = id.chars().take(80).collect();
    WireError::new(ErrorCode::NotFound, format!("no webhook {shown:?}"))
}

/// The body every delivery of `event` carries.
fn payload(event: &str, time_ms: u64, data: Value) -> String {
    serde_json::json!({ "event": event, "timestamp": time_ms, "data": data }).to_string()
}

fn delivery_info(d: &DeliveryRecord) -> DeliveryInfo {
    DeliveryInfo {
        id: d.id.clone(),
        event: d.event.clone(),
        created_ms: d.created_ms,
        state: d.state.clone(),
        attempts: serde_json::from_str(&d.log).unwrap_or_default(),
        next_attempt_ms: if d.state == "pending" {
            d.next_ms
        } else {
            None
        },
    }
}

/// The wait before attempt `n + 1`, after `n` failed attempts: 1 s, 2 s,
/// 4 s ... up to `max_ms`, plus up to 25 % jitter (never less than the
/// base, so retries keep their order), and at least what `Retry-After`
/// asked (still capped at `max_ms`).
pub fn retry_delay_ms(n: u32, max_ms: u64, retry_after_ms: Option<u64>, jitter: u16) -> u64 {
    let base = FIRST_RETRY_MS
        .saturating_mul(1u64 << n.saturating_sub(1).min(40))
        .min(max_ms);
    let with_jitter = base + base / 4 * u64::from(jitter) / u64::from(u16::MAX);
    with_jitter.max(retry_after_ms.unwrap_or(0)).min(max_ms)
}

impl Core {
    pub(crate) fn load_webhooks(&mut self) -> Result<(), StoreError> {
        let counts: BTreeMap<String, u64> = self.store.pending_counts()?.into_iter().collect();
        for rec in self.store.load_webhooks()? {
            let Ok(target) = ssrf::parse_url(&rec.url) else {
                tracing::warn!("webhook {} has an unusable URL; skipped", rec.id);
                continue;
            };
            let kinds = check_events(&rec.events).map(|(_, k)| k).unwrap_or(None);
            let filter = check_filter(rec.filter.as_deref()).unwrap_or(None);
            let queued = counts.get(&rec.id).copied().unwrap_or(0);
            self.webhooks.hooks.insert(
                rec.id.clone(),
                Hook {
                    rec,
                    target,
                    kinds,
                    filter,
                    queued,
                    untrimmed: TRIM_EVERY,
                },
            );
        }
        Ok(())
    }

    /// The handle that wakes the delivery worker.
    pub fn webhook_notify(&self) -> Arc<Notify> {
        self.webhooks.notify.clone()
    }

    pub(crate) fn webhooks_list(&self) -> Outcome {
        Outcome::of(WebhooksReply {
            webhooks: self.webhooks.hooks.values().map(Hook::info).collect(),
        })
    }

    pub(crate) fn webhook_get(&self, id: &str) -> Result<Outcome, WireError> {
        Ok(Outcome::of(self.hook(id)?.info()))
    }

    fn hook(&self, id: &str) -> Result<&Hook, WireError> {
        self.webhooks.hooks.get(id).ok_or_else(|| not_found(id))
    }

    pub(crate) fn webhook_add(&mut self, a: WebhookArgs) -> Result<Outcome, WireError> {
        let c = &self.cfg.webhooks;
        let target = check_url(&a.url, c.policy)?;
        let (events, kinds) = check_events(&a.events)?;
        if let Some(s) = &a.secret {
            check_secret(s)?;
        }
        let filter = check_filter(a.filter.as_deref())?;
        if self.webhooks.hooks.len() >= c.max_webhooks {
            return Err(WireError::new(
                ErrorCode::Limit,
                format!("too many webhooks (limit {})", c.max_webhooks),
            ));
        }
        let secret = match a.secret {
            Some(s) => s,
            None => generate_secret()?,
        };
        let rec = WebhookRecord {
            id: format!("wh_{}", hex::encode(random_bytes::<8>()?)),
            url: a.url,
            events,
            filter: a.filter.filter(|f| !f.is_empty()),
            secret: secret.clone(),
            active: true,
            disabled_reason: None,
            created_ms: now_ms(),
        };
        self.store.put_webhook(&rec)?;
        let hook = Hook {
            rec,
            target,
            kinds,
            filter,
            queued: 0,
            untrimmed: 0,
        };
        let webhook = hook.info();
        self.webhooks.hooks.insert(webhook.id.clone(), hook);
        Ok(Outcome::of(WebhookCreated { webhook, secret }))
    }

    pub(crate) fn webhook_update(&mut self, a: WebhookUpdateArgs) -> Result<Outcome, WireError> {
        let policy = self.cfg.webhooks.policy;
        let hook = self.hook(&a.id)?;
        let mut rec = hook.rec.clone();
        let mut target = hook.target.clone();
        let mut kinds = hook.kinds.clone();
        let mut filter = hook.filter.clone();
        if let Some(url) = a.url {
            target = check_url(&url, policy)?;
            rec.url = url;
        }
        if let Some(events) = a.events {
            let (names, k) = check_events(&events)?;
            rec.events = names;
            kinds = k;
        }
        if let Some(s) = a.secret {
            check_secret(&s)?;
            rec.secret = s;
        }
        if let Some(f) = a.filter {
            filter = check_filter(Some(&f))?;
            rec.filter = Some(f).filter(|f| !f.is_empty());
        }
        if let Some(active) = a.active {
            rec.active = active;
            rec.disabled_reason = if active {
                None
            } else {
                Some("disabled by request".into())
            };
        }
        self.store.put_webhook(&rec)?;
        let hook = self.webhooks.hooks.get_mut(&a.id).expect("checked above");
        hook.rec = rec;
        hook.target = target;
        hook.kinds = kinds;
        hook.filter = filter;
        let info = hook.info();
        self.webhooks.notify.notify_one();
        Ok(Outcome::of(info))
    }

    pub(crate) fn webhook_delete(&mut self, id: &str) -> Result<Outcome, WireError> {
        self.hook(id)?;
        self.store.delete_webhook(id)?;
        self.webhooks.hooks.remove(id);
        self.webhooks.unwritten.retain(|d| d.webhook != id);
        Ok(Outcome::of(WebhookDeleted {
            id: id.to_string(),
            deleted: true,
        }))
    }

    pub(crate) fn webhook_test(&mut self, id: &str) -> Result<Outcome, WireError> {
        self.hook(id)?;
        let now = now_ms();
        let data = serde_json::json!({ "webhook": id, "message": "test delivery from pb" });
        let d = DeliveryRecord {
            id: uuid()?,
            webhook: id.to_string(),
            event: TEST_EVENT.to_string(),
            body: payload(TEST_EVENT, now, data),
            created_ms: now,
            state: "pending".into(),
            attempts: 0,
            next_ms: Some(now),
            log: "[]".into(),
        };
        self.store.insert_deliveries(std::slice::from_ref(&d))?;
        if let Some(h) = self.webhooks.hooks.get_mut(id) {
            h.queued += 1;
        }
        self.webhooks.notify.notify_one();
        Ok(Outcome::of(WebhookTestReply { delivery: d.id }))
    }

    pub(crate) fn webhook_deliveries(
        &mut self,
        id: &str,
        limit: Option<i64>,
    ) -> Result<Outcome, WireError> {
        self.hook(id)?;
        let limit = match limit {
            None => 50,
            Some(n) if n >= 1 => (n as usize).min(MAX_DELIVERIES_LISTED),
            Some(n) => {
                return Err(WireError::new(
                    ErrorCode::InvalidRequest,
                    format!("limit must be at least 1, not {n}"),
                ))
            }
        };
        // Deliveries still waiting for the next flush are listed too.
        self.flush_webhooks();
        let rows = self.store.deliveries_of(id, limit)?;
        Ok(Outcome::of(DeliveriesReply {
            webhook: id.to_string(),
            deliveries: rows.iter().map(delivery_info).collect(),
        }))
    }

    /// The bus's hand-off: queues a delivery for every webhook that wants
    /// `ev`. Runs inside `emit`, so it only builds rows in memory.
    pub(crate) fn webhooks_on_event(&mut self, ev: &Event) {
        if self.webhooks.hooks.is_empty() {
            return;
        }
        let max_queue = self.cfg.webhooks.max_queue as u64;
        let mut body: Option<String> = None;
        for hook in self.webhooks.hooks.values_mut() {
            if !hook.wants(ev) {
                continue;
            }
            if hook.queued >= max_queue {
                tracing::warn!(
                    "webhook {} has {} deliveries waiting; event {} dropped for it",
                    hook.rec.id,
                    hook.queued,
                    ev.id
                );
                continue;
            }
            let Ok(id) = uuid() else {
                tracing::warn!("no randomness for a delivery id; event {} dropped", ev.id);
                continue;
            };
            let body = body
                .get_or_insert_with(|| {
                    let data = serde_json::json!({
                        "id": ev.id,
                        "target": ev.target,
                        "actor": ev.actor,
                        "details": ev.details_value(),
                    });
                    payload(ev.kind.name(), ev.time_ms, data)
                })
                .clone();
            hook.queued += 1;
            self.webhooks.unwritten.push(DeliveryRecord {
                id,
                webhook: hook.rec.id.clone(),
                event: ev.kind.name().to_string(),
                body,
                created_ms: ev.time_ms,
                state: "pending".into(),
                attempts: 0,
                next_ms: Some(ev.time_ms),
                log: "[]".into(),
            });
        }
    }

    /// Writes the deliveries queued since the last flush and wakes the
    /// worker. Runs after every request (before its reply) and with the
    /// activity log's flush (for what the broker did on its own).
    pub fn flush_webhooks(&mut self) {
        if self.webhooks.unwritten.is_empty() {
            return;
        }
        match self.store.insert_deliveries(&self.webhooks.unwritten) {
            Ok(()) => {
                self.webhooks.unwritten.clear();
                self.webhooks.notify.notify_one();
            }
            Err(e) => tracing::error!("cannot queue webhook deliveries: {e}"),
        }
    }

    /// Up to `slots` attempts due now, at most one per webhook and none
    /// for a webhook with one in flight; and when the next one is due.
    pub fn webhook_jobs(&mut self, now: u64, slots: usize) -> (Vec<Job>, Option<u64>) {
        let mut jobs = Vec::new();
        let mut next: Option<u64> = None;
        for hook in self.webhooks.hooks.values() {
            if !hook.rec.active
                || hook.queued == 0
                || self.webhooks.in_flight.contains(&hook.rec.id)
            {
                continue;
            }
            let first = match self.store.first_pending(&hook.rec.id) {
                Ok(Some(d)) => d,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("cannot read the webhook queue: {e}");
                    continue;
                }
            };
            let due = first.next_ms.unwrap_or(now);
            if due <= now && jobs.len() < slots {
                jobs.push(Job {
                    delivery: first,
                    target: hook.target.clone(),
                    secret: hook.rec.secret.clone(),
                });
            } else {
                let at = due.max(now);
                next = Some(next.map_or(at, |n: u64| n.min(at)));
            }
        }
        for j in &jobs {
            self.webhooks.in_flight.insert(j.delivery.webhook.clone());
        }
        (jobs, next)
    }

    /// Records an attempt's result: the delivery is done, failed, or due
    /// again after a backoff; a 410 disables the webhook.
    pub fn webhook_attempted(
        &mut self,
        job: Job,
        started_ms: u64,
        duration_ms: u64,
        result: AttemptResult,
        jitter: u16,
    ) {
        let hook_id = job.delivery.webhook.clone();
        self.webhooks.in_flight.remove(&hook_id);
        let c = self.cfg.webhooks.clone();
        let Some(hook) = self.webhooks.hooks.get_mut(&hook_id) else {
            return; // deleted meanwhile, with its queue
        };
        let mut d = job.delivery;
        d.attempts += 1;
        let mut log: Vec<AttemptInfo> = serde_json::from_str(&d.log).unwrap_or_default();
        let (status, error) = match &result {
            AttemptResult::Status { code, .. } => (Some(*code), None),
            AttemptResult::Refused(e) | AttemptResult::Failed(e) => (None, Some(e.clone())),
        };
        log.push(AttemptInfo {
            attempt: d.attempts,
            started_ms,
            duration_ms,
            status,
            error: error.clone(),
        });
        d.log = serde_json::to_string(&log).expect("attempts serialize");
        let mut retry_after = None;
        let finished = match result {
            AttemptResult::Status { code, .. } if (200..300).contains(&code) => Some("delivered"),
            AttemptResult::Status { code: 410, .. } => {
                hook.rec.active = false;
                hook.rec.disabled_reason = Some(format!(
                    "the receiver answered 410 Gone at {started_ms} (delivery {})",
                    d.id
                ));
                if let Err(e) = self.store.put_webhook(&hook.rec) {
                    tracing::error!("cannot disable webhook {hook_id}: {e}");
                }
                tracing::info!("webhook {hook_id} disabled: its receiver answered 410 Gone");
                Some("failed")
            }
            AttemptResult::Refused(_) => Some("failed"),
            AttemptResult::Status { retry_after_ms, .. } => {
                retry_after = retry_after_ms;
                None
            }
            AttemptResult::Failed(_) => None,
        };
        let finished = finished.or((d.attempts >= c.max_attempts).then_some("failed"));
        self.metrics
            .webhook_attempts
            .get_or_create(&OutcomeLabel {
                outcome: finished.unwrap_or("retrying"),
            })
            .inc();
        match finished {
            Some(state) => {
                d.state = state.into();
                d.next_ms = None;
                hook.queued = hook.queued.saturating_sub(1);
            }
            None => {
                let wait = retry_delay_ms(d.attempts, c.max_delay_ms, retry_after, jitter);
                d.next_ms = Some(now_ms() + wait);
            }
        }
        if let Err(e) = self.store.update_delivery(&d) {
            tracing::error!("cannot record delivery {}: {e}", d.id);
        }
        if finished.is_some() {
            hook.untrimmed += 1;
            if hook.untrimmed >= TRIM_EVERY {
                hook.untrimmed = 0;
                if let Err(e) = self.store.trim_deliveries(&hook_id, c.log_retain) {
                    tracing::error!("cannot trim the delivery log of {hook_id}: {e}");
                }
            }
        }
        // Never delivered to webhooks themselves (not in WEBHOOK_KINDS):
        // an attempt cannot cause another.
        self.emit(
            EventKind::WebhookAttempt,
            &hook_id,
            None,
            serde_json::json!({
                "delivery": d.id,
                "event": d.event,
                "attempt": d.attempts,
                "status": status,
                "error": error,
                "state": finished.unwrap_or("retrying"),
                "next_ms": d.next_ms,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_bounded_jitter_and_honours_retry_after() {
        let max = 3_600_000;
        assert_eq!(retry_delay_ms(1, max, None, 0), 1000);
        assert_eq!(retry_delay_ms(2, max, None, 0), 2000);
        assert_eq!(retry_delay_ms(3, max, None, 0), 4000);
        assert_eq!(retry_delay_ms(4, max, None, u16::MAX), 10_000);
        for j in [0, 1000, u16::MAX] {
            let a = retry_delay_ms(1, max, None, j);
            let b = retry_delay_ms(2, max, None, j);
            assert!((1000..=1250).contains(&a) && (2000..=2500).contains(&b));
        }
        assert_eq!(retry_delay_ms(40, 60_000, None, u16::MAX), 60_000);
        assert_eq!(retry_delay_ms(1, max, Some(30_000), 0), 30_000);
        assert_eq!(retry_delay_ms(1, 10_000, Some(30_000), 0), 10_000);
    }

    #[test]
    fn events_and_secrets_are_checked() {
        assert!(
            check_events(&["service.claim".into(), "service.claim".into()])
                .is_ok_and(|(n, k)| n.len() == 1 && k.is_some_and(|k| k.len() == 1))
        );
        assert_eq!(
            check_events(&["service.renew".into()]).unwrap_err().code,
            ErrorCode::InvalidName
        );
        assert!(check_events(&[]).is_ok_and(|(_, k)| k.is_none()));
        assert_eq!(
            check_secret(&"x".repeat(MAX_SECRET + 1)).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert!(check_secret("has space").is_err() && check_secret("").is_err());
        assert!(generate_secret().unwrap().starts_with("whsec_"));
        let u = uuid().unwrap();
        assert_eq!((u.len(), &u[14..15]), (36, "4"));
    }
}
