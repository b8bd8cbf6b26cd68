//! The plan journal (SPEC §8): the one place that writes plan and step
//! status. Each change is an event appended to `plan_events` in the same
//! transaction as the state it produces; which change is legal is decided
//! by the pure state machine of `madre-lifecycle`, never here.

use chrono::{DateTime, Utc};
use madre_lifecycle::{Change, Event, PlanState, StepState};
use madre_models::{JournalEvent, Status, StepType};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::{NewAction, insert_action};
use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};

/// One event to append, with the data it carries for storage: the result
/// or error of the step it finishes, or the reason and result of a plan's
/// end.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanEvent {
    /// What happens.
    pub event: Event,
    /// The module's answer (step events), or the plan's result (its end).
    pub result: Option<Value>,
    /// The step's error message, or the plan's reason code (`timeout`,
    /// `cancelled`, `confirmation_expired`…).
    pub error: Option<String>,
    /// Warnings to add to the plan (kept unique).
    pub warnings: Vec<String>,
    /// Who caused it, when a person did.
    pub principal: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

impl PlanEvent {
    /// An event with no data attached.
    pub fn new(event: Event, at: DateTime<Utc>) -> Self {
        Self {
            event,
            result: None,
            error: None,
            warnings: Vec::new(),
            principal: None,
            at,
        }
    }

    /// With the step's answer or the plan's result.
    pub fn result(mut self, result: Value) -> Self {
        self.result = Some(result);
        self
    }

    /// With the step's error message or the plan's reason code.
    pub fn error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    /// With warnings to add to the plan.
    pub fn warnings(mut self, warnings: Vec<String>) -> Self {
        self.warnings = warnings;
        self
    }

    /// Caused by this principal.
    pub fn by(mut self, principal: impl Into<String>) -> Self {
        self.principal = Some(principal.into());
        self
    }

    /// A plan's end with its reason code.
    pub fn finished(status: Status, reason: Option<&str>, at: DateTime<Utc>) -> Self {
        let mut event = Self::new(Event::PlanFinished { status }, at);
        event.error = reason.map(str::to_owned);
        event
    }

    /// True when `result` and `error` belong to the plan rather than a step.
    fn is_plan_level(&self) -> bool {
        matches!(
            self.event,
            Event::PlanFinished { .. } | Event::PlanRejected | Event::PlanExpired
        )
    }
}

/// A plan's state as the journal reads it inside a transaction.
pub(crate) struct Loaded {
    task_id: i64,
    session_id: Option<String>,
    step_ids: Vec<String>,
    pub(crate) state: PlanState,
}

pub(crate) fn load_state(conn: &Connection, plan_id: Uuid) -> Result<Loaded, DbError> {
    let id = plan_id.to_string();
    let head: Option<(i64, String, Option<String>)> = conn
        .prepare_cached("SELECT id, status, session_id FROM tasks WHERE uuid = ?1")?
        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((task_id, status, session_id)) = head else {
        return Err(DbError::not_found("plan", plan_id));
    };
    let mut stmt = conn.prepare_cached(
        "SELECT step_id, type, status, attempts FROM plan_steps WHERE task_id = ?1 ORDER BY idx",
    )?;
    let mut step_ids = Vec::new();
    let mut steps = Vec::new();
    let rows = stmt.query_map([task_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, u32>(3)?,
        ))
    })?;
    for row in rows {
        let (step_id, ty, status, attempts) = row?;
        step_ids.push(step_id);
        steps.push(StepState {
            step_type: parse_enum(&ty, "step type")?,
            status: parse_enum(&status, "status")?,
            attempts,
        });
    }
    Ok(Loaded {
        task_id,
        session_id,
        step_ids,
        state: PlanState {
            status: parse_enum(&status, "status")?,
            steps,
        },
    })
}

fn parse_enum<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, DbError> {
    text.parse()
        .map_err(|_| DbError::InvalidData(format!("unknown {what} {text:?}")))
}

/// Appends `events` to the plan's journal and persists the changes the state
/// machine answers for each, in order, inside the caller's transaction. The
/// first illegal event fails the whole call (the caller's transaction or
/// savepoint rolls back, so nothing of it stays). Answers the state after.
pub(crate) fn append(
    conn: &Connection,
    plan_id: Uuid,
    events: &[PlanEvent],
    replica: &str,
) -> Result<PlanState, DbError> {
    let mut loaded = load_state(conn, plan_id)?;
    for event in events {
        step(conn, plan_id, &mut loaded, event, replica)?;
    }
    Ok(loaded.state)
}

/// One event: the state machine decides, then the changes and the event
/// row are written.
fn step(
    conn: &Connection,
    plan_id: Uuid,
    loaded: &mut Loaded,
    event: &PlanEvent,
    replica: &str,
) -> Result<(), DbError> {
    let changes = madre_lifecycle::apply(&loaded.state, &event.event)
        .map_err(|c| DbError::Conflict(format!("plan {plan_id}: {c}")))?;
    persist(conn, plan_id, loaded, event, &changes)?;
    loaded.state.change(&changes);
    insert_event(conn, plan_id, loaded, event, replica)
}

/// Writes the changes of one event to `tasks` and `plan_steps`.
fn persist(
    conn: &Connection,
    plan_id: Uuid,
    loaded: &Loaded,
    event: &PlanEvent,
    changes: &[Change],
) -> Result<(), DbError> {
    let id = plan_id.to_string();
    let at = ts(event.at);
    let plan_level = event.is_plan_level();
    for change in changes {
        match *change {
            Change::Step {
                step,
                status,
                attempt,
            } => {
                let (result, error) = if plan_level {
                    (None, None)
                } else {
                    (
                        event
                            .result
                            .as_ref()
                            .map(serde_json::to_string)
                            .transpose()?,
                        event.error.as_deref(),
                    )
                };
                conn.prepare_cached(
                    "UPDATE plan_steps SET
                        status = ?3,
                        attempts = attempts + ?4,
                        started_at = CASE WHEN ?4 = 1 THEN ?7 ELSE started_at END,
                        finished_at = CASE WHEN ?3 IN ('DONE','ERROR','CANCELLED') THEN ?7 ELSE finished_at END,
                        result_json = COALESCE(?5, result_json),
                        error = COALESCE(?6, error),
                        updated_at = ?7
                     WHERE task_id = ?1 AND idx = ?2",
                )?
                .execute(params![
                    loaded.task_id,
                    step as i64,
                    status.as_str(),
                    i64::from(attempt),
                    result,
                    error,
                    at
                ])?;
            }
            Change::CancelOpenSteps => {
                conn.prepare_cached(
                    "UPDATE plan_steps SET status = 'CANCELLED', finished_at = ?2, updated_at = ?2
                     WHERE task_id = ?1 AND status NOT IN ('DONE','ERROR','CANCELLED')",
                )?
                .execute(params![loaded.task_id, at])?;
            }
            Change::Plan { status } => {
                let (result, error) = if plan_level {
                    (
                        event
                            .result
                            .as_ref()
                            .map(serde_json::to_string)
                            .transpose()?,
                        event.error.as_deref(),
                    )
                } else {
                    (None, None)
                };
                conn.prepare_cached(
                    "UPDATE tasks SET status = ?2, error = COALESCE(?3, error),
                                      result = COALESCE(?4, result), updated_at = ?5
                     WHERE id = ?1",
                )?
                .execute(params![
                    loaded.task_id,
                    status.as_str(),
                    error,
                    result,
                    at
                ])?;
                if status.is_terminal() && has_gate(&loaded.state) {
                    // A pending confirmation ends with its plan.
                    let outcome = error.unwrap_or("cancelled");
                    conn.prepare_cached(
                        "UPDATE confirmations SET outcome = ?2 WHERE plan_id = ?1 AND outcome IS NULL",
                    )?
                    .execute(params![id, outcome])?;
                }
            }
        }
    }
    if !event.warnings.is_empty() {
        add_warnings(conn, loaded.task_id, &event.warnings)?;
    }
    Ok(())
}

fn has_gate(state: &PlanState) -> bool {
    state
        .steps
        .iter()
        .any(|s| s.step_type == StepType::AwaitConfirmation)
}

fn add_warnings(conn: &Connection, task_id: i64, add: &[String]) -> Result<(), DbError> {
    let current: String = conn
        .prepare_cached("SELECT warnings_json FROM tasks WHERE id = ?1")?
        .query_row([task_id], |r| r.get(0))?;
    let mut warnings: Vec<String> = serde_json::from_str(&current)?;
    let before = warnings.len();
    for w in add {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    if warnings.len() != before {
        conn.prepare_cached("UPDATE tasks SET warnings_json = ?2 WHERE id = ?1")?
            .execute(params![task_id, serde_json::to_string(&warnings)?])?;
    }
    Ok(())
}

/// The status an event leads to: the step's for step events, else the plan's.
fn status_after(state: &PlanState, event: &Event) -> Status {
    match event {
        Event::StepStarted { step } | Event::StepFinished { step, .. } => {
            state.steps.get(*step).map_or(state.status, |s| s.status)
        }
        _ => state.status,
    }
}

fn insert_event(
    conn: &Connection,
    plan_id: Uuid,
    loaded: &Loaded,
    event: &PlanEvent,
    replica: &str,
) -> Result<(), DbError> {
    let step = event.event.step();
    let step_id = step.and_then(|i| loaded.step_ids.get(i));
    let mut payload = json!({ "status": status_after(&loaded.state, &event.event) });
    if let Some(i) = step
        && let Some(s) = loaded.state.steps.get(i)
    {
        payload["step_type"] = json!(s.step_type);
        payload["attempts"] = json!(s.attempts);
    }
    // Reasons are short codes; a step's error message is kept on the step.
    let reason = match event.event {
        Event::StepFinished { .. } | Event::StepStarted { .. } => None,
        _ => event.error.as_deref(),
    };
    if let Some(reason) = reason {
        payload["reason"] = json!(reason);
    }
    conn.prepare_cached(
        "INSERT INTO plan_events (task_id, plan_id, session_id, type, step_id, payload_json,
                                  principal, replica, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        loaded.task_id,
        plan_id.to_string(),
        loaded.session_id,
        event.event.name(),
        step_id,
        payload.to_string(),
        event.principal,
        replica,
        ts(event.at),
    ])?;
    Ok(())
}

/// Journals a plan just inserted with every row PENDING: `plan_created`,
/// then `plan_waiting` on its gate when it waits for a confirmation, or
/// `plan_finished` when it was refused (the planner's status says which),
/// or else the events `starting` (a plan that runs at once starts there).
pub(crate) fn created(
    conn: &Connection,
    record: &crate::NewPlanRecord,
    task_id: i64,
    replica: &str,
    starting: &[PlanEvent],
) -> Result<(), DbError> {
    let plan = &record.plan;
    let types: Vec<StepType> = plan.steps.iter().map(|s| s.step_type).collect();
    let mut loaded = Loaded {
        task_id,
        session_id: Some(plan.session_id.as_str().to_owned()),
        step_ids: plan.steps.iter().map(|s| s.step_id.to_string()).collect(),
        state: PlanState::created(&types),
    };
    let principal = Some(record.meta.principal.clone());
    let first = PlanEvent {
        principal: principal.clone(),
        ..PlanEvent::new(Event::PlanCreated, plan.created_at)
    };
    insert_event(conn, plan.plan_id, &loaded, &first, replica)?;
    let then = match plan.status {
        Status::Pending => None,
        Status::Waiting => {
            let gate = types
                .iter()
                .position(|t| *t == StepType::AwaitConfirmation)
                .ok_or_else(|| {
                    DbError::InvalidData("a waiting plan without a confirmation gate".into())
                })?;
            Some(PlanEvent::new(
                Event::PlanWaiting { step: gate },
                plan.created_at,
            ))
        }
        status => Some(PlanEvent::finished(
            status,
            plan.error.as_deref(),
            plan.created_at,
        )),
    };
    match then {
        Some(mut event) => {
            event.principal = principal;
            step(conn, plan.plan_id, &mut loaded, &event, replica)?;
        }
        None => {
            for event in starting {
                step(conn, plan.plan_id, &mut loaded, event, replica)?;
            }
        }
    }
    Ok(())
}

/// The journal of one plan, in order.
pub(crate) fn events_of(conn: &Connection, plan_id: Uuid) -> Result<Vec<JournalEvent>, DbError> {
    let Some(task_id) = crate::plans::task_row_id(conn, plan_id)? else {
        return Ok(Vec::new());
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, plan_id, session_id, type, step_id, payload_json, principal, replica, created_at
         FROM plan_events WHERE task_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([task_id], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Option<String>>(6)?,
            r.get::<_, String>(7)?,
            r.get::<_, Ts>(8)?,
        ))
    })?;
    let mut events = Vec::new();
    for row in rows {
        let (seq, plan, session_id, event_type, step_id, payload, principal, replica, at) = row?;
        let payload: Value = serde_json::from_str(&payload)?;
        let field = |name: &str| payload.get(name).and_then(Value::as_str);
        events.push(JournalEvent {
            seq,
            plan_id: Uuid::parse_str(&plan).map_err(|e| DbError::InvalidData(e.to_string()))?,
            session_id,
            event_type,
            step_id: step_id
                .as_deref()
                .map(Uuid::parse_str)
                .transpose()
                .map_err(|e| DbError::InvalidData(e.to_string()))?,
            step_type: field("step_type")
                .map(|t| parse_enum(t, "step type"))
                .transpose()?,
            status: field("status")
                .map(|s| parse_enum(s, "status"))
                .transpose()?,
            principal,
            reason: field("reason").map(str::to_owned),
            replica,
            at: at.0,
        });
    }
    Ok(events)
}

impl Db {
    /// Appends `events` to the plan's journal and applies the state changes
    /// they make, all in one transaction, with `action` appended to the
    /// audit trail in it when given. This is the only way plan and step
    /// status change: an event the state machine refuses fails with
    /// [`DbError::Conflict`] and nothing of the call is written. Answers the
    /// plan's state after the events.
    pub fn apply_events(
        &self,
        plan_id: Uuid,
        events: Vec<PlanEvent>,
        action: Option<NewAction>,
    ) -> Write<PlanState> {
        let replica = self.replica.clone();
        self.write(move |conn| {
            let state = append(conn, plan_id, &events, &replica)?;
            if let Some(action) = &action {
                insert_action(conn, action)?;
            }
            Ok(state)
        })
    }

    /// The plan's journal, oldest first; empty for an unknown plan.
    pub fn plan_events(&self, plan_id: Uuid) -> Result<Vec<JournalEvent>, DbError> {
        self.read(|conn| events_of(conn, plan_id))
    }

    /// The plan's current state, as the state machine sees it.
    pub fn plan_state(&self, plan_id: Uuid) -> Result<PlanState, DbError> {
        self.read(|conn| load_state(conn, plan_id).map(|l| l.state))
    }

    /// The name this process writes in the journal's `replica` column.
    pub fn replica(&self) -> &str {
        &self.replica
    }
}

/// Inserts a new plan's row and its steps' rows, all PENDING: the only
/// place besides [`append`] that writes a plan or step status. The caller
/// records the plan's `plan_created` event ([`created`]) in the same
/// transaction. Answers the plan's row id.
pub(crate) fn insert_plan_rows(
    conn: &Connection,
    record: &crate::NewPlanRecord,
) -> Result<i64, DbError> {
    let plan = &record.plan;
    conn.prepare_cached(
        "INSERT INTO tasks (uuid, name, module, action, status, created_at, updated_at, error,
                            kind, intent_id, session_id, mode, principal, warnings_json, risk)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?
    .execute(params![
        plan.plan_id.to_string(),
        record.meta.name,
        record.meta.module,
        record.meta.action,
        Status::Pending.as_str(),
        ts(plan.created_at),
        Option::<String>::None,
        record.meta.kind.as_str(),
        plan.intent_id.to_string(),
        plan.session_id.as_str(),
        plan.mode.as_str(),
        record.meta.principal,
        serde_json::to_string(&plan.warnings)?,
        record.intent.as_ref().map(|i| i.risk.as_str()),
    ])?;
    let task_id = conn.last_insert_rowid();
    let mut insert_step = conn.prepare_cached(
        "INSERT INTO plan_steps (task_id, idx, step_id, type, payload_json, blocking, optional,
                                 status, attempts, result_json, error, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for (idx, step) in plan.steps.iter().enumerate() {
        insert_step.execute(params![
            task_id,
            idx as i64,
            step.step_id.to_string(),
            step.step_type.as_str(),
            serde_json::to_string(&step.payload)?,
            step.blocking,
            step.optional,
            Status::Pending.as_str(),
            0,
            Option::<String>::None,
            Option::<String>::None,
            ts(step.created_at),
            ts(step.updated_at),
        ])?;
    }
    Ok(task_id)
}
