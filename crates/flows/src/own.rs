//! Madre's own actions: a restart (SPEC §9) reloads the policy file, the
//! principals file and the reloadable settings, and restarts the
//! background loops. It is MED risk, so it runs as a plan's CALL_MODULE
//! step addressed to Madre, once a human confirmed it.

use madre_models::OwnAction;
use madre_policy::{Principals, RiskTables};
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use crate::{FlowError, Madre, MadreConfig, read, replace};

/// What a restart re-reads, all of it checked before any of it is used.
#[derive(Debug)]
pub struct Reload {
    /// The risk tables (the policy file, or the defaults).
    pub tables: RiskTables,
    /// The principals.
    pub principals: Principals,
    /// The reloadable settings.
    pub config: MadreConfig,
}

/// The runner's view of Madre's own actions; weak, so the runner does not
/// keep Madre alive.
pub(crate) struct OwnActions(pub(crate) Weak<Madre>);

impl madre_runner::OwnActions for OwnActions {
    fn run(
        &self,
        action: OwnAction,
        _params: &Value,
    ) -> Pin<Box<dyn Future<Output = Result<Value, String>> + Send + '_>> {
        Box::pin(async move {
            let madre = self.0.upgrade().ok_or("Madre is shutting down")?;
            match action {
                OwnAction::Restart | OwnAction::Reload => {
                    madre.restart().map_err(|e| e.to_string())
                }
            }
        })
    }
}

impl Madre {
    /// Reloads the policy, principals and settings (all or nothing: a bad
    /// file leaves everything in force and says why), then restarts the
    /// background loops if they were running. Answers what was reloaded.
    pub fn restart(self: &Arc<Self>) -> Result<Value, FlowError> {
        let reload = match &self.reloader {
            Some(reloader) => reloader().map_err(|why| {
                FlowError::Reload(format!(
                    "nothing reloaded, the settings in force stay: {why}"
                ))
            })?,
            None => Reload {
                tables: self.load_policy_file()?,
                principals: (*read(&self.principals)).clone(),
                config: (*self.config()).clone(),
            },
        };
        let lexicon = crate::lexicon_for(&reload.tables)?;
        replace(&self.tables, Arc::new(reload.tables));
        *self.lexicon.write().unwrap_or_else(|p| p.into_inner()) = lexicon;
        replace(&self.principals, Arc::new(reload.principals));
        // The plan deadline belongs to the runner, built at start: a restart
        // keeps it, so waits and idempotency windows stay in step with it.
        let mut config = reload.config;
        config.task_timeout_s = self.config().task_timeout_s;
        replace(&self.config, Arc::new(config));
        let restarted = {
            let mut slot = self.background.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_mut() {
                Some(loops) => {
                    loops.stop();
                    *slot = Some(self.spawn_background());
                    true
                }
                None => false,
            }
        };
        tracing::info!(loops_restarted = restarted, "madre restarted");
        Ok(json!({
            "reply": "Madre restarted: policy, principals and settings reloaded",
            "reloaded": ["policy", "principals", "settings"],
            "background_loops_restarted": restarted,
        }))
    }

    /// Starts the background loops and keeps them, so a restart can
    /// restart them; they stop with [`Madre::stop_background`].
    pub fn start_background(self: &Arc<Self>) {
        let loops = self.spawn_background();
        *self.background.lock().unwrap_or_else(|p| p.into_inner()) = Some(loops);
    }

    /// Stops the background loops.
    pub fn stop_background(&self) {
        if let Some(mut loops) = self
            .background
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            loops.stop();
        }
    }

    fn load_policy_file(&self) -> Result<RiskTables, FlowError> {
        match &self.config().policy_file {
            Some(path) => RiskTables::load(path)
                .map_err(|e| FlowError::Reload(format!("policy file not reloaded: {e}"))),
            None => Ok(RiskTables::default()),
        }
    }
}
