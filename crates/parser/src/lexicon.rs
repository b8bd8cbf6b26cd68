//! The word lists compiled for matching: every phrase folded once, indexed by
//! its first word, so a text is scanned once whatever the size of the lists.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::LazyLock;

use madre_models::{Effect, Module};

use crate::effect_words as ew;
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
    /// A verb added to `read` or `generate` that the built-in lists know
    /// as `send`, `execute` or `destroy`: no policy can make those LOW.
    #[error(
        "policy `effects.{effect}` holds {word:?}, which Madre knows as {known}: send, execute and destroy cannot be made LOW"
    )]
    CannotLower {
        /// The effect it was added to.
        effect: &'static str,
        /// The word as given.
        word: String,
        /// What the built-in lists make of it.
        known: &'static str,
    },
}

/// Words a policy file adds to one effect (`[effects.<effect>]`): verbs
/// that have that effect, and objects (see [`Lexicon::with_policy`]).
#[derive(Debug, Clone, Copy)]
pub struct EffectExtras<'a> {
    /// The effect the words are added to.
    pub effect: Effect,
    /// Verbs and verb phrases, in the phrase syntax of the word lists.
    pub verbs: &'a [String],
    /// Nouns and noun phrases.
    pub objects: &'a [String],
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
    /// A word of the effect lists (SPEC §5 "Safety by effect").
    Effect(EffectWord),
}

/// What a word of the effect lists is for (see [`crate::effect_words`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EffectWord {
    /// A verb, and what it does.
    Verb(VerbClass),
    /// A noun, and what it names.
    Object(ObjectClass),
    /// "it", "that", "lo": stands for something said before.
    Anaphor,
    /// Courtesy and sequence words before a verb.
    Filler,
    /// Plain conversation.
    Conversation,
    /// Opens a noun phrase.
    Determiner,
    /// A pronoun, particle or preposition right after a verb.
    AfterVerb,
    /// Opens a statement.
    Subject,
    /// Turns a statement into a request.
    Modal,
    /// Opens a question.
    Interrogative,
    /// Asks for an explanation.
    Explain,
    /// A request phrased as a question.
    RequestQuestion,
    /// Never a verb.
    NotVerb,
    /// Makes a run verb harmless ("a health check").
    ReadObject,
    /// A command-line tool.
    Tool,
    /// A verb of speaking to someone.
    Speak,
    /// "is", "son": makes a noun phrase a statement.
    Copula,
}

/// What a verb does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum VerbClass {
    /// Reads or reports.
    Read,
    /// Makes something for the requester.
    Generate,
    /// Depends on its object.
    Shaper,
    /// Carries out what was said before.
    Doing,
    /// Alters a system, a setting, a permission or data.
    Change,
    /// Runs code.
    Execute,
    /// Makes something leave the system.
    Send,
}

/// What a noun names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ObjectClass {
    System,
    Data,
    People,
    Money,
    Access,
    Secret,
    /// Code that runs: a script, a shell.
    Code,
    /// Harmless material: a poem, a track.
    Content,
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
        Self::with_policy(extras, std::iter::empty::<EffectExtras<'_>>())
    }

    /// The built-in lists plus a policy file's `[families]` (as in
    /// [`Lexicon::with_extras`]) and `[effects]`: verbs and objects an
    /// operator adds to an effect, for example the names of their own tools.
    ///
    /// Verbs added to `read` or `generate` only name what no built-in list
    /// knows: a word the built-in lists know as `send`, `execute` or
    /// `destroy` is refused ([`LexiconError::CannotLower`]), and every
    /// built-in danger still wins over an added word. Objects added to
    /// `read` or `generate` are harmless material; objects added to any
    /// other effect are objects of concern (a verb no list knows, acting on
    /// one, waits); `send` objects also make an ambiguous verb send ("give
    /// the voucher").
    ///
    /// ```
    /// use madre_models::Effect;
    /// use madre_parser::{EffectExtras, Lexicon};
    /// let verbs = vec!["vxctl".to_owned()];
    /// let extras = [EffectExtras { effect: Effect::Execute, verbs: &verbs, objects: &[] }];
    /// let lexicon = Lexicon::with_policy(std::iter::empty::<(&str, Vec<&str>)>(), extras).unwrap();
    /// assert_eq!(lexicon.parse("vxctl rollout").effect, Effect::Execute);
    /// ```
    pub fn with_policy<'e, I, K, P, S, E>(families: I, effects: E) -> Result<Self, LexiconError>
    where
        I: IntoIterator<Item = (K, P)>,
        K: AsRef<str>,
        P: IntoIterator<Item = S>,
        S: AsRef<str>,
        E: IntoIterator<Item = EffectExtras<'e>>,
    {
        let mut builder = Builder::default();
        builder.add_builtin();
        for (family, phrases) in families {
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
                builder.add_checked(phrase.as_ref(), category, family)?;
            }
        }
        let builtin = Self::builtin();
        for extras in effects {
            let name = extras.effect.as_str();
            let verb = match extras.effect {
                Effect::Read => Category::Effect(EffectWord::Verb(VerbClass::Read)),
                Effect::Generate => Category::Effect(EffectWord::Verb(VerbClass::Generate)),
                Effect::Change | Effect::Unknown => {
                    Category::Effect(EffectWord::Verb(VerbClass::Change))
                }
                Effect::Send => Category::Effect(EffectWord::Verb(VerbClass::Send)),
                Effect::Execute => Category::Effect(EffectWord::Verb(VerbClass::Execute)),
                Effect::Destroy => Category::Delete,
            };
            let object = match extras.effect {
                Effect::Read | Effect::Generate => ObjectClass::Content,
                Effect::Send => ObjectClass::Money,
                _ => ObjectClass::System,
            };
            for phrase in extras.verbs {
                if extras.effect.min_risk() == madre_models::RiskLevel::Low
                    && let Some(known) = builtin.dangerous_meaning(phrase)
                {
                    return Err(LexiconError::CannotLower {
                        effect: name,
                        word: phrase.clone(),
                        known,
                    });
                }
                builder.add_checked(phrase, verb, name)?;
            }
            for phrase in extras.objects {
                builder.add_checked(phrase, Category::Effect(EffectWord::Object(object)), name)?;
            }
        }
        Ok(builder.finish())
    }

    /// What the built-in lists make of `phrase` when that is `send`,
    /// `execute` or `destroy`: a phrase an operator may not call harmless.
    fn dangerous_meaning(&self, phrase: &str) -> Option<&'static str> {
        let mut classes = Classes::default();
        let words = self.words(phrase, &mut classes);
        (0..words.len()).find_map(|at| {
            self.matches_at(&words, at)
                .find_map(|(category, _)| match category {
                    Category::Delete => Some("destroy"),
                    Category::Effect(EffectWord::Verb(VerbClass::Send)) => Some("send"),
                    Category::Effect(EffectWord::Verb(VerbClass::Execute) | EffectWord::Tool) => {
                        Some("execute")
                    }
                    _ => None,
                })
        })
    }

    /// The phrases of the danger vocabulary that match anywhere in `text`,
    /// as written in the word lists: destructive and changing or running
    /// family words, verbs that change, run, send or act on what was said,
    /// objects of concern, command-line tools and verbs of speaking. It
    /// says which words a request relies on to wait; the leave-one-family-
    /// out measurement (docs/safety.md) uses it to find the words only one
    /// family of dangerous requests brought.
    ///
    /// ```
    /// let lexicon = madre_parser::Lexicon::builtin();
    /// assert!(lexicon.danger_phrases("please wire the money").contains("wire"));
    /// ```
    pub fn danger_phrases(&self, text: &str) -> BTreeSet<String> {
        let mut classes = Classes::default();
        let words = self.words(text, &mut classes);
        let mut found = BTreeSet::new();
        for at in 0..words.len() {
            let stems = crate::effect::stems(words.word(at));
            let candidates = std::iter::once(words.word(at))
                .chain(words.alternatives(at))
                .chain(stems.iter().map(String::as_str));
            for &id in candidates.filter_map(|w| self.index.get(w)).flatten() {
                let Some(entry) = self.entries.get(id) else {
                    continue;
                };
                if self.is_danger(entry.category)
                    && match_rest(&words, at + 1, &entry.rest).is_some()
                {
                    found.insert(entry.display.to_string());
                }
            }
        }
        found
    }

    /// This lexicon without the danger phrases named in `phrases` (see
    /// [`Lexicon::danger_phrases`]); every other phrase, and the grammar
    /// words, stay. For measuring how the gate does on requests whose own
    /// words it was never given.
    pub fn without_danger_phrases(&self, phrases: &HashSet<String>) -> Lexicon {
        let mut lexicon = self.clone();
        for ids in lexicon.index.values_mut() {
            ids.retain(|&id| {
                self.entries.get(id).is_none_or(|entry| {
                    !(self.is_danger(entry.category) && phrases.contains(&*entry.display))
                })
            });
        }
        lexicon
    }

    /// Whether a phrase of this category is danger vocabulary.
    fn is_danger(&self, category: Category) -> bool {
        use EffectWord as W;
        match category {
            Category::Delete => true,
            Category::Family(i) => self
                .actions
                .get(i)
                .is_some_and(|a| crate::effect::changes(a) || *a == "run"),
            Category::Effect(
                W::Verb(VerbClass::Change | VerbClass::Execute | VerbClass::Send)
                | W::Verb(VerbClass::Shaper | VerbClass::Doing)
                | W::Tool
                | W::Speak,
            ) => true,
            Category::Effect(W::Object(object)) => object != ObjectClass::Content,
            _ => false,
        }
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
                    Category::Effect(_) => {}
                }
            }
        }
        hits
    }

    /// Every phrase of the lists that starts at word `at` (as written, or as
    /// one of its alternatives), with one past its last word.
    pub(crate) fn matches_at<'a>(
        &'a self,
        words: &'a Words<'_>,
        at: usize,
    ) -> impl Iterator<Item = (Category, usize)> + 'a {
        self.matches_from(words, at, true)
    }

    /// [`Lexicon::matches_at`], optionally without the alternatives of an
    /// obfuscated word: a small word spelled inside "s\u{200b}cale" is no
    /// determiner.
    pub(crate) fn matches_from<'a>(
        &'a self,
        words: &'a Words<'_>,
        at: usize,
        alternatives: bool,
    ) -> impl Iterator<Item = (Category, usize)> + 'a {
        std::iter::once(words.word(at))
            .chain(words.alternatives(at).filter(move |_| alternatives))
            .filter_map(|w| self.index.get(w))
            .flatten()
            .filter_map(move |&id| {
                let entry = self.entries.get(id)?;
                let end = match_rest(words, at + 1, &entry.rest)?;
                Some((entry.category, end))
            })
    }

    /// Whether a module name starts at word `at`.
    pub(crate) fn target_at(&self, words: &Words<'_>, at: usize) -> bool {
        self.matches_at(words, at)
            .any(|(category, _)| matches!(category, Category::Target(_)))
    }

    /// The categories of the one-word entries spelled `word` (already
    /// folded): for looking up a verb's stem.
    pub(crate) fn single_word(&self, word: &str) -> impl Iterator<Item = Category> + '_ {
        self.index
            .get(word)
            .into_iter()
            .flatten()
            .filter_map(|&id| self.entries.get(id))
            .filter(|e| e.rest.is_empty())
            .map(|e| e.category)
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
        use EffectWord as W;
        use ObjectClass as O;
        use VerbClass as V;
        let effect_lists: &[(&[&str], EffectWord)] = &[
            (ew::READ_VERBS, W::Verb(V::Read)),
            (ew::GENERATE_VERBS, W::Verb(V::Generate)),
            (ew::SHAPER_VERBS, W::Verb(V::Shaper)),
            (ew::CHANGE_VERBS, W::Verb(V::Change)),
            (ew::SEND_VERBS, W::Verb(V::Send)),
            (ew::EXECUTE_VERBS, W::Verb(V::Execute)),
            (ew::DOING_VERBS, W::Verb(V::Doing)),
            (ew::SYSTEM_OBJECTS, W::Object(O::System)),
            (ew::DATA_OBJECTS, W::Object(O::Data)),
            (ew::PEOPLE_OBJECTS, W::Object(O::People)),
            (ew::MONEY_OBJECTS, W::Object(O::Money)),
            (ew::ACCESS_OBJECTS, W::Object(O::Access)),
            (ew::SECRET_OBJECTS, W::Object(O::Secret)),
            (ew::CONTENT_OBJECTS, W::Object(O::Content)),
            (ew::ANAPHORA, W::Anaphor),
            (ew::FILLERS, W::Filler),
            (ew::CONVERSATION, W::Conversation),
            (ew::DETERMINERS, W::Determiner),
            (ew::AFTER_VERB, W::AfterVerb),
            (ew::SUBJECTS, W::Subject),
            (ew::MODALS, W::Modal),
            (ew::INTERROGATIVES, W::Interrogative),
            (ew::EXPLAIN, W::Explain),
            (ew::REQUEST_QUESTIONS, W::RequestQuestion),
            (ew::NOT_VERBS, W::NotVerb),
            (ew::READ_OBJECTS, W::ReadObject),
            (ew::TOOLS, W::Tool),
            (ew::CODE_OBJECTS, W::Object(O::Code)),
            (ew::SPEAK_VERBS, W::Speak),
            (ew::COPULAS, W::Copula),
        ];
        for (list, word) in effect_lists {
            self.add_all(list, Category::Effect(*word));
        }
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

    /// [`Builder::add`], with the error a policy file is shown.
    fn add_checked(
        &mut self,
        phrase: &str,
        category: Category,
        family: &str,
    ) -> Result<(), LexiconError> {
        self.add(phrase, category)
            .map_err(|reason| LexiconError::BadPhrase {
                family: family.to_owned(),
                phrase: phrase.to_owned(),
                reason,
            })
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
