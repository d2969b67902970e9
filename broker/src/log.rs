//! The broker's log: levelled events (`tracing`) on stderr. A client that
//! starts the broker points stderr at the broker log (`broker.log` in the
//! state directory); systemd points it at the journal, which then gets each
//! line's level as an sd-daemon `<N>` prefix instead of a timestamp it
//! keeps itself. PB_LOG picks what is written, in `tracing`'s filter
//! syntax (`info` when unset; `debug`, `pb_broker::core=debug,warn`, ...).

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

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
    let value = std::env::var(ENV).unwrap_or_default();
    let filter = if value.trim().is_empty() {
        EnvFilter::new("info")
    } else {
        EnvFilter::try_new(value.trim()).map_err(|e| BadFilter {
            value: value.clone(),
            why: e.to_string(),
        })?
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    // A second init (a test calling `run` twice in one process) keeps the
    // first logger: the error says only that one is installed.
    let _ = if journal {
        builder.event_format(Journal).try_init()
    } else {
        builder.try_init()
    };
    Ok(())
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
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::TRACE), 7);
    }
}
