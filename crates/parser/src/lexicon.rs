//! The word lists compiled for matching: every phrase folded once, indexed by
//! its first word, so a text is scanned once whatever the size of the lists.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::LazyLock;

use madre_models::Module;

use crate::text::{Classes, Dictionary, How, Words};
use crate::words::{self, ENCLITICS, FamilyWords, GAP};

/// The family names a policy file may extend, in the order the parser tries
/// them: `delete` (the destructive family, always first), then the action
/// families of SPEC §4.
pub const FAMILY_NAMES: &[&str] = &[
    "delete", "stop", "restart", "suspend", "cleanup", "update", "migrate", "restore", "run",
    "analyze", "status", "list", "help",
];

/// A word list extension that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LexiconError {
    /// The family is not one of [`FAMILY_NAMES`].
    #[error("unknown word family {family:?} (expected one of {})", FAMILY_NAMES.join(", "))]
    UnknownFamily {
        /// The name given.
        family: String,
    },
    /// The phrase has no word, a word without letters or digits, or a `*`
    /// gap that does not stand between two words.
    #[error("family {family:?} holds {phrase:?}, which is not a phrase: {reason}")]
    BadPhrase {
        /// The family it was added to.
        family: String,
        /// The phrase as given.
        phrase: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// What a phrase stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    /// The destructive family.
    Delete,
    /// An action family, by its index in the priority order.
    Family(usize),
    /// An audio keyword.
    Audio,
    /// A module name.
    Target(Module),
    /// Parallel wording.
    Parallel,
    /// Drift wording.
    Drift,
    /// Background wording.
    Spawn,
}

/// One element of a compiled phrase.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Box<str>),
    /// Up to [`GAP`] words of anything.
    Gap,
}

#[derive(Debug, Clone)]
struct Entry {
    /// All tokens after the first word (the index key).
    rest: Vec<Token>,
    category: Category,
    /// The phrase as written in the list, shown to approvers.
    display: Box<str>,
    words: usize,
}

/// A phrase found in a text.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hit {
    /// First and one-past-last word of the match.
    pub(crate) start: usize,
    pub(crate) end: usize,
    entry: usize,
}

/// Everything the lexicon found in one text: the first hit of each kind.
#[derive(Debug, Default)]
pub(crate) struct Hits {
    pub(crate) delete: Option<Hit>,
    /// Indexed like [`Lexicon::actions`].
    pub(crate) families: Vec<Option<Hit>>,
    pub(crate) audio: bool,
    /// Each module with the word where it is first named.
    pub(crate) targets: Vec<(usize, Module)>,
    pub(crate) parallel: bool,
    pub(crate) drift: bool,
    pub(crate) spawn: bool,
}

/// The parser's word lists, folded and indexed: the built-in lists of SPEC
/// §4, optionally extended with words and phrases per family (from
/// `MADRE_POLICY_FILE`). Build it once and parse many texts with it; parsing
/// is pure and never fails.
///
/// ```
/// use madre_parser::Lexicon;
/// let lexicon = Lexicon::with_extras([("delete", ["zap", "make * vanish"])]).unwrap();
/// assert_eq!(lexicon.parse("zap the logs").action, "delete");
/// assert_eq!(lexicon.parse("make the old logs vanish").action, "delete");
/// // the free function keeps the built-in lists only
/// assert_eq!(madre_parser::parse("zap the logs").action, "chat");
/// ```
#[derive(Clone)]
pub struct Lexicon {
    index: HashMap<Box<str>, Vec<usize>>,
    entries: Vec<Entry>,
    dictionary: HashSet<Box<str>>,
    prefixes: HashSet<Box<str>>,
    max_chars: usize,
    actions: Vec<&'static str>,
}

impl fmt::Debug for Lexicon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lexicon")
            .field("phrases", &self.entries.len())
            .field("distinct_words", &self.dictionary.len())
            .finish()
    }
}

static BUILTIN: LazyLock<Lexicon> = LazyLock::new(|| {
    let mut builder = Builder::default();
    builder.add_builtin();
    builder.finish()
});

impl Default for Lexicon {
    fn default() -> Self {
        Self::builtin().clone()
    }
}

impl Lexicon {
    /// The built-in lists, compiled once per process.
    pub fn builtin() -> &'static Lexicon {
        &BUILTIN
    }

    /// The built-in lists plus `extras`: pairs of a family name (one of
    /// [`FAMILY_NAMES`]) and the words or phrases to add to it. Phrases use
    /// the syntax of the built-in lists: words separated by spaces, and `*`
    /// between two words for up to three words of anything ("shut * down").
    /// They are folded like the text, so case, accents and confusable letters
    /// do not matter.
    ///
    /// Extras only add matches. A text still matches every built-in phrase
    /// it matched before, and the families keep their order (`delete`, then
    /// `stop`, …), so a word added to an earlier family wins over a later one.
    pub fn with_extras<I, K, P, S>(extras: I) -> Result<Self, LexiconError>
    where
        I: IntoIterator<Item = (K, P)>,
        K: AsRef<str>,
        P: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut builder = Builder::default();
        builder.add_builtin();
        for (family, phrases) in extras {
            let family = family.as_ref();
            let category = match FAMILY_NAMES.iter().position(|f| *f == family) {
                Some(0) => Category::Delete,
                Some(i) => Category::Family(i - 1),
                None => {
                    return Err(LexiconError::UnknownFamily {
                        family: family.to_owned(),
                    });
                }
            };
            for phrase in phrases {
                let phrase = phrase.as_ref();
                builder
                    .add(phrase, category)
                    .map_err(|reason| LexiconError::BadPhrase {
                        family: family.to_owned(),
                        phrase: phrase.to_owned(),
                        reason,
                    })?;
            }
        }
        Ok(builder.finish())
    }

    /// The action of each non-destructive family, in priority order.
    pub(crate) fn actions(&self) -> &[&'static str] {
        &self.actions
    }

    /// The phrase of a hit as written in the word list.
    pub(crate) fn display(&self, hit: Hit) -> &str {
        self.entries.get(hit.entry).map_or("", |e| &*e.display)
    }

    /// Whether a hit is a multi-word phrase.
    pub(crate) fn is_phrase(&self, hit: Hit) -> bool {
        self.entries.get(hit.entry).is_some_and(|e| e.words > 1)
    }

    /// Folds and splits `text` with this lexicon's dictionary.
    pub(crate) fn words<'t>(&self, text: &'t str, classes: &mut Classes) -> Words<'t> {
        let dictionary = Dictionary {
            words: &self.dictionary,
            prefixes: &self.prefixes,
            max_chars: self.max_chars,
        };
        Words::new(text, Some(&dictionary), classes)
    }

    /// Scans the words once and records the first hit of every kind.
    pub(crate) fn scan(&self, words: &Words<'_>) -> Hits {
        let mut hits = Hits {
            families: vec![None; self.actions.len()],
            ..Hits::default()
        };
        for start in 0..words.len() {
            let candidates = std::iter::once(words.word(start)).chain(words.alternatives(start));
            for &id in candidates.filter_map(|w| self.index.get(w)).flatten() {
                let Some(entry) = self.entries.get(id) else {
                    continue;
                };
                let Some(end) = match_rest(words, start + 1, &entry.rest) else {
                    continue;
                };
                let hit = Hit {
                    start,
                    end,
                    entry: id,
                };
                match entry.category {
                    Category::Delete => {
                        hits.delete.get_or_insert(hit);
                    }
                    Category::Family(i) => {
                        if let Some(slot) = hits.families.get_mut(i) {
                            slot.get_or_insert(hit);
                        }
                    }
                    Category::Audio => hits.audio = true,
                    Category::Target(module) => {
                        if !hits.targets.iter().any(|(_, m)| *m == module) {
                            hits.targets.push((start, module));
                        }
                    }
                    Category::Parallel => hits.parallel = true,
                    Category::Drift => hits.drift = true,
                    Category::Spawn => hits.spawn = true,
                }
            }
        }
        hits
    }

    /// How the words of a hit were written.
    pub(crate) fn how(&self, words: &Words<'_>, hit: Hit) -> How {
        words.how(hit.start, hit.end)
    }
}

/// Matches the tokens after a phrase's first word from word `at`; returns
/// one past the last word matched.
fn match_rest(words: &Words<'_>, at: usize, rest: &[Token]) -> Option<usize> {
    match rest.split_first() {
        None => Some(at),
        Some((Token::Word(w), tail)) => {
            (at < words.len() && words.word(at) == &**w).then_some(())?;
            match_rest(words, at + 1, tail)
        }
        Some((Token::Gap, tail)) => (0..=GAP)
            .take_while(|skip| at + skip <= words.len())
            .find_map(|skip| match_rest(words, at + skip, tail)),
    }
}

#[derive(Default)]
struct Builder {
    entries: Vec<Entry>,
    actions: Vec<&'static str>,
}

impl Builder {
    fn add_builtin(&mut self) {
        self.add_family(&words::DELETE, Category::Delete);
        for (i, family) in words::FAMILIES.iter().enumerate() {
            self.actions.push(family.action);
            self.add_family(family, Category::Family(i));
        }
        self.add_all(words::AUDIO, Category::Audio);
        for (names, module) in words::TARGETS {
            self.add_all(names, Category::Target(*module));
        }
        self.add_all(words::PARALLEL, Category::Parallel);
        self.add_all(words::DRIFT, Category::Drift);
        self.add_all(words::SPAWN, Category::Spawn);
    }

    fn add_family(&mut self, family: &FamilyWords, category: Category) {
        for list in family.phrases {
            self.add_all(list, category);
        }
    }

    fn add_all(&mut self, phrases: &[&str], category: Category) {
        for phrase in phrases {
            // The built-in lists are tested to hold only valid phrases.
            let _ = self.add(phrase, category);
        }
    }

    /// Compiles one phrase (and, for a `~` word, each enclitic form).
    fn add(&mut self, phrase: &str, category: Category) -> Result<(), &'static str> {
        let mut variants: Vec<Vec<Token>> = vec![Vec::new()];
        for raw in phrase.split_whitespace() {
            if raw == "*" {
                if variants[0].last().is_none_or(|t| *t == Token::Gap) {
                    return Err("a `*` must stand between two words");
                }
                variants.iter_mut().for_each(|v| v.push(Token::Gap));
                continue;
            }
            let (base, enclitic) = match raw.strip_suffix('~') {
                Some(base) => (base, true),
                None => (raw, false),
            };
            let forms: Vec<String> = if enclitic {
                std::iter::once(base.to_owned())
                    .chain(ENCLITICS.iter().map(|e| format!("{base}{e}")))
                    .collect()
            } else {
                vec![base.to_owned()]
            };
            let mut next = Vec::with_capacity(variants.len() * forms.len());
            for form in &forms {
                let folded = Words::new(form, None, &mut Classes::default());
                if folded.len() == 0 {
                    return Err("a word has no letters or digits");
                }
                for v in &variants {
                    let mut v = v.clone();
                    v.extend(folded.iter().map(|w| Token::Word(w.into())));
                    next.push(v);
                }
            }
            variants = next;
        }
        if variants[0].is_empty() {
            return Err("it has no word");
        }
        if variants[0].last() == Some(&Token::Gap) {
            return Err("a `*` must stand between two words");
        }
        let display: Box<str> = phrase.replace('~', "").into();
        for tokens in variants {
            let words = tokens.iter().filter(|t| **t != Token::Gap).count();
            self.entries.push(Entry {
                rest: tokens,
                category,
                display: display.clone(),
                words,
            });
        }
        Ok(())
    }

    fn finish(self) -> Lexicon {
        let mut index: HashMap<Box<str>, Vec<usize>> = HashMap::new();
        let mut dictionary: HashSet<Box<str>> = HashSet::new();
        let mut entries = Vec::with_capacity(self.entries.len());
        // Until here `rest` holds the whole phrase; its first word becomes
        // the index key.
        for mut entry in self.entries {
            let Some(Token::Word(first)) = entry.rest.first().cloned() else {
                continue;
            };
            entry.rest.remove(0);
            dictionary.insert(first.clone());
            for token in &entry.rest {
                if let Token::Word(w) = token {
                    dictionary.insert(w.clone());
                }
            }
            index.entry(first).or_default().push(entries.len());
            entries.push(entry);
        }
        let max_chars = dictionary
            .iter()
            .map(|w| w.chars().count())
            .max()
            .unwrap_or(0);
        let prefixes = dictionary
            .iter()
            .flat_map(|w| {
                w.char_indices()
                    .map(|(i, c)| &w[..i + c.len_utf8()])
                    .map(Box::from)
                    .collect::<Vec<Box<str>>>()
            })
            .collect();
        Lexicon {
            index,
            entries,
            dictionary,
            prefixes,
            max_chars,
            actions: self.actions,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_phrase_compiles_and_the_family_names_follow_the_lists() {
        let mut builder = Builder::default();
        let mut lists: Vec<&[&str]> =
            vec![words::AUDIO, words::PARALLEL, words::DRIFT, words::SPAWN];
        lists.extend(words::DELETE.phrases.iter().copied());
        for family in words::FAMILIES {
            lists.extend(family.phrases.iter().copied());
        }
        for (names, _) in words::TARGETS {
            lists.push(names);
        }
        for phrase in lists.into_iter().flatten() {
            assert_eq!(builder.add(phrase, Category::Audio), Ok(()), "{phrase:?}");
        }
        let actions: Vec<&str> = words::FAMILIES.iter().map(|f| f.action).collect();
        assert_eq!(FAMILY_NAMES[0], words::DELETE.action);
        assert_eq!(&FAMILY_NAMES[1..], actions.as_slice());
    }
}
