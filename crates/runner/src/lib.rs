//! Executes Madre's plans: step by step, writing every state change to the
//! database before the next step starts, with at most `max_concurrent` plans
//! executing at once, a bounded queue of plans waiting for a slot, and a
//! deadline for each whole plan.
//!
//! Plans are executed as Tokio tasks, on any Tokio runtime (the
//! multi-threaded one included); no actix runtime is needed. Every state
//! change goes through the plan journal ([`Db::apply_events`]), whose state
//! machine refuses what is not legal: a step never starts on a plan that
//! was cancelled meanwhile.
//!
//! Step semantics (SPEC §7): a failed step does not undo earlier ones and
//! does not stop later ones; an optional step's failure is a warning
//! (`switch_unavailable` for Switch), a required step's failure makes the
//! plan ERROR. CALL_SWITCH hands its engine to CALL_HERMES (`default` when
//! Switch failed). AWAIT_CONFIRMATION and SPAWNER_REQUEST leave the plan
//! WAITING. Plans found RUNNING at start are resumed: the step that was
//! running is called again with its `Idempotency-Key`.

mod steps;

pub use steps::UNAVAILABLE_AT_INTAKE;

use chrono::Utc;
use madre_db::{AtEnd, Db, DbError, Event, NewAction, PlanEvent, StoredPlan};
use madre_delegation::Delegator;
use madre_models::{EndReason, Module, OwnAction, Plan, Status, StepType};
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot, watch};
use tracing::Instrument;
use uuid::Uuid;

use steps::StepOutcome;

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
    /// Plans that must run (confirmed, resumed) kept waiting for a slot
    /// once the queue is full; past it a confirmation is refused with
    /// [`RunnerError::QueueFull`] (503) before it is consumed, and a
    /// resumed plan stays RUNNING on disk for a later orphan pass.
    pub max_deferred: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            max_concurrent: 10,
            max_queued: 1000,
            task_timeout: Duration::from_secs(120),
            max_deferred: 10_000,
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

/// Tells a plan's execution it was cancelled. A `watch` keeps the value, so
/// a cancel sent before the execution starts waiting is never lost.
type CancelSignal = watch::Sender<bool>;

struct Inner {
    db: Db,
    delegator: Delegator,
    config: RunnerConfig,
    slots: Arc<Semaphore>,
    /// As many as `slots`: the plans that handed their slot on while their
    /// end commits (see [`Slot::hand_on`]).
    ending: Arc<Semaphore>,
    queued: AtomicUsize,
    active: Mutex<HashMap<Uuid, Arc<CancelSignal>>>,
    /// Stored plans that must run but found every place taken (resumed or
    /// confirmed plans): they take the next free slot.
    deferred: Mutex<VecDeque<(Uuid, RunOptions)>>,
    /// Deferred places held: reserved by [`Runner::reserve_must_run`] or
    /// in `deferred`; at most `max_deferred`.
    deferred_places: AtomicUsize,
    /// Plans that have a place in the queue and wait for a slot: busy, so
    /// the orphan pass does not admit them a second time.
    waiting: Mutex<HashSet<Uuid>>,
    /// What a CALL_MODULE step addressed to Madre itself runs.
    own_actions: std::sync::OnceLock<Arc<dyn OwnActions>>,
}

/// Madre's own actions (`restart`…), run by a CALL_MODULE step whose module
/// is `madre`: such a step is answered in-process, never over HTTP. The
/// embedding service installs them with [`Runner::set_own_actions`].
pub trait OwnActions: Send + Sync {
    /// Runs `action` with `params`; answers the step's result, or why it
    /// failed.
    fn run(
        &self,
        action: OwnAction,
        params: &serde_json::Value,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<serde_json::Value, String>> + Send + '_>,
    >;
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
                ending: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
                config,
                queued: AtomicUsize::new(0),
                active: Mutex::new(HashMap::new()),
                deferred: Mutex::new(VecDeque::new()),
                waiting: Mutex::new(HashSet::new()),
                deferred_places: AtomicUsize::new(0),
                own_actions: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Installs what CALL_MODULE steps addressed to Madre run; only the
    /// first call counts. Without it, such a step fails `no_own_actions`.
    pub fn set_own_actions(&self, actions: Arc<dyn OwnActions>) {
        let _ = self.inner.own_actions.set(actions);
    }

    /// Plans waiting for a slot now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    /// Plans holding a slot now: executing, not counting those whose end is
    /// committing (they hand their slot on, `Slot::hand_on`).
    pub fn running(&self) -> usize {
        self.inner.config.max_concurrent.max(1) - self.inner.slots.available_permits()
    }

    /// Queues the plan for execution, or refuses it when every slot is busy
    /// and `max_queued` plans already wait.
    pub fn start(&self, plan_id: Uuid, options: RunOptions) -> Result<PlanRun, RunnerError> {
        let place = self.reserve()?;
        Ok(self.queue(plan_id, None, options, place))
    }

    /// Holds a place for a plan about to be stored and run at once: a free
    /// slot, else a place among the `max_queued` waiters, else
    /// [`RunnerError::QueueFull`]. Taken before the plan is stored, a
    /// refusal leaves nothing on disk that a later pass could run; hand the
    /// place to [`Runner::start_reserved`] once the plan is stored. A place
    /// dropped unused is given back.
    pub fn reserve(&self) -> Result<Place, RunnerError> {
        let inner = self.inner.clone();
        match inner.slots.clone().try_acquire_owned() {
            Ok(permit) => Ok(Place::new(inner, Hold::Slot(permit))),
            Err(_) => {
                let queued = inner.queued.fetch_add(1, Ordering::AcqRel);
                if queued >= inner.config.max_queued {
                    inner.queued.fetch_sub(1, Ordering::AcqRel);
                    return Err(RunnerError::QueueFull { queued });
                }
                Ok(Place::new(inner, Hold::Queue(None)))
            }
        }
    }

    /// As [`Runner::reserve`], for a plan that must run (confirmed or
    /// resumed): past the queue, a place among the `max_deferred` plans
    /// that take the next free slot; refused only past those too. Taken
    /// before a confirmation is consumed, a refusal (503) leaves the plan
    /// waiting for the same token.
    pub fn reserve_must_run(&self) -> Result<Place, RunnerError> {
        match self.reserve() {
            Ok(place) => Ok(place),
            Err(RunnerError::QueueFull { queued }) => {
                let inner = self.inner.clone();
                let held = inner.deferred_places.fetch_add(1, Ordering::AcqRel);
                if held >= inner.config.max_deferred {
                    inner.deferred_places.fetch_sub(1, Ordering::AcqRel);
                    return Err(RunnerError::QueueFull {
                        queued: queued + held,
                    });
                }
                Ok(Place::new(inner, Hold::Deferred))
            }
            Err(e) => Err(e),
        }
    }

    /// As [`Runner::start_opened`], on a place taken beforehand with
    /// [`Runner::reserve`]: it cannot be refused.
    pub fn start_reserved(
        &self,
        place: Place,
        plan: Plan,
        options: RunOptions,
        at_end: Option<AtEnd>,
    ) -> PlanRun {
        let plan_id = plan.plan_id;
        let opened = self.inner.register(plan_id).map(|signal| Opened {
            plan: Some(plan),
            at_end,
            signal,
        });
        self.queue(plan_id, opened, options, place)
    }

    /// As [`Runner::start`], for a plan just stored with the events of
    /// [`open`]: `plan` is that plan as stored, so its execution starts
    /// without reading it back. When the run ends the plan (DONE or ERROR;
    /// not when it waits, is cancelled or times out), `at_end` makes a
    /// write from the ended plan that commits with its end (a failure of
    /// that write undoes only itself); the caller learns from the write it
    /// made (e.g. with [`madre_db::Write::map`]) whether it succeeded, and
    /// makes it itself when it did not.
    pub fn start_opened(
        &self,
        plan: Plan,
        options: RunOptions,
        at_end: Option<AtEnd>,
    ) -> Result<PlanRun, RunnerError> {
        let place = self.reserve()?;
        Ok(self.start_reserved(place, plan, options, at_end))
    }

    fn queue(
        &self,
        plan_id: Uuid,
        opened: Option<Opened>,
        options: RunOptions,
        mut place: Place,
    ) -> PlanRun {
        let inner = self.inner.clone();
        // The place is used now: a queue place is given back when the plan
        // gets its slot, not when `place` is dropped.
        let permit = match place.hold.take() {
            Some(Hold::Slot(permit)) => Ok(permit),
            // In line since `Place::ready`, when it waited: it keeps its turn.
            Some(Hold::Queue(in_line)) => {
                lock(&inner.waiting).insert(plan_id);
                Err(in_line)
            }
            // Deferred places go through `admit_reserved`, never here; as
            // a waiter it still gets the next slot.
            Some(Hold::Deferred) => {
                inner.deferred_places.fetch_sub(1, Ordering::AcqRel);
                inner.queued.fetch_add(1, Ordering::AcqRel);
                lock(&inner.waiting).insert(plan_id);
                Err(None)
            }
            None => Err(None),
        };
        drop(place);
        let (tx, done) = oneshot::channel();
        spawn(async move {
            let mut opened = opened;
            let permit = match permit {
                Ok(permit) => permit,
                Err(in_line) => {
                    let permit = match in_line {
                        Some(in_line) => in_line.await,
                        None => inner.slots.clone().acquire_owned().await,
                    };
                    inner.queued.fetch_sub(1, Ordering::AcqRel);
                    if let Some(opened) = opened.as_mut() {
                        still_as_handed_over(&inner.db, plan_id, opened).await;
                    }
                    match permit {
                        Ok(permit) => permit,
                        Err(_) => {
                            inner.unregister(plan_id);
                            lock(&inner.waiting).remove(&plan_id);
                            return;
                        }
                    }
                }
            };
            let mut slot = Slot::held(&inner, permit);
            let outcome = execute(&inner, plan_id, opened, &options, &mut slot).await;
            // Busy until it is no longer executing: no moment between the
            // queue and the execution when the orphan pass could take it.
            lock(&inner.waiting).remove(&plan_id);
            let _ = tx.send(outcome);
            if let Some(permit) = slot.take() {
                run_deferred(&inner, permit).await;
            }
        });
        PlanRun { plan_id, done }
    }

    /// Runs a stored plan that must not be refused (it was confirmed, or
    /// is resumed): now or in the queue when there is room, else as soon as
    /// a slot frees, however many wait. Answers its run when it got a place
    /// now, `None` when it was deferred.
    pub fn admit(
        &self,
        plan_id: Uuid,
        options: RunOptions,
    ) -> Result<Option<PlanRun>, RunnerError> {
        let place = self.reserve_must_run()?;
        Ok(self.admit_reserved(place, plan_id, options))
    }

    /// Runs a stored plan that must run on a place from
    /// [`Runner::reserve_must_run`]: now, in the queue, or deferred to the
    /// next free slot. Answers its run, or `None` when it was deferred.
    pub fn admit_reserved(
        &self,
        mut place: Place,
        plan_id: Uuid,
        options: RunOptions,
    ) -> Option<PlanRun> {
        if !matches!(place.hold, Some(Hold::Deferred)) {
            return Some(self.queue(plan_id, None, options, place));
        }
        // The deferred place moves into the list: given back when the plan
        // leaves it.
        place.hold = None;
        lock(&self.inner.deferred).push_back((plan_id, options));
        tracing::info!(%plan_id, "every place is taken: the plan runs when a slot frees");
        // Every slot may have freed between the reservation and the push:
        // then nobody would pick the plan up.
        if let Ok(permit) = self.inner.slots.clone().try_acquire_owned() {
            let inner = self.inner.clone();
            spawn(async move { run_deferred(&inner, permit).await });
        }
        None
    }

    /// Runs again the plans left RUNNING by an execution that stopped
    /// without ending them (storage refused a write mid-plan): RUNNING in
    /// the database, unchanged since before `before`, and neither executing
    /// nor deferred here. Answers how many were admitted. The cleanup loop
    /// calls it, so such a plan recovers with no restart.
    pub async fn resume_orphans(
        &self,
        before: chrono::DateTime<Utc>,
    ) -> Result<usize, RunnerError> {
        let ids = self
            .inner
            .db
            .run_blocking(move |db| db.plans_running_since_before(before))
            .await?;
        self.take_and_run(ids, "orphan").await
    }

    /// Takes over the open plans whose lease lapsed (their replica died or
    /// stalls; SPEC §16) or that nobody holds, and runs them here, each
    /// interrupted step again with its `Idempotency-Key`. Answers how many
    /// were admitted. Madre calls it every third of a lease.
    pub async fn take_over_lapsed(&self) -> Result<usize, RunnerError> {
        let ids = self
            .inner
            .db
            .run_blocking(|db| db.plans_with_lapsed_leases())
            .await?;
        self.take_and_run(ids, "takeover").await
    }

    /// Takes each plan of `ids` that is neither running here nor held by
    /// another replica, and runs it here as resumed (the interrupted step
    /// again with its `Idempotency-Key`); answers how many were admitted.
    /// One that finds no room is let go, and the rest wait, for a later
    /// round here or on another replica.
    async fn take_and_run(&self, ids: Vec<Uuid>, request_id: &str) -> Result<usize, RunnerError> {
        let mut admitted = 0;
        for plan_id in ids {
            if self.inner.is_busy(plan_id) || !self.take(plan_id, false).await? {
                continue;
            }
            tracing::warn!(%plan_id, request_id, "running a stopped plan again here");
            let options = RunOptions {
                request_id: request_id.to_owned(),
                principal: "madre".into(),
                resumed: true,
            };
            if let Err(e) = self.admit(plan_id, options) {
                tracing::warn!(%plan_id, error = %e, "no room to run the plan here yet");
                self.inner.db.release_plan(plan_id).await?;
                break;
            }
            admitted += 1;
        }
        Ok(admitted)
    }

    /// Takes the plan's lease for this replica ([`Db::take_plan`]): true
    /// when it is this replica's to execute now.
    async fn take(&self, plan_id: Uuid, force: bool) -> Result<bool, RunnerError> {
        let taken = self.inner.db.take_plan(plan_id, force).await?;
        Ok(match taken {
            madre_db::Taken::Taken { from: Some(from) } => {
                tracing::warn!(%plan_id, %from, "took over a plan whose replica's lease lapsed");
                true
            }
            madre_db::Taken::Taken { from: None } => true,
            madre_db::Taken::HeldElsewhere { by } => {
                tracing::debug!(%plan_id, %by, "plan held by another replica");
                false
            }
            madre_db::Taken::NotOpen => false,
        })
    }

    /// Plans deferred by [`Runner::admit`] and not started yet.
    pub fn deferred(&self) -> usize {
        self.inner
            .deferred
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Starts and waits for the plan.
    pub async fn run(&self, plan_id: Uuid, options: RunOptions) -> Result<StoredPlan, RunnerError> {
        self.start(plan_id, options)?.finished().await
    }

    /// Starts every plan an earlier process left RUNNING, or stored but
    /// never started (PENDING: accepted work is not dropped by a crash);
    /// WAITING plans keep waiting. Answers the runs that got a place at
    /// once; the others are deferred ([`Runner::admit`]).
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
        // On SQLite no other process writes the file: every open plan is
        // this process's to resume at once. On PostgreSQL a plan another
        // replica holds under a running lease stays with it; one this
        // replica held before a restart (the same MADRE_REPLICA_ID) comes
        // back at once, the others when their lease lapses.
        let force = !self.inner.db.is_postgres();
        for plan_id in ids {
            if !self.take(plan_id, force).await? {
                continue;
            }
            tracing::info!(%plan_id, "resuming interrupted plan");
            let options = RunOptions {
                request_id: request_id.to_owned(),
                principal: "madre".into(),
                resumed: true,
            };
            // Never give up on a backlog: what finds no place now is
            // deferred and runs as slots free; past the deferred bound a
            // RUNNING plan stays on disk for the orphan pass.
            match self.admit(plan_id, options) {
                Ok(run) => runs.extend(run),
                Err(e) => {
                    tracing::warn!(%plan_id, error = %e, "no room to resume this plan now; the cleanup pass will");
                }
            }
        }
        Ok(runs)
    }

    /// Cancels a PENDING, WAITING or RUNNING plan (a step in flight is
    /// abandoned) and audits who did; answers the status it has now
    /// (CANCELLED). A finished plan is a conflict ([`DbError::Conflict`]).
    pub async fn cancel(
        &self,
        plan_id: Uuid,
        reason: EndReason,
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
        let cancel =
            PlanEvent::finished(Status::Cancelled, Some(reason.as_str()), now).by(principal);
        let after = self
            .inner
            .db
            .apply_events(plan_id, vec![cancel], Some(action))
            .await?;
        // Committed first, signalled second: a step not yet started is
        // refused by the journal, a step in flight sees the signal.
        if let Some(signal) = self.inner.active_signal(plan_id) {
            signal.send_replace(true);
        }
        Ok(after.status)
    }
}

/// Settles the leading steps of a new plan whose answers were known before
/// it was made (a Switch step answered at intake): each is DONE with that
/// answer, attempted once, when a step that needs a call follows them.
/// Call it before storing the plan, which is then created with them done:
/// they never start, so they have no journal events of their own (issue
/// 25: two rows fewer a chat). A plan of such steps only is left as it is;
/// [`open`] runs them.
pub fn settle_known_answers(plan: &mut Plan) {
    let leading = plan
        .steps
        .iter()
        .take_while(|s| steps::answered_without_call(s).is_some())
        .count();
    if leading == plan.steps.len() {
        return;
    }
    for step in &mut plan.steps[..leading] {
        if let Some(result) = steps::answered_without_call(step) {
            step.status = Status::Done;
            step.attempts += 1;
            step.result = Some(result);
        }
    }
}

/// Opens a plan that is about to be stored and run at once: answers the
/// events to store with it (in its creation commit, see
/// [`Db::insert_plan_with`]) and changes `plan` to match. Steps already
/// DONE ([`settle_known_answers`]) are passed over; every leading step
/// whose answer is already known starts and finishes; the first step that
/// needs a call starts. So the plan's first call runs with no commit of
/// its own before it, and the rule holds: each step is durably RUNNING
/// before its call, each earlier step durably finished. Pass the changed
/// plan to [`Runner::start_opened`].
pub fn open(plan: &mut Plan, at: chrono::DateTime<Utc>) -> Vec<PlanEvent> {
    let mut events = Vec::new();
    for (idx, step) in plan.steps.iter_mut().enumerate() {
        if step.status == Status::Done {
            continue;
        }
        events.push(PlanEvent::new(Event::StepStarted { step: idx }, at));
        step.status = Status::Running;
        step.attempts += 1;
        step.updated_at = at;
        let Some(result) = steps::answered_without_call(step) else {
            break;
        };
        let finished = Event::StepFinished {
            step: idx,
            status: Status::Done,
        };
        events.push(PlanEvent::new(finished, at).result(result.clone()));
        step.status = Status::Done;
        step.result = Some(result);
    }
    if !events.is_empty() {
        plan.status = Status::Running;
        plan.updated_at = at;
    }
    events
}

/// A place for one plan, held by [`Runner::reserve`] before the plan is
/// stored: a slot, or a place in the queue. Dropped unused, it is given
/// back (a slot goes first to the plans deferred meanwhile).
pub struct Place {
    inner: Arc<Inner>,
    /// `None` once used.
    hold: Option<Hold>,
}

/// A wait for a slot, kept with its place in line.
type InLine = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<OwnedSemaphorePermit, tokio::sync::AcquireError>>
            + Send,
    >,
>;

/// What a [`Place`] holds.
enum Hold {
    /// A free slot.
    Slot(OwnedSemaphorePermit),
    /// One of the `max_queued` places, and its turn for a slot once
    /// [`Place::ready`] waited for one.
    Queue(Option<InLine>),
    /// One of the `max_deferred` places.
    Deferred,
}

impl Place {
    fn new(inner: Arc<Inner>, hold: Hold) -> Self {
        Self {
            inner,
            hold: Some(hold),
        }
    }

    /// Waits until a place in the queue becomes a slot, in turn with the
    /// plans already queued; a slot, or a deferred place, is left as it is.
    /// Dropped while waiting, the place stays in the queue and keeps its
    /// turn (a plan started on it waits on from there). A plan whose place
    /// is a slot when it is stored starts as stored: it needs no read of
    /// its status after a wait (see [`Runner::start_reserved`]).
    pub async fn ready(&mut self) {
        let Self { inner, hold } = self;
        let Some(Hold::Queue(in_line)) = hold else {
            return;
        };
        let turn = in_line.get_or_insert_with(|| Box::pin(inner.slots.clone().acquire_owned()));
        match turn.as_mut().await {
            Ok(permit) => {
                inner.queued.fetch_sub(1, Ordering::AcqRel);
                *hold = Some(Hold::Slot(permit));
            }
            // The runner is closing: no slot will come.
            Err(_) => *in_line = None,
        }
    }
}

impl std::fmt::Debug for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hold = match self.hold {
            Some(Hold::Slot(_)) => "slot",
            Some(Hold::Queue(_)) => "queue",
            Some(Hold::Deferred) => "deferred",
            None => "used",
        };
        f.debug_struct("Place").field("hold", &hold).finish()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        match self.hold.take() {
            Some(Hold::Slot(permit)) => {
                // Through the deferred loop, which frees the slot when no
                // plan was deferred meanwhile.
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let inner = self.inner.clone();
                    runtime.spawn(async move { run_deferred(&inner, permit).await });
                }
            }
            Some(Hold::Queue(_)) => {
                self.inner.queued.fetch_sub(1, Ordering::AcqRel);
            }
            Some(Hold::Deferred) => {
                self.inner.deferred_places.fetch_sub(1, Ordering::AcqRel);
            }
            None => {}
        }
    }
}

/// A plan handed over as stored, with the write to make at its end.
struct Opened {
    /// The plan as stored when it was handed over; dropped when it had to
    /// wait for a slot (it is read again then).
    plan: Option<Plan>,
    at_end: Option<AtEnd>,
    /// Its cancel signal, registered as it was handed over: a cancel from
    /// then on reaches it, before it even has a slot.
    signal: Arc<CancelSignal>,
}

/// Keeps the plan a queued execution was handed only while its stored
/// status is still the one it was handed with; otherwise (another replica
/// cancelled it meanwhile, say: a cancel here also signals) it is dropped,
/// to be read again in full. One small read instead of the plan's: nothing
/// else changes a plan while this replica holds it, and the journal
/// refuses the next write of a plan folded from an outdated state anyway.
async fn still_as_handed_over(db: &Db, plan_id: Uuid, opened: &mut Opened) {
    let Some(handed) = opened.plan.as_ref().map(|p| p.status) else {
        return;
    };
    let stored = db.run_blocking(move |db| db.plan_status(plan_id)).await;
    if !matches!(stored, Ok(Some(status)) if status == handed) {
        opened.plan = None;
    }
}

/// Spawns a plan's execution on the current Tokio runtime, whichever kind.
fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(future: F) {
    tokio::spawn(future);
}

/// The slot a plan executes on, while it holds it.
struct Slot {
    inner: Arc<Inner>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Slot {
    fn held(inner: &Arc<Inner>, permit: OwnedSemaphorePermit) -> Self {
        Self {
            inner: inner.clone(),
            permit: Some(permit),
        }
    }

    /// Gives the slot to the next plan (deferred first, then queued) once
    /// this one has nothing left to call, only its end to commit: a slot
    /// bounds the plans calling modules at once, and on PostgreSQL a
    /// commit takes as long as a short plan's calls. The plan then holds
    /// one of as many places among the plans ending, answered here; with
    /// none free (the database is slow or down) it keeps its slot, so no
    /// more than twice `max_concurrent` plans have called and not ended.
    fn hand_on(&mut self) -> Option<OwnedSemaphorePermit> {
        let ending = self.inner.ending.clone().try_acquire_owned().ok()?;
        if let Some(permit) = self.permit.take() {
            let inner = self.inner.clone();
            spawn(async move { run_deferred(&inner, permit).await });
        }
        Some(ending)
    }

    /// The permit, unless it was handed on.
    fn take(&mut self) -> Option<OwnedSemaphorePermit> {
        self.permit.take()
    }
}

/// Runs plans deferred by [`Runner::admit`] on a slot that just freed, and
/// frees it when none is left.
async fn run_deferred(inner: &Arc<Inner>, permit: OwnedSemaphorePermit) {
    let mut permit = Some(permit);
    loop {
        // Handed on by the plan before (see [`Slot::hand_on`]): the task
        // it spawned runs the deferred plans from here.
        let Some(held) = permit.take() else {
            return;
        };
        let next = lock(&inner.deferred).pop_front();
        if next.is_some() {
            inner.deferred_places.fetch_sub(1, Ordering::AcqRel);
        }
        let Some((plan_id, options)) = next else {
            drop(held);
            // A plan deferred between the look above and the drop found
            // this slot still taken when it tried for one itself
            // ([`Runner::admit`] defers, then tries): unless it is looked
            // for again now that the slot is free, it would wait for some
            // other plan's end, and with no queue there may be none.
            if lock(&inner.deferred).is_empty() {
                return;
            }
            match inner.slots.clone().try_acquire_owned() {
                Ok(again) => {
                    permit = Some(again);
                    continue;
                }
                // Taken meanwhile: its holder runs the deferred plans
                // when its own plan ends.
                Err(_) => return,
            }
        };
        let mut slot = Slot::held(inner, held);
        if let Err(e) = execute(inner, plan_id, None, &options, &mut slot).await {
            tracing::error!(%plan_id, error = %e, "deferred plan failed to run");
        }
        permit = slot.take();
    }
}

/// Locks `mutex`; a poisoned lock is taken as is (every value kept under
/// these locks is valid between two statements).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// Whether the plan is executing here, waits in the queue for a slot,
    /// or is deferred: then it must not be admitted again.
    fn is_busy(&self, plan_id: Uuid) -> bool {
        self.active_signal(plan_id).is_some()
            || lock(&self.waiting).contains(&plan_id)
            || lock(&self.deferred).iter().any(|(id, _)| *id == plan_id)
    }

    /// Marks the plan as executing here, with the signal that cancels it;
    /// `None` when it already is.
    fn register(&self, plan_id: Uuid) -> Option<Arc<CancelSignal>> {
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        match active.entry(plan_id) {
            std::collections::hash_map::Entry::Occupied(_) => None,
            std::collections::hash_map::Entry::Vacant(slot) => {
                let signal = Arc::new(CancelSignal::new(false));
                slot.insert(signal.clone());
                Some(signal)
            }
        }
    }

    /// The plan no longer executes here.
    fn unregister(&self, plan_id: Uuid) {
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&plan_id);
    }

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
#[tracing::instrument(skip(inner, opened, options, slot), fields(request_id = %options.request_id))]
async fn execute(
    inner: &Arc<Inner>,
    plan_id: Uuid,
    opened: Option<Opened>,
    options: &RunOptions,
    slot: &mut Slot,
) -> Result<StoredPlan, RunnerError> {
    let signal = match opened.as_ref().map(|o| o.signal.clone()) {
        // Registered when it was handed over (see `Runner::start_opened`).
        Some(signal) => signal,
        None => match inner.register(plan_id) {
            Some(signal) => signal,
            // Already executing here: never run one plan twice at once.
            None => return inner.load(plan_id).await,
        },
    };

    let deadline = inner.config.task_timeout;
    let outcome = tokio::time::timeout(
        deadline,
        drive(inner, plan_id, opened, options, &signal, slot),
    )
    .await;
    let result = match outcome {
        Ok(Ok(ended)) => Ok(ended),
        // Someone else finished or cancelled the plan meanwhile.
        Ok(Err(RunnerError::Db(DbError::Conflict(reason)))) => {
            tracing::info!(%plan_id, %reason, "plan changed under the runner; stopping");
            Ok(None)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => time_out(inner, plan_id, deadline).await.map(|()| None),
    };
    inner.unregister(plan_id);
    match result? {
        Some(ended) => Ok(ended),
        None => inner.load(plan_id).await,
    }
}

async fn time_out(inner: &Inner, plan_id: Uuid, deadline: Duration) -> Result<(), RunnerError> {
    tracing::warn!(%plan_id, deadline_s = deadline.as_secs_f64(), "plan deadline passed");
    // A write of the abandoned execution may still commit after this reads
    // the plan (it runs on a blocking thread): when the journal refuses the
    // ending for that reason, read again and retry, a bounded few times.
    for _ in 0..TIMEOUT_RETRIES {
        let stored = inner.load(plan_id).await?;
        if stored.plan.status.is_terminal() {
            return Ok(());
        }
        let now = Utc::now();
        let mut events: Vec<PlanEvent> = stored
            .plan
            .steps
            .iter()
            .enumerate()
            .filter(|(_, step)| step.status == Status::Running)
            .map(|(idx, _)| {
                PlanEvent::new(
                    Event::StepFinished {
                        step: idx,
                        status: Status::Error,
                    },
                    now,
                )
                .error(format!(
                    "{}: abandoned when the plan deadline of {} s passed",
                    EndReason::Timeout,
                    deadline.as_secs()
                ))
            })
            .collect();
        events.push(
            PlanEvent::finished(Status::Error, Some(EndReason::Timeout.as_str()), now)
                .result(
                    json!({ "reply": format!("Plan timed out after {} s", deadline.as_secs()) }),
                )
                .warnings(vec![EndReason::Timeout.into()]),
        );
        match inner.db.apply_events(plan_id, events, None).await {
            Ok(_) => return Ok(()),
            Err(DbError::Conflict(reason)) => {
                tracing::info!(%plan_id, %reason, "plan changed while timing out; reading it again");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(RunnerError::Interrupted(format!(
        "plan {plan_id} kept changing while its deadline passed"
    )))
}

/// How many times a timed-out plan is read again when its ending races a
/// last write of the abandoned execution.
const TIMEOUT_RETRIES: usize = 5;

async fn drive(
    inner: &Arc<Inner>,
    plan_id: Uuid,
    opened: Option<Opened>,
    options: &RunOptions,
    signal: &CancelSignal,
    slot: &mut Slot,
) -> Result<Option<StoredPlan>, RunnerError> {
    let (plan, at_end) = match opened {
        Some(Opened {
            plan: Some(plan),
            at_end,
            ..
        }) => (plan, at_end),
        Some(Opened { at_end, .. }) => (inner.load(plan_id).await?.plan, at_end),
        None => (inner.load(plan_id).await?.plan, None),
    };
    if plan.status.is_terminal() {
        return Ok(None);
    }
    let gate_waiting = plan
        .steps
        .iter()
        .any(|s| s.step_type == StepType::AwaitConfirmation && s.status == Status::Waiting);
    if gate_waiting {
        return Ok(None);
    }
    // State changes are committed at the latest before the next step
    // starts: a finished step's event is carried into the transaction that
    // starts the next step (or ends the plan). Half the commits, same rule.
    let mut carry: Vec<PlanEvent> = Vec::new();

    let mut engine: Option<String> = None;
    let mut warnings: Vec<String> = Vec::new();
    let mut failure: Option<String> = None;
    let mut reply: Option<String> = None;
    let mut done = 0usize;
    let mut cancelled = signal.subscribe();

    for (idx, step) in plan.steps.iter().enumerate() {
        if *cancelled.borrow() {
            return Ok(None);
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
                    inner
                        .db
                        .apply_events(plan_id, std::mem::take(&mut carry), None)
                        .await?;
                }
                return Ok(None);
            }
            Status::Pending | Status::Running => {}
        }
        if step.status == Status::Running && !options.resumed {
            // Started with the plan's creation (see [`open`]):
            // durably RUNNING already, so only what is carried commits.
            if !carry.is_empty() {
                inner
                    .db
                    .apply_events(plan_id, std::mem::take(&mut carry), None)
                    .await?;
            }
        } else {
            carry.push(PlanEvent::new(Event::StepStarted { step: idx }, Utc::now()));
            inner
                .db
                .apply_events(plan_id, std::mem::take(&mut carry), None)
                .await?;
        }

        // Per step: DEBUG, so the default level logs one line per request
        // (each line costs a wake-up of a log writer thread).
        let span = tracing::debug_span!(
            "step",
            %plan_id,
            session_id = %plan.session_id,
            idx,
            step_type = %step.step_type,
            module = %step.module(),
        );
        let started_at = std::time::Instant::now();
        // Biased, cancel first: a cancel already signalled wins before the
        // step's call is even polled.
        let outcome = tokio::select! {
            biased;
            _ = cancelled.wait_for(|c| *c) => return Ok(None),
            outcome = steps::run_step(inner, &plan, idx, engine.as_deref(), &options.request_id).instrument(span.clone()) => outcome,
        };
        span.in_scope(|| {
            tracing::debug!(
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
                    carry.push(PlanEvent::new(Event::StepStarted { step: idx }, now));
                }
                if step.step_type == StepType::CallSwitch {
                    engine = madre_delegation::engine_from_switch(&result);
                }
                if let Some(text) = steps::reply_of(&result).filter(|_| failure.is_none()) {
                    reply = Some(text);
                }
                done += 1;
                let finished = Event::StepFinished {
                    step: idx,
                    status: Status::Done,
                };
                carry.push(PlanEvent::new(finished, now).result(result));
            }
            StepOutcome::Failed { code, message } => {
                tracing::warn!(%plan_id, step = idx, %code, %message, "step failed");
                let finished = Event::StepFinished {
                    step: idx,
                    status: Status::Error,
                };
                carry.push(PlanEvent::new(finished, now).error(message.clone()));
                if step.optional {
                    warnings.push(if step.step_type == StepType::CallSwitch {
                        SWITCH_UNAVAILABLE.to_owned()
                    } else if code.ends_with("_unavailable") {
                        // Its breaker is open: skipped, not failed.
                        code.clone()
                    } else {
                        format!("{}_failed", step.module())
                    });
                } else if failure.is_none() {
                    failure = Some(code);
                    reply = Some(format!("Plan failed: {message}"));
                }
            }
            StepOutcome::Waiting { result } => {
                let waiting = PlanEvent::new(Event::PlanWaiting { step: idx }, now)
                    .result(result)
                    .warnings(warnings);
                carry.push(waiting);
                inner
                    .db
                    .apply_events(plan_id, std::mem::take(&mut carry), None)
                    .await?;
                return Ok(None);
            }
        }
    }

    let status = if failure.is_some() {
        Status::Error
    } else {
        Status::Done
    };
    let text = reply.unwrap_or_else(|| format!("Plan executed: {done} steps DONE"));
    carry.push(
        PlanEvent::finished(status, failure.as_deref(), Utc::now())
            .result(json!({ "reply": text }))
            .warnings(warnings),
    );
    // Nothing is left to call: the slot goes to the next plan while the
    // end commits, held meanwhile by a place among those ending.
    let _ending = slot.hand_on();
    // The plan's end and the answer the run returns: one trip to the writer.
    let ended = inner
        .db
        .apply_events_and_read(plan_id, carry, at_end)
        .await?;
    Ok(Some(ended))
}
