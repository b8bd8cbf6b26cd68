//! Risk classification (SPEC §5) with tables that a TOML file may replace.

use madre_models::{Dsl, RiskLevel};
use serde::Deserialize;
use std::path::Path;

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
        "policy file is not valid (expected arrays `high`, `med`, `low_actions`, `deny_targets`, `deny_actions`): {0}"
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
    /// order of SPEC §5: deny rule, LOW allowlist, HIGH, MED, else LOW.
    pub fn classify(&self, target: &str, action: &str) -> Decision {
        let target = target.trim().to_lowercase();
        let action = action.trim().to_lowercase();
        let has = |list: &[String], word: &str| list.iter().any(|w| w == word);
        if has(&self.deny_targets, &target) && has(&self.deny_actions, &action) {
            Decision::Deny
        } else if has(&self.low_actions, &action) {
            Decision::Risk(RiskLevel::Low)
        } else if has(&self.high, &action) {
            Decision::Risk(RiskLevel::High)
        } else if has(&self.med, &action) {
            Decision::Risk(RiskLevel::Med)
        } else {
            Decision::Risk(RiskLevel::Low)
        }
    }

    /// Classifies a parsed intent: each target with the action (any deny
    /// denies, the highest risk wins), or the domain with the action when
    /// there is no target.
    pub fn assess(&self, dsl: &Dsl) -> Assessment {
        let targets: Vec<&str> = if dsl.targets.is_empty() {
            vec![dsl.domain.as_str()]
        } else {
            dsl.targets.iter().map(|m| m.as_str()).collect()
        };
        self.assess_targets(&targets, &dsl.action)
    }

    /// Classifies `action` on each of `targets` (the rule of [`Self::assess`]).
    pub fn assess_targets(&self, targets: &[&str], action: &str) -> Assessment {
        let mut highest = RiskLevel::Low;
        for target in targets {
            match self.classify(target, action) {
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
