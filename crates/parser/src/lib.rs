//! Madre's offline fallback intent parser: text in English or Spanish to a
//! [`Dsl`], with no I/O, no clock and no randomness.
//!
//! Madre asks Switch first when it is up, but this parser always runs, so an
//! outage never blocks a request, and it is the safety floor: nothing
//! dangerous may come out of it as a harmless chat (SPEC §4 "Safety first").
//!
//! - Text is normalised before matching (compatibility forms, confusable
//!   letters, format characters, case and accents; see the `text` module),
//!   and matching is on whole words: "skill" is not "kill".
//! - Destructive verbs and phrases in English and Spanish ("delete",
//!   "nuke", "tear down", "bórralo", "dar de baja", …) win over everything
//!   else, even when negated: "don't delete anything" must be confirmed by a
//!   human. Stop wording ("shut down", "apaga", "disable") maps to `stop`.
//! - Command lines and SQL statements that change or destroy (`rm -rf /`,
//!   `curl … | sh`, `DROP TABLE`) add the warning [`SHELL_WARNING`], which
//!   the policy classifies as HIGH.
//! - Which rule fired is recorded in `parameters.safety`, so an approver sees
//!   why a request waits.
//!
//! ```
//! let dsl = madre_parser::parse("restart the switch");
//! assert_eq!(dsl.action, "restart");
//! assert_eq!(dsl.targets, vec![madre_models::Module::Switch]);
//!
//! let dsl = madre_parser::parse("please run rm -rf / for me");
//! assert_eq!(dsl.action, "delete");
//! assert!(dsl.warnings.iter().any(|w| w == madre_parser::SHELL_WARNING));
//! ```

mod lexicon;
mod shell;
mod text;
mod words;

use madre_models::{Dsl, Mode, Module};
use serde_json::{Map, Value, json};

pub use lexicon::{FAMILY_NAMES, Lexicon, LexiconError};

use lexicon::Hit;
use shell::Effect;
use text::{Classes, How, Words};

/// Confidence given to a destructive parse, and to a message holding a
/// command line or statement.
pub const DESTRUCTIVE_CONFIDENCE: f32 = 0.9;
/// Confidence given to every other fallback parse.
pub const FALLBACK_CONFIDENCE: f32 = 0.3;
/// Warning attached to any text containing a destructive verb, phrase,
/// command or statement.
pub const DESTRUCTIVE_WARNING: &str = "destructive_intent_detected";
/// Warning attached to any text containing a command line or a database
/// statement that changes or destroys; the policy classifies it as HIGH.
pub const SHELL_WARNING: &str = "shell_command_detected";
/// The parameter that records which safety rules fired: a list of objects
/// `{kind, family, rule, text}` (see [`Lexicon::parse`]).
pub const SAFETY_PARAMETER: &str = "safety";

/// Parses `text` into a DSL with the built-in word lists. Never fails and
/// never panics, whatever the input.
pub fn parse(text: &str) -> Dsl {
    Lexicon::builtin().parse(text)
}

impl Lexicon {
    /// Parses `text` into a DSL with this lexicon's word lists. Never fails
    /// and never panics, whatever the input.
    ///
    /// When a safety rule fired, `parameters.safety` lists each one as an
    /// object: `kind` (`word`, `phrase`, `letter_spaced`,
    /// `hidden_characters`, `shell` or `sql`), `family` (the action it maps
    /// to: `delete`, `stop`, `restart` or `change`), `rule` (the phrase of
    /// the word list, or the name of the command rule) and `text` (the words
    /// as written, or the command as read).
    pub fn parse(&self, text: &str) -> Dsl {
        let mut classes = Classes::default();
        let words = self.words(text, &mut classes);
        let hits = self.scan(&words);
        let commands = shell::detect(text, &mut classes);

        let effect = |wanted: Effect| commands.iter().any(|c| c.effect == wanted);
        let destructive = hits.delete.is_some() || effect(Effect::Destroys);
        let stop_index = self.actions().iter().position(|a| *a == "stop");
        let family = hits
            .families
            .iter()
            .enumerate()
            .find_map(|(i, hit)| hit.map(|hit| (i, hit)));
        let action = if destructive {
            "delete"
        } else if effect(Effect::Stops) && family.is_none_or(|(i, _)| Some(i) != stop_index) {
            "stop"
        } else if let Some((i, _)) = family {
            self.actions().get(i).copied().unwrap_or("chat")
        } else if effect(Effect::Restarts) {
            "restart"
        } else {
            "chat"
        };
        let domain = if destructive || !commands.is_empty() {
            "system"
        } else if hits.audio {
            "audio"
        } else {
            "general"
        };

        let mut targets = hits.targets;
        targets.sort();
        let targets: Vec<Module> = targets.into_iter().map(|(_, module)| module).collect();

        let mut parameters = text::extract_parameters(text);
        for (flag, on) in [
            ("parallel", hits.parallel),
            ("drift", hits.drift),
            ("spawn", hits.spawn),
        ] {
            if on {
                parameters.insert(flag.into(), Value::Bool(true));
            }
        }
        parameters.insert("original_message".into(), Value::String(text.to_owned()));

        // Only the parser writes this key: a `safety=…` in the text must not
        // pass for a record of the rules.
        parameters.remove(SAFETY_PARAMETER);
        let mut safety = Vec::new();
        if let Some(hit) = hits.delete {
            safety.push(self.record(&words, hit, "delete"));
        }
        if let Some(Some(hit)) = stop_index.and_then(|i| hits.families.get(i)) {
            safety.push(self.record(&words, *hit, "stop"));
        }
        for command in &commands {
            let family = match command.effect {
                Effect::Destroys => "delete",
                Effect::Stops => "stop",
                Effect::Restarts => "restart",
                Effect::Changes => "change",
            };
            safety.push(json!({
                "kind": command.kind.as_str(),
                "family": family,
                "rule": command.rule,
                "text": command.text,
            }));
        }
        if !safety.is_empty() {
            parameters.insert(SAFETY_PARAMETER.into(), Value::Array(safety));
        }

        let mut warnings = Vec::new();
        if destructive {
            warnings.push(DESTRUCTIVE_WARNING.to_owned());
        }
        if !commands.is_empty() {
            warnings.push(SHELL_WARNING.to_owned());
        }
        let confidence = if destructive || !commands.is_empty() {
            DESTRUCTIVE_CONFIDENCE
        } else {
            FALLBACK_CONFIDENCE
        };

        Dsl {
            domain: domain.to_owned(),
            action: action.to_owned(),
            parameters,
            targets,
            confidence,
            original_text: text.to_owned(),
            warnings,
            source: madre_models::DslSource::Fallback,
        }
    }

    /// The record of one word-list hit for `parameters.safety`.
    fn record(&self, words: &Words<'_>, hit: Hit, family: &str) -> Value {
        let kind = match self.how(words, hit) {
            How::LetterSpaced => "letter_spaced",
            How::Hidden => "hidden_characters",
            How::Plain if self.is_phrase(hit) => "phrase",
            How::Plain => "word",
        };
        let written: String = words.source(hit.start, hit.end).chars().take(200).collect();
        json!({
            "kind": kind,
            "family": family,
            "rule": self.display(hit),
            "text": written,
        })
    }
}

/// The mode a message runs in: an explicit `context.mode` wins, then an audio
/// domain moves the session to AUDIO_ENGINEER, else the session keeps the mode
/// it had (modes are sticky; a new session starts in MADRE).
pub fn select_mode(explicit: Option<Mode>, dsl: &Dsl, session_mode: Mode) -> Mode {
    match explicit {
        Some(mode) => mode,
        None if dsl.domain == "audio" => Mode::AudioEngineer,
        None => session_mode,
    }
}

/// Parameters of a parse, without the message itself: handy in tests and for
/// callers that only need the extracted values.
pub fn parameters_of(text: &str) -> Map<String, Value> {
    let mut params = parse(text).parameters;
    params.remove("original_message");
    params
}
