//! Colours for the human output: on only when stdout is a terminal and
//! `NO_COLOR` is not set (<https://no-color.org>).

use std::ffi::OsStr;

/// What a piece of text says, which decides its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tone {
    /// Nothing special (the terminal's own colour).
    Plain,
    /// A heading.
    Strong,
    /// Finished well: DONE, up, ok.
    Good,
    /// Failed: ERROR, down, HIGH risk.
    Bad,
    /// Needs attention: WAITING, degraded, MED risk.
    Warn,
    /// In progress: RUNNING, PENDING.
    Busy,
    /// Out of play: CANCELLED, disabled, unknown.
    Muted,
}

impl Tone {
    /// The tone of a plan or step status, a health state or a module state.
    pub(crate) fn of_status(status: &str) -> Self {
        match status {
            "DONE" | "ok" | "up" | "confirmed" => Self::Good,
            "ERROR" | "down" | "denied" => Self::Bad,
            "WAITING" | "degraded" | "pending_confirmation" => Self::Warn,
            "RUNNING" | "PENDING" => Self::Busy,
            "CANCELLED" | "disabled" | "unknown" => Self::Muted,
            // Anything else about a dependency (`full`, `read_only`,
            // `locked`…) is a problem worth seeing.
            _ if !status.is_empty()
                && status.chars().all(|c| c.is_ascii_lowercase() || c == '_') =>
            {
                Self::Bad
            }
            _ => Self::Plain,
        }
    }

    /// The tone of a risk level.
    pub(crate) fn of_risk(risk: &str) -> Self {
        match risk {
            "HIGH" => Self::Bad,
            "MED" => Self::Warn,
            _ => Self::Plain,
        }
    }

    /// The SGR sequence that starts the tone. Every one is five bytes long,
    /// which keeps table columns aligned (see [`Paint::cell`]).
    const fn sgr(self) -> &'static str {
        match self {
            Self::Plain => "\x1b[39m",
            Self::Strong => "\x1b[01m",
            Self::Good => "\x1b[32m",
            Self::Bad => "\x1b[31m",
            Self::Warn => "\x1b[33m",
            Self::Busy => "\x1b[36m",
            Self::Muted => "\x1b[90m",
        }
    }
}

const RESET: &str = "\x1b[0m";

/// Whether to colour, decided once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Paint {
    enabled: bool,
}

impl Paint {
    /// No colour at all (the tests' default).
    #[cfg(test)]
    pub(crate) const OFF: Self = Self { enabled: false };

    /// Colour on (only the tests of the colours themselves use it directly).
    #[cfg(test)]
    pub(crate) const ON: Self = Self { enabled: true };

    /// Colour when the output is a terminal and `no_color` (the value of
    /// `NO_COLOR`) is absent or empty, as no-color.org defines it.
    pub(crate) fn new(is_terminal: bool, no_color: Option<&OsStr>) -> Self {
        Self {
            enabled: is_terminal && no_color.is_none_or(OsStr::is_empty),
        }
    }

    /// `text` in `tone`; unchanged when colour is off or the tone is plain.
    pub(crate) fn paint(self, tone: Tone, text: &str) -> String {
        if self.enabled && tone != Tone::Plain {
            format!("{}{text}{RESET}", tone.sgr())
        } else {
            text.to_owned()
        }
    }

    /// `text` in `tone` for a table cell. With colour on, every cell gets
    /// exactly one start sequence and one reset, plain ones too: the table
    /// crate counts the escape bytes as width, and the same count in every
    /// cell keeps the columns aligned.
    pub(crate) fn cell(self, tone: Tone, text: &str) -> String {
        if self.enabled {
            format!("{}{text}{RESET}", tone.sgr())
        } else {
            text.to_owned()
        }
    }
}

/// `line` without trailing spaces, nor the empty coloured cells
/// ([`Paint::cell`] of `""`) among them.
pub(crate) fn trim_end(line: &str) -> &str {
    let mut line = line.trim_end();
    while let Some(rest) = line.strip_suffix(RESET)
        && let Some(start) = rest.len().checked_sub(5)
        && rest.is_char_boundary(start)
        && rest[start..].starts_with("\x1b[")
    {
        line = rest[..start].trim_end();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_needs_a_terminal_and_no_no_color() {
        let check = |terminal, no_color: Option<&str>, expected| {
            assert_eq!(
                Paint::new(terminal, no_color.map(OsStr::new)),
                Paint { enabled: expected },
                "terminal={terminal} NO_COLOR={no_color:?}"
            );
        };
        check(true, None, true);
        check(true, Some(""), true);
        check(true, Some("1"), false);
        check(true, Some("0"), false);
        check(false, None, false);
        check(false, Some("1"), false);
    }

    #[test]
    fn plain_text_stays_plain_without_colour() {
        assert_eq!(Paint::OFF.paint(Tone::Bad, "ERROR"), "ERROR");
        assert_eq!(Paint::OFF.cell(Tone::Bad, "ERROR"), "ERROR");
        assert_eq!(Paint::ON.paint(Tone::Plain, "x"), "x");
        assert_eq!(Paint::ON.paint(Tone::Bad, "ERROR"), "\x1b[31mERROR\x1b[0m");
        assert_eq!(Paint::ON.cell(Tone::Plain, "x"), "\x1b[39mx\x1b[0m");
    }

    #[test]
    fn trailing_empty_cells_are_trimmed() {
        let empty = Paint::ON.cell(Tone::Plain, "");
        let full = Paint::ON.cell(Tone::Good, "DONE");
        assert_eq!(trim_end(&format!("{full}  {empty}  {empty}   ")), full);
        assert_eq!(trim_end("plain   "), "plain");
        assert_eq!(trim_end(&full), full);
    }

    #[test]
    fn every_tone_starts_with_a_sequence_of_the_same_length() {
        let tones = [
            Tone::Plain,
            Tone::Strong,
            Tone::Good,
            Tone::Bad,
            Tone::Warn,
            Tone::Busy,
            Tone::Muted,
        ];
        assert!(tones.iter().all(|t| t.sgr().len() == 5));
    }
}
