//! Folding text into words, and pulling parameters out of the raw text.

use serde_json::{Map, Number, Value};
use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::lexicon::Phrase;

/// The folded words of a text: lower case, accents removed, split on
/// anything that is not a letter or a digit. `_` splits too, so
/// `delete_all_data` is seen as the destructive request it is
/// (`tentaculo_link` is matched as the phrase `tentaculo link`).
pub(crate) struct Words {
    words: Vec<String>,
}

impl Words {
    pub(crate) fn new(text: &str) -> Self {
        let lower: String = text.chars().flat_map(char::to_lowercase).collect();
        let folded: String = lower.nfd().filter(|c| !is_combining_mark(*c)).collect();
        let words = folded
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_owned)
            .collect();
        Self { words }
    }

    /// Index of the first word where any of `phrases` starts.
    pub(crate) fn first_position(&self, phrases: &[Phrase]) -> Option<usize> {
        (0..self.words.len()).find(|&i| phrases.iter().any(|p| self.phrase_at(i, p)))
    }

    pub(crate) fn contains_any(&self, phrases: &[Phrase]) -> bool {
        self.first_position(phrases).is_some()
    }

    fn phrase_at(&self, start: usize, phrase: Phrase) -> bool {
        phrase.len() <= self.words.len() - start
            && phrase
                .iter()
                .zip(&self.words[start..])
                .all(|(want, have)| want == have)
    }
}

/// `key=value` pairs, "quoted strings" (as `quoted`, a list) and counted
/// nouns (`3 stems` → `stems: 3`) found in the raw text.
pub(crate) fn extract_parameters(text: &str) -> Map<String, Value> {
    let mut params = Map::new();

    let quoted = quoted_strings(text);
    let tokens: Vec<&str> = text.split_whitespace().collect();
    for pair in tokens.windows(2) {
        let number = trim_punctuation(pair[0]);
        let noun = trim_punctuation(pair[1]);
        if let (Ok(n), true) = (number.parse::<i64>(), is_noun(noun)) {
            params.insert(noun.to_lowercase(), Value::Number(n.into()));
        }
    }
    for token in &tokens {
        if let Some((key, value)) = key_value(token) {
            params.insert(key.to_owned(), value);
        }
    }
    if !quoted.is_empty() {
        params.insert(
            "quoted".into(),
            Value::Array(quoted.into_iter().map(Value::String).collect()),
        );
    }
    params
}

fn trim_punctuation(token: &str) -> &str {
    token.trim_matches(|c: char| c.is_ascii_punctuation() && c != '_')
}

fn is_noun(word: &str) -> bool {
    !word.is_empty() && word.chars().all(char::is_alphabetic)
}

fn key_value(token: &str) -> Option<(&str, Value)> {
    let (key, raw) = token.split_once('=')?;
    let key_ok = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let raw = raw
        .trim_end_matches([',', ';', '.'])
        .trim_matches(|c| c == '"' || c == '\'');
    if !key_ok || raw.is_empty() {
        return None;
    }
    let value = match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => raw
            .parse::<i64>()
            .map(|n| Value::Number(n.into()))
            .ok()
            .or_else(|| {
                raw.parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
            })
            .unwrap_or_else(|| Value::String(raw.to_owned())),
    };
    Some((key, value))
}

/// Text between pairs of straight or curly double quotes.
fn quoted_strings(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut current: Option<String> = None;
    for c in text.chars() {
        match (c, current.as_mut()) {
            ('"' | '\u{201C}' | '\u{201D}', None) => current = Some(String::new()),
            ('"' | '\u{201C}' | '\u{201D}', Some(_)) => {
                if let Some(s) = current.take().filter(|s| !s.is_empty()) {
                    found.push(s);
                }
            }
            (c, Some(s)) => s.push(c),
            (_, None) => {}
        }
    }
    found
}
