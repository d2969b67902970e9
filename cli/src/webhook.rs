//! `pb webhook add|ls|rm|test|deliveries|events`: one request each to the
//! broker's webhook operations; this file only builds the ops and prints
//! the replies.

use anyhow::Result;
use clap::Subcommand;
use pb_proto::paths::Paths;
use pb_proto::{
    DeliveriesReply, Op, WebhookArgs, WebhookCreated, WebhookDeleted, WebhookEventsReply,
    WebhookInfo, WebhookTestReply, WebhookUpdateArgs, WebhooksReply,
};

use crate::output::{self, human_ms, now_ms};
use crate::{connect, Format};

#[derive(Subcommand)]
pub enum WebhookCmd {
    /// Register a webhook; prints its secret, which is shown only now.
    Add {
        /// Where deliveries go: http(s)://host[:port]/path.
        url: String,
        /// An event kind to deliver (repeatable; default: every kind).
        #[arg(long = "event", short = 'e', value_name = "EVENT")]
        events: Vec<String>,
        /// The HMAC secret (default: a generated one).
        #[arg(long)]
        secret: Option<String>,
        /// Deliver only events whose target matches this id pattern.
        #[arg(long, value_name = "PATTERN")]
        filter: Option<String>,
    },
    /// List webhooks (never their secrets).
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a webhook with its queued deliveries.
    Rm {
        /// The webhook's id (wh_...).
        id: String,
    },
    /// Queue a test delivery (event webhook.test) to a webhook.
    Test {
        /// The webhook's id (wh_...).
        id: String,
    },
    /// A webhook's deliveries, newest first, with every attempt.
    Deliveries {
        /// The webhook's id (wh_...).
        id: String,
        #[arg(short = 'n', long)]
        limit: Option<i64>,
    },
    /// Re-enable a webhook (e.g. after its receiver answered 410).
    Enable {
        /// The webhook's id (wh_...).
        id: String,
    },
    /// Stop delivering to a webhook; its queue waits.
    Disable {
        /// The webhook's id (wh_...).
        id: String,
    },
    /// The event kinds webhooks can subscribe to.
    Events,
}

fn line(w: &WebhookInfo) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{} pending{}",
        w.id,
        w.url,
        if w.events.is_empty() {
            "*".to_string()
        } else {
            w.events.join(",")
        },
        w.filter.as_deref().unwrap_or("-"),
        w.pending,
        match (&w.active, &w.disabled_reason) {
            (true, _) => String::new(),
            (false, Some(r)) => format!("\tdisabled: {r}"),
            (false, None) => "\tdisabled".into(),
        }
    )
}

fn set_active(paths: &Paths, id: String, active: bool, fmt: Format) -> Result<i32> {
    let (w, _): (WebhookInfo, _) =
        connect::connect(paths)?.call_as(Op::WebhookUpdate(WebhookUpdateArgs {
            id,
            active: Some(active),
            ..Default::default()
        }))?;
    match fmt {
        Format::Json => output::print_json(&w),
        Format::Quiet => outln!("{}", w.id),
        Format::Human => outln!("{}", line(&w)),
    }
    Ok(0)
}

pub fn webhook(paths: &Paths, cmd: WebhookCmd, fmt: Format) -> Result<i32> {
    match cmd {
        WebhookCmd::Add {
            url,
            events,
            secret,
            filter,
        } => {
            let (r, _): (WebhookCreated, _) =
                connect::connect(paths)?.call_as(Op::WebhookAdd(WebhookArgs {
                    url,
                    events,
                    secret,
                    filter,
                }))?;
            match fmt {
                Format::Json => output::print_json(&r),
                Format::Quiet => outln!("{}", r.webhook.id),
                Format::Human => {
                    outln!("{}", line(&r.webhook));
                    outln!("secret: {}", r.secret);
                    eprintln!("pb: keep the secret now; it is not shown again");
                }
            }
        }
        WebhookCmd::Ls => {
            let (r, _): (WebhooksReply, _) = connect::connect(paths)?.call_as(Op::Webhooks)?;
            match fmt {
                Format::Json => output::print_json(&r),
                Format::Quiet => r.webhooks.iter().for_each(|w| outln!("{}", w.id)),
                Format::Human => r.webhooks.iter().for_each(|w| outln!("{}", line(w))),
            }
        }
        WebhookCmd::Rm { id } => {
            let (r, _): (WebhookDeleted, _) =
                connect::connect(paths)?.call_as(Op::WebhookDelete { id })?;
            match fmt {
                Format::Json => output::print_json(&r),
                Format::Quiet => outln!("{}", r.id),
                Format::Human => eprintln!("pb: webhook {} removed", r.id),
            }
        }
        WebhookCmd::Test { id } => {
            let (r, _): (WebhookTestReply, _) =
                connect::connect(paths)?.call_as(Op::WebhookTest { id })?;
            match fmt {
                Format::Json => output::print_json(&r),
                Format::Quiet => outln!("{}", r.delivery),
                Format::Human => eprintln!(
                    "pb: test delivery {} queued; see `pb webhook deliveries`",
                    r.delivery
                ),
            }
        }
        WebhookCmd::Deliveries { id, limit } => {
            let (r, _): (DeliveriesReply, _) =
                connect::connect(paths)?.call_as(Op::WebhookDeliveries { id, limit })?;
            match fmt {
                Format::Json => output::print_json(&r),
                Format::Quiet => r.deliveries.iter().for_each(|d| outln!("{}", d.id)),
                Format::Human => {
                    let now = now_ms();
                    for d in &r.deliveries {
                        outln!(
                            "{}\t{}\t{}\t{} ago\t{} attempts",
                            d.id,
                            d.event,
                            d.state,
                            human_ms(now.saturating_sub(d.created_ms)),
                            d.attempts.len()
                        );
                        for a in &d.attempts {
                            outln!(
                                "  #{}\t{}\t{} ms",
                                a.attempt,
                                match (a.status, &a.error) {
                                    (Some(s), _) => s.to_string(),
                                    (None, Some(e)) => e.clone(),
                                    (None, None) => "-".into(),
                                },
                                a.duration_ms
                            );
                        }
                    }
                }
            }
        }
        WebhookCmd::Enable { id } => return set_active(paths, id, true, fmt),
        WebhookCmd::Disable { id } => return set_active(paths, id, false, fmt),
        WebhookCmd::Events => {
            let (r, _): (WebhookEventsReply, _) =
                connect::connect(paths)?.call_as(Op::WebhookEvents)?;
            match fmt {
                Format::Json => output::print_json(&r),
                _ => r.events.iter().for_each(|e| outln!("{e}")),
            }
        }
    }
    Ok(0)
}
