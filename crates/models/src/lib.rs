//! Contracts of Madre, the VX11 orchestrator: the enums, the intent DSL, plans
//! and steps, and the request/response bodies of the HTTP API.
//!
//! Every other Madre crate, and any VX11 service talking to Madre, shares these
//! types; their JSON form is the one SPEC §3 documents (SCREAMING_CASE enums,
//! snake_case fields, RFC 3339 UTC timestamps, UUID v4 ids). Request types come
//! with `validate()` methods that turn them into checked commands, so a handler
//! never re-checks a field.

mod enums;
#[cfg(feature = "openapi")]
pub mod openapi;
mod types;
mod validate;

pub use enums::{
    Effect, EndReason, EventType, IntentOutcome, Mode, Module, ModuleSet, OwnAction, RiskLevel,
    Status, StepType,
};
pub use types::*;
pub use validate::{
    MAX_MESSAGE_CHARS, MAX_SESSION_ID_CHARS, MAX_TASK_NAME_CHARS, MAX_WORD_CHARS, Message,
    SessionId, ValidationError, Word, is_blank,
};
