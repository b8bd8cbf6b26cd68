//! Start-up and the background loops of SPEC §10: resume what a crash
//! interrupted, probe the modules, clean up.

use chrono::Utc;
use madre_db::{Db, RetentionPolicy};
use madre_delegation::PROBE_TIMEOUT;
use madre_models::{IntentOutcome, Module};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::task::JoinHandle;

use crate::{FlowError, Madre};

/// How long a RUNNING plan that nothing executes must stay unchanged before
/// the cleanup pass runs it again (longer than a confirmation takes to hand
/// its plan to the runner).
pub(crate) const ORPHAN_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

/// Plans a commit when the cleanup archives finished plans: small enough
/// that chats waiting behind the batch's commit barely notice it.
const ARCHIVE_BATCH: usize = 500;

/// What start-up found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StartupReport {
    /// Plans left RUNNING or PENDING, now running again or waiting for a slot.
    pub plans_resumed: usize,
    /// Intent-log rows a crashed process left open, closed `interrupted`.
    pub intents_closed: u64,
    /// `Idempotency-Key` reservations whose request died with its process.
    pub reservations_freed: u64,
}

/// The background loops; they stop when this is dropped or
/// [`Background::stop`] is called.
#[derive(Debug)]
pub struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Stops every loop.
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Madre {
    /// What a new process does before serving: closes the intent-log rows
    /// and frees the idempotency reservations of requests that died with
    /// the previous process, and resumes every plan it left RUNNING or
    /// PENDING (the interrupted step is called again with its
    /// `Idempotency-Key`; a backlog larger than the queue waits for slots).
    pub async fn start_up(&self) -> Result<StartupReport, FlowError> {
        let now = Utc::now();
        let intents_closed = self
            .db
            .close_abandoned_intents(now, IntentOutcome::Interrupted, now)
            .await?;
        let reservations_freed = self.db.release_abandoned_idempotency_keys().await?;
        self.runner.resume_interrupted("startup").await?;
        let plans_resumed = self.runner.running() + self.runner.queued() + self.runner.deferred();
        Ok(StartupReport {
            plans_resumed,
            intents_closed,
            reservations_freed,
        })
    }

    /// Probes every enabled module once and records the answers, and
    /// checks beside them that the database would take a write (without
    /// writing a row while it does), so `/health` reports its state even
    /// when no request writes.
    pub async fn probe_once(&self) {
        let modules = async {
            let states = self.delegator.probe(&Module::REMOTE, PROBE_TIMEOUT).await;
            self.health.update(states);
        };
        let storage = async {
            // The verdict is recorded by the check itself; a fault was
            // logged when it first appeared.
            if let Err(e) = self.db.run_blocking(Db::check_storage).await {
                tracing::debug!(error = %e, "storage check failed");
            }
        };
        tokio::join!(modules, storage);
    }

    /// One cleanup pass (SPEC §10) with the configured retention.
    /// Also runs again any plan an execution left RUNNING without ending it
    /// (storage refused a write mid-plan), once it has been still for
    /// 30 s, so it recovers with no restart.
    ///
    /// With several replicas on one PostgreSQL database, one of them runs
    /// the retention and the archives ([`Db::hold_cleanup_turn`]); each
    /// resumes its own stopped plans.
    pub async fn cleanup_once(&self) -> Result<madre_db::CleanupReport, FlowError> {
        let now = Utc::now();
        let mut report = madre_db::CleanupReport::default();
        if self.db.run_blocking(Db::hold_cleanup_turn).await? {
            report = self.db.cleanup(self.retention(), now).await?;
            for plan_id in &report.confirmations_expired {
                self.publish_resolved(*plan_id, crate::bus::Resolution::Expired, None, None);
            }
            self.archive_old_plans(now).await;
        }
        let still = chrono::Duration::from_std(ORPHAN_AFTER).unwrap_or(chrono::Duration::MAX);
        let resumed = self.runner.resume_orphans(now - still).await?;
        if resumed > 0 {
            tracing::warn!(
                plans = resumed,
                "resumed plans left running by a stopped execution"
            );
        }
        Ok(report)
    }

    /// One round of the plan leases (SPEC §16): renews the leases of the
    /// plans this replica holds, then takes over and runs the plans whose
    /// replica let its lease lapse. A failure (the database out of reach)
    /// is logged; the next round tries again.
    pub async fn lease_once(&self) -> Result<usize, FlowError> {
        self.db.renew_plan_leases().await?;
        let taken = self.runner.take_over_lapsed().await?;
        if taken > 0 {
            tracing::warn!(
                plans = taken,
                "took over plans whose replica's lease lapsed"
            );
        }
        Ok(taken)
    }

    /// Moves finished plans past `MADRE_PLAN_RETENTION_DAYS` to the
    /// archives beside the database, in batches of [`ARCHIVE_BATCH`] that
    /// each hold the writer only for their own two commits, for at most
    /// nine tenths of the cleanup interval. A failure (a full disk) is logged and
    /// stops this pass; the rows stay.
    async fn archive_old_plans(&self, now: chrono::DateTime<Utc>) {
        let Some(retention) = self.config().plan_retention else {
            return;
        };
        let Some(cutoff) = chrono::Duration::from_std(retention)
            .ok()
            .and_then(|kept| now.checked_sub_signed(kept))
        else {
            return;
        };
        // Most of the interval, so a pass ends before the next is due; the
        // next pass goes on where it stopped.
        let until = std::time::Instant::now() + self.config().cleanup_interval * 9 / 10;
        let archived = self
            .db
            .run_blocking(move |db| {
                let dir = madre_db::archive_dir(db.path());
                db.archive_finished_plans(&dir, cutoff, ARCHIVE_BATCH, until, now)
            })
            .await;
        match archived {
            Ok(report) if report.plans > 0 => {
                self.archived.0.fetch_add(report.plans, Ordering::Relaxed);
                self.archived.1.fetch_add(report.bytes, Ordering::Relaxed);
                tracing::info!(
                    plans = report.plans,
                    bytes = report.bytes,
                    "finished plans archived"
                );
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "archiving finished plans failed; their rows stay")
            }
        }
    }

    fn retention(&self) -> RetentionPolicy {
        let seconds =
            |s: u64| chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000));
        let interval = chrono::Duration::from_std(self.config().cleanup_interval)
            .unwrap_or(chrono::Duration::MAX);
        RetentionPolicy {
            session_idle: seconds(self.config().session_idle_s),
            history_max: self.config().history_max,
            spawn_retention: seconds(self.config().spawn_retention_s),
            stale_claim_after: chrono::Duration::minutes(5),
            idempotency_ttl: seconds(self.config().idempotency_ttl_s),
            // Twice the interval: a pass that ran late misses no session.
            active_window: interval + interval,
        }
    }

    /// Starts the probe and cleanup loops on the current Tokio runtime.
    pub fn spawn_background(self: &Arc<Self>) -> Background {
        let probe = {
            let madre = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(madre.config().probe_interval);
                // A slow round (the storage check waits out a held lock)
                // delays the next one instead of bunching them up: at most
                // one check per interval.
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    madre.probe_once().await;
                }
            })
        };
        let cleanup = {
            let madre = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(madre.config().cleanup_interval);
                loop {
                    tick.tick().await;
                    match madre.cleanup_once().await {
                        Ok(report) => tracing::debug!(?report, "cleanup pass"),
                        Err(e) => tracing::error!(error = %e, "cleanup pass failed"),
                    }
                }
            })
        };
        let leases = {
            let madre = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(madre.config().plan_lease / 3);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = madre.lease_once().await {
                        tracing::warn!(error = %e, "plan lease round failed");
                    }
                }
            })
        };
        Background {
            tasks: vec![probe, cleanup, leases],
        }
    }
}
