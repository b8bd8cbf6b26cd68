//! `X-VX11-Token` authentication: the [`Caller`] extractor answers 401 for a
//! missing or unknown token (429 once the client's address has failed too
//! often); handlers then check the role they need.

use actix_web::dev::Payload;
use actix_web::{FromRequest, HttpRequest, web};
use madre_policy::{Principal, Role};
use std::future::{Ready, ready};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl Caller {
    /// Fails with 403 unless the caller's role is at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.0.role.at_least(role) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} role; {} has {}",
                role.as_str(),
                self.0.name,
                self.0.role.as_str()
            )))
        }
    }

    /// The principal's name, for the audit trail.
    pub fn name(&self) -> &str {
        &self.0.name
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>();
        let address = req.peer_addr().map(|a| a.ip());
        let now = std::time::Instant::now();
        // An address that spent its failures gets no token checked at all,
        // so guessing cannot go on at the 429's pace.
        if let (Some(state), Some(address)) = (state, address)
            && let Err(wait) = state.auth_failures.check(address, now)
        {
            return ready(Err(ApiError::TooManyAuthFailures(wait)));
        }
        let token = req
            .headers()
            .get("x-vx11-token")
            .and_then(|v| v.to_str().ok());
        let principal = match (state, token) {
            (Some(state), Some(token)) => state.madre.authenticate(token),
            _ => None,
        };
        let Some(principal) = principal else {
            if let (Some(state), Some(address)) = (state, address) {
                state.auth_failures.record_failure(address, now);
            }
            return ready(Err(ApiError::Unauthorized));
        };
        let limited = state
            .map(|s| {
                s.rate_limiter
                    .check(&principal.name, std::time::Instant::now())
            })
            .unwrap_or(Ok(()));
        ready(match limited {
            Ok(()) => Ok(Caller(principal)),
            Err(wait) => Err(ApiError::TooManyRequests(wait)),
        })
    }
}
