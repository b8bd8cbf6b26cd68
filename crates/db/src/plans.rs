//! Plans (rows of `tasks`) and their steps (`plan_steps`), context rows,
//! state transitions and keyset-paginated listing.

use chrono::{DateTime, Utc};
use madre_models::{Intent, Mode, Plan, PlanSummary, SessionId, Status, Step, StepType, TaskView};
use rusqlite::{Connection, OptionalExtension, Row, ToSql, params};
use serde_json::Value;
use std::str::FromStr;
use uuid::Uuid;

use crate::audit::{NewAction, insert_action};
use crate::confirmations::{NewConfirmation, insert_confirmation};
use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};

/// What made a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanKind {
    /// A chat message (v7 `/madre/chat` or v6 `/chat`).
    Chat,
    /// A control action (`/madre/control`).
    Control,
    /// A programmatic v6 task (`/task`).
    Task,
}

impl PlanKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanKind::Chat => "chat",
            PlanKind::Control => "control",
            PlanKind::Task => "task",
        }
    }

    fn parse(text: &str) -> Result<Self, DbError> {
        match text {
            "chat" => Ok(PlanKind::Chat),
            "control" => Ok(PlanKind::Control),
            "task" => Ok(PlanKind::Task),
            other => Err(DbError::InvalidData(format!("unknown plan kind {other:?}"))),
        }
    }
}

/// Facts about a plan that are not part of [`Plan`] itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanMeta {
    /// What made it.
    pub kind: PlanKind,
    /// Short name (`chat`, the task's name, `control:shub:restart`).
    pub name: String,
    /// The module it mainly addresses.
    pub module: String,
    /// The action it carries out.
    pub action: String,
    /// Who asked for it.
    pub principal: String,
}

/// A plan as stored, with its metadata and intent.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPlan {
    /// The plan and its steps.
    pub plan: Plan,
    /// Its metadata.
    pub meta: PlanMeta,
    /// The intent it carries out.
    pub intent: Option<Intent>,
    /// The plan's overall result, once finished.
    pub result: Option<Value>,
}

/// Everything written when a plan is created, in one transaction.
#[derive(Debug, Clone)]
pub struct NewPlanRecord {
    /// The plan with its steps.
    pub plan: Plan,
    /// Its metadata.
    pub meta: PlanMeta,
    /// The intent, stored in the plan's context.
    pub intent: Option<Intent>,
    /// A pending confirmation, when the plan waits for one.
    pub confirmation: Option<NewConfirmation>,
    /// Audit rows to append with it.
    pub actions: Vec<NewAction>,
}

/// A change of one step's state.
#[derive(Debug, Clone, PartialEq)]
pub struct StepUpdate {
    /// The new status; RUNNING counts an attempt and sets `started_at`,
    /// terminal statuses set `finished_at`.
    pub status: Status,
    /// The module's answer.
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A change of a plan's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlanUpdate {
    /// The new status, if it changes.
    pub status: Option<Status>,
    /// Machine-readable reason for ERROR/CANCELLED.
    pub error: Option<String>,
    /// The overall result.
    pub result: Option<Value>,
    /// Warnings to add (kept unique).
    pub add_warnings: Vec<String>,
}

/// Filters for listing plans; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanFilter {
    /// Only plans in this status.
    pub status: Option<Status>,
    /// Only plans of this session.
    pub session_id: Option<String>,
    /// Only plans of this kind.
    pub kind: Option<PlanKind>,
}

fn parse_enum<T: FromStr>(text: &str, what: &str) -> Result<T, DbError> {
    text.parse()
        .map_err(|_| DbError::InvalidData(format!("unknown {what} {text:?}")))
}

fn parse_uuid(text: &str) -> Result<Uuid, DbError> {
    Uuid::parse_str(text).map_err(|_| DbError::InvalidData(format!("bad uuid {text:?}")))
}

fn insert_context(
    conn: &Connection,
    task_id: &str,
    key: &str,
    value: &str,
    scope: &str,
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO context (task_id, key, value, scope, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![task_id, key, value, scope, ts(at)])?;
    Ok(())
}

fn insert_record(conn: &Connection, record: &NewPlanRecord) -> Result<(), DbError> {
    let plan = &record.plan;
    let plan_id = plan.plan_id.to_string();
    conn.prepare_cached(
        "INSERT INTO tasks (uuid, name, module, action, status, created_at, updated_at, error,
                            kind, intent_id, session_id, mode, principal, warnings_json)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?
    .execute(params![
        plan_id,
        record.meta.name,
        record.meta.module,
        record.meta.action,
        plan.status.as_str(),
        ts(plan.created_at),
        plan.error,
        record.meta.kind.as_str(),
        plan.intent_id.to_string(),
        plan.session_id.as_str(),
        plan.mode.as_str(),
        record.meta.principal,
        serde_json::to_string(&plan.warnings)?,
    ])?;
    let mut insert_step = conn.prepare_cached(
        "INSERT INTO plan_steps (plan_id, idx, step_id, type, payload_json, blocking, optional,
                                 status, attempts, result_json, error, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    for (idx, step) in plan.steps.iter().enumerate() {
        insert_step.execute(params![
            plan_id,
            idx as i64,
            step.step_id.to_string(),
            step.step_type.as_str(),
            serde_json::to_string(&step.payload)?,
            step.blocking,
            step.optional,
            step.status.as_str(),
            step.attempts,
            step.result
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
            step.error,
            ts(step.created_at),
            ts(step.updated_at),
        ])?;
    }
    let intent_json = record
        .intent
        .as_ref()
        .map(serde_json::to_string)
        .transpose()?;
    let rows = [
        ("intent", intent_json.as_deref(), "plan"),
        ("mode", Some(plan.mode.as_str()), "plan"),
        ("session_id", Some(plan.session_id.as_str()), "session"),
    ];
    for (key, value, scope) in rows {
        if let Some(value) = value {
            insert_context(conn, &plan_id, key, value, scope, plan.created_at)?;
        }
    }
    if let Some(confirmation) = &record.confirmation {
        insert_confirmation(conn, plan.plan_id, confirmation)?;
    }
    for action in &record.actions {
        insert_action(conn, action)?;
    }
    Ok(())
}

/// Changes a step unless it already finished.
pub(crate) fn apply_step_update(
    conn: &Connection,
    plan_id: Uuid,
    idx: usize,
    update: &StepUpdate,
) -> Result<(), DbError> {
    let started = update.status == Status::Running;
    let changed = conn
        .prepare_cached(
            "UPDATE plan_steps SET
                status = ?3,
                attempts = attempts + ?4,
                started_at = CASE WHEN ?4 = 1 THEN ?7 ELSE started_at END,
                finished_at = CASE WHEN ?3 IN ('DONE','ERROR','CANCELLED') THEN ?7 ELSE finished_at END,
                result_json = COALESCE(?5, result_json),
                error = COALESCE(?6, error),
                updated_at = ?7
             WHERE plan_id = ?1 AND idx = ?2 AND status NOT IN ('DONE','ERROR','CANCELLED')",
        )?
        .execute(params![
            plan_id.to_string(),
            idx as i64,
            update.status.as_str(),
            started as i64,
            update.result.as_ref().map(serde_json::to_string).transpose()?,
            update.error,
            ts(update.at),
        ])?;
    if changed == 1 {
        Ok(())
    } else {
        let exists = conn
            .prepare_cached("SELECT 1 FROM plan_steps WHERE plan_id = ?1 AND idx = ?2")?
            .exists(params![plan_id.to_string(), idx as i64])?;
        if exists {
            Err(DbError::Conflict(format!(
                "step {idx} of plan {plan_id} already finished"
            )))
        } else {
            Err(DbError::not_found("step", format!("{plan_id}/{idx}")))
        }
    }
}

/// Changes a plan unless it already finished.
pub(crate) fn apply_plan_update(
    conn: &Connection,
    plan_id: Uuid,
    update: &PlanUpdate,
    at: DateTime<Utc>,
) -> Result<(), DbError> {
    let id = plan_id.to_string();
    let current: Option<(String, String)> = conn
        .prepare_cached("SELECT status, warnings_json FROM tasks WHERE uuid = ?1")?
        .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let Some((status, warnings_json)) = current else {
        return Err(DbError::not_found("plan", plan_id));
    };
    let status: Status = parse_enum(&status, "status")?;
    if status.is_terminal() {
        return Err(DbError::Conflict(format!(
            "plan {plan_id} already finished ({status})"
        )));
    }
    let mut warnings: Vec<String> = serde_json::from_str(&warnings_json)?;
    for w in &update.add_warnings {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    conn.prepare_cached(
        "UPDATE tasks SET status = ?2, error = COALESCE(?3, error), result = COALESCE(?4, result),
                          warnings_json = ?5, updated_at = ?6
         WHERE uuid = ?1",
    )?
    .execute(params![
        id,
        update.status.unwrap_or(status).as_str(),
        update.error,
        update
            .result
            .as_ref()
            .map(serde_json::to_string)
            .transpose()?,
        serde_json::to_string(&warnings)?,
        ts(at),
    ])?;
    Ok(())
}

/// Cancels a plan and every unfinished step; answers the status it had.
pub(crate) fn cancel_in(
    conn: &Connection,
    plan_id: Uuid,
    reason: &str,
    at: DateTime<Utc>,
) -> Result<Status, DbError> {
    let id = plan_id.to_string();
    let status: Option<String> = conn
        .prepare_cached("SELECT status FROM tasks WHERE uuid = ?1")?
        .query_row([&id], |r| r.get(0))
        .optional()?;
    let status: Status = match status {
        None => return Err(DbError::not_found("plan", plan_id)),
        Some(s) => parse_enum(&s, "status")?,
    };
    if status.is_terminal() {
        return Err(DbError::Conflict(format!(
            "plan {plan_id} already finished ({status})"
        )));
    }
    conn.prepare_cached(
        "UPDATE tasks SET status = 'CANCELLED', error = ?2, updated_at = ?3 WHERE uuid = ?1",
    )?
    .execute(params![id, reason, ts(at)])?;
    conn.prepare_cached(
        "UPDATE plan_steps SET status = 'CANCELLED', finished_at = ?2, updated_at = ?2
         WHERE plan_id = ?1 AND status NOT IN ('DONE','ERROR','CANCELLED')",
    )?
    .execute(params![id, ts(at)])?;
    conn.prepare_cached(
        "UPDATE confirmations SET outcome = ?2 WHERE plan_id = ?1 AND outcome IS NULL",
    )?
    .execute(params![id, reason])?;
    Ok(status)
}

/// A `plan_steps` row before its text columns are parsed.
type RawStep = (
    String,
    String,
    String,
    bool,
    bool,
    String,
    u32,
    Option<String>,
    Option<String>,
    Ts,
    Ts,
);

fn step_from_row(r: &Row<'_>) -> rusqlite::Result<RawStep> {
    r.try_into()
}

fn load_steps(conn: &Connection, plan_id: &str) -> Result<Vec<Step>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT step_id, type, payload_json, blocking, optional, status, attempts, result_json,
                error, created_at, updated_at
         FROM plan_steps WHERE plan_id = ?1 ORDER BY idx",
    )?;
    let rows = stmt.query_map([plan_id], step_from_row)?;
    let mut steps = Vec::new();
    for row in rows {
        let (
            step_id,
            ty,
            payload,
            blocking,
            optional,
            status,
            attempts,
            result,
            error,
            created,
            updated,
        ) = row?;
        steps.push(Step {
            step_id: parse_uuid(&step_id)?,
            step_type: parse_enum::<StepType>(&ty, "step type")?,
            payload: serde_json::from_str(&payload)?,
            blocking,
            optional,
            status: parse_enum(&status, "status")?,
            attempts,
            result: result.as_deref().map(serde_json::from_str).transpose()?,
            error,
            created_at: created.0,
            updated_at: updated.0,
        });
    }
    Ok(steps)
}

const SUMMARY_COLUMNS: &str =
    "id, uuid, intent_id, session_id, name, module, action, status, error, created_at, updated_at";

struct SummaryRow {
    id: i64,
    summary: PlanSummary,
    /// The plan's result, when the listing asked for it (v6 tasks).
    result: Option<String>,
}

/// A listing row; reads `result` (column 11) only when it was selected.
/// Ids and the status are parsed from borrowed text, without copies.
fn summary_from_row(
    r: &Row<'_>,
    with_result: bool,
) -> rusqlite::Result<Result<SummaryRow, DbError>> {
    let text = |i| r.get_ref(i).and_then(|v| Ok(v.as_str_or_null()?));
    let (uuid, intent, status) = (text(1)?, text(2)?, text(7)?);
    let id: i64 = r.get(0)?;
    let session_id: Option<String> = r.get(3)?;
    let (name, module, action): (String, String, String) = (r.get(4)?, r.get(5)?, r.get(6)?);
    let error: Option<String> = r.get(8)?;
    let (created, updated): (Ts, Ts) = (r.get(9)?, r.get(10)?);
    let result: Option<String> = if with_result { r.get(11)? } else { None };
    Ok((|| {
        Ok(SummaryRow {
            id,
            summary: PlanSummary {
                plan_id: parse_uuid(uuid.unwrap_or_default())?,
                intent_id: intent.map(parse_uuid).transpose()?,
                session_id,
                name,
                module,
                action,
                status: parse_enum(status.unwrap_or_default(), "status")?,
                error,
                created_at: created.0,
                updated_at: updated.0,
            },
            result,
        })
    })())
}

impl Db {
    /// Stores a new plan with its steps, context rows (intent, mode,
    /// session), optional confirmation and audit rows, atomically.
    pub fn insert_plan(&self, record: NewPlanRecord) -> Write<()> {
        self.write(move |conn| insert_record(conn, &record))
    }

    /// Changes one step's state; a finished step cannot change (conflict).
    pub fn update_step(&self, plan_id: Uuid, idx: usize, update: StepUpdate) -> Write<()> {
        self.write(move |conn| apply_step_update(conn, plan_id, idx, &update))
    }

    /// Changes a plan's state and, in the same transaction, optionally one
    /// step's; a finished plan cannot change (conflict).
    pub fn update_plan(
        &self,
        plan_id: Uuid,
        update: PlanUpdate,
        step: Option<(usize, StepUpdate)>,
        at: DateTime<Utc>,
    ) -> Write<()> {
        self.write(move |conn| {
            if let Some((idx, step_update)) = &step {
                apply_step_update(conn, plan_id, *idx, step_update)?;
            }
            apply_plan_update(conn, plan_id, &update, at)
        })
    }

    /// Applies several step changes and, optionally, a plan change in one
    /// transaction; with `finish`, also cancels every step left unfinished
    /// (as [`Db::finish_plan`]). The runner uses it to commit a finished
    /// step together with the next step's start, or with the plan's end.
    pub fn update_plan_and_steps(
        &self,
        plan_id: Uuid,
        steps: Vec<(usize, StepUpdate)>,
        plan: Option<PlanUpdate>,
        finish: bool,
        at: DateTime<Utc>,
    ) -> Write<()> {
        self.write(move |conn| {
            for (idx, update) in &steps {
                apply_step_update(conn, plan_id, *idx, update)?;
            }
            if let Some(update) = &plan {
                apply_plan_update(conn, plan_id, update, at)?;
            }
            if finish {
                conn.prepare_cached(
                    "UPDATE plan_steps SET status = 'CANCELLED', finished_at = ?2, updated_at = ?2
                     WHERE plan_id = ?1 AND status NOT IN ('DONE','ERROR','CANCELLED')",
                )?
                .execute(params![plan_id.to_string(), ts(at)])?;
            }
            Ok(())
        })
    }

    /// Ends a plan: sets its final status and cancels every step that did
    /// not finish (the steps after a timeout, say).
    pub fn finish_plan(&self, plan_id: Uuid, update: PlanUpdate, at: DateTime<Utc>) -> Write<()> {
        self.write(move |conn| {
            apply_plan_update(conn, plan_id, &update, at)?;
            conn.prepare_cached(
                "UPDATE plan_steps SET status = 'CANCELLED', finished_at = ?2, updated_at = ?2
                 WHERE plan_id = ?1 AND status NOT IN ('DONE','ERROR','CANCELLED')",
            )?
            .execute(params![plan_id.to_string(), ts(at)])?;
            Ok(())
        })
    }

    /// Cancels a plan that has not finished, with every unfinished step and
    /// its pending confirmation; answers the status it had. Appends `action`
    /// to the audit trail in the same transaction.
    pub fn cancel_plan(
        &self,
        plan_id: Uuid,
        reason: &str,
        action: Option<NewAction>,
        at: DateTime<Utc>,
    ) -> Write<Status> {
        let reason = reason.to_owned();
        self.write(move |conn| {
            let previous = cancel_in(conn, plan_id, &reason, at)?;
            if let Some(action) = &action {
                insert_action(conn, action)?;
            }
            Ok(previous)
        })
    }

    /// Adds a context row to a plan.
    pub fn put_context(
        &self,
        task_id: Uuid,
        key: &str,
        value: &str,
        scope: &str,
        at: DateTime<Utc>,
    ) -> Write<()> {
        let (key, value, scope) = (key.to_owned(), value.to_owned(), scope.to_owned());
        self.write(move |conn| insert_context(conn, &task_id.to_string(), &key, &value, &scope, at))
    }

    /// The context rows of a plan, oldest first, as (key, value, scope).
    pub fn context_of(&self, task_id: Uuid) -> Result<Vec<(String, String, String)>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, value, scope FROM context WHERE task_id = ?1 ORDER BY rowid",
            )?;
            let rows = stmt.query_map([task_id.to_string()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// The plan with its steps, metadata and intent.
    pub fn plan(&self, plan_id: Uuid) -> Result<Option<StoredPlan>, DbError> {
        self.read(|conn| {
            let id = plan_id.to_string();
            type Head = (
                String,
                String,
                String,
                String,
                String,
                Option<String>,
                Option<String>,
                String,
                Option<String>,
                String,
                String,
                Ts,
                Ts,
                Option<String>,
            );
            let head: Option<Head> = conn
                .prepare_cached(
                    "SELECT kind, name, module, action, status, error, intent_id, mode, session_id,
                            principal, warnings_json, created_at, updated_at, result
                     FROM tasks WHERE uuid = ?1",
                )?
                .query_row([&id], |r| r.try_into())
                .optional()?;
            let Some((
                kind,
                name,
                module,
                action,
                status,
                error,
                intent_id,
                mode,
                session_id,
                principal,
                warnings,
                created,
                updated,
                result,
            )) = head
            else {
                return Ok(None);
            };
            let intent_json: Option<String> = conn
                .prepare_cached("SELECT value FROM context WHERE task_id = ?1 AND key = 'intent'")?
                .query_row([&id], |r| r.get(0))
                .optional()?;
            let session_id = SessionId::parse(session_id.unwrap_or_else(|| "none".into()))
                .map_err(|e| DbError::InvalidData(e.to_string()))?;
            let plan = Plan {
                plan_id,
                intent_id: intent_id
                    .as_deref()
                    .map(parse_uuid)
                    .transpose()?
                    .unwrap_or(plan_id),
                session_id,
                status: parse_enum(&status, "status")?,
                mode: parse_enum::<Mode>(&mode, "mode")?,
                steps: load_steps(conn, &id)?,
                warnings: serde_json::from_str(&warnings)?,
                error,
                created_at: created.0,
                updated_at: updated.0,
            };
            Ok(Some(StoredPlan {
                plan,
                meta: PlanMeta {
                    kind: PlanKind::parse(&kind)?,
                    name,
                    module,
                    action,
                    principal,
                },
                intent: intent_json
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()?,
                result: result.as_deref().map(serde_json::from_str).transpose()?,
            }))
        })
    }

    fn page(
        &self,
        filter: &PlanFilter,
        limit: u32,
        cursor: Option<i64>,
        with_result: bool,
    ) -> Result<(Vec<SummaryRow>, Option<i64>), DbError> {
        self.read(|conn| {
            let extra = if with_result { ", result" } else { "" };
            let mut sql = format!("SELECT {SUMMARY_COLUMNS}{extra} FROM tasks WHERE 1 = 1");
            let mut args: Vec<Box<dyn ToSql>> = Vec::new();
            if let Some(status) = filter.status {
                sql.push_str(" AND status = ?");
                args.push(Box::new(status.as_str()));
            }
            if let Some(session) = &filter.session_id {
                sql.push_str(" AND session_id = ?");
                args.push(Box::new(session.clone()));
            }
            if let Some(kind) = filter.kind {
                sql.push_str(" AND kind = ?");
                args.push(Box::new(kind.as_str()));
            }
            if let Some(cursor) = cursor {
                sql.push_str(" AND id < ?");
                args.push(Box::new(cursor));
            }
            sql.push_str(" ORDER BY id DESC LIMIT ?");
            args.push(Box::new(i64::from(limit) + 1));
            let mut stmt = conn.prepare_cached(&sql)?;
            let params: Vec<&dyn ToSql> = args.iter().map(|a| a.as_ref()).collect();
            let mut rows = Vec::new();
            for row in stmt.query_map(params.as_slice(), |r| summary_from_row(r, with_result))? {
                rows.push(row??);
            }
            let next = if rows.len() > limit as usize {
                rows.truncate(limit as usize);
                rows.last().map(|r| r.id)
            } else {
                None
            };
            Ok((rows, next))
        })
    }

    /// A page of plans, newest first. `cursor` is the `next` of the previous
    /// page; rows inserted meanwhile never shift a page (keyset pagination).
    pub fn list_plans(
        &self,
        filter: &PlanFilter,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<(Vec<PlanSummary>, Option<i64>), DbError> {
        let (rows, next) = self.page(filter, limit, cursor, false)?;
        Ok((rows.into_iter().map(|r| r.summary).collect(), next))
    }

    /// A page of plans in the v6 task shape, newest first.
    pub fn list_tasks(
        &self,
        filter: &PlanFilter,
        limit: u32,
        cursor: Option<i64>,
    ) -> Result<(Vec<TaskView>, Option<i64>), DbError> {
        let (rows, next) = self.page(filter, limit, cursor, true)?;
        let tasks = rows
            .into_iter()
            .map(|r| {
                Ok(TaskView {
                    task_id: r.summary.plan_id,
                    name: r.summary.name,
                    module: r.summary.module,
                    action: r.summary.action,
                    status: r.summary.status,
                    result: r.result.as_deref().map(serde_json::from_str).transpose()?,
                    error: r.summary.error,
                    created_at: r.summary.created_at,
                    updated_at: r.summary.updated_at,
                })
            })
            .collect::<Result<_, DbError>>()?;
        Ok((tasks, next))
    }

    /// Ids of every plan in `status`, oldest first (used to resume RUNNING plans).
    pub fn plan_ids_with_status(&self, status: Status) -> Result<Vec<Uuid>, DbError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT uuid FROM tasks WHERE status = ?1 ORDER BY id")?;
            let ids = stmt.query_map([status.as_str()], |r| r.get::<_, String>(0))?;
            ids.map(|id| parse_uuid(&id?)).collect()
        })
    }

    /// How many plans are in each status.
    pub fn plan_counts(&self) -> Result<Vec<(Status, u64)>, DbError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT status, count(*) FROM tasks GROUP BY status")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            rows.map(|row| {
                let (status, n) = row?;
                Ok((parse_enum(&status, "status")?, n as u64))
            })
            .collect()
        })
    }
}
