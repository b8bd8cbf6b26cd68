//! The plan journal (SPEC §8): the truth of every plan, and the one place
//! that writes plan status. Each change is an event appended to
//! `plan_events`; a step's status, attempts, answer and error are what the
//! plan's events fold to, and the plan's row in `plans` (status, error,
//! result, warnings: what listings read) is updated in the same
//! transaction. Which change is legal is decided by the pure state machine
//! of `madre-lifecycle`, never here.

use crate::engine::sql::{Conn, OptionalExtension};
use chrono::{DateTime, Utc};
use madre_lifecycle::{Change, Event, PlanState, StepState};
use madre_models::{
    EndReason, EventType, JournalEvent, Mode, Plan, SessionId, Status, Step, StepType,
};
use rusqlite::params;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::audit::{NewAction, insert_action};
use crate::body::{Body, Known};
use crate::event_codes::{type_code, type_of_code};
use crate::records::{NewPlanRecord, PlanKind, PlanMeta, StoredPlan};
use crate::shapes::{self, Payload};
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
    /// What that person said of it (an approval's reason), shown as the
    /// event's `reason`; never a step's error or the plan's end reason.
    pub comment: Option<String>,
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
            comment: None,
            at,
        }
    }

    /// With what the person who caused it said.
    pub fn comment(mut self, comment: Option<String>) -> Self {
        self.comment = comment;
        self
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
        ends_plan(&self.event)
    }
}

/// True for the events that end a plan, whose `reason` is its end reason.
fn ends_plan(event: &Event) -> bool {
    matches!(
        event,
        Event::PlanFinished { .. } | Event::PlanRejected | Event::PlanExpired
    )
}

/// A plan as the journal reads it: its row, its steps and its state,
/// folded from its events.
#[derive(Clone)]
pub(crate) struct Loaded {
    /// The plan's row id (`plans.id`), which its events carry.
    row: i64,
    /// The plan with its steps as the events left them.
    pub(crate) stored: StoredPlan,
    /// What the state machine sees.
    pub(crate) state: PlanState,
    /// The row's status, error, result or warnings changed.
    row_changed: bool,
}

fn parse_enum<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, DbError> {
    text.parse()
        .map_err(|_| DbError::InvalidData(format!("unknown {what} {text:?}")))
}

fn parse_uuid(text: &str) -> Result<Uuid, DbError> {
    Uuid::parse_str(text).map_err(|_| DbError::InvalidData(format!("bad uuid {text:?}")))
}

/// This process as the journal names it: its name, and the row of
/// `replicas` holding it, whose id its events store (schema 16).
#[derive(Debug)]
pub(crate) struct Replica {
    pub(crate) name: String,
    pub(crate) id: i64,
    /// How long a plan this replica executes stays its own without a
    /// renewal, in microseconds (SPEC §16).
    lease_micros: std::sync::atomic::AtomicI64,
}

/// A plan lease's length unless set ([`crate::Db::set_plan_lease`]).
pub(crate) const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

impl Replica {
    /// Names this process `name` in the journal, adding the name to
    /// `replicas` unless it is there.
    pub(crate) fn register(conn: &Conn<'_>, name: &str) -> Result<Self, DbError> {
        conn.prepare_cached(
            "INSERT INTO replicas (name) VALUES (?1) ON CONFLICT (name) DO NOTHING",
        )?
        .execute([name])?;
        let id = conn
            .prepare_cached("SELECT id FROM replicas WHERE name = ?1")?
            .query_row([name], |r| r.get(0))?;
        Ok(Self {
            name: name.to_owned(),
            id,
            lease_micros: std::sync::atomic::AtomicI64::new(DEFAULT_LEASE.as_micros() as i64),
        })
    }

    /// Sets the lease's length.
    pub(crate) fn set_lease(&self, lease: std::time::Duration) {
        let micros = i64::try_from(lease.as_micros()).unwrap_or(i64::MAX);
        self.lease_micros
            .store(micros, std::sync::atomic::Ordering::Relaxed);
    }

    /// When a lease taken or renewed now ends, in microseconds since the
    /// epoch. Leases go by the wall clock, whatever time the events carry.
    pub(crate) fn lease_expires_at(&self) -> i64 {
        let lease = self.lease_micros.load(std::sync::atomic::Ordering::Relaxed);
        Utc::now().timestamp_micros().saturating_add(lease)
    }

    /// Who holds a plan of `status` after this replica wrote it, and until
    /// when: this replica while the plan is PENDING or RUNNING, nobody
    /// while it waits for people or once it ended.
    pub(crate) fn holder(&self, status: Status) -> (Option<i64>, Option<i64>) {
        match status {
            Status::Pending | Status::Running => (Some(self.id), Some(self.lease_expires_at())),
            _ => (None, None),
        }
    }
}

/// A stored event type as read: its code, or what the column held
/// instead of an integer (a hand-edited file).
type StoredType = Result<i64, String>;

fn read_type(value: rusqlite::types::Value) -> StoredType {
    match value {
        rusqlite::types::Value::Integer(code) => Ok(code),
        rusqlite::types::Value::Text(text) => Err(format!("{text:?}")),
        other => Err(format!("{:?}", other.data_type())),
    }
}

/// Reads a stored event type, naming the plan and the event it is not one.
fn stored_type(stored: StoredType, plan_id: Uuid, seq: i64) -> Result<EventType, DbError> {
    stored.clone().ok().and_then(type_of_code).ok_or_else(|| {
        let what = match stored {
            Ok(code) => code.to_string(),
            Err(other) => other,
        };
        DbError::InvalidData(format!(
            "plan {plan_id}: journal event {seq} has an unknown type {what}"
        ))
    })
}

/// The replica names of the journal's rows: a replica's id for its name.
const REPLICA_NAME: &str = "coalesce((SELECT r.name FROM replicas r WHERE r.id = e.replica), '')";

/// One stored event, before it is read as a lifecycle event.
struct Row {
    seq: i64,
    event_type: EventType,
    step: Option<usize>,
    payload: Value,
    principal: Option<String>,
    replica: String,
    at: DateTime<Utc>,
}

type Head = (
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
    String,
    Ts,
    Ts,
);

const HEAD: &str = "SELECT id, kind, name, module, action, principal, mode, session_id, intent_id,
                           status, error, result, warnings_json, created_at, updated_at
                    FROM plans WHERE uuid = ?1";

fn rows_of(conn: &Conn<'_>, row: i64, plan_id: Uuid) -> Result<Vec<Row>, DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT e.seq, e.type, e.step, e.payload_json, e.principal, {REPLICA_NAME}, e.created_at
             FROM plan_events e WHERE e.plan = ?1 ORDER BY e.seq"
    ))?;
    let rows = stmt.query_map([row], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            read_type(r.value(1)?),
            r.get::<_, Option<i64>>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, Ts>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, event_type, step, payload, principal, replica, at) = row?;
        let event_type = stored_type(event_type, plan_id, seq)?;
        let mut payload = serde_json::from_str(&payload)?;
        if event_type == EventType::PlanCreated {
            payload = shapes::expand(conn, payload)?;
        }
        out.push(Row {
            seq,
            event_type,
            step: step.map(|s| s as usize),
            payload,
            principal,
            replica,
            at: at.0,
        });
    }
    Ok(out)
}

/// The lifecycle event a stored row records.
fn event_of(plan_id: Uuid, row: &Row) -> Result<Event, DbError> {
    let refused = || {
        DbError::InvalidData(format!(
            "plan {plan_id}: journal event {} ({}) cannot be read",
            row.seq, row.event_type
        ))
    };
    let step = || row.step.ok_or_else(refused);
    let status = || {
        row.payload
            .get("status")
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<Status>().ok())
            .ok_or_else(refused)
    };
    Ok(match row.event_type {
        EventType::PlanCreated => Event::PlanCreated,
        EventType::PlanWaiting => Event::PlanWaiting { step: step()? },
        EventType::ApprovalRecorded => Event::ApprovalRecorded,
        EventType::PlanConfirmed => Event::PlanConfirmed,
        EventType::PlanRejected => Event::PlanRejected,
        EventType::PlanExpired => Event::PlanExpired,
        EventType::StepStarted => Event::StepStarted { step: step()? },
        EventType::StepFinished => Event::StepFinished {
            step: step()?,
            status: status()?,
        },
        EventType::PlanFinished => Event::PlanFinished { status: status()? },
        EventType::PlanTakenOver => Event::PlanTakenOver,
    })
}

/// Where a plan's fold starts: the body its `plan_created` event carries
/// (first, but for a plan stored before the journal: then the one the
/// upgrade synthesized), the last event already counted in it, and the
/// state it describes.
fn base(plan_id: Uuid, rows: &[Row]) -> Result<(Body, i64, PlanState), DbError> {
    let first = rows
        .iter()
        .find(|r| r.event_type == EventType::PlanCreated)
        .ok_or_else(|| {
            DbError::InvalidData(format!("plan {plan_id}: its journal has no plan_created"))
        })?;
    let body: Body = serde_json::from_value(first.payload.clone())
        .map_err(|e| DbError::InvalidData(format!("plan {plan_id}: its body: {e}")))?;
    let through = body.state_through.unwrap_or(first.seq);
    let state = PlanState {
        status: body.plan_status.unwrap_or(Status::Pending),
        steps: body
            .steps
            .iter()
            .map(|s| StepState {
                step_type: s.step_type,
                status: s.status,
                attempts: s.attempts,
            })
            .collect(),
    };
    Ok((body, through, state))
}

/// Reads the plan and folds its journal, on `conn`; `None` for an
/// unknown plan. An event the state machine refuses fails with an error
/// naming the plan and the event: the journal is never silently trusted.
pub(crate) fn load(conn: &Conn<'_>, plan_id: Uuid) -> Result<Option<Loaded>, DbError> {
    let head: Option<Head> = conn
        .prepare_cached(HEAD)?
        .query_row([plan_id.to_string()], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
                r.get(14)?,
            ))
        })
        .optional()?;
    let Some((
        row,
        kind,
        name,
        module,
        action,
        principal,
        mode,
        session_id,
        intent_id,
        status,
        error,
        result,
        warnings,
        created,
        updated,
    )) = head
    else {
        return Ok(None);
    };
    let rows = rows_of(conn, row, plan_id)?;
    let (body, through, state) = base(plan_id, &rows)?;
    let session_id = SessionId::parse(session_id.unwrap_or_else(|| "none".into()))
        .map_err(|e| DbError::InvalidData(e.to_string()))?;
    let intent_id = intent_id
        .as_deref()
        .map(parse_uuid)
        .transpose()?
        .unwrap_or(plan_id);
    let created = created.0;
    let logged = match body.refers_to_logged() {
        true => Some(logged_message(conn, plan_id, intent_id)?),
        false => None,
    };
    let (steps, intent) = body
        .into_parts(
            plan_id,
            Known::new(
                &intent_id.to_string(),
                session_id.as_str(),
                logged.as_deref(),
            ),
            created,
        )
        .map_err(|e| DbError::InvalidData(format!("plan {plan_id}: its body: {e}")))?;
    let mut loaded = Loaded {
        row,
        stored: StoredPlan {
            plan: Plan {
                plan_id,
                intent_id,
                session_id,
                status: parse_enum(&status, "status")?,
                mode: parse_enum::<Mode>(&mode, "mode")?,
                steps,
                warnings: serde_json::from_str(&warnings)?,
                error,
                created_at: created,
                updated_at: updated.0,
            },
            meta: PlanMeta {
                kind: PlanKind::parse(&kind)?,
                name,
                module: parse_enum(&module, "module")?,
                action,
                principal,
            },
            intent,
            result: result.as_deref().map(serde_json::from_str).transpose()?,
        },
        state,
        row_changed: false,
    };
    for stored in rows.iter().filter(|r| r.seq > through) {
        let event = event_of(plan_id, stored)?;
        let changes = madre_lifecycle::apply(&loaded.state, &event).map_err(|c| {
            DbError::InvalidData(format!(
                "plan {plan_id}: journal event {} refused by the state machine: {c}",
                stored.seq
            ))
        })?;
        let text = |name: &str| stored.payload.get(name).and_then(Value::as_str);
        let step_level = matches!(
            event,
            Event::StepStarted { .. } | Event::StepFinished { .. }
        );
        let mut replay = PlanEvent::new(event, stored.at);
        replay.result = match stored.payload.get("result_from") {
            Some(place) => Some(result_from(&loaded.stored.plan.steps, place).ok_or_else(|| {
                DbError::InvalidData(format!(
                    "plan {plan_id}: journal event {} takes its result from a step answer that is not there ({place})",
                    stored.seq
                ))
            })?),
            None => stored
                .payload
                .get("result")
                .cloned()
                .filter(|v| !v.is_null()),
        };
        // A plan's end keeps its reason code in `reason`; on other plan
        // events `reason` is what a person said (an approval's comment).
        replay.error = if step_level {
            text("error")
        } else if replay.is_plan_level() {
            text("reason")
        } else {
            None
        }
        .map(str::to_owned);
        fold_steps(&mut loaded, &replay, &changes);
    }
    // The row is the projection of what the events said; its fields stand.
    loaded.row_changed = false;
    Ok(Some(loaded))
}

/// The message the intent log holds for the intent of plan `plan_id`,
/// which the plan's body refers to.
fn logged_message(conn: &Conn<'_>, plan_id: Uuid, intent_id: Uuid) -> Result<String, DbError> {
    let payload: Option<String> = conn
        .prepare_cached("SELECT payload_json FROM intents_log WHERE id = ?1")?
        .query_row([intent_id.to_string()], |r| r.get(0))
        .optional()?;
    payload
        .and_then(|p| serde_json::from_str::<Value>(&p).ok())
        .and_then(|p| p.get("message").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| {
            DbError::InvalidData(format!(
                "plan {plan_id}: its body refers to the message of intent {intent_id}, which the intent log does not hold"
            ))
        })
}

/// The plan with its steps, metadata and intent, read on `conn`.
pub(crate) fn plan_in(conn: &Conn<'_>, plan_id: Uuid) -> Result<Option<StoredPlan>, DbError> {
    Ok(load(conn, plan_id)?.map(|l| l.stored))
}

/// The state machine's view of a plan, or not found.
pub(crate) fn load_existing(conn: &Conn<'_>, plan_id: Uuid) -> Result<Loaded, DbError> {
    load(conn, plan_id)?.ok_or_else(|| DbError::not_found("plan", plan_id))
}

/// Applies one event's changes to the steps in memory, as the event's
/// data says (a step's answer and error; a plan's status, reason and
/// result), and to the state machine's view.
fn fold_steps(loaded: &mut Loaded, event: &PlanEvent, changes: &[Change]) {
    let plan_level = event.is_plan_level();
    let plan = &mut loaded.stored.plan;
    for change in changes {
        match *change {
            Change::Step {
                step,
                status,
                attempt,
            } => {
                if let Some(s) = plan.steps.get_mut(step) {
                    s.status = status;
                    s.attempts += u32::from(attempt);
                    if !plan_level {
                        if let Some(result) = &event.result {
                            s.result = Some(result.clone());
                        }
                        if let Some(error) = &event.error {
                            s.error = Some(error.clone());
                        }
                    }
                    s.updated_at = event.at;
                }
            }
            Change::CancelOpenSteps => {
                for s in &mut plan.steps {
                    if !s.status.is_terminal() {
                        s.status = Status::Cancelled;
                        s.updated_at = event.at;
                    }
                }
            }
            Change::Plan { status } => {
                plan.status = status;
                if plan_level {
                    if let Some(error) = &event.error {
                        plan.error = Some(error.clone());
                    }
                    if let Some(result) = &event.result {
                        loaded.stored.result = Some(result.clone());
                    }
                }
                plan.updated_at = event.at;
                loaded.row_changed = true;
            }
        }
    }
    for w in &event.warnings {
        if !plan.warnings.contains(w) {
            plan.warnings.push(w.clone());
            loaded.row_changed = true;
        }
    }
    loaded.state.change(changes);
}

/// Appends `events` to the plan's journal and updates its row once, inside
/// the caller's transaction. The first illegal event fails the whole call
/// (the caller's transaction rolls back, so nothing of it stays). Answers
/// the plan as it is after them.
pub(crate) fn append(
    conn: &Conn<'_>,
    plan_id: Uuid,
    events: &[PlanEvent],
    replica: &Replica,
) -> Result<Loaded, DbError> {
    let fenced = events.iter().any(is_execution);
    let (folded, holder, checked) = if conn.sends_later() {
        // Statements sent together (PostgreSQL): the kept fold is used as
        // it is, and the server checks it when the append is sent, in the
        // statement that changes the plan's row, or else in one of its own.
        match folds::take_unread(plan_id) {
            Some((folded, through)) => {
                let check = FoldCheck {
                    row: folded.row,
                    through,
                    fenced,
                };
                (Some(folded), None, Some(check))
            }
            None => (None, None, None),
        }
    } else {
        let (folded, holder) = folds::take(conn, plan_id)?;
        (folded, holder, None)
    };
    let mut loaded = match folded {
        Some(folded) => folded,
        None => load_existing(conn, plan_id)?,
    };
    let status_before = loaded.state.status;
    if conn.is_postgres() && fenced && checked.is_none() {
        let holder = match holder {
            Some(holder) => holder,
            None => holder_of(conn, loaded.row)?,
        };
        fence(conn, plan_id, holder, replica)?;
    }
    let mut rows = Vec::with_capacity(events.len());
    for event in events {
        match step(plan_id, &mut loaded, event) {
            Ok(row) => rows.push(row),
            // The fold the event was refused against is not checked yet:
            // the server checks it now. One that moved runs the batch
            // again (the send fails); one that did not refuses the event.
            Err(refused) if checked.is_some() => {
                if let Some(check) = checked {
                    check_fold(conn, check, replica)?;
                }
                conn.send_queued()?;
                return Err(refused);
            }
            Err(refused) => return Err(refused),
        }
    }
    let status = loaded.state.status;
    let newly_ended = status != status_before && status.is_terminal();
    let mut counted = false;
    if conn.sends_later() && loaded.row_changed {
        // PostgreSQL: the row first, in one statement with the check and
        // the count, before the events (the check reads the journal's end
        // as it was folded).
        update_row_checked(conn, &loaded, replica, checked, newly_ended)?;
        loaded.row_changed = false;
        counted = newly_ended;
    } else if let Some(check) = checked {
        check_fold(conn, check, replica)?;
    }
    let newest = insert_events(conn, PlanRow::Known(loaded.row), &rows, replica)?;
    if loaded.row_changed {
        let plan = &loaded.stored.plan;
        let (owner, lease_expires_at) = replica.holder(plan.status);
        conn.prepare_cached(
            "UPDATE plans SET status = ?2, error = ?3, result = ?4, warnings_json = ?5,
                              updated_at = ?6, owner = ?7, lease_expires_at = ?8
             WHERE id = ?1",
        )?
        .run(params![
            loaded.row,
            plan.status.as_str(),
            plan.error,
            row_result(&loaded.stored)?,
            serde_json::to_string(&plan.warnings)?,
            ts(plan.updated_at),
            owner,
            lease_expires_at,
        ])?;
    }
    if newly_ended {
        if !counted {
            count_finished(conn, status)?;
        }
        if has_gate(&loaded.state) {
            // A pending confirmation ends with its plan.
            let outcome =
                (loaded.stored.plan.error.as_deref()).unwrap_or(EndReason::Cancelled.as_str());
            conn.prepare_cached(
                "UPDATE confirmations SET outcome = ?2 WHERE plan_id = ?1 AND outcome IS NULL",
            )?
            .run(params![plan_id.to_string(), outcome])?;
        }
    }
    loaded.row_changed = false;
    if !status.is_terminal() {
        let kept = loaded.clone();
        conn.after_sent(move || folds::keep(plan_id, kept, newest.get()));
    }
    Ok(loaded)
}

/// What a kept fold rests on, for the server to check (see [`check_fold`]).
#[derive(Clone, Copy)]
struct FoldCheck {
    /// The plan's row.
    row: i64,
    /// The journal's last event when it was folded.
    through: i64,
    /// An execution event is appended: no other replica may hold the plan.
    fenced: bool,
}

/// The condition [`FoldCheck`] states, true or else failing the statement
/// through the session's `madre_expect` (called only then: a function call
/// of its own costs the server more than the check), with the plan's row
/// at `?1` and the check's values from `?{first}` on (through, fenced,
/// this replica, now).
fn fold_condition(first: u32) -> String {
    let (through, fenced, replica, now) = (first, first + 1, first + 2, first + 3);
    format!(
        "CASE WHEN coalesce((
             SELECT (SELECT max(seq) FROM plan_events WHERE plan = ?1) = ?{through}
                AND (NOT ?{fenced} OR owner IS NULL OR owner = ?{replica}
                     OR lease_expires_at IS NULL OR lease_expires_at < ?{now})
             FROM plans WHERE id = ?1), false) THEN true
         ELSE {expect}(false, '{moved}', 'the plan changed since it was folded') END",
        expect = crate::engine::sql::EXPECT,
        moved = crate::engine::sql::MOVED,
    )
}

/// The statement of [`check_fold`], written once.
static CHECK_FOLD: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("SELECT {}", fold_condition(2)));

/// Has the server check, when the append is sent, what a kept fold of the
/// plan rests on: the journal still ends at event `through`, and for an
/// execution event (`fenced`) no other replica holds the plan under a
/// running lease (as [`fence`] checks). Should either have changed, the
/// transaction fails with [`crate::engine::sql::MOVED`] and its batch
/// runs again, folding this plan from its journal.
fn check_fold(conn: &Conn<'_>, check: FoldCheck, replica: &Replica) -> Result<(), DbError> {
    conn.prepare_cached(&CHECK_FOLD)?.run(params![
        check.row,
        check.through,
        check.fenced,
        replica.id,
        Utc::now().timestamp_micros()
    ])
}

/// The plan's row changed as the fold says, counted among the finished
/// plans when `?9`: one statement.
const UPDATE_ROW_COUNTED: &str = "WITH plan AS (
         UPDATE plans SET status = ?2, error = ?3, result = ?4, warnings_json = ?5,
                          updated_at = ?6, owner = ?7, lease_expires_at = ?8
         WHERE id = ?1 RETURNING status)
     INSERT INTO plan_status_counts (status, n) SELECT status, 1 FROM plan WHERE ?9
     ON CONFLICT (status) DO UPDATE SET n = plan_status_counts.n + 1";

/// As [`UPDATE_ROW_COUNTED`], checking a kept fold first (values from `?10`).
static UPDATE_ROW_CHECKED_COUNTED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    UPDATE_ROW_COUNTED
        .replacen(
            "WITH plan AS (",
            &format!(
                "WITH fold AS (SELECT {} AS ok),\n     plan AS (",
                fold_condition(10)
            ),
            1,
        )
        .replacen(
            "WHERE id = ?1 RETURNING",
            "WHERE id = ?1 AND (SELECT ok FROM fold) RETURNING",
            1,
        )
});

/// PostgreSQL, statements sent together: the plan's row as the fold says,
/// with the kept fold's check (`check`) and the count of a plan that
/// ended (`counted`) in the same statement.
fn update_row_checked(
    conn: &Conn<'_>,
    loaded: &Loaded,
    replica: &Replica,
    check: Option<FoldCheck>,
    counted: bool,
) -> Result<(), DbError> {
    let plan = &loaded.stored.plan;
    let (owner, lease_expires_at) = replica.holder(plan.status);
    let result = row_result(&loaded.stored)?;
    let warnings = serde_json::to_string(&plan.warnings)?;
    let row = params![
        loaded.row,
        plan.status.as_str(),
        plan.error,
        result,
        warnings,
        ts(plan.updated_at),
        owner,
        lease_expires_at,
        counted,
    ];
    match check {
        None => conn.prepare_cached(UPDATE_ROW_COUNTED)?.run(row),
        Some(check) => {
            let now = Utc::now().timestamp_micros();
            let mut args: Vec<&dyn rusqlite::ToSql> = row.to_vec();
            args.extend([
                &check.through as &dyn rusqlite::ToSql,
                &check.fenced,
                &replica.id,
                &now,
            ]);
            conn.prepare_cached(&UPDATE_ROW_CHECKED_COUNTED)?
                .run(args.as_slice())
        }
    }
}

/// Who holds a plan and until when (`plans.owner`, `plans.lease_expires_at`).
type Holder = (Option<i64>, Option<i64>);

/// The holder of the plan in row `row`.
fn holder_of(conn: &Conn<'_>, row: i64) -> Result<Holder, DbError> {
    conn.prepare_cached("SELECT owner, lease_expires_at FROM plans WHERE id = ?1")?
        .query_row([row], |r| Ok((r.get(0)?, r.get(1)?)))
}

/// Refuses an execution event of a plan another replica holds under a
/// running lease (PostgreSQL; see [`crate::leases`]). The holder read in
/// this transaction cannot change before it commits: every replica's
/// writer holds the database's write lock for its whole transaction
/// ([`crate::engine::sql::Conn::begin`]), a takeover's included.
fn fence(conn: &Conn<'_>, plan_id: Uuid, holder: Holder, replica: &Replica) -> Result<(), DbError> {
    if let (Some(owner), Some(until)) = holder
        && owner != replica.id
        && until >= Utc::now().timestamp_micros()
    {
        return Err(DbError::Conflict(format!(
            "plan {plan_id} is executed by replica {} (its lease runs)",
            replica_name(conn, owner)?
        )));
    }
    Ok(())
}

/// The name of the replica with id `id`.
pub(crate) fn replica_name(conn: &Conn<'_>, id: i64) -> Result<String, DbError> {
    conn.prepare_cached("SELECT name FROM replicas WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
}

/// Renews the lease of every open plan `replica` holds (see
/// [`crate::leases`]); answers how many.
pub(crate) fn renew_leases(conn: &Conn<'_>, replica: &Replica) -> Result<u64, DbError> {
    let n = conn
        .prepare_cached(
            "UPDATE plans SET lease_expires_at = ?2
             WHERE (status = 'PENDING' OR status = 'WAITING' OR status = 'RUNNING')
               AND owner = ?1",
        )?
        .execute(params![replica.id, replica.lease_expires_at()])?;
    Ok(n as u64)
}

/// Lets go of the plan `plan_id` when `replica` holds it (it could not run
/// it here): the next lease round of any replica takes it.
pub(crate) fn release(conn: &Conn<'_>, plan_id: Uuid, replica: &Replica) -> Result<(), DbError> {
    conn.prepare_cached(
        "UPDATE plans SET owner = NULL, lease_expires_at = NULL WHERE uuid = ?1 AND owner = ?2",
    )?
    .execute(params![plan_id.to_string(), replica.id])?;
    Ok(())
}

/// Makes `replica` the holder of the plan in row `row`, with a new lease.
pub(crate) fn hold(conn: &Conn<'_>, row: i64, replica: &Replica) -> Result<(), DbError> {
    conn.prepare_cached("UPDATE plans SET owner = ?2, lease_expires_at = ?3 WHERE id = ?1")?
        .execute(params![row, replica.id, replica.lease_expires_at()])?;
    Ok(())
}

/// True for an event of a plan's execution, which only the replica
/// holding the plan may append (SPEC §16); people's decisions (a
/// confirmation, a rejection, a cancel) are taken from any replica.
fn is_execution(event: &PlanEvent) -> bool {
    match &event.event {
        Event::StepStarted { .. } | Event::StepFinished { .. } | Event::PlanWaiting { .. } => true,
        Event::PlanFinished { status, .. } => *status != Status::Cancelled,
        _ => false,
    }
}

/// The folds of open plans the writer thread appended to, kept between its
/// commits so that the next append to a plan does not replay the plan's
/// journal (issue 22: no replay on the hot path). A fold is used only
/// while the plan's newest event in the database is still the one it was
/// folded through: an append that was rolled back, or one made by anyone
/// else, sends the next append back to the journal. Every append and every
/// new plan refreshes the fold after inserting its events, so a fold that
/// passes the check is the journal's. Bounded; a finished plan's goes.
mod folds {
    use super::{DbError, Holder, Loaded};
    use crate::engine::sql::Conn;
    use std::cell::RefCell;
    use std::collections::{HashMap, VecDeque};
    use uuid::Uuid;

    /// Open plans whose folds are kept (the runner's slots and queue are
    /// far fewer; waiting plans beyond it are folded when they resume).
    const CAPACITY: usize = 256;

    #[derive(Default)]
    struct Folds {
        by_plan: HashMap<Uuid, (Loaded, i64)>,
        /// Insertion order, for eviction; may name plans already gone.
        order: VecDeque<Uuid>,
    }

    thread_local! {
        static FOLDS: RefCell<Folds> = RefCell::new(Folds::default());
    }

    /// The kept fold of `plan_id`, taken out, when the journal still ends
    /// where it did.
    /// The plan's holder comes with it, read by the same statement (the
    /// append needs it on PostgreSQL), whenever a fold was kept.
    pub(super) fn take(
        conn: &Conn<'_>,
        plan_id: Uuid,
    ) -> Result<(Option<Loaded>, Option<Holder>), DbError> {
        let Some((loaded, through)) = FOLDS.with(|f| f.borrow_mut().by_plan.remove(&plan_id))
        else {
            return Ok((None, None));
        };
        let (newest, owner, until): (Option<i64>, Option<i64>, Option<i64>) = conn
            .prepare_cached(
                "SELECT (SELECT max(seq) FROM plan_events WHERE plan = ?1), owner, lease_expires_at
                 FROM plans WHERE id = ?1",
            )?
            .query_row([loaded.row], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok((
            (newest == Some(through)).then_some(loaded),
            Some((owner, until)),
        ))
    }

    /// The kept fold of `plan_id`, taken out unchecked, with the event it
    /// was folded through: for a caller that has the check made by the
    /// server instead (see `check_fold`).
    pub(super) fn take_unread(plan_id: Uuid) -> Option<(Loaded, i64)> {
        FOLDS.with(|f| f.borrow_mut().by_plan.remove(&plan_id))
    }

    /// Keeps `loaded`, folded through event `through`.
    pub(super) fn keep(plan_id: Uuid, loaded: Loaded, through: i64) {
        FOLDS.with(|f| {
            let mut folds = f.borrow_mut();
            if folds.by_plan.insert(plan_id, (loaded, through)).is_none() {
                folds.order.push_back(plan_id);
            }
            while folds.by_plan.len() > CAPACITY {
                let Some(oldest) = folds.order.pop_front() else {
                    break;
                };
                folds.by_plan.remove(&oldest);
            }
            if folds.order.len() > 4 * CAPACITY {
                let Folds { by_plan, order } = &mut *folds;
                order.retain(|id| by_plan.contains_key(id));
            }
        });
    }
}

/// Counts one more finished plan in `status` (`/metrics` reads these
/// counters; open plans are counted through their own index).
fn count_finished(conn: &Conn<'_>, status: Status) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO plan_status_counts (status, n) VALUES (?1, 1)
         ON CONFLICT (status) DO UPDATE SET n = plan_status_counts.n + 1",
    )?
    .run([status.as_str()])?;
    Ok(())
}

/// An event row to insert.
struct NewRow {
    event_type: EventType,
    step: Option<usize>,
    payload: String,
    principal: Option<String>,
    at: DateTime<Utc>,
}

/// One event: the state machine decides, the plan in memory changes, and
/// the row recording it is answered.
fn step(plan_id: Uuid, loaded: &mut Loaded, event: &PlanEvent) -> Result<NewRow, DbError> {
    let changes = madre_lifecycle::apply(&loaded.state, &event.event)
        .map_err(|c| DbError::Conflict(format!("plan {plan_id}: {c}")))?;
    fold_steps(loaded, event, &changes);
    Ok(event_row(loaded, event))
}

fn has_gate(state: &PlanState) -> bool {
    state
        .steps
        .iter()
        .any(|s| s.step_type == StepType::AwaitConfirmation)
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

/// The row of an event already folded into `loaded`: what folding needs
/// again (a finished step's or plan's status, a step's answer and error, a
/// plan's result and reason) and the status after it, which the API shows.
/// What the journal already says is left out (issue 25): a started step is
/// RUNNING, and a step's type is in the plan's body.
fn event_row(loaded: &Loaded, event: &PlanEvent) -> NewRow {
    let step = event.event.step();
    let mut payload = match event.event {
        Event::StepStarted { .. } => json!({}),
        _ => json!({ "status": status_after(&loaded.state, &event.event) }),
    };
    match event.event {
        Event::StepFinished { .. } | Event::StepStarted { .. } => {
            if let Some(error) = &event.error {
                payload["error"] = json!(error);
            }
        }
        _ => {
            if let Some(reason) = event.error.as_ref().or(event.comment.as_ref()) {
                payload["reason"] = json!(reason);
            }
        }
    }
    if let Some(result) = &event.result {
        match reply_place(&loaded.stored.plan.steps, result).filter(|_| event.is_plan_level()) {
            Some(place) => payload["result_from"] = place,
            None => payload["result"] = result.clone(),
        }
    }
    if !event.warnings.is_empty() {
        payload["warnings"] = json!(event.warnings);
    }
    NewRow {
        event_type: event.event.event_type(),
        step,
        payload: payload.to_string(),
        principal: event.principal.clone(),
        at: event.at,
    }
}

/// Where a plan's result can be read back from instead of being stored a
/// second time (issue 25: the answer kept once): a result `{"reply": text}`
/// whose text is a member of a step's answer is noted as `[step, member]`,
/// the newest such step first.
fn reply_place(steps: &[Step], result: &Value) -> Option<Value> {
    let Value::Object(members) = result else {
        return None;
    };
    let reply = match members.get("reply") {
        Some(Value::String(text)) if members.len() == 1 => text,
        _ => return None,
    };
    steps.iter().enumerate().rev().find_map(|(i, step)| {
        let Some(Value::Object(answer)) = &step.result else {
            return None;
        };
        let key = if answer.get("reply") == Some(&result["reply"]) {
            "reply"
        } else {
            answer
                .iter()
                .find(|(_, v)| v.as_str() == Some(reply.as_str()))
                .map(|(k, _)| k.as_str())?
        };
        Some(json!([i, key]))
    })
}

/// The result the plan's row keeps: none when the journal keeps it by
/// reference to a step's answer (the v6 listing folds those plans).
fn row_result(stored: &StoredPlan) -> Result<Option<String>, DbError> {
    match &stored.result {
        Some(result) if reply_place(&stored.plan.steps, result).is_none() => {
            Ok(Some(serde_json::to_string(result)?))
        }
        _ => Ok(None),
    }
}

/// The result plan row `plan_row`'s end keeps by reference
/// (`result_from`), read from the step's answer without folding the
/// plan: two reads through the journal's index. `None` when its end kept
/// no reference (or it has not ended).
pub(crate) fn result_by_reference(
    conn: &Conn<'_>,
    plan_row: i64,
) -> Result<Option<Value>, DbError> {
    let end: Option<String> = conn
        .prepare_cached(
            "SELECT payload_json FROM plan_events
             WHERE plan = ?1 AND type IN (?2, ?3, ?4)
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(
            params![
                plan_row,
                type_code(EventType::PlanFinished),
                type_code(EventType::PlanRejected),
                type_code(EventType::PlanExpired)
            ],
            |r| r.get(0),
        )
        .optional()?;
    let Some(place) = end
        .map(|e| serde_json::from_str::<Value>(&e))
        .transpose()?
        .and_then(|e| e.get("result_from").cloned())
    else {
        return Ok(None);
    };
    let bad = || {
        DbError::InvalidData(format!(
            "plan row {plan_row}: its end takes its result from a step answer that is not there ({place})"
        ))
    };
    let step = place.get(0).and_then(Value::as_u64).ok_or_else(bad)?;
    let key = place.get(1).and_then(Value::as_str).ok_or_else(bad)?;
    // The step's answer is the newest its events carried.
    let mut stmt = conn.prepare_cached(
        "SELECT payload_json FROM plan_events
         WHERE plan = ?1 AND type IN (?3, ?4) AND step = ?2
         ORDER BY seq DESC",
    )?;
    let mut reply = None;
    stmt.for_each_row(
        params![
            plan_row,
            step as i64,
            type_code(EventType::StepStarted),
            type_code(EventType::StepFinished)
        ],
        |row| {
            let payload: Value = serde_json::from_str(&row.get::<_, String>(0)?)?;
            if let Some(answer) = payload.get("result").filter(|r| !r.is_null()) {
                let text = answer.get(key).and_then(Value::as_str).ok_or_else(bad)?;
                reply = Some(json!({ "reply": text }));
            }
            Ok(reply.is_none())
        },
    )?;
    if reply.is_some() {
        return Ok(reply);
    }
    // A step answered before its plan was made keeps its answer in the
    // plan's body.
    let pointer = format!(
        "/steps/{step}/result/{}",
        key.replace('~', "~0").replace('/', "~1")
    );
    if let Some(body) = created_body(conn, plan_row)?
        && let Some(text) = body.pointer(&pointer).and_then(Value::as_str)
    {
        return Ok(Some(json!({ "reply": text })));
    }
    Err(bad())
}

/// The body plan row `plan_row` was created with (its `plan_created`
/// payload, its shape put back); `None` when its journal has none.
fn created_body(conn: &Conn<'_>, plan_row: i64) -> Result<Option<Value>, DbError> {
    let payload: Option<String> = conn
        .prepare_cached(
            "SELECT payload_json FROM plan_events WHERE plan = ?1 AND type = ?2
             ORDER BY seq LIMIT 1",
        )?
        .query_row(params![plan_row, type_code(EventType::PlanCreated)], |r| {
            r.get(0)
        })
        .optional()?;
    payload
        .map(|p| shapes::expand(conn, serde_json::from_str(&p)?))
        .transpose()
}

/// The result a [`reply_place`] names, read from the plan's steps.
fn result_from(steps: &[Step], place: &Value) -> Option<Value> {
    let step = usize::try_from(place.get(0)?.as_u64()?).ok()?;
    let key = place.get(1)?.as_str()?;
    let text = steps.get(step)?.result.as_ref()?.get(key)?.as_str()?;
    Some(json!({ "reply": text }))
}

/// The plan row events belong to.
#[derive(Clone, Copy)]
enum PlanRow {
    /// A row whose id is known.
    Known(i64),
    /// The row the session inserted last into `plans`, in the same
    /// transaction, whose id is not back yet (PostgreSQL, statements sent
    /// together): the plans' identity sequence's current value.
    JustInserted,
}

/// Inserts the event rows; answers the seq of the last one.
fn insert_events(
    conn: &Conn<'_>,
    plan_row: PlanRow,
    rows: &[NewRow],
    replica: &Replica,
) -> Result<LaterId, DbError> {
    let newest = LaterId::default();
    for chunk in rows.chunks(MAX_ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO plan_events (plan, type, step, payload_json, principal, replica, created_at) VALUES ",
        );
        for i in 0..chunk.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(match plan_row {
                PlanRow::Known(_) => "(?, ?, ?, ?, ?, ?, ?)",
                // The identity sequence of `plans.id` (PostgreSQL's name for it).
                PlanRow::JustInserted => "(currval('plans_id_seq'), ?, ?, ?, ?, ?, ?)",
            });
        }
        if conn.is_postgres() {
            sql.push_str(" RETURNING seq");
        }
        let mut stmt = conn.prepare_cached(&sql)?;
        let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 7);
        let times: Vec<Ts> = chunk.iter().map(|r| ts(r.at)).collect();
        let steps: Vec<Option<i64>> = chunk.iter().map(|r| r.step.map(|s| s as i64)).collect();
        let types: Vec<i64> = chunk.iter().map(|r| type_code(r.event_type)).collect();
        let known = match plan_row {
            PlanRow::Known(id) => Some(id),
            PlanRow::JustInserted => None,
        };
        for (i, row) in chunk.iter().enumerate() {
            if let Some(id) = &known {
                args.push(id);
            }
            args.push(&types[i]);
            args.push(&steps[i]);
            args.push(&row.payload);
            args.push(&row.principal);
            args.push(&replica.id);
            args.push(&times[i]);
        }
        if conn.is_postgres() {
            // The new `seq`s come back with the insert, once it is sent
            // (with the commit's other statements): no round trip more.
            let newest = newest.clone();
            stmt.run_returning(args.as_slice(), move |seqs| {
                newest.raise(seqs.into_iter().max().unwrap_or(0));
            })?;
        } else {
            stmt.execute(args.as_slice())?;
            newest.raise(conn.last_insert_rowid()?);
        }
    }
    crate::engine::writer::announce_commit();
    Ok(newest)
}

/// An id a statement returns (a new plan's row, the `seq` of the newest
/// event an insert wrote): known once the statement was sent (at once on
/// SQLite; with the commit on PostgreSQL, see
/// [`crate::engine::sql::PgConn`]). Zero until then.
#[derive(Clone, Default)]
struct LaterId(std::sync::Arc<std::sync::atomic::AtomicI64>);

impl LaterId {
    fn raise(&self, seq: i64) {
        self.0.fetch_max(seq, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Event rows per INSERT statement: a plan's commit rarely has more, and
/// each count is one cached statement.
const MAX_ROWS_PER_INSERT: usize = 8;

/// Stores a new plan: its row, with the status the events of its first
/// commit leave it in, and its journal: `plan_created` carrying its body,
/// then `plan_waiting` on its gate when it waits for a confirmation, or
/// `plan_finished` when it was refused (the planner's status says which),
/// or else the events `starting` (a plan that runs at once starts there).
/// A new plan ready for its write: the record, its steps as PENDING, and
/// its `plan_created` payload, made before the write so the writer thread
/// only inserts them (issue 22: the body's JSON was a tenth of the
/// writer's time).
pub(crate) struct PreparedPlan {
    pub(crate) record: NewPlanRecord,
    pending: Vec<Step>,
    created: Payload,
}

impl PreparedPlan {
    /// The id of the shape its write stores, when it stores one.
    pub(crate) fn new_shape(&self) -> Option<i64> {
        self.created.new_shape.as_ref().map(|shape| shape.id())
    }
}

/// Makes the PENDING steps and the `plan_created` payload of `record`;
/// `payload` writes its body from its shape's text and its intent's time
/// (stored whole, or by its shape).
pub(crate) fn prepare(
    record: NewPlanRecord,
    payload: impl FnOnce(String, Option<i64>) -> Result<Payload, DbError>,
) -> Result<PreparedPlan, DbError> {
    let plan = &record.plan;
    // A step answered before its plan was made is created DONE.
    let pending: Vec<Step> = plan
        .steps
        .iter()
        .map(|s| match s.status {
            Status::Done => s.clone(),
            _ => Step {
                status: Status::Pending,
                attempts: 0,
                result: None,
                error: None,
                ..s.clone()
            },
        })
        .collect();
    let body = Body::new(
        plan.plan_id,
        &pending,
        record.intent.as_ref(),
        Known::new(
            &plan.intent_id.to_string(),
            plan.session_id.as_str(),
            record.logged_message.as_deref(),
        ),
        plan.created_at,
    )?;
    // A new plan is PENDING: the event does not say so (issue 25). What is
    // the plan's own (its intent's time) stays out of its shape.
    let mut body = body;
    let intent_at = body.intent_at.take();
    let shape = serde_json::to_string(&body)?;
    Ok(PreparedPlan {
        created: payload(shape, intent_at)?,
        pending,
        record,
    })
}

pub(crate) fn create(
    conn: &Conn<'_>,
    prepared: &PreparedPlan,
    replica: &Replica,
    starting: &[PlanEvent],
) -> Result<(), DbError> {
    let record = &prepared.record;
    let plan = &record.plan;
    let types: Vec<StepType> = plan.steps.iter().map(|s| s.step_type).collect();
    let mut loaded = Loaded {
        row: 0,
        stored: StoredPlan {
            plan: Plan {
                status: Status::Pending,
                steps: prepared.pending.clone(),
                error: None,
                updated_at: plan.created_at,
                ..plan.clone()
            },
            meta: record.meta.clone(),
            intent: record.intent.clone(),
            result: None,
        },
        state: PlanState::created_with(&prepared.pending),
        row_changed: false,
    };
    let principal = Some(record.meta.principal.clone());
    let mut rows = vec![NewRow {
        event_type: EventType::PlanCreated,
        step: None,
        payload: prepared.created.text.clone(),
        principal: principal.clone(),
        at: plan.created_at,
    }];
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
            rows.push(step(plan.plan_id, &mut loaded, &event)?);
        }
        None => {
            for event in starting {
                rows.push(step(plan.plan_id, &mut loaded, event)?);
            }
        }
    }
    let stored = &loaded.stored;
    let (owner, lease_expires_at) = replica.holder(stored.plan.status);
    let mut insert = conn.prepare_cached(
        "INSERT INTO plans (uuid, kind, name, module, action, principal, mode, risk, session_id,
                            intent_id, status, error, result, warnings_json, created_at, updated_at,
                            owner, lease_expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
         RETURNING id",
    )?;
    let args = params![
        plan.plan_id.to_string(),
        record.meta.kind.as_str(),
        record.meta.name,
        record.meta.module.as_str(),
        record.meta.action,
        record.meta.principal,
        plan.mode.as_str(),
        record.intent.as_ref().map(|i| i.risk.as_str()),
        plan.session_id.as_str(),
        plan.intent_id.to_string(),
        stored.plan.status.as_str(),
        stored.plan.error,
        row_result(stored)?,
        serde_json::to_string(&stored.plan.warnings)?,
        ts(plan.created_at),
        ts(stored.plan.updated_at),
        owner,
        lease_expires_at,
    ];
    // Sent with the commit on PostgreSQL: its events name the row by the
    // sequence's current value, and the fold learns the id once it is back.
    let row = LaterId::default();
    let plan_row = if conn.sends_later() {
        let row = row.clone();
        insert.run_returning(args, move |ids| {
            row.raise(ids.into_iter().max().unwrap_or(0))
        })?;
        PlanRow::JustInserted
    } else {
        let id = insert.query_row(args, |r| r.get(0))?;
        row.raise(id);
        PlanRow::Known(id)
    };
    if let Some(shape) = &prepared.created.new_shape {
        shapes::store(conn, shape)?;
    }
    let newest = insert_events(conn, plan_row, &rows, replica)?;
    let status = stored.plan.status;
    if status.is_terminal() {
        count_finished(conn, status)?;
    } else {
        loaded.row_changed = false;
        let plan_id = plan.plan_id;
        conn.after_sent(move || {
            loaded.row = row.get();
            folds::keep(plan_id, loaded, newest.get());
        });
    }
    Ok(())
}

/// The journal of one plan, in order; empty for an unknown plan.
pub(crate) fn events_of(conn: &Conn<'_>, plan_id: Uuid) -> Result<Vec<JournalEvent>, DbError> {
    let head: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT id, session_id FROM plans WHERE uuid = ?1")?
        .query_row([plan_id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((row, session_id)) = head else {
        return Ok(Vec::new());
    };
    let rows = rows_of(conn, row, plan_id)?;
    let steps = match rows.iter().find(|r| r.event_type == EventType::PlanCreated) {
        Some(first) => steps_of_body(&first.payload, plan_id)?,
        None => Vec::new(),
    };
    rows.iter()
        .map(|row| journal_event(row, plan_id, &session_id, &steps))
        .collect()
}

/// The ids and types of plan `plan_id`'s steps, from its `plan_created`
/// body (an id left out is the one derived from the plan's).
fn steps_of_body(body: &Value, plan_id: Uuid) -> Result<Vec<(Uuid, Option<StepType>)>, DbError> {
    let Some(steps) = body.get("steps").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let id = s
                .get("step_id")
                .and_then(Value::as_str)
                .map_or(Ok(Step::id_in_plan(plan_id, i)), parse_uuid)?;
            let step_type = s
                .get("type")
                .and_then(Value::as_str)
                .map(|t| parse_enum(t, "step type"))
                .transpose()?;
            Ok((id, step_type))
        })
        .collect()
}

/// One stored event as the API shows it; `steps` are its plan's.
fn journal_event(
    row: &Row,
    plan_id: Uuid,
    session_id: &Option<String>,
    steps: &[(Uuid, Option<StepType>)],
) -> Result<JournalEvent, DbError> {
    let field = |name: &str| row.payload.get(name).and_then(Value::as_str);
    let step = row.step.and_then(|i| steps.get(i));
    // Rows written before issue 25 carry the step's type and a started
    // step's status; later rows leave them to the body.
    let step_type = match field("step_type") {
        Some(t) => Some(parse_enum(t, "step type")?),
        None => step.and_then(|(_, t)| *t),
    };
    let status = match field("status") {
        Some(s) => Some(parse_enum(s, "status")?),
        None if row.event_type == EventType::StepStarted => Some(Status::Running),
        None if row.event_type == EventType::PlanCreated => Some(Status::Pending),
        None => None,
    };
    Ok(JournalEvent {
        seq: row.seq,
        plan_id,
        session_id: session_id.clone(),
        step_id: step.map(|(id, _)| *id),
        step_type,
        status,
        principal: row.principal.clone(),
        reason: field("reason").map(str::to_owned),
        replica: row.replica.clone(),
        at: row.at,
        event_type: row.event_type,
    })
}

/// Which plans' events a reader of the whole journal wants (SPEC §14).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalFilter {
    /// Only this plan's.
    pub plan_id: Option<Uuid>,
    /// Only the plans of this session.
    pub session_id: Option<String>,
}

/// Up to `limit` events after `after` in journal order, of the plans
/// `filter` names.
fn journal_after_in(
    conn: &Conn<'_>,
    after: i64,
    filter: &JournalFilter,
    limit: u32,
) -> Result<Vec<JournalEvent>, DbError> {
    // One statement per filter, each able to use its index: the plan's
    // events by (plan, seq), a session's plans by session.
    let mut sql = format!(
        "SELECT e.seq, e.type, e.step, e.payload_json, e.principal, {REPLICA_NAME}, e.created_at,
                e.plan, p.uuid, p.session_id
         FROM plan_events e JOIN plans p ON p.id = e.plan
         WHERE e.seq > ?1"
    );
    let plan = filter.plan_id.map(|p| p.to_string());
    let mut args: Vec<&dyn rusqlite::ToSql> = vec![&after, &limit];
    if let Some(plan) = &plan {
        args.push(plan);
        sql.push_str(&format!(
            " AND e.plan = (SELECT id FROM plans WHERE uuid = ?{})",
            args.len()
        ));
    }
    if let Some(session) = &filter.session_id {
        args.push(session);
        sql.push_str(&format!(
            " AND e.plan IN (SELECT id FROM plans WHERE session_id = ?{})",
            args.len()
        ));
    }
    sql.push_str(" ORDER BY e.seq LIMIT ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut steps_by_plan: std::collections::HashMap<i64, Vec<(Uuid, Option<StepType>)>> =
        std::collections::HashMap::new();
    let mut out = Vec::new();
    stmt.for_each_row(args.as_slice(), |r| {
        let seq: i64 = r.get(0)?;
        let event_type = read_type(r.value(1)?);
        let plan_row: i64 = r.get(7)?;
        let plan_id = parse_uuid(&r.get::<_, String>(8)?)?;
        let session_id: Option<String> = r.get(9)?;
        let row = Row {
            seq,
            event_type: stored_type(event_type, plan_id, seq)?,
            step: r.get::<_, Option<i64>>(2)?.map(|s| s as usize),
            payload: serde_json::from_str(&r.get::<_, String>(3)?)?,
            principal: r.get(4)?,
            replica: r.get(5)?,
            at: r.get::<_, Ts>(6)?.0,
        };
        let steps = match steps_by_plan.entry(plan_row) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let body = created_body(conn, plan_row)?.unwrap_or_else(|| json!({}));
                e.insert(steps_of_body(&body, plan_id)?)
            }
        };
        out.push(journal_event(&row, plan_id, &session_id, steps)?);
        Ok(true)
    })?;
    Ok(out)
}

/// What `madre check` found wrong with one plan: its row (the projection)
/// disagrees with its journal, or its journal cannot be folded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanProblem {
    /// The plan (as its row names it).
    pub plan_id: String,
    /// What is wrong, for a human.
    pub problem: String,
}

/// The status a plan's journal alone leads to, and the reason and time of
/// its last plan-level event: what its row must say.
struct JournalVerdict {
    status: Status,
    reason: Option<String>,
    at: Option<DateTime<Utc>>,
}

fn journal_verdict(conn: &Conn<'_>, row: i64, plan_id: Uuid) -> Result<JournalVerdict, DbError> {
    let rows = rows_of(conn, row, plan_id)?;
    let (_, through, mut state) = base(plan_id, &rows)?;
    let mut verdict = JournalVerdict {
        status: state.status,
        reason: None,
        at: None,
    };
    for stored in rows.iter().filter(|r| r.seq > through) {
        let event = event_of(plan_id, stored)?;
        let changes = madre_lifecycle::apply(&state, &event).map_err(|c| {
            DbError::InvalidData(format!(
                "plan {plan_id}: journal event {} refused by the state machine: {c}",
                stored.seq
            ))
        })?;
        if changes.iter().any(|c| matches!(c, Change::Plan { .. })) {
            verdict.at = Some(stored.at);
            let ends = ends_plan(&event);
            if let Some(reason) = stored
                .payload
                .get("reason")
                .and_then(Value::as_str)
                .filter(|_| ends)
            {
                verdict.reason = Some(reason.to_owned());
            }
        }
        state.change(&changes);
    }
    verdict.status = state.status;
    Ok(verdict)
}

/// Every plan whose row disagrees with its journal, or whose journal
/// cannot be folded, and finished-plan counters that disagree with the
/// rows. Reads every plan: a maintenance command's work, not a request's.
fn check_in(conn: &Conn<'_>) -> Result<Vec<PlanProblem>, DbError> {
    let mut problems = Vec::new();
    let mut stmt = conn.prepare_cached("SELECT id, uuid, status FROM plans ORDER BY id")?;
    let heads = stmt
        .query_map((), |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (row, uuid, status) in heads {
        let problem = match Uuid::parse_str(&uuid) {
            Err(_) => Some(format!("its id {uuid:?} is not a UUID")),
            Ok(plan_id) => match journal_verdict(conn, row, plan_id) {
                Err(e) => Some(format!("its journal cannot be read: {e}")),
                Ok(v) if v.status.as_str() != status => Some(format!(
                    "its row says {status}, its journal says {}",
                    v.status
                )),
                Ok(_) => None,
            },
        };
        if let Some(problem) = problem {
            problems.push(PlanProblem {
                plan_id: uuid,
                problem,
            });
        }
    }
    let mut stmt = conn.prepare_cached(
        "SELECT s.status, s.n, (SELECT count(*) FROM plans p WHERE p.status = s.status)
         FROM (SELECT status, n FROM plan_status_counts
               UNION SELECT status, 0 FROM plans
               WHERE status NOT IN ('PENDING', 'WAITING', 'RUNNING')
                 AND status NOT IN (SELECT status FROM plan_status_counts)) s",
    )?;
    let counters = stmt
        .query_map((), |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (status, counted, rows) in counters {
        if counted != rows {
            problems.push(PlanProblem {
                plan_id: "-".into(),
                problem: format!("the counter of {status} plans says {counted}, the rows {rows}"),
            });
        }
    }
    Ok(problems)
}

/// Rewrites every row that disagrees with its journal from the journal,
/// and the finished-plan counters from the rows. A plan whose journal
/// cannot be folded is left as it is and answered.
fn repair_in(conn: &Conn<'_>) -> Result<(Vec<PlanProblem>, Vec<PlanProblem>), DbError> {
    let found = check_in(conn)?;
    let (mut repaired, mut left) = (Vec::new(), Vec::new());
    for problem in found {
        let Ok(plan_id) = Uuid::parse_str(&problem.plan_id) else {
            if problem.plan_id != "-" {
                left.push(problem);
            }
            continue;
        };
        let row: i64 = conn
            .prepare_cached("SELECT id FROM plans WHERE uuid = ?1")?
            .query_row([&problem.plan_id], |r| r.get(0))?;
        match journal_verdict(conn, row, plan_id) {
            Err(_) => left.push(problem),
            Ok(v) => {
                conn.prepare_cached(
                    "UPDATE plans SET status = ?2, error = COALESCE(?3, error),
                                      updated_at = COALESCE(?4, updated_at)
                     WHERE id = ?1",
                )?
                .execute(params![
                    row,
                    v.status.as_str(),
                    v.reason,
                    v.at.map(ts)
                ])?;
                repaired.push(problem);
            }
        }
    }
    conn.execute_batch(
        "DELETE FROM plan_status_counts;
         INSERT INTO plan_status_counts (status, n)
         SELECT status, count(*) FROM plans
         WHERE status NOT IN ('PENDING', 'WAITING', 'RUNNING') GROUP BY status;",
    )?;
    Ok((repaired, left))
}

/// The open plans (PENDING, WAITING, RUNNING), oldest first, through the
/// index that holds only them (its condition, said the same way).
pub(crate) const OPEN_PLANS: &str = "SELECT id, uuid FROM plans
     WHERE status = 'PENDING' OR status = 'WAITING' OR status = 'RUNNING' ORDER BY id";

/// Folds the journal of every open plan (PENDING, WAITING, RUNNING: the
/// ones a start resumes or confirms), and fails on the first that cannot
/// be, naming the plan and the event. Writes nothing.
fn check_open_in(conn: &Conn<'_>) -> Result<(), DbError> {
    let mut stmt = conn.prepare_cached(OPEN_PLANS)?;
    // One plan at a time: a start with many plans waiting holds none of
    // them longer than its own fold.
    stmt.for_each_row((), |r| {
        let row: i64 = r.get(0)?;
        let uuid = parse_uuid(&r.get::<_, String>(1)?)?;
        journal_verdict(conn, row, uuid)?;
        Ok(true)
    })
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
            let state = append(conn, plan_id, &events, &replica)?.state;
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

    /// Up to `limit` journal events after `after` (a `seq`; 0 for the
    /// start), oldest first, of the plans `filter` names: what a reader of
    /// the live event stream has not seen yet (SPEC §14).
    pub fn journal_after(
        &self,
        after: i64,
        filter: &JournalFilter,
        limit: u32,
    ) -> Result<Vec<JournalEvent>, DbError> {
        self.read(|conn| journal_after_in(conn, after, filter, limit))
    }

    /// The newest `seq` of the journal (0 when it is empty): where a reader
    /// that wants only what comes next starts.
    pub fn journal_head(&self) -> Result<i64, DbError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT coalesce(max(seq), 0) FROM plan_events")?
                .query_row((), |r| r.get(0))
        })
    }

    /// Changes after every commit that appended to the journal, in this
    /// process: a reader waits on it, then asks [`Db::journal_after`].
    /// Commits of other processes sharing the database are not seen here;
    /// a reader that must see them also asks now and then.
    pub fn journal_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.writer.journal_commits()
    }

    /// The plan's current state, as the state machine sees it.
    pub fn plan_state(&self, plan_id: Uuid) -> Result<PlanState, DbError> {
        self.read(|conn| load_existing(conn, plan_id).map(|l| l.state))
    }

    /// Every plan whose row disagrees with its journal or whose journal
    /// cannot be folded, and counters that disagree with the rows (`madre
    /// check`). Reads every plan; changes nothing.
    pub fn check_plans(&self) -> Result<Vec<PlanProblem>, DbError> {
        self.read(check_in)
    }

    /// Rebuilds, from the journal, every plan row that disagrees with it,
    /// and the finished-plan counters from the rows (`madre repair`).
    /// Answers the plans repaired and those left as they were (a journal
    /// that cannot be folded is never guessed at).
    pub fn repair_plans(&self) -> Write<(Vec<PlanProblem>, Vec<PlanProblem>)> {
        self.write(repair_in)
    }

    /// Fails, naming the plan and the event, when the journal of an open
    /// plan holds an event the state machine refuses: the start stops
    /// there, before anything is resumed or written.
    pub fn check_open_plans(&self) -> Result<(), DbError> {
        self.read(check_open_in)
    }

    /// The name this process writes in the journal's `replica` column.
    pub fn replica(&self) -> &str {
        &self.replica.name
    }
}
