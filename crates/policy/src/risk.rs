//! Risk classification (SPEC §5) with tables that a TOML file may replace,
//! and word-family extensions that a TOML file may add for the parser.

use madre_models::{Dsl, Effect, RiskLevel};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The warning the parser attaches to a message holding a command line or a
/// database statement that changes or destroys. Such a message is HIGH
/// whatever its action (SPEC §4 "Safety first"); the deny rule still applies.
pub const SHELL_COMMAND_WARNING: &str = "shell_command_detected";

/// The DSL parameter in which the parser lists every action a message of
/// several requests names (`madre_parser::ACTIONS_PARAMETER`); each is
/// classified, and the highest risk wins.
pub const ACTIONS_PARAMETER: &str = "actions";

/// The parser's word families that a policy file may extend under
/// `[families]`: `delete` (the destructive family) and the action families
/// of SPEC §4, in the order the parser tries them.
pub const FAMILY_NAMES: &[&str] = &[
    "delete", "stop", "restart", "suspend", "cleanup", "update", "migrate", "restore", "run",
    "analyze", "status", "list", "help",
];

/// The outcome of classifying one target and action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed, with this risk.
    Risk(RiskLevel),
    /// Refused by the deny rule: never executed, even with a token.
    Deny,
}

/// The lists that drive classification. `Default` gives the tables of SPEC §5.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskTables {
    /// Actions that are HIGH risk.
    pub high: Vec<String>,
    /// Actions that are MED risk.
    pub med: Vec<String>,
    /// Actions that are LOW on any target (checked before `high` and `med`).
    pub low_actions: Vec<String>,
    /// Targets protected by the deny rule.
    pub deny_targets: Vec<String>,
    /// Actions refused on the protected targets.
    pub deny_actions: Vec<String>,
    /// Words and phrases to add to the parser's families, by family name
    /// (one of [`FAMILY_NAMES`]): TOML `[families]` with e.g.
    /// `delete = ["zap", "make * vanish"]`. Plain data: the policy does not
    /// depend on the parser; the server hands this map to
    /// `madre_parser::Lexicon::with_extras`. Empty by default.
    pub families: BTreeMap<String, Vec<String>>,
    /// Verbs and objects an operator adds to an effect (SPEC §5), by effect
    /// name (`read`, `generate`, `unknown`, `change`, `send`, `execute`,
    /// `destroy`): TOML `[effects.execute]` with `verbs = ["vxctl"]` and
    /// `objects = [...]`. Plain data like `families`; the server hands it
    /// to `madre_parser::Lexicon::with_policy`, which refuses to make a
    /// verb it knows as send, execute or destroy LOW. Empty by default.
    pub effects: BTreeMap<String, EffectWords>,
    /// Who approves a waiting plan, by risk (SPEC §15): TOML
    /// `[approvals.MED]` and `[approvals.HIGH]`. The defaults keep one
    /// approval by the role that may confirm.
    pub approvals: crate::ApprovalRules,
}

/// The words a policy file adds to one effect.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EffectWords {
    /// Verbs and verb phrases that have the effect.
    pub verbs: Vec<String>,
    /// Nouns and noun phrases: harmless material for `read` and
    /// `generate`, objects of concern for the other effects.
    pub objects: Vec<String>,
}

impl RiskTables {
    /// The `[effects]` entries with their effect, in the shape
    /// `madre_parser::Lexicon::with_policy` takes.
    pub fn effect_words(&self) -> impl Iterator<Item = (Effect, &EffectWords)> {
        self.effects
            .iter()
            .filter_map(|(name, words)| Some((name.parse().ok()?, words)))
    }
}

fn words(list: &[&str]) -> Vec<String> {
    list.iter().map(|w| (*w).to_owned()).collect()
}

impl Default for RiskTables {
    fn default() -> Self {
        Self {
            high: words(&[
                "delete",
                "drop",
                "destroy",
                "reset",
                "migrate",
                "restore",
                "stop",
                "kill",
                "terminate",
                "wipe",
                "truncate",
                "erase",
            ]),
            med: words(&["restart", "reboot", "suspend", "cleanup", "patch", "update"]),
            low_actions: words(&["status", "health", "read", "list", "analyze"]),
            deny_targets: words(&["madre", "tentaculo_link"]),
            deny_actions: words(&["delete", "stop", "kill", "destroy", "terminate", "wipe"]),
            families: BTreeMap::new(),
            effects: BTreeMap::new(),
            approvals: crate::ApprovalRules::default(),
        }
    }
}

/// A policy file that could not be used; nothing of it is applied.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error(
        "policy file is not valid (expected arrays `high`, `med`, `low_actions`, `deny_targets`, `deny_actions` and tables `families`, `effects` and `approvals`): {0}"
    )]
    Parse(#[from] toml::de::Error),
    /// A list holds something that is not a lower-case word.
    #[error("policy list `{list}` holds {word:?}, which is not a lower-case word")]
    BadWord {
        /// Which list.
        list: &'static str,
        /// The offending entry.
        word: String,
    },
    /// `[families]` names a family the parser does not have.
    #[error("policy `families` has {family:?}, which is not a word family (expected one of {})", FAMILY_NAMES.join(", "))]
    UnknownFamily {
        /// The name given.
        family: String,
    },
    /// A family extension is not a lower-case phrase.
    #[error(
        "policy `families.{family}` holds {phrase:?}, which is not a lower-case phrase (words separated by spaces, `*` between two words for a gap)"
    )]
    BadPhrase {
        /// Which family.
        family: String,
        /// The offending entry.
        phrase: String,
    },
    /// An `[approvals.*]` rule cannot be used.
    #[error("policy `approvals.{risk}`: {problem}")]
    BadApprovalRule {
        /// MED or HIGH.
        risk: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// `[effects]` names something that is not an effect.
    #[error(
        "policy `effects` has {effect:?}, which is not an effect (expected one of read, generate, unknown, change, send, execute, destroy)"
    )]
    UnknownEffect {
        /// The name given.
        effect: String,
    },
    /// An effect's verb or object is not a lower-case phrase.
    #[error(
        "policy `effects.{effect}.{list}` holds {phrase:?}, which is not a lower-case phrase (words separated by spaces, `*` between two words for a gap)"
    )]
    BadEffectPhrase {
        /// Which effect.
        effect: String,
        /// `verbs` or `objects`.
        list: &'static str,
        /// The offending entry.
        phrase: String,
    },
}

/// The risk of an intent as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    /// Deny, or the highest risk over the targets.
    pub decision: Decision,
    /// The protected target that caused a denial.
    pub denied_target: Option<String>,
}

impl Assessment {
    /// The risk to record (HIGH for a denial).
    pub fn risk(&self) -> RiskLevel {
        match self.decision {
            Decision::Risk(risk) => risk,
            Decision::Deny => RiskLevel::High,
        }
    }

    /// True when the deny rule refused the intent.
    pub fn is_denied(&self) -> bool {
        self.decision == Decision::Deny
    }

    /// True for MED and HIGH intents that are not denied.
    pub fn requires_confirmation(&self) -> bool {
        matches!(self.decision, Decision::Risk(r) if r.requires_confirmation())
    }
}

impl RiskTables {
    /// Parses a policy file's text: each key present replaces that list,
    /// missing keys keep the defaults.
    pub fn from_toml_str(text: &str) -> Result<Self, PolicyError> {
        let tables: RiskTables = toml::from_str(text)?;
        if let Some((risk, problem)) = tables.approvals.problem() {
            return Err(PolicyError::BadApprovalRule { risk, problem });
        }
        for (list, entries) in [
            ("high", &tables.high),
            ("med", &tables.med),
            ("low_actions", &tables.low_actions),
            ("deny_targets", &tables.deny_targets),
            ("deny_actions", &tables.deny_actions),
        ] {
            if let Some(bad) = entries.iter().find(|w| !is_lower_word(w)) {
                return Err(PolicyError::BadWord {
                    list,
                    word: bad.clone(),
                });
            }
        }
        for (effect, words) in &tables.effects {
            if effect.parse::<Effect>().is_err() {
                return Err(PolicyError::UnknownEffect {
                    effect: effect.clone(),
                });
            }
            for (list, phrases) in [("verbs", &words.verbs), ("objects", &words.objects)] {
                if let Some(bad) = phrases.iter().find(|p| !is_lower_phrase(p)) {
                    return Err(PolicyError::BadEffectPhrase {
                        effect: effect.clone(),
                        list,
                        phrase: bad.clone(),
                    });
                }
            }
        }
        for (family, phrases) in &tables.families {
            if !FAMILY_NAMES.contains(&family.as_str()) {
                return Err(PolicyError::UnknownFamily {
                    family: family.clone(),
                });
            }
            if let Some(bad) = phrases.iter().find(|p| !is_lower_phrase(p)) {
                return Err(PolicyError::BadPhrase {
                    family: family.clone(),
                    phrase: bad.clone(),
                });
            }
        }
        Ok(tables)
    }

    /// Reads and parses the policy file at `path`.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// Classifies one `target` and `action` (compared lower-cased), in the
    /// order of SPEC §5: deny rule, LOW allowlist, HIGH, MED, else MED: an
    /// action that is not known to be harmless waits ("Safety by effect").
    /// This is the rule for programmatic actions (control, v6 tasks), which
    /// name their action and have no text to read: only the allowlist
    /// (`low_actions`) is known to be harmless, since the action's payload
    /// goes to the module unread.
    pub fn classify(&self, target: &str, action: &str) -> Decision {
        self.classify_known(target, action)
            .unwrap_or(Decision::Risk(RiskLevel::Med))
    }

    /// The tables' verdict, or `None` when no table names the action.
    fn classify_known(&self, target: &str, action: &str) -> Option<Decision> {
        let target = target.trim().to_lowercase();
        let action = action.trim().to_lowercase();
        let has = |list: &[String], word: &str| list.iter().any(|w| w == word);
        if has(&self.deny_targets, &target) && has(&self.deny_actions, &action) {
            Some(Decision::Deny)
        } else if has(&self.low_actions, &action) {
            Some(Decision::Risk(RiskLevel::Low))
        } else if has(&self.high, &action) {
            Some(Decision::Risk(RiskLevel::High))
        } else if has(&self.med, &action) {
            Some(Decision::Risk(RiskLevel::Med))
        } else {
            None
        }
    }

    /// Classifies a parsed intent: each target with the action, and with
    /// every other action the message names ([`ACTIONS_PARAMETER`]); any
    /// deny denies, the highest risk wins; or the domain with the action when
    /// there is no target; then the intent's effect sets a floor (SPEC §5
    /// "Safety by effect"): only `read` and `generate` may be LOW, `change`,
    /// `send` and `unknown` are at least MED, `execute` and `destroy` HIGH.
    /// The tables only raise that floor: an action they do not name adds
    /// nothing, since the effect already says whether it is harmless. A
    /// message holding a command line or statement
    /// ([`SHELL_COMMAND_WARNING`]) is at least HIGH, whatever the tables say.
    pub fn assess(&self, dsl: &Dsl) -> Assessment {
        let targets: Vec<&str> = if dsl.targets.is_empty() {
            vec![dsl.domain.as_str()]
        } else {
            dsl.targets.iter().map(|m| m.as_str()).collect()
        };
        let named = dsl
            .parameters
            .get(ACTIONS_PARAMETER)
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str());
        let mut assessment = Assessment {
            decision: Decision::Risk(RiskLevel::Low),
            denied_target: None,
        };
        for action in std::iter::once(dsl.action.as_str()).chain(named) {
            let this = self.assess_with(&targets, action, |t, a| {
                self.classify_known(t, a)
                    .unwrap_or(Decision::Risk(RiskLevel::Low))
            });
            match (this.decision, assessment.decision) {
                (Decision::Deny, _) => {
                    assessment = this;
                    break;
                }
                (Decision::Risk(new), Decision::Risk(old)) if new > old => assessment = this,
                _ => {}
            }
        }
        if let Decision::Risk(risk) = assessment.decision {
            let mut floor = dsl.effect.min_risk();
            if dsl.warnings.iter().any(|w| w == SHELL_COMMAND_WARNING) {
                floor = floor.max(RiskLevel::High);
            }
            assessment.decision = Decision::Risk(risk.max(floor));
        }
        assessment
    }

    /// Classifies `action` on each of `targets` (the rule of [`Self::assess`]).
    pub fn assess_targets(&self, targets: &[&str], action: &str) -> Assessment {
        self.assess_with(targets, action, |t, a| self.classify(t, a))
    }

    fn assess_with(
        &self,
        targets: &[&str],
        action: &str,
        classify: impl Fn(&str, &str) -> Decision,
    ) -> Assessment {
        let mut highest = RiskLevel::Low;
        for target in targets {
            match classify(target, action) {
                Decision::Deny => {
                    return Assessment {
                        decision: Decision::Deny,
                        denied_target: Some((*target).to_owned()),
                    };
                }
                Decision::Risk(risk) => highest = highest.max(risk),
            }
        }
        Assessment {
            decision: Decision::Risk(highest),
            denied_target: None,
        }
    }
}

fn is_lower_word(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Lower-case words (any script) separated by single spaces, with `*` only
/// between two words; `-`, `_` and `~` may stand inside a word.
fn is_lower_phrase(phrase: &str) -> bool {
    let tokens: Vec<&str> = phrase.split(' ').collect();
    let word_ok = |w: &str| {
        w.chars().any(char::is_alphanumeric)
            && w.chars()
                .all(|c| (c.is_alphanumeric() && !c.is_uppercase()) || matches!(c, '-' | '_' | '~'))
    };
    !phrase.is_empty()
        && tokens.first().is_some_and(|w| word_ok(w))
        && tokens.last().is_some_and(|w| word_ok(w))
        && tokens
            .windows(2)
            .all(|pair| !(pair[0] == "*" && pair[1] == "*"))
        && tokens.iter().all(|w| *w == "*" || word_ok(w))
}
