//! Who may do what: principals authenticated by a token, each with a role.

use madre_models::RiskLevel;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use std::path::Path;
use std::str::FromStr;
use subtle::ConstantTimeEq;

use crate::confirm::TokenHash;

/// Roles in increasing power: each may do everything the previous may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May read (GET endpoints).
    Viewer,
    /// May chat, submit tasks, send control actions and confirm MED plans.
    Operator,
    /// May do everything: confirm HIGH plans and control Madre itself.
    Admin,
}

impl Role {
    /// True when this role is at least `required`.
    pub fn at_least(self, required: Role) -> bool {
        self >= required
    }

    /// The least role that may confirm a plan of `risk`.
    pub fn required_to_confirm(risk: RiskLevel) -> Role {
        match risk {
            RiskLevel::Low | RiskLevel::Med => Role::Operator,
            RiskLevel::High => Role::Admin,
        }
    }

    /// True when this role may confirm a plan of `risk`.
    pub fn may_confirm(self, risk: RiskLevel) -> bool {
        self.at_least(Self::required_to_confirm(risk))
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (viewer, operator or admin)"
            )),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Name recorded in the audit trail.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

#[derive(Debug, Clone)]
struct Entry {
    principal: Principal,
    token_hash: TokenHash,
}

/// The callers Madre knows, by the SHA-256 of their secret. Lookup hashes the
/// presented token and compares it with every entry in constant time.
#[derive(Debug, Clone, Default)]
pub struct Principals {
    entries: Vec<Entry>,
}

/// A principals file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PrincipalsError {
    /// The file could not be read.
    #[error("cannot read tokens file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML of the `[[principal]]` shape.
    #[error(
        "tokens file is not valid (expected [[principal]] tables with name, role, token_sha256): {0}"
    )]
    Parse(#[from] toml::de::Error),
    /// A `token_sha256` is not 64 hex digits.
    #[error("principal {name:?}: token_sha256 must be 64 hex digits")]
    BadHash {
        /// The principal.
        name: String,
    },
    /// Two principals share a name.
    #[error("principal {name:?} appears twice")]
    Duplicate {
        /// The repeated name.
        name: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    principal: Vec<PrincipalEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalEntry {
    name: String,
    role: Role,
    token_sha256: String,
}

impl Principals {
    /// No principals: every token is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a principal whose secret is `token` (only its hash is kept).
    pub fn with_token(mut self, name: &str, role: Role, token: &SecretString) -> Self {
        self.entries.push(Entry {
            principal: Principal {
                name: name.to_owned(),
                role,
            },
            token_hash: TokenHash::of(token.expose_secret()),
        });
        self
    }

    /// Adds the principals of a tokens file's text.
    pub fn with_toml_str(mut self, text: &str) -> Result<Self, PrincipalsError> {
        let file: PrincipalsFile = toml::from_str(text)?;
        for entry in file.principal {
            if self.entries.iter().any(|e| e.principal.name == entry.name) {
                return Err(PrincipalsError::Duplicate { name: entry.name });
            }
            let token_hash =
                TokenHash::from_hex(&entry.token_sha256).map_err(|_| PrincipalsError::BadHash {
                    name: entry.name.clone(),
                })?;
            self.entries.push(Entry {
                principal: Principal {
                    name: entry.name,
                    role: entry.role,
                },
                token_hash,
            });
        }
        Ok(self)
    }

    /// Adds the principals of the tokens file at `path`.
    pub fn with_file(self, path: &Path) -> Result<Self, PrincipalsError> {
        let text = std::fs::read_to_string(path).map_err(|source| PrincipalsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.with_toml_str(&text)
    }

    /// The principal whose secret is `presented`, if any. Every entry is
    /// compared, in constant time, whatever matches.
    pub fn authenticate(&self, presented: &str) -> Option<&Principal> {
        let presented = TokenHash::of(presented);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.token_hash.as_bytes().ct_eq(presented.as_bytes())) {
                found = found.or(Some(&entry.principal));
            }
        }
        found
    }

    /// How many principals there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no principal is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
