//! Executes Madre's plans: step by step, writing every state change to the
//! database before the next step starts, with at most `max_concurrent` plans
//! executing at once, a bounded queue of plans waiting for a slot, and a
//! deadline for each whole plan.
//!
//! Plans are executed on the current actix/Tokio arbiter (the HTTP client is
//! per-thread), so call [`Runner::start`] from inside an actix runtime.
//!
//! Step semantics (SPEC §7): a failed step does not undo earlier ones and
//! does not stop later ones; an optional step's failure is a warning
//! (`switch_unavailable` for Switch), a required step's failure makes the
//! plan ERROR. CALL_SWITCH hands its engine to CALL_HERMES (`default` when
//! Switch failed). AWAIT_CONFIRMATION and SPAWNER_REQUEST leave the plan
//! WAITING. Plans found RUNNING at start are resumed: the step that was
//! running is called again with its `Idempotency-Key`.

mod steps;

use chrono::Utc;
use madre_db::{Db, DbError, NewAction, PlanUpdate, StepUpdate, StoredPlan};
use madre_delegation::Delegator;
use madre_models::{Module, Status, StepType};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use steps::StepOutcome;

/// Error code of a plan that passed its deadline.
pub const TIMEOUT: &str = "timeout";
/// Warning added when the optional Switch step failed.
pub const SWITCH_UNAVAILABLE: &str = "switch_unavailable";

/// Limits of the runner (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunnerConfig {
    /// Plans executing at once (`MADRE_MAX_CONCURRENT_TASKS`).
    pub max_concurrent: usize,
    /// Plans waiting for a slot before new ones are refused (`MADRE_MAX_QUEUED_TASKS`).
    pub max_queued: usize,
    /// Deadline of a whole plan (`MADRE_TASK_TIMEOUT_S`).
    pub task_timeout: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 10,
            max_queued: 1000,
            task_timeout: Duration::from_secs(120),
        }
    }
}

/// Why a plan could not be run.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    /// Every slot is busy and the waiting queue is full: try again later.
    #[error("the plan queue is full ({queued} plans waiting); try again later")]
    QueueFull {
        /// Plans waiting now.
        queued: usize,
    },
    /// No such plan.
    #[error("plan {0} not found")]
    NotFound(Uuid),
    /// Storage failed.
    #[error("storage: {0}")]
    Db(#[from] DbError),
    /// The task executing the plan ended without answering (runtime shut down).
    #[error("the plan's execution was interrupted: {0}")]
    Interrupted(String),
}

/// Who asked for a run, for logs and the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOptions {
    /// Sent to the modules as `X-Request-Id`.
    pub request_id: String,
    /// Recorded in the audit trail.
    pub principal: String,
    /// True when resuming after a crash: steps found RUNNING are retried
    /// with their `Idempotency-Key` on the first attempt.
    pub resumed: bool,
}

/// A plan handed to the runner; await [`PlanRun::finished`] for its end
/// state (DONE, ERROR, CANCELLED, or WAITING for a confirmation/spawner).
pub struct PlanRun {
    plan_id: Uuid,
    done: oneshot::Receiver<Result<StoredPlan, RunnerError>>,
}

impl PlanRun {
    /// The plan.
    pub fn plan_id(&self) -> Uuid {
        self.plan_id
    }

    /// Waits until the plan stops executing and answers its stored state.
    pub async fn finished(self) -> Result<StoredPlan, RunnerError> {
        self.done
            .await
            .map_err(|_| RunnerError::Interrupted("runtime stopped".into()))?
    }
}

struct CancelSignal {
    cancelled: AtomicBool,
    notify: Notify,
}

struct Inner {
    db: Db,
    delegator: Delegator,
    config: RunnerConfig,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    active: Mutex<HashMap<Uuid, Arc<CancelSignal>>>,
}

/// Executes plans; cheap to clone.
#[derive(Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

impl Runner {
    /// A runner over this database and these modules.
    pub fn new(db: Db, delegator: Delegator, config: RunnerConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                delegator,
                slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
                config,
                queued: AtomicUsize::new(0),
                active: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Plans waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Plans executing now.
    pub fn running(&self) -> usize {
        self.inner.config.max_concurrent.max(1) - self.inner.slots.available_permits()
    }

    /// Queues the plan for execution, or refuses it when every slot is busy
    /// and `max_queued` plans already wait.
    pub fn start(&self, plan_id: Uuid, options: RunOptions) -> Result<PlanRun, RunnerError> {
        let inner = self.inner.clone();
        let permit = match inner.slots.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                let queued = inner.queued.fetch_add(1, Ordering::AcqRel);
                if queued >= inner.config.max_queued {
                    inner.queued.fetch_sub(1, Ordering::AcqRel);
                    return Err(RunnerError::QueueFull { queued });
                }
                None
            }
        };
        let (tx, done) = oneshot::channel();
        actix_rt::spawn(async move {
            let _permit = match permit {
                Some(permit) => permit,
                None => {
                    let permit = inner.slots.clone().acquire_owned().await;
                    inner.queued.fetch_sub(1, Ordering::AcqRel);
                    match permit {
                        Ok(permit) => permit,
                        Err(_) => return,
                    }
                }
            };
            let outcome = execute(&inner, plan_id, &options).await;
            let _ = tx.send(outcome);
        });
        Ok(PlanRun { plan_id, done })
    }

    /// Starts and waits for the plan.
    pub async fn run(&self, plan_id: Uuid, options: RunOptions) -> Result<StoredPlan, RunnerError> {
        self.start(plan_id, options)?.finished().await
    }

    /// Starts every plan an earlier process left RUNNING, or stored but
    /// never started (PENDING: accepted work is not dropped by a crash);
    /// WAITING plans keep waiting. Answers their runs.
    pub async fn resume_interrupted(&self, request_id: &str) -> Result<Vec<PlanRun>, RunnerError> {
        let ids = self
            .inner
            .db
            .run_blocking(|db| {
                let mut ids = db.plan_ids_with_status(Status::Running)?;
                ids.extend(db.plan_ids_with_status(Status::Pending)?);
                Ok(ids)
            })
            .await?;
        let mut runs = Vec::new();
        for plan_id in ids {
            tracing::info!(%plan_id, "resuming interrupted plan");
            let options = RunOptions {
                request_id: request_id.to_owned(),
                principal: "madre".into(),
                resumed: true,
            };
            runs.push(self.start(plan_id, options)?);
        }
        Ok(runs)
    }

    /// Cancels a WAITING or RUNNING plan (a step in flight is abandoned);
    /// answers the status it had. Finished plans are a conflict.
    pub async fn cancel(
        &self,
        plan_id: Uuid,
        reason: &str,
        principal: &str,
    ) -> Result<Status, RunnerError> {
        let now = Utc::now();
        let action = NewAction {
            module: Module::Madre.as_str().into(),
            action: "cancel".into(),
            reason: reason.into(),
            principal: principal.into(),
            plan_id: Some(plan_id),
            created_at: now,
        };
        let previous = self
            .inner
            .db
            .cancel_plan(plan_id, reason, Some(action), now)
            .await?;
        if let Some(signal) = self.inner.active_signal(plan_id) {
            signal.cancelled.store(true, Ordering::Release);
            signal.notify.notify_waiters();
        }
        Ok(previous)
    }
}

impl Inner {
    fn active_signal(&self, plan_id: Uuid) -> Option<Arc<CancelSignal>> {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&plan_id)
            .cloned()
    }

    async fn load(&self, plan_id: Uuid) -> Result<StoredPlan, RunnerError> {
        self.db
            .run_blocking(move |db| db.plan(plan_id))
            .await?
            .ok_or(RunnerError::NotFound(plan_id))
    }
}

/// Runs the plan under its deadline and answers its stored end state.
#[tracing::instrument(skip(inner, options), fields(request_id = %options.request_id))]
async fn execute(
    inner: &Arc<Inner>,
    plan_id: Uuid,
    options: &RunOptions,
) -> Result<StoredPlan, RunnerError> {
    let signal = Arc::new(CancelSignal {
        cancelled: AtomicBool::new(false),
        notify: Notify::new(),
    });
    inner
        .active
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(plan_id, signal.clone());

    let deadline = inner.config.task_timeout;
    let outcome = tokio::time::timeout(deadline, drive(inner, plan_id, options, &signal)).await;
    let result = match outcome {
        Ok(Ok(())) => Ok(()),
        // Someone else finished or cancelled the plan meanwhile.
        Ok(Err(RunnerError::Db(DbError::Conflict(reason)))) => {
            tracing::info!(%plan_id, %reason, "plan changed under the runner; stopping");
            Ok(())
        }
        Ok(Err(e)) => Err(e),
        Err(_) => time_out(inner, plan_id, deadline).await,
    };
    inner
        .active
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&plan_id);
    result?;
    inner.load(plan_id).await
}

async fn time_out(inner: &Inner, plan_id: Uuid, deadline: Duration) -> Result<(), RunnerError> {
    tracing::warn!(%plan_id, deadline_s = deadline.as_secs_f64(), "plan deadline passed");
    let stored = inner.load(plan_id).await?;
    let now = Utc::now();
    for (idx, step) in stored.plan.steps.iter().enumerate() {
        if step.status == Status::Running {
            let update = StepUpdate {
                status: Status::Error,
                result: None,
                error: Some(format!(
                    "{TIMEOUT}: abandoned when the plan deadline of {} s passed",
                    deadline.as_secs()
                )),
                at: now,
            };
            ignore_conflict(inner.db.update_step(plan_id, idx, update).await)?;
        }
    }
    let update = PlanUpdate {
        status: Some(Status::Error),
        error: Some(TIMEOUT.into()),
        result: Some(json!({ "reply": format!("Plan timed out after {} s", deadline.as_secs()) })),
        add_warnings: vec![TIMEOUT.into()],
    };
    ignore_conflict(inner.db.finish_plan(plan_id, update, now).await)
}

fn ignore_conflict(result: Result<(), DbError>) -> Result<(), RunnerError> {
    match result {
        Ok(()) | Err(DbError::Conflict(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn drive(
    inner: &Arc<Inner>,
    plan_id: Uuid,
    options: &RunOptions,
    signal: &CancelSignal,
) -> Result<(), RunnerError> {
    let stored = inner.load(plan_id).await?;
    let plan = stored.plan;
    if plan.status.is_terminal() {
        return Ok(());
    }
    let gate_waiting = plan
        .steps
        .iter()
        .any(|s| s.step_type == StepType::AwaitConfirmation && s.status == Status::Waiting);
    if gate_waiting {
        return Ok(());
    }
    // State changes are committed at the latest before the next step
    // starts: a finished step's update is carried into the transaction that
    // marks the next step RUNNING (or ends the plan), and the plan's own
    // RUNNING mark goes with its first step. Half the commits, same rule.
    let mut mark_running = plan.status != Status::Running;
    let mut carry: Vec<(usize, StepUpdate)> = Vec::new();

    let mut engine: Option<String> = None;
    let mut warnings: Vec<String> = Vec::new();
    let mut failure: Option<String> = None;
    let mut reply: Option<String> = None;
    let mut done = 0usize;

    for (idx, step) in plan.steps.iter().enumerate() {
        if signal.cancelled.load(Ordering::Acquire) {
            return Ok(());
        }
        match step.status {
            Status::Done => {
                done += 1;
                if step.step_type == StepType::CallSwitch {
                    engine = step
                        .result
                        .as_ref()
                        .and_then(madre_delegation::engine_from_switch);
                }
                if let Some(text) = step.result.as_ref().and_then(steps::reply_of) {
                    reply = Some(text);
                }
                continue;
            }
            Status::Error | Status::Cancelled => continue,
            Status::Waiting => {
                if !carry.is_empty() {
                    let writes = std::mem::take(&mut carry);
                    inner
                        .db
                        .update_plan_and_steps(plan_id, writes, None, false, Utc::now())
                        .await?;
                }
                return Ok(());
            }
            Status::Pending | Status::Running => {}
        }
        let resumed = options.resumed && step.status == Status::Running;
        let started = StepUpdate {
            status: Status::Running,
            result: None,
            error: None,
            at: Utc::now(),
        };
        let mut writes = std::mem::take(&mut carry);
        writes.push((idx, started));
        let plan_update = mark_running.then(|| PlanUpdate {
            status: Some(Status::Running),
            ..PlanUpdate::default()
        });
        mark_running = false;
        inner
            .db
            .update_plan_and_steps(plan_id, writes, plan_update, false, Utc::now())
            .await?;

        let span = tracing::info_span!(
            "step",
            %plan_id,
            session_id = %plan.session_id,
            idx,
            step_type = %step.step_type,
            module = %step.module(),
        );
        let started_at = std::time::Instant::now();
        let outcome = tokio::select! {
            outcome = steps::run_step(inner, &plan, idx, engine.as_deref(), &options.request_id, resumed).instrument(span.clone()) => outcome,
            _ = signal.notify.notified() => return Ok(()),
        };
        span.in_scope(|| {
            tracing::info!(
                latency_ms = started_at.elapsed().as_secs_f64() * 1000.0,
                outcome = outcome.label(),
                "step finished"
            );
        });
        let now = Utc::now();
        match outcome {
            StepOutcome::Done { result, retried } => {
                if retried {
                    // Count the retry as an attempt of its own.
                    let again = StepUpdate {
                        status: Status::Running,
                        result: None,
                        error: None,
                        at: now,
                    };
                    carry.push((idx, again));
                }
                if step.step_type == StepType::CallSwitch {
                    engine = madre_delegation::engine_from_switch(&result);
                }
                if let Some(text) = steps::reply_of(&result).filter(|_| failure.is_none()) {
                    reply = Some(text);
                }
                done += 1;
                let update = StepUpdate {
                    status: Status::Done,
                    result: Some(result),
                    error: None,
                    at: now,
                };
                carry.push((idx, update));
            }
            StepOutcome::Failed { code, message } => {
                tracing::warn!(%plan_id, step = idx, %code, %message, "step failed");
                let update = StepUpdate {
                    status: Status::Error,
                    result: None,
                    error: Some(message.clone()),
                    at: now,
                };
                carry.push((idx, update));
                if step.optional {
                    warnings.push(if step.step_type == StepType::CallSwitch {
                        SWITCH_UNAVAILABLE.to_owned()
                    } else {
                        format!("{}_failed", step.module())
                    });
                } else if failure.is_none() {
                    failure = Some(code);
                    reply = Some(format!("Plan failed: {message}"));
                }
            }
            StepOutcome::Waiting { result } => {
                let update = StepUpdate {
                    status: Status::Waiting,
                    result: Some(result),
                    error: None,
                    at: now,
                };
                let plan_update = PlanUpdate {
                    status: Some(Status::Waiting),
                    add_warnings: warnings,
                    ..PlanUpdate::default()
                };
                let mut writes = std::mem::take(&mut carry);
                writes.push((idx, update));
                inner
                    .db
                    .update_plan_and_steps(plan_id, writes, Some(plan_update), false, now)
                    .await?;
                return Ok(());
            }
        }
    }

    let status = if failure.is_some() {
        Status::Error
    } else {
        Status::Done
    };
    let text = reply.unwrap_or_else(|| format!("Plan executed: {done} steps DONE"));
    let update = PlanUpdate {
        status: Some(status),
        error: failure,
        result: Some(json!({ "reply": text })),
        add_warnings: warnings,
    };
    inner
        .db
        .update_plan_and_steps(plan_id, carry, Some(update), true, Utc::now())
        .await?;
    Ok(())
}
