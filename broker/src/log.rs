//! The broker's log: levelled events (`tracing`) on stderr. A client that
//! starts the broker points stderr at the broker log (`broker.log` in the
//! state directory); systemd points it at the journal, which then gets each
//! line's level as an sd-daemon `<N>` prefix instead of a timestamp it
//! keeps itself. PB_LOG picks what is written: a level, or targets and
//! their levels (`info` when unset; `debug`, `pb_broker::core=debug,warn`,
//! ...), `tracing_subscriber`'s `Targets` syntax. Not `EnvFilter`'s,
//! whose span and field filters pb has no use for: their matchers were
//! 168 KB of the binary (BENCHMARKS.md, "The release binary").

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::{ParseError, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The variable that sets the filter.
pub const ENV: &str = "PB_LOG";

/// A PB_LOG the filter parser refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "PB_LOG={value:?} is not a log filter ({why}); try `info`, `debug` or `pb_broker=debug,warn`"
)]
pub struct BadFilter {
    value: String,
    why: String,
}

/// Installs the broker's logger, once, before anything logs. `journal`:
/// stderr is the journal's stream (platform's `stderr_is_journal`).
pub fn init(journal: bool) -> Result<(), BadFilter> {
    let filter = filter(&std::env::var(ENV).unwrap_or_default())?;
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    // A second init (a test calling `run` twice in one process) keeps the
    // first logger: the error says only that one is installed.
    let _ = if journal {
        builder
            .event_format(Journal)
            .finish()
            .with(filter)
            .try_init()
    } else {
        builder.finish().with(filter).try_init()
    };
    Ok(())
}

/// The filter a PB_LOG value names; `info` when it is empty.
fn filter(value: &str) -> Result<Targets, BadFilter> {
    if value.trim().is_empty() {
        return Ok(Targets::new().with_default(Level::INFO));
    }
    value.trim().parse().map_err(|e: ParseError| BadFilter {
        value: value.to_string(),
        why: e.to_string(),
    })
}

/// One line per event, `<N>message key=value`, N the syslog priority the
/// journal reads (sd-daemon(3)); no timestamp, the journal keeps its own.
struct Journal;

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

/// The syslog priority of a level: err, warning, info, debug.
fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_is_a_level_or_levels_per_module() {
        let unset = filter(" ").unwrap();
        assert!(unset.would_enable("pb_broker::core", &Level::INFO));
        assert!(!unset.would_enable("pb_broker::core", &Level::DEBUG));
        let per_module = filter("pb_broker::core=debug,warn").unwrap();
        assert!(per_module.would_enable("pb_broker::core::leases", &Level::DEBUG));
        assert!(!per_module.would_enable("pb_broker::reaper", &Level::INFO));
        assert!(per_module.would_enable("pb_broker::reaper", &Level::WARN));
        let err = filter("pb=loudest").unwrap_err().to_string();
        assert!(
            err.starts_with("PB_LOG=\"pb=loudest\" is not a log filter"),
            "{err}"
        );
    }

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
