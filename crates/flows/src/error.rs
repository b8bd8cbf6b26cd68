//! Why a flow failed, in terms a caller can act on. The HTTP layer maps each
//! variant to its status code (SPEC §9).

use madre_db::{DbError, StorageFault};
use madre_models::ValidationError;
use madre_runner::RunnerError;

/// A flow that could not complete.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The caller's role is too low, or the action is never allowed.
    #[error("{0}")]
    Forbidden(String),
    /// The requester tried to approve their own plan where the risk's rule
    /// forbids it (SPEC §15).
    #[error("{0}")]
    SelfApprovalForbidden(String),
    /// A wrong confirmation token.
    #[error("wrong confirmation token ({attempts} of {max} attempts used){}", if *.void { "; the confirmation is void and the plan was cancelled" } else { "" })]
    WrongConfirmToken {
        /// Wrong tries so far.
        attempts: u32,
        /// Tries allowed.
        max: u32,
        /// True when this try voided the confirmation.
        void: bool,
    },
    /// No such plan (or other id).
    #[error("{0}")]
    NotFound(String),
    /// The plan was finished long enough ago to be moved to an archive.
    #[error("plan {plan_id} was archived to {archive}; `madre archive show {plan_id}` reads it")]
    Archived {
        /// The plan.
        plan_id: uuid::Uuid,
        /// The archive file it went to (in the data dir's `archive/`).
        archive: String,
    },
    /// The plan is not in a state that allows the request.
    #[error("{0}")]
    Conflict(String),
    /// The confirmation expired; the plan was cancelled.
    #[error("the confirmation token expired; the plan was cancelled (confirmation_expired)")]
    ConfirmationExpired,
    /// A field broke its rule; the message names it.
    #[error("{0}")]
    InvalidField(String),
    /// An `Idempotency-Key` reused with a different request.
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    /// Another request with this `Idempotency-Key` is still running.
    #[error("a request with this Idempotency-Key is still running; retry later to get its answer")]
    IdempotencyInProgress,
    /// Every slot is busy and the waiting queue is full: retry later.
    #[error("Madre is at capacity ({0} plans waiting); retry later")]
    QueueFull(usize),
    /// The policy or principals file could not be reloaded; the old one stays.
    #[error("{0}")]
    Reload(String),
    /// Storage cannot take writes at the moment (full, read-only, locked past
    /// the busy timeout, or failing): nothing was half-written, and the
    /// same request may succeed later. Never a bug of Madre's.
    #[error("storage is unavailable ({0}); retry later")]
    StorageUnavailable(StorageFault),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(DbError),
    /// Anything else (a bug, or the runtime shutting down).
    #[error("{0}")]
    Internal(String),
}

impl From<DbError> for FlowError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound { what, id } => FlowError::NotFound(format!("{what} {id} not found")),
            DbError::Conflict(reason) => FlowError::Conflict(reason),
            DbError::Unstorable(reason) => FlowError::InvalidField(reason),
            // SQLite's detail was logged where the write failed.
            DbError::Unavailable { reason, .. } => FlowError::StorageUnavailable(reason),
            other => FlowError::Storage(other),
        }
    }
}

impl From<RunnerError> for FlowError {
    fn from(e: RunnerError) -> Self {
        match e {
            RunnerError::QueueFull { queued } => FlowError::QueueFull(queued),
            RunnerError::NotFound(id) => FlowError::NotFound(format!("plan {id} not found")),
            RunnerError::Db(db) => db.into(),
            other => FlowError::Internal(other.to_string()),
        }
    }
}

impl From<ValidationError> for FlowError {
    fn from(e: ValidationError) -> Self {
        FlowError::InvalidField(e.to_string())
    }
}
