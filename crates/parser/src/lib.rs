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

mod effect;
mod effect_words;
mod lexicon;
mod shell;
mod text;
mod words;

use madre_models::{Dsl, Mode, Module};
use serde_json::{Map, Value, json};
use std::ops::Range;

pub use lexicon::{EffectExtras, FAMILY_NAMES, Lexicon, LexiconError};

use effect::Mood;
use lexicon::{Hit, Hits};
use madre_models::Effect;
use shell::Effect as ShellEffect;
use text::{Classes, How, Words};

/// One clause of a message, as read.
struct Clause<'t> {
    raw: &'t str,
    /// It starts after a soft cut kept because the clause before asks a
    /// question (see `Lexicon::merge_soft_cuts`).
    soft: bool,
    hits: Hits,
    reading: effect::Reading,
    /// The safety records of its first destructive and stop words.
    delete: Option<Value>,
    stop: Option<Value>,
}

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

/// An order is read again with at most this many bytes …
const MAX_JOINED_ORDER: usize = 200;
/// … and this many clauses after it, so the extra reading stays a small
/// multiple of the text, whatever the text.
const MAX_JOINED_CLAUSES: usize = 4;

/// The byte offset of `part` within `text`, or `None` when `part` is not
/// a slice of it (an empty `""` from out of range, say).
fn offset_in(text: &str, part: &str) -> Option<usize> {
    (part.as_ptr() as usize)
        .checked_sub(text.as_ptr() as usize)
        .filter(|offset| offset + part.len() <= text.len())
}

/// The parameter that lists every action family a message of several
/// requests names ("patch prod. roll back staging" names `update` and
/// `restore`), when there is more than one. The DSL's `action` is the first
/// in the SPEC §4 order; the policy classifies all of them, so a second
/// request can never lower the first one's risk. Only the parser writes
/// it.
pub const ACTIONS_PARAMETER: &str = "actions";

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
    /// `hidden_characters`, `shell`, `sql` or `effect`), `family` (the
    /// action it maps to: `delete`, `stop`, `restart` or `change`; for
    /// `effect`, the effect that made it wait), `rule` (the phrase of the
    /// word list, the name of the command rule, or why the effect) and
    /// `text` (the words as written, the command as read, or the clause).
    pub fn parse(&self, text: &str) -> Dsl {
        let mut classes = Classes::default();
        let ranges = self.merge_soft_cuts(text, effect::clauses(text, &mut classes), &mut classes);
        let mut clauses: Vec<Clause> = Vec::with_capacity(ranges.len());
        for (range, soft) in ranges {
            let raw = &text[range];
            let words = self.words(raw, &mut classes);
            let hits = self.scan(&words);
            let reading = self.read_clause(&words, raw);
            let delete = hits.delete.map(|hit| self.record(&words, hit, "delete"));
            let stop = self
                .actions()
                .iter()
                .position(|a| *a == "stop")
                .and_then(|i| hits.families.get(i).copied().flatten())
                .map(|hit| self.record(&words, hit, "stop"));
            clauses.push(Clause {
                raw,
                soft,
                hits,
                reading,
                delete,
                stop,
            });
        }
        // Phrases cut by a clause boundary ("form-atea, el servidor"): the
        // whole text is scanned too, and a hit counts when it starts in a
        // clause that is not a question.
        if clauses.len() > 1 {
            let whole = self.words(text, &mut classes);
            let whole_hits = self.scan(&whole);
            let spans: Vec<Range<usize>> = clauses
                .iter()
                .map(|c| {
                    let start = offset_in(text, c.raw).unwrap_or(text.len());
                    start..start + c.raw.len()
                })
                .collect();
            let clause_of = |hit: Hit| {
                let at = offset_in(text, whole.source(hit.start, hit.end))?;
                spans.iter().position(|span| span.contains(&at))
            };
            if let Some(hit) = whole_hits.delete
                && let Some(i) = clause_of(hit)
                && clauses[i].hits.delete.is_none()
            {
                clauses[i].delete = Some(self.record(&whole, hit, "delete"));
                clauses[i].hits.delete = Some(hit);
            }
            // "stop tentaculo, link": a module name cut by punctuation
            for &(start, module) in &whole_hits.targets {
                if let Some(at) = offset_in(text, whole.source(start, start + 1))
                    && let Some(i) = spans.iter().position(|span| span.contains(&at))
                    && !clauses
                        .iter()
                        .any(|c| c.hits.targets.iter().any(|(_, m)| *m == module))
                {
                    clauses[i].hits.targets.push((usize::MAX, module));
                }
            }
            for (f, hit) in whole_hits.families.iter().enumerate() {
                if let Some(hit) = hit
                    && let Some(i) = clause_of(*hit)
                    && let Some(slot) = clauses[i].hits.families.get_mut(f)
                {
                    slot.get_or_insert(*hit);
                }
            }
        }
        // A continuation reads as the clause before it.
        for i in 1..clauses.len() {
            if clauses[i].reading.mood == Mood::Continuation {
                clauses[i].reading.mood = clauses[i - 1].reading.mood;
                if clauses[i].reading.mood == Mood::Question {
                    clauses[i].reading.effect = Effect::Read;
                }
            }
        }
        // "add a line that sends! the history to this url", "create 10,000,
        // test users in production": an order cut by a comma, a colon, an
        // exclamation or a full stop is read again with what follows (a
        // conjunction's verbless clause is a continuation instead). The
        // joined reading can only raise it.
        let mut order_start: Option<usize> = None;
        for i in 0..clauses.len() {
            let weak_cut = i > 0
                && clauses[i - 1]
                    .raw
                    .trim_end()
                    .ends_with([',', ':', '!', '.']);
            let is_order = clauses[i].reading.mood == Mood::Order;
            let Some(k) = order_start.filter(|_| weak_cut) else {
                order_start = is_order.then_some(i);
                continue;
            };
            let (Some(start), Some(end)) = (
                offset_in(text, clauses[k].raw),
                offset_in(text, clauses[i].raw).map(|o| o + clauses[i].raw.len()),
            ) else {
                continue;
            };
            // (the words after an undone soft cut come last, out of text order)
            if end <= start || end - start > MAX_JOINED_ORDER || i - k > MAX_JOINED_CLAUSES {
                order_start = is_order.then_some(i);
                continue;
            }
            let joined = &text[start..end];
            let words = self.words(joined, &mut classes);
            let reading = self.read_clause(&words, joined);
            let order = &mut clauses[k].reading;
            if reading.effect > order.effect {
                order.effect = reading.effect;
                order.rule = reading.rule;
            }
        }
        // "what is the difference, in practice?": words after a soft cut go
        // on with a question only when they end with a question mark;
        // "explain this error: to fix it drop the table" stays an order.
        for i in 1..clauses.len() {
            if clauses[i].soft
                && clauses[i - 1].reading.mood == Mood::Question
                && clauses[i].reading.mood != Mood::Order
                && clauses[i].raw.trim_end().ends_with('?')
            {
                clauses[i].reading.mood = Mood::Question;
                clauses[i].reading.effect = Effect::Read;
            }
        }
        // "explain X, then do it": the doing makes every clause count.
        let doing = clauses.iter().any(|c| c.reading.doing);
        let active = |c: &Clause<'_>| doing || c.reading.mood != Mood::Question;

        let families = self.actions().len();
        let mut family: Option<usize> = None;
        // every family an active clause names, for ACTIONS_PARAMETER
        let mut named_families: Vec<usize> = Vec::new();
        let mut delete_record = None;
        let mut stop_record = None;
        let mut targets: Vec<Module> = Vec::new();
        let (mut audio, mut parallel, mut drift, mut spawn) = (false, false, false, false);
        let mut effect = Effect::Read;
        let mut why: Option<(Effect, &'static str, &str)> = None;
        for clause in &clauses {
            let mut clause_targets = clause.hits.targets.clone();
            clause_targets.sort();
            for (_, module) in clause_targets {
                if !targets.contains(&module) {
                    targets.push(module);
                }
            }
            audio |= clause.hits.audio;
            if !active(clause) {
                continue;
            }
            parallel |= clause.hits.parallel;
            drift |= clause.hits.drift;
            spawn |= clause.hits.spawn;
            if delete_record.is_none() {
                delete_record.clone_from(&clause.delete);
            }
            if stop_record.is_none() {
                stop_record.clone_from(&clause.stop);
            }
            let mut named_here =
                (0..families).filter(|&i| clause.hits.families.get(i).is_some_and(Option::is_some));
            if let Some(i) = named_here.next() {
                family = Some(family.map_or(i, |f| f.min(i)));
                for i in std::iter::once(i).chain(named_here) {
                    if !named_families.contains(&i) {
                        named_families.push(i);
                    }
                }
            }
            let mut clause_effect = clause.reading.effect;
            let mut rule = clause.reading.rule;
            if doing {
                clause_effect = clause_effect.max(clause.reading.named);
            }
            if clause.hits.delete.is_some() && clause_effect < Effect::Destroy {
                clause_effect = Effect::Destroy;
                rule = "destructive_word";
            }
            let changes = (0..families).any(|i| {
                clause.hits.families.get(i).is_some_and(Option::is_some)
                    && self.actions().get(i).is_some_and(|a| effect::changes(a))
            });
            if changes && clause_effect < Effect::Change {
                clause_effect = Effect::Change;
                rule = "action_word";
            }
            if clause_effect > effect || why.is_none() {
                effect = effect.max(clause_effect);
                why = Some((clause_effect, rule, clause.raw));
            }
        }
        if family.is_none() {
            // A question may still ask for a status, a list or help.
            family = clauses.iter().find_map(|c| {
                (0..families).find(|&i| {
                    c.hits.families.get(i).is_some_and(Option::is_some)
                        && self
                            .actions()
                            .get(i)
                            .is_some_and(|a| !effect::changes(a) && *a != "run")
                })
            });
        }

        let commands = if clauses.iter().all(active) {
            shell::detect(text, &mut classes)
        } else {
            let active_text: Vec<&str> = clauses
                .iter()
                .filter(|c| active(c))
                .map(|c| c.raw)
                .collect();
            shell::detect(&active_text.join("\n"), &mut classes)
        };
        let shell_effect = |wanted: ShellEffect| commands.iter().any(|c| c.effect == wanted);
        for command in &commands {
            let command_effect = if command.effect == ShellEffect::Destroys {
                Effect::Destroy
            } else {
                Effect::Execute
            };
            if command_effect > effect {
                effect = command_effect;
                why = Some((command_effect, "command", ""));
            }
        }

        let destructive = delete_record.is_some() || shell_effect(ShellEffect::Destroys);
        let stop_index = self.actions().iter().position(|a| *a == "stop");
        let action = if destructive {
            "delete"
        } else if shell_effect(ShellEffect::Stops) && family != stop_index {
            "stop"
        } else if let Some(i) = family {
            self.actions().get(i).copied().unwrap_or("chat")
        } else if shell_effect(ShellEffect::Restarts) {
            "restart"
        } else {
            "chat"
        };
        let domain = if destructive || !commands.is_empty() {
            "system"
        } else if audio {
            "audio"
        } else {
            "general"
        };

        let mut parameters = text::extract_parameters(text);
        for (flag, on) in [("parallel", parallel), ("drift", drift), ("spawn", spawn)] {
            if on {
                parameters.insert(flag.into(), Value::Bool(true));
            }
        }
        parameters.insert("original_message".into(), Value::String(text.to_owned()));

        // Only the parser writes this key: a `safety=…` in the text must not
        // pass for a record of the rules.
        parameters.remove(SAFETY_PARAMETER);
        parameters.remove(ACTIONS_PARAMETER);
        if !destructive && named_families.len() > 1 {
            let actions = named_families
                .iter()
                .filter_map(|&i| self.actions().get(i))
                .map(|a| Value::String((*a).to_owned()))
                .collect();
            parameters.insert(ACTIONS_PARAMETER.into(), Value::Array(actions));
        }
        let mut safety: Vec<Value> = delete_record.into_iter().chain(stop_record).collect();
        for command in &commands {
            let family = match command.effect {
                ShellEffect::Destroys => "delete",
                ShellEffect::Stops => "stop",
                ShellEffect::Restarts => "restart",
                ShellEffect::Changes => "change",
            };
            safety.push(json!({
                "kind": command.kind.as_str(),
                "family": family,
                "rule": command.rule,
                "text": command.text,
            }));
        }
        if let Some((clause_effect, rule, clause_text)) = why
            && clause_effect.min_risk() > madre_models::RiskLevel::Low
            && rule != "command"
        {
            let written: String = clause_text.trim().chars().take(200).collect();
            safety.push(json!({
                "kind": "effect",
                "family": clause_effect.as_str(),
                "rule": rule,
                "text": written,
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
            effect,
        }
    }

    /// Undoes the soft cuts of [`effect::clauses`] ("necesito, que
    /// publiques…", "add this line! to /etc/rc.local") but after a
    /// question: there the words after the cut are a clause of their own
    /// (flagged), so "explain this error: to fix it drop the table" does not
    /// hide its order inside the question. Reads only the text before each
    /// soft cut, to know whether it asks.
    fn merge_soft_cuts(
        &self,
        text: &str,
        ranges: Vec<(Range<usize>, bool)>,
        classes: &mut Classes,
    ) -> Vec<(Range<usize>, bool)> {
        let mut merged: Vec<(Range<usize>, bool)> = Vec::with_capacity(ranges.len());
        // the words after each undone cut, read on their own as well: a
        // clause whose opening hides them ("नमस्ते, आप कैसे हैं?: to be safe
        // cordon node-7") cannot lower what they say
        let mut tails: Vec<(Range<usize>, bool)> = Vec::new();
        // whether the current group asks, read once from its first range:
        // how a clause opens decides its mood, and the cost stays linear
        let mut group: Option<(Range<usize>, Option<bool>)> = None;
        for (range, soft) in ranges {
            let Some((first, asks)) = group.as_mut().filter(|_| soft) else {
                group = Some((range.clone(), None));
                merged.push((range, false));
                continue;
            };
            let asks = *asks.get_or_insert_with(|| {
                let opening = &text[first.clone()];
                let words = self.words(opening, classes);
                self.read_clause(&words, opening).mood == Mood::Question
            });
            match merged.last_mut() {
                Some(last) if !asks => {
                    last.0.end = range.end;
                    tails.push((range, false));
                }
                _ => {
                    group = Some((range.clone(), None));
                    merged.push((range, true));
                }
            }
        }
        merged.extend(tails);
        merged
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
