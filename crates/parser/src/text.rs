//! Normalising text before matching (SPEC §4 "Safety first"), and pulling
//! parameters out of the raw text.
//!
//! Every character goes through the same folding, the text's and the word
//! lists' alike, so no spelling of a word can change what it matches:
//! 1. compatibility decomposition (the NFKD half of NFKC: full-width and
//!    mathematical letters, ligatures and circled letters become plain ones;
//!    the composition half is not needed because accents are dropped next);
//! 2. combining marks are dropped (accents, and the strike-through or
//!    "zalgo" marks laid over letters);
//! 3. format characters (Unicode default-ignorables: zero-width spaces and
//!    joiners, soft hyphens, bidi controls, variation selectors, tags) are
//!    dropped without splitting the word they sit in;
//! 4. letters and digits are folded to lower case and then to their TR39
//!    confusable skeleton with the tables of `unicode-security`: Cyrillic
//!    "е" is "e", "0" is "o", and "m" becomes "rn" on both sides of the
//!    comparison, as the skeleton prescribes. A letter whose lower-case form
//!    has no Latin skeleton is tried as written and in upper case (Cyrillic
//!    "м" is only confusable with "M"), so case never changes the result;
//! 5. anything else (spaces, punctuation, symbols, emoji) separates words.
//!    Punctuation never becomes a letter, so "¡bórralo!" keeps its verb.
//!
//! After splitting, two obfuscations are undone when a [`Dictionary`] is
//! given: a run of at least [`MIN_LETTER_RUN`] one-letter words
//! ("d e l e t e") is joined into one word, and a joined run or a word that
//! had format characters inside also gets the dictionary words it spells as
//! alternatives ("k i l l m a d r e" is "killrnadre", and also "kill" and
//! "rnadre"). Alternatives are looked up as words of their own but do not
//! change the word count, so phrases around them still match.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde_json::{Map, Number, Value};
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// A run of at least this many one-character words is read as one spaced-out
/// word ("d e l e t e").
pub(crate) const MIN_LETTER_RUN: usize = 3;

/// A byte range, in the original text or in the folded buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// How a word was written, for the record of which rule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// An ordinary word (whatever letters, case or accents it used).
    Plain,
    /// Spelled out letter by letter ("d e l e t e").
    LetterSpaced,
    /// Had format characters (zero-width, soft hyphen, bidi) inside.
    Hidden,
}

/// One folded word.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Word {
    fold: Span,
    src: Span,
    how: How,
    /// Its alternatives: a range of `Words::alts`.
    alts: Span,
}

/// The words a segmenter may cut a joined run into, and the longest of them
/// in characters.
pub(crate) struct Dictionary<'d> {
    pub(crate) words: &'d HashSet<Box<str>>,
    /// Every prefix of every word, so a lookup stops as soon as no word
    /// can start this way.
    pub(crate) prefixes: &'d HashSet<Box<str>>,
    pub(crate) max_chars: usize,
}

/// The folded words of a text, each with where it came from.
pub(crate) struct Words<'t> {
    text: &'t str,
    buf: String,
    words: Vec<Word>,
    /// Folded spans of the dictionary words found inside obfuscated words.
    alts: Vec<Span>,
}

impl<'t> Words<'t> {
    /// Folds and splits `text`; with a dictionary, also undoes letter
    /// spacing and hidden characters inside words.
    pub(crate) fn new(
        text: &'t str,
        dictionary: Option<&Dictionary<'_>>,
        classes: &mut Classes,
    ) -> Self {
        let (buf, raw) = raw_tokens(text, classes);
        let mut words = Vec::with_capacity(raw.len());
        let mut alts = Vec::new();
        let none = Span { start: 0, end: 0 };
        let Some(dictionary) = dictionary else {
            words.extend(raw.iter().map(|r| Word {
                fold: r.fold,
                src: r.src,
                how: How::Plain,
                alts: none,
            }));
            return Self {
                text,
                buf,
                words,
                alts,
            };
        };
        let mut i = 0;
        while i < raw.len() {
            let run = raw[i..].iter().take_while(|r| r.src_chars == 1).count();
            let (mut word, next) = if run >= MIN_LETTER_RUN {
                let last = &raw[i + run - 1];
                let word = Word {
                    fold: Span {
                        start: raw[i].fold.start,
                        end: last.fold.end,
                    },
                    src: Span {
                        start: raw[i].src.start,
                        end: last.src.end,
                    },
                    how: How::LetterSpaced,
                    alts: none,
                };
                (word, i + run)
            } else {
                let r = &raw[i];
                let how = if r.hidden { How::Hidden } else { How::Plain };
                let word = Word {
                    fold: r.fold,
                    src: r.src,
                    how,
                    alts: none,
                };
                (word, i + 1)
            };
            let start = alts.len();
            if word.how != How::Plain {
                segment(&buf, word.fold, dictionary, &mut alts);
            }
            if next == i + 1 {
                join_split_word(text, &buf, &raw[i..], dictionary, &mut alts);
            }
            word.alts = Span {
                start,
                end: alts.len(),
            };
            words.push(word);
            i = next;
        }
        Self {
            text,
            buf,
            words,
            alts,
        }
    }

    /// Number of words.
    pub(crate) fn len(&self) -> usize {
        self.words.len()
    }

    /// The folded word at `i` (empty past the end).
    pub(crate) fn word(&self, i: usize) -> &str {
        self.words
            .get(i)
            .and_then(|w| self.buf.get(w.fold.start..w.fold.end))
            .unwrap_or("")
    }

    /// The dictionary words spelled inside the word at `i`, when it was
    /// obfuscated (letter-spaced, or with format characters inside).
    pub(crate) fn alternatives(&self, i: usize) -> impl Iterator<Item = &str> + '_ {
        let span = self
            .words
            .get(i)
            .map_or(Span { start: 0, end: 0 }, |w| w.alts);
        self.alts
            .get(span.start..span.end)
            .unwrap_or(&[])
            .iter()
            .filter_map(|a| self.buf.get(a.start..a.end))
    }

    /// The folded words, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.words.len()).map(|i| self.word(i))
    }

    /// How the words `start..end` were written: the first obfuscation found.
    pub(crate) fn how(&self, start: usize, end: usize) -> How {
        self.words
            .get(start..end)
            .into_iter()
            .flatten()
            .map(|w| w.how)
            .find(|h| *h != How::Plain)
            .unwrap_or(How::Plain)
    }

    /// The original text of the words `start..end`, as the person wrote it.
    pub(crate) fn source(&self, start: usize, end: usize) -> &'t str {
        let (Some(first), Some(last)) =
            (self.words.get(start), self.words.get(end.wrapping_sub(1)))
        else {
            return "";
        };
        self.text.get(first.src.start..last.src.end).unwrap_or("")
    }
}

/// A word as split, before letter runs are joined.
struct Raw {
    fold: Span,
    src: Span,
    /// How many source characters contributed letters.
    src_chars: usize,
    /// Format characters sat between its letters.
    hidden: bool,
}

/// What folding one character produced.
#[derive(Debug, Clone, Copy)]
enum Out {
    /// A letter or digit of a word, already folded.
    Char(char),
    /// A letter of a script with no Latin look-alike. Where it meets a
    /// Latin letter a word ends, as in the shell view ("rm𐿠a0" is "rm"
    /// and "𐿠a0" in both), so a command name glued to foreign letters
    /// reads the same wherever it stands.
    Foreign(char),
    /// A separator.
    Boundary,
    /// A format character: dropped, and it does not separate.
    Hidden,
}

fn raw_tokens(text: &str, classes: &mut Classes) -> (String, Vec<Raw>) {
    let mut buf = String::with_capacity(text.len());
    let mut tokens: Vec<Raw> = Vec::new();
    let mut open: Option<Raw> = None;
    let mut pending_hidden = false;
    // Whether the open word's last letter was foreign (see `Out::Foreign`).
    let mut foreign_open = false;
    for (i, c) in text.char_indices() {
        let end = i + c.len_utf8();
        let mut contributed = false;
        fold_char(c, classes, &mut |out| match out {
            Out::Char(f) | Out::Foreign(f) => {
                let foreign = matches!(out, Out::Foreign(_));
                if foreign != foreign_open
                    && let Some(raw) = open.take()
                {
                    tokens.push(raw);
                }
                foreign_open = foreign;
                match open.as_mut() {
                    None => {
                        open = Some(Raw {
                            fold: Span {
                                start: buf.len(),
                                end: buf.len(),
                            },
                            src: Span { start: i, end },
                            src_chars: 0,
                            hidden: false,
                        });
                    }
                    Some(raw) => raw.hidden |= pending_hidden,
                }
                pending_hidden = false;
                buf.push(f);
                contributed = true;
            }
            Out::Boundary => {
                pending_hidden = false;
                if let Some(raw) = open.take() {
                    tokens.push(raw);
                }
            }
            Out::Hidden => pending_hidden |= open.is_some(),
        });
        if contributed && let Some(raw) = open.as_mut() {
            raw.fold.end = buf.len();
            raw.src.end = end;
            raw.src_chars += 1;
        }
    }
    tokens.extend(open);
    (buf, tokens)
}

/// The dictionary words spelled inside the folded span `token`: the longest
/// one starting at each character ("killrnadre" → "kill", "rnadre"; "tuninstall",
/// from "don't u n i n s t a l l", → "tu", "uninstall", "in"), pushed to
/// `alts`. Overlaps are kept on purpose: a greedy left-to-right cut would
/// let a short word hide a long one.
fn segment(buf: &str, token: Span, dictionary: &Dictionary<'_>, alts: &mut Vec<Span>) {
    let Some(text) = buf.get(token.start..token.end) else {
        return;
    };
    let bounds: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain(std::iter::once(text.len()))
        .collect();
    let last = bounds.len() - 1;
    let mut k = 0;
    while k < last {
        let mut longest = None;
        for j in k + 1..=last.min(k + dictionary.max_chars) {
            let candidate = &text[bounds[k]..bounds[j]];
            if !dictionary.prefixes.contains(candidate) {
                break;
            }
            if dictionary.words.contains(candidate) {
                longest = Some(j);
            }
        }
        if let Some(j) = longest {
            alts.push(Span {
                start: token.start + bounds[k],
                end: token.start + bounds[j],
            });
        }
        k += 1;
    }
}

/// A dictionary word cut in two or three by one character ("de-lete",
/// "de_lete", "dele te", "de'lete", "de/lete", a Unicode dash): its folded
/// span, pushed to `alts` as an alternative of the first piece. Only words
/// of [`MIN_JOINED_CHARS`] or more count, so two short words never pass
/// for one by chance.
fn join_split_word(
    text: &str,
    buf: &str,
    raw: &[Raw],
    dictionary: &Dictionary<'_>,
    alts: &mut Vec<Span>,
) {
    let Some(first) = raw.first() else {
        return;
    };
    for pieces in 2..=3 {
        let Some(last) = raw.get(pieces - 1) else {
            return;
        };
        // a space joins only pieces that are no word ("dele te"), so
        // "para la" never reads as "parala"
        let one_char_gaps = raw.windows(2).take(pieces - 1).all(|pair| {
            text.get(pair[0].src.end..pair[1].src.start)
                .is_some_and(|gap| {
                    // format characters around the separator do not count
                    let mut chars = gap.chars().filter(|c| !is_format_char(*c));
                    match (chars.next(), chars.next()) {
                        (Some(c), None) if c.is_whitespace() => {
                            [&pair[0], &pair[1]].iter().any(|r| {
                                buf.get(r.fold.start..r.fold.end)
                                    .is_some_and(|w| !dictionary.words.contains(w))
                            })
                        }
                        (Some(_), None) => true,
                        _ => false,
                    }
                })
        });
        if !one_char_gaps {
            return;
        }
        let span = Span {
            start: first.fold.start,
            end: last.fold.end,
        };
        if let Some(joined) = buf.get(span.start..span.end)
            && joined.chars().count() >= MIN_JOINED_CHARS
            && dictionary.words.contains(joined)
        {
            alts.push(span);
        }
    }
}

/// Zero-width and other invisible format characters.
fn is_format_char(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{034F}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}')
}

/// The shortest word [`join_split_word`] puts back together.
const MIN_JOINED_CHARS: usize = 4;

/// Small capitals (ᴅᴇʟᴇᴛᴇ) as the Latin letters they are; TR39 has no
/// skeleton for most of them.
fn small_capital(c: char) -> Option<char> {
    Some(match c {
        '\u{1D00}' => 'a',
        '\u{0299}' => 'b',
        '\u{1D04}' => 'c',
        '\u{1D05}' => 'd',
        '\u{1D07}' => 'e',
        '\u{A730}' => 'f',
        '\u{0262}' => 'g',
        '\u{029C}' => 'h',
        '\u{026A}' => 'i',
        '\u{1D0A}' => 'j',
        '\u{1D0B}' => 'k',
        '\u{029F}' => 'l',
        '\u{1D0D}' => 'm',
        '\u{0274}' => 'n',
        '\u{1D0F}' => 'o',
        '\u{1D18}' => 'p',
        '\u{A7AF}' => 'q',
        '\u{0280}' => 'r',
        '\u{A731}' => 's',
        '\u{1D1B}' => 't',
        '\u{1D1C}' => 'u',
        '\u{1D20}' => 'v',
        '\u{1D21}' => 'w',
        '\u{028F}' => 'y',
        '\u{1D22}' => 'z',
        _ => return None,
    })
}

/// What a non-ASCII character (after compatibility decomposition) is for
/// matching. [`Classes`] computes it once per distinct character of a text,
/// since the TR39 lookups cost far more than a hash probe.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Class {
    /// A combining mark (accent, overlay): dropped, the word goes on.
    Mark,
    /// A letter or digit confusable with Latin: its lower-case ASCII skeleton.
    Latin(Ascii),
    /// A letter or digit of another script, lower-cased.
    Letter(char),
    /// A format character (default-ignorable): dropped, the word goes on.
    Ignorable,
    /// A symbol whose skeleton is ASCII punctuation ('−' → "-").
    Punct(Ascii),
    /// Anything else (spaces, other symbols, emoji): separates words.
    Other,
}

/// A per-text cache of [`Class`]es. Local to one parse, so parsing stays a
/// pure function.
#[derive(Debug, Default)]
pub(crate) struct Classes {
    cache: HashMap<char, Class>,
}

impl Classes {
    /// The class of a non-ASCII character.
    pub(crate) fn of(&mut self, d: char) -> Class {
        *self.cache.entry(d).or_insert_with(|| classify(d))
    }
}

fn classify(d: char) -> Class {
    if is_combining_mark(d) {
        return Class::Mark;
    }
    if let Some(latin) = small_capital(d) {
        let mut ascii = Ascii::default();
        ascii.push(latin);
        return Class::Latin(ascii);
    }
    if d.is_alphanumeric() {
        let lower = d.to_lowercase().next().unwrap_or(d);
        return match latin_skeleton(lower, d) {
            Some(latin) => Class::Latin(latin.lowercased()),
            None if lower.is_alphanumeric() => Class::Letter(lower),
            None => Class::Other,
        };
    }
    let mut utf8 = [0; 4];
    let mut skeleton = unicode_security::skeleton(d.encode_utf8(&mut utf8)).peekable();
    if skeleton.peek().is_none() {
        return Class::Ignorable;
    }
    match ascii_skeleton(d) {
        Some(a) if !a.as_str().chars().any(|c| c.is_ascii_alphanumeric()) => Class::Punct(a),
        _ => Class::Other,
    }
}

/// Folds one character of the text (see the module documentation).
fn fold_char(c: char, classes: &mut Classes, out: &mut impl FnMut(Out)) {
    if c.is_ascii() {
        fold_ascii(c, out);
        return;
    }
    decompose_compatible(c, |d| {
        if d.is_ascii() {
            fold_ascii(d, out);
            return;
        }
        match classes.of(d) {
            Class::Mark => {}
            Class::Latin(latin) => latin.as_str().chars().for_each(|a| fold_ascii(a, out)),
            Class::Letter(l) => out(Out::Foreign(l)),
            Class::Ignorable => out(Out::Hidden),
            // punctuation never becomes a letter ("¡bórralo!")
            Class::Punct(_) | Class::Other => out(Out::Boundary),
        }
    });
}

fn fold_ascii(c: char, out: &mut impl FnMut(Out)) {
    let folded = ASCII_FOLD.get(c as usize).map_or("", |s| &**s);
    if folded.is_empty() {
        out(Out::Boundary);
    } else {
        folded.chars().for_each(|f| out(Out::Char(f)));
    }
}

/// The ASCII skeleton of a non-ASCII letter, trying its lower-case form,
/// then the letter as written, then its upper-case form; `None` when none of
/// them is confusable with Latin letters or digits.
fn latin_skeleton(lower: char, written: char) -> Option<Ascii> {
    let mut upper = written.to_uppercase();
    let upper = if upper.len() == 1 { upper.next() } else { None };
    let written = Some(written).filter(|w| *w != lower);
    let upper = upper.filter(|u| *u != lower && Some(*u) != written);
    [Some(lower), written, upper]
        .into_iter()
        .flatten()
        .filter_map(ascii_skeleton)
        .find(|a| a.as_str().chars().all(|c| c.is_ascii_alphanumeric()))
}

/// The TR39 skeleton of one character when it is plain ASCII (combining
/// marks dropped), e.g. '−' → "-", 'а' → "a".
fn ascii_skeleton(c: char) -> Option<Ascii> {
    let mut utf8 = [0; 4];
    let mut ascii = Ascii::default();
    for s in unicode_security::skeleton(c.encode_utf8(&mut utf8)) {
        if is_combining_mark(s) {
            continue;
        }
        if !s.is_ascii() || !ascii.push(s) {
            return None;
        }
    }
    (ascii.len > 0).then_some(ascii)
}

/// A few ASCII bytes, without allocating.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ascii {
    bytes: [u8; 8],
    len: usize,
}

impl Ascii {
    fn push(&mut self, c: char) -> bool {
        match (u8::try_from(c), self.bytes.get_mut(self.len)) {
            (Ok(b), Some(slot)) if b.is_ascii() => {
                *slot = b;
                self.len += 1;
                true
            }
            _ => false,
        }
    }

    fn lowercased(mut self) -> Self {
        self.bytes.make_ascii_lowercase();
        self
    }

    /// The bytes as text.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

/// How each ASCII character folds for word matching: letters and digits to
/// the lower-case skeleton ('M' and 'm' → "rn", '0' → "o", '1' → "l"), the
/// rest to "" (a separator). Computed once from the TR39 tables.
static ASCII_FOLD: LazyLock<Vec<Box<str>>> = LazyLock::new(|| {
    (0u8..128)
        .map(|b| {
            let c = char::from(b);
            if !c.is_ascii_alphanumeric() {
                return Box::from("");
            }
            let lower = c.to_ascii_lowercase();
            let mut utf8 = [0; 4];
            let folded: String = unicode_security::skeleton(lower.encode_utf8(&mut utf8))
                .flat_map(char::to_lowercase)
                .filter(char::is_ascii_alphanumeric)
                .collect();
            if folded.is_empty() {
                Box::from(lower.to_string())
            } else {
                folded.into_boxed_str()
            }
        })
        .collect()
});

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
