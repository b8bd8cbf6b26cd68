//! Madre's offline fallback intent parser: text in English or Spanish to a
//! [`Dsl`], with no I/O, no clock and no randomness.
//!
//! Madre asks Switch first when it is up, but this parser always runs, so an
//! outage never blocks a request. Matching is on whole words after folding
//! case and accents ("Bórralo" and "borralo" are the same word; "skill" is not
//! "kill"). Destructive verbs win over everything else: safety first, so even
//! "don't delete anything" is treated as a destructive request and must be
//! confirmed by a human.
//!
//! ```
//! let dsl = madre_parser::parse("restart the switch");
//! assert_eq!(dsl.action, "restart");
//! assert_eq!(dsl.targets, vec![madre_models::Module::Switch]);
//! ```

mod lexicon;
mod text;

use madre_models::{Dsl, Mode, Module};
use serde_json::{Map, Value};

use lexicon::{ACTION_FAMILIES, AUDIO_WORDS, DESTRUCTIVE_WORDS, DRIFT, PARALLEL, SPAWN, TARGETS};
use text::Words;

/// Confidence given to a destructive parse.
pub const DESTRUCTIVE_CONFIDENCE: f32 = 0.9;
/// Confidence given to every other fallback parse.
pub const FALLBACK_CONFIDENCE: f32 = 0.3;
/// Warning attached to any text containing a destructive verb.
pub const DESTRUCTIVE_WARNING: &str = "destructive_intent_detected";

/// Parses `text` into a DSL. Never fails and never panics, whatever the input.
pub fn parse(text: &str) -> Dsl {
    let words = Words::new(text);

    let destructive = words.contains_any(DESTRUCTIVE_WORDS);
    let audio = words.contains_any(AUDIO_WORDS);

    let action = if destructive {
        "delete"
    } else {
        ACTION_FAMILIES
            .iter()
            .find(|family| words.contains_any(family.words))
            .map_or("chat", |family| family.action)
    };
    let domain = if destructive {
        "system"
    } else if audio {
        "audio"
    } else {
        "general"
    };

    let mut targets: Vec<(usize, Module)> = TARGETS
        .iter()
        .filter_map(|(names, module)| words.first_position(names).map(|pos| (pos, *module)))
        .collect();
    targets.sort();
    targets.dedup_by_key(|(_, module)| *module);
    let targets = targets.into_iter().map(|(_, module)| module).collect();

    let mut parameters = text::extract_parameters(text);
    for (flag, phrases) in [("parallel", PARALLEL), ("drift", DRIFT), ("spawn", SPAWN)] {
        if words.contains_any(phrases) {
            parameters.insert(flag.into(), Value::Bool(true));
        }
    }
    parameters.insert("original_message".into(), Value::String(text.to_owned()));

    let (confidence, warnings) = if destructive {
        (DESTRUCTIVE_CONFIDENCE, vec![DESTRUCTIVE_WARNING.to_owned()])
    } else {
        (FALLBACK_CONFIDENCE, Vec::new())
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
