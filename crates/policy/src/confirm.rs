//! Confirmation tokens: generated from the OS CSPRNG, shown once, stored only
//! as SHA-256, compared in constant time, single use, expiring, and voided
//! after [`MAX_FAILED_ATTEMPTS`] wrong tries.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use madre_models::RiskLevel;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// Wrong tries after which a pending confirmation is void.
pub const MAX_FAILED_ATTEMPTS: u32 = 5;

/// Random bytes in a token: 256 bits, well above the 128 required.
const TOKEN_BYTES: usize = 32;

/// A freshly issued confirmation token. Its text is shown to the person once
/// and never stored; `Debug` does not print it.
pub struct ConfirmToken(SecretString);

impl ConfirmToken {
    /// A new token from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Self::from_entropy(bytes))
    }

    /// The token made from these random bytes (URL-safe base64, 43 characters).
    pub fn from_entropy(bytes: [u8; TOKEN_BYTES]) -> Self {
        Self(SecretString::from(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The token text, to hand to the person who must confirm.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The hash to store.
    pub fn hash(&self) -> TokenHash {
        TokenHash::of(self.0.expose_secret())
    }
}

impl fmt::Debug for ConfirmToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConfirmToken(<redacted>)")
    }
}

/// SHA-256 of a secret: what Madre stores instead of the secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 32]);

/// Text that is not a 64-digit hex SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 in hex (64 hex digits)")]
pub struct TokenHashError;

impl TokenHash {
    /// Hashes `secret`.
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Result<Self, TokenHashError> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| TokenHashError)?;
        Ok(Self(bytes))
    }

    /// Lower-case hex, for storage.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// True when `presented` hashes to this digest; constant time.
    pub fn matches(&self, presented: &str) -> bool {
        bool::from(self.0.ct_eq(TokenHash::of(presented).as_bytes()))
    }
}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..8])
    }
}

/// A pending confirmation as stored (one per plan).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationRecord {
    /// Hash of the issued token.
    pub token_hash: TokenHash,
    /// Risk of the plan it confirms (decides who may confirm).
    pub risk: RiskLevel,
    /// When the token stops being valid.
    pub expires_at: DateTime<Utc>,
    /// When it was consumed, if it was.
    pub used_at: Option<DateTime<Utc>>,
    /// Wrong tries so far.
    pub failed_attempts: u32,
}

/// What a confirmation attempt amounts to; the caller stores the effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The token is right and live: consume it and resume the plan.
    Accepted,
    /// Wrong token: store `failed_attempts`; when `now_void`, cancel the plan.
    Rejected {
        /// Wrong tries including this one.
        failed_attempts: u32,
        /// True when this try used up the last attempt.
        now_void: bool,
    },
    /// Past `expires_at`: the plan ends CANCELLED (`confirmation_expired`).
    Expired,
    /// Already consumed: nothing happens again.
    AlreadyUsed,
    /// Too many wrong tries earlier: the confirmation no longer exists.
    Void,
}

/// Judges one attempt to confirm with `presented` at time `now`.
pub fn check_confirmation(
    record: &ConfirmationRecord,
    presented: &str,
    now: DateTime<Utc>,
) -> Verdict {
    if record.used_at.is_some() {
        Verdict::AlreadyUsed
    } else if record.failed_attempts >= MAX_FAILED_ATTEMPTS {
        Verdict::Void
    } else if now >= record.expires_at {
        Verdict::Expired
    } else if record.token_hash.matches(presented) {
        Verdict::Accepted
    } else {
        let failed_attempts = record.failed_attempts + 1;
        Verdict::Rejected {
            failed_attempts,
            now_void: failed_attempts >= MAX_FAILED_ATTEMPTS,
        }
    }
}
