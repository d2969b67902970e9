//! Colour on terminals: `--color=auto|always|never`, `auto` by default.
//! `auto` colours a stream only when it is a terminal and NO_COLOR is unset
//! or empty (no-color.org); `always` colours even a pipe (`| less -R`),
//! and wins over NO_COLOR, as an explicit flag should; `never` never does.
//! What is coloured: the `pb:` of errors, table headers and lease states,
//! and `pb up`'s per-service prefixes. JSON and `-q` output never are.

use std::io::IsTerminal;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    #[default]
    Auto,
    Always,
    Never,
}

static CHOICE: OnceLock<ColorChoice> = OnceLock::new();

/// Records the choice, once, before anything is printed.
pub fn set(choice: ColorChoice) {
    let _ = CHOICE.set(choice);
}

fn decide(terminal: bool) -> bool {
    match CHOICE.get().copied().unwrap_or_default() {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    }
}

/// Whether what goes to stdout is coloured.
pub fn stdout() -> bool {
    decide(std::io::stdout().is_terminal())
}

/// Whether what goes to stderr is coloured.
pub fn stderr() -> bool {
    decide(std::io::stderr().is_terminal())
}

/// `text` in SGR `code` (`"1"` bold, `"31"` red, ...) when `on`.
pub fn paint(on: bool, code: &str, text: &str) -> String {
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

pub const BOLD: &str = "1";
pub const RED: &str = "31";
pub const GREEN: &str = "32";
pub const YELLOW: &str = "33";
pub const CYAN: &str = "36";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paint_only_when_on() {
        assert_eq!(paint(false, RED, "x"), "x");
        assert_eq!(paint(true, RED, "x"), "\x1b[31mx\x1b[0m");
    }
}
