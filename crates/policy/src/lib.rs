//! Madre's approval gate: how risky an intent is, whether it is refused
//! outright, who may confirm it, and the single-use confirmation tokens.
//!
//! Everything here is pure (no clock, no I/O) except [`ConfirmToken::generate`],
//! which reads the operating system's CSPRNG, and the `load` helpers that
//! read a file. Time is always passed in, so the token rules are testable as
//! plain functions over a stored [`ConfirmationRecord`].

mod approvals;
mod confirm;
mod fingerprint;
mod risk;
mod roles;

pub use approvals::{ApprovalRule, ApprovalRules, MAX_REQUIRED_APPROVALS};
pub use confirm::{
    ConfirmToken, ConfirmationRecord, MAX_FAILED_ATTEMPTS, TokenHash, TokenHashError, Verdict,
    check_confirmation,
};
pub use fingerprint::plan_fingerprint;
pub use risk::{
    ACTIONS_PARAMETER, Assessment, Decision, EffectWords, FAMILY_NAMES, PolicyError, RiskTables,
    SHELL_COMMAND_WARNING,
};
pub use roles::{Principal, Principals, PrincipalsError, Role};
