//! What every handler shares.

use madre_db::Db;
use madre_delegation::{Delegator, HealthTable};
use madre_policy::{Principals, RiskTables};
use madre_runner::Runner;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use crate::config::Settings;
use crate::metrics::Metrics;

/// Shared state of the server.
pub struct AppState {
    /// The settings Madre started with.
    pub settings: Settings,
    /// Storage.
    pub db: Db,
    /// Plan execution.
    pub runner: Runner,
    /// Calls to the modules.
    pub delegator: Delegator,
    /// Last health probe of every module.
    pub health: HealthTable,
    /// Who may call, with which role.
    pub principals: Principals,
    /// Current risk tables (reloaded by a restart).
    pub tables: RwLock<Arc<RiskTables>>,
    /// Per-principal request budget.
    pub rate_limiter: crate::rate_limit::RateLimiter,
    /// Request counters.
    pub metrics: Metrics,
    /// When the server started.
    pub started_at: Instant,
}

impl AppState {
    /// The risk tables in force.
    pub fn tables(&self) -> Arc<RiskTables> {
        self.tables
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
