//! What every handler shares.

use madre_flows::Madre;
use std::sync::Arc;

use crate::config::Settings;
use crate::metrics::Metrics;

/// Shared state of the server: Madre itself, and what only HTTP needs.
pub struct AppState {
    /// The settings Madre started with.
    pub settings: Settings,
    /// The flows, storage, runner and modules.
    pub madre: Arc<Madre>,
    /// Per-principal request budget.
    pub rate_limiter: crate::rate_limit::RateLimiter,
    /// Per-address budget of failed authentications.
    pub auth_failures: crate::rate_limit::AuthFailureLimiter,
    /// Request counters.
    pub metrics: Metrics,
}
