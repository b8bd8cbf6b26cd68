//! The JSON error shape of SPEC §9 and the mapping from every failure to
//! its status code. A 500 never shows its cause to the caller; the cause is
//! logged with the request id.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use madre_flows::FlowError;
use madre_flows::StorageFault;
use madre_models::{ErrorBody, ValidationError};

use crate::request_id;

/// `Retry-After` of a `storage_unavailable` answer, in seconds: storage
/// comes back when space is freed or a lock released, which takes longer
/// than a queue takes to drain.
const STORAGE_RETRY_AFTER_S: &str = "10";

/// A request that failed, with the status it answers.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not valid JSON.
    #[error("the body is not valid JSON: {0}")]
    MalformedJson(String),
    /// 401: no token, or an unknown one.
    #[error("a valid X-VX11-Token header is required")]
    Unauthorized,
    /// 403: the caller's role is too low, or the action is denied.
    #[error("{0}")]
    Forbidden(String),
    /// 403: the requester may not approve their own plan.
    #[error("{0}")]
    SelfApprovalForbidden(String),
    /// 403: a wrong confirmation token.
    #[error("wrong confirmation token ({attempts} of {max} attempts used){}", if *.void { "; the confirmation is void and the plan was cancelled" } else { "" })]
    WrongConfirmToken {
        /// Wrong tries so far.
        attempts: u32,
        /// Tries allowed.
        max: u32,
        /// True when this try voided the confirmation.
        void: bool,
    },
    /// 404: no such id.
    #[error("{0}")]
    NotFound(String),
    /// 405: the path exists, the method does not.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 408: the request body did not arrive within its deadline.
    #[error("{0}")]
    BodyTimeout(String),
    /// 409: the target is not in a state that allows the request.
    #[error("{0}")]
    Conflict(String),
    /// 410: the plan was moved to an archive; the message names it.
    #[error("{0}")]
    Archived(String),
    /// 410: the confirmation expired.
    #[error("the confirmation token expired; the plan was cancelled (confirmation_expired)")]
    ConfirmationExpired,
    /// 413: the body is larger than `MADRE_MAX_BODY_BYTES`.
    #[error("the body is larger than the {0} bytes allowed")]
    PayloadTooLarge(usize),
    /// 415: the body is not `application/json`.
    #[error("the body must be sent as Content-Type: application/json")]
    UnsupportedMediaType,
    /// 422: a field broke its rule.
    #[error("{0}")]
    InvalidField(String),
    /// 409: another request with this Idempotency-Key is still running.
    #[error("a request with this Idempotency-Key is still running; retry later to get its answer")]
    IdempotencyInProgress,
    /// 422: an Idempotency-Key reused with a different body.
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    /// 422: an Idempotency-Key reused on another endpoint (named).
    #[error("this Idempotency-Key was already used on another endpoint ({0}); use a new key")]
    IdempotencyKeyOtherEndpoint(String),
    /// 429: the principal's rate limit is spent; retry after the duration.
    #[error("rate limit reached; retry in {} ms", .0.as_millis())]
    TooManyRequests(std::time::Duration),
    /// 429: too many failed authentications from the client's address;
    /// retry after the duration (no token is checked until then).
    #[error("too many failed authentications from this address; retry in {} s", .0.as_secs().max(1))]
    TooManyAuthFailures(std::time::Duration),
    /// 503: the plan queue is full.
    #[error("Madre is at capacity ({0} plans waiting); retry later")]
    QueueFull(usize),
    /// 503: storage cannot take writes at the moment (full, read-only, locked or
    /// failing); nothing was half-written.
    #[error("Madre's storage is unavailable: {0}; retry later")]
    StorageUnavailable(StorageFault),
    /// 500: anything else; the detail is logged, never returned.
    #[error("internal error")]
    Internal(String),
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::InvalidField(e.to_string())
    }
}

impl From<FlowError> for ApiError {
    fn from(e: FlowError) -> Self {
        match e {
            FlowError::Forbidden(reason) => ApiError::Forbidden(reason),
            FlowError::SelfApprovalForbidden(reason) => ApiError::SelfApprovalForbidden(reason),
            FlowError::WrongConfirmToken {
                attempts,
                max,
                void,
            } => ApiError::WrongConfirmToken {
                attempts,
                max,
                void,
            },
            FlowError::NotFound(what) => ApiError::NotFound(what),
            e @ FlowError::Archived { .. } => ApiError::Archived(e.to_string()),
            FlowError::Conflict(reason) | FlowError::Reload(reason) => ApiError::Conflict(reason),
            FlowError::ConfirmationExpired => ApiError::ConfirmationExpired,
            FlowError::InvalidField(reason) => ApiError::InvalidField(reason),
            FlowError::IdempotencyKeyReused => ApiError::IdempotencyKeyReused,
            FlowError::IdempotencyInProgress => ApiError::IdempotencyInProgress,
            FlowError::QueueFull(queued) => ApiError::QueueFull(queued),
            FlowError::StorageUnavailable(fault) => ApiError::StorageUnavailable(fault),
            e @ (FlowError::Storage(_) | FlowError::Internal(_)) => {
                ApiError::Internal(e.to_string())
            }
        }
    }
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed_json",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::SelfApprovalForbidden(_) => "self_approval_forbidden",
            ApiError::WrongConfirmToken { .. } => "invalid_confirm_token",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::BodyTimeout(_) => "request_timeout",
            ApiError::Conflict(_) => "conflict",
            ApiError::ConfirmationExpired => "confirmation_expired",
            ApiError::Archived(_) => "archived",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::InvalidField(_) => "invalid_field",
            ApiError::IdempotencyKeyReused | ApiError::IdempotencyKeyOtherEndpoint(_) => {
                "idempotency_key_reused"
            }
            ApiError::IdempotencyInProgress => "idempotency_in_progress",
            ApiError::TooManyRequests(_) | ApiError::TooManyAuthFailures(_) => "rate_limited",
            ApiError::QueueFull(_) => "queue_full",
            ApiError::StorageUnavailable(_) => "storage_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_)
            | ApiError::SelfApprovalForbidden(_)
            | ApiError::WrongConfirmToken { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Conflict(_) | ApiError::IdempotencyInProgress => StatusCode::CONFLICT,
            ApiError::ConfirmationExpired | ApiError::Archived(_) => StatusCode::GONE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidField(_)
            | ApiError::IdempotencyKeyReused
            | ApiError::IdempotencyKeyOtherEndpoint(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooManyRequests(_) | ApiError::TooManyAuthFailures(_) => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::QueueFull(_) | ApiError::StorageUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let request_id = request_id::current();
        let detail = match self {
            ApiError::Internal(cause) => {
                tracing::error!(%request_id, %cause, "internal error");
                "Madre could not complete the request; it was logged with this request id"
                    .to_owned()
            }
            other => clip_quoted(&other.to_string()),
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            ApiError::QueueFull(_) => {
                response.insert_header(("Retry-After", "1"));
            }
            ApiError::StorageUnavailable(_) => {
                response.insert_header(("Retry-After", STORAGE_RETRY_AFTER_S));
            }
            ApiError::TooManyRequests(wait) | ApiError::TooManyAuthFailures(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                response.insert_header(("Retry-After", seconds.max(1).to_string()));
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.code().to_owned(),
            detail,
            request_id,
        })
    }
}

/// The longest echo of a caller's input (an id, a path, a field name or
/// value) in an error's `detail`, in characters; longer ones are cut with
/// an ellipsis.
pub const MAX_ECHO_CHARS: usize = 64;

/// `input` as it may be echoed: at most [`MAX_ECHO_CHARS`] characters,
/// with `…` when it was cut.
pub fn clip(input: &str) -> std::borrow::Cow<'_, str> {
    match input.char_indices().nth(MAX_ECHO_CHARS) {
        None => input.into(),
        Some((end, _)) => format!("{}…", &input[..end]).into(),
    }
}

/// `detail` with every quoted part (between backticks or double quotes,
/// where our messages and serde's put the caller's input) clipped by
/// [`clip`]; a message quoting a 5,000-character field name stays short.
fn clip_quoted(detail: &str) -> String {
    let mut out = String::with_capacity(detail.len().min(512));
    let mut rest = detail;
    while let Some(open) = rest.find(['`', '"']) {
        let quote = &rest[open..=open];
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        match after.find(quote) {
            Some(close) => {
                out.push_str(&clip(&after[..close]));
                out.push_str(quote);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str(&clip(after));
                return out;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Maps a failure to read a request body to 408 (too slow), 413 (over
/// `limit`) or 400.
pub fn payload_error(err: actix_web::error::PayloadError, limit: usize) -> ApiError {
    use actix_web::error::PayloadError as P;
    match err {
        e if crate::body_deadline::is_timeout(&e) => ApiError::BodyTimeout(e.to_string()),
        P::Overflow => ApiError::PayloadTooLarge(limit),
        e => ApiError::MalformedJson(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use madre_db::DbError;

    /// Every storage fault, as madre-db reports it, answers 503
    /// `storage_unavailable` with `Retry-After`, and never shows SQLite's
    /// own message (which may hold a path).
    #[test]
    fn storage_faults_answer_503_with_retry_after() {
        for fault in [
            StorageFault::Full,
            StorageFault::ReadOnly,
            StorageFault::Locked,
            StorageFault::Io,
            StorageFault::Busy,
            StorageFault::Stopped,
            StorageFault::Unreachable,
        ] {
            let error = ApiError::from(FlowError::from(DbError::Unavailable {
                reason: fault,
                detail: "disk I/O error on /var/lib/vx11/vx11.db".into(),
            }));
            assert_eq!(error.status_code(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(error.code(), "storage_unavailable");
            let response = error.error_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                response.headers().get("Retry-After").unwrap(),
                STORAGE_RETRY_AFTER_S
            );
            let detail = error.to_string();
            assert!(detail.contains(fault.describe()), "{detail}");
            assert!(!detail.contains("/var/lib"), "{detail}");
        }
    }

    /// Quoted inputs are cut to 64 characters with an ellipsis; the rest
    /// of the sentence stays.
    #[test]
    fn quoted_echoes_are_clipped() {
        let long = "x".repeat(100);
        let clipped = clip_quoted(&format!(
            "unknown field `{long}`, expected `message` at \"{long}"
        ));
        let cut = format!("{}…", "x".repeat(64));
        assert_eq!(
            clipped,
            format!("unknown field `{cut}`, expected `message` at \"{cut}")
        );
        assert_eq!(clip("short"), "short");
        assert_eq!(clip(&"é".repeat(64)), "é".repeat(64));
        assert_eq!(clip(&"é".repeat(65)), format!("{}…", "é".repeat(64)));
    }

    /// Other storage failures stay 500s: they are bugs or corruption.
    #[test]
    fn other_storage_failures_stay_internal() {
        let error = ApiError::from(FlowError::from(DbError::Corrupt(
            "page 3 is never used".into(),
        )));
        assert_eq!(error.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
