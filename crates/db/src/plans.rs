//! Plans: storing a new one, reading one (folded from its journal by
//! [`crate::journal`]) and keyset-paginated listing of their rows in
//! `plans`.

use crate::engine::sql::{Conn, OptionalExtension, Row};
use chrono::{DateTime, Utc};
use madre_models::{PlanSummary, Status, TaskView};
use rusqlite::ToSql;
use std::str::FromStr;
use uuid::Uuid;

use crate::audit::insert_action;
use crate::confirmations::insert_confirmation;
use crate::engine::writer::{AT_END, in_named_savepoint};
use crate::journal::Replica;
use crate::journal::{self, PlanEvent};
use crate::records::{NewPlanRecord, PlanKind, StoredPlan};
use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};

/// Makes a write from a plan as it ended, to commit with its end (see
/// [`Db::apply_events_and_read`]). Called once per run of the end's write,
/// which may run again when a write it shares a commit with fails.
pub type AtEnd = Box<dyn FnMut(&StoredPlan) -> Write<()> + Send>;

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

fn insert_record(
    conn: &Conn<'_>,
    prepared: &journal::PreparedPlan,
    replica: &Replica,
    then: &[journal::PlanEvent],
) -> Result<(), DbError> {
    journal::create(conn, prepared, replica, then)?;
    let record = &prepared.record;
    if let Some(confirmation) = &record.confirmation {
        insert_confirmation(conn, record.plan.plan_id, confirmation)?;
    }
    for action in &record.actions {
        insert_action(conn, action)?;
    }
    Ok(())
}

/// Plans per status (SPEC §9 `/metrics`): open ones counted through the
/// index that holds only them, finished ones from the counters the journal
/// keeps in the commit that finishes a plan. Neither scans history.
pub(crate) const PLAN_COUNTS: &str = "SELECT status, count(*) FROM plans
     WHERE status = 'PENDING' OR status = 'WAITING' OR status = 'RUNNING' GROUP BY status
     UNION ALL
     SELECT status, n FROM plan_status_counts WHERE n > 0
     ORDER BY status";

const SUMMARY_COLUMNS: &str = "id, uuid, intent_id, session_id, name, module, action, status, error, created_at, updated_at, risk";

struct SummaryRow {
    id: i64,
    summary: PlanSummary,
    /// The plan's result, when the listing asked for it (v6 tasks).
    result: Option<String>,
}

/// A listing row; reads `result` (column 12) only when it was selected.
/// Ids and the status are parsed from borrowed text, without copies.
fn summary_from_row(
    r: &Row<'_>,
    with_result: bool,
) -> Result<Result<SummaryRow, DbError>, DbError> {
    let text = |i| r.text(i);
    let (uuid, intent, status) = (text(1)?, text(2)?, text(7)?);
    let id: i64 = r.get(0)?;
    let session_id: Option<String> = r.get(3)?;
    let (name, module, action): (String, String, String) = (r.get(4)?, r.get(5)?, r.get(6)?);
    let error: Option<String> = r.get(8)?;
    let (created, updated): (Ts, Ts) = (r.get(9)?, r.get(10)?);
    let risk = r.text(11)?;
    let result: Option<String> = if with_result { r.get(12)? } else { None };
    Ok((|| {
        Ok(SummaryRow {
            id,
            summary: PlanSummary {
                plan_id: parse_uuid(uuid.as_deref().unwrap_or_default())?,
                intent_id: intent.as_deref().map(parse_uuid).transpose()?,
                session_id,
                name,
                module,
                action,
                status: parse_enum(status.as_deref().unwrap_or_default(), "status")?,
                risk: risk.as_deref().map(|r| parse_enum(r, "risk")).transpose()?,
                error,
                created_at: created.0,
                updated_at: updated.0,
            },
            result,
        })
    })())
}

/// Fills in the result of each finished plan whose end keeps it by
/// reference to a step's answer (issue 25: the answer stored once), in the
/// listing's own read. A plan whose journal cannot say is listed without
/// its result, and logged: one bad plan does not fail the listing.
fn resolve_results(conn: &Conn<'_>, rows: &mut [SummaryRow]) {
    for row in rows {
        if row.result.is_some() || !row.summary.status.is_terminal() {
            continue;
        }
        match crate::journal::result_by_reference(conn, row.id) {
            Ok(found) => row.result = found.map(|v| v.to_string()),
            Err(e) => tracing::warn!(
                plan_id = %row.summary.plan_id,
                error = %e,
                "the task listing could not read a plan's result"
            ),
        }
    }
}

impl Db {
    /// Stores a new plan with its steps, context rows (intent, mode,
    /// session), optional confirmation and audit rows, atomically.
    pub fn insert_plan(&self, record: NewPlanRecord) -> Write<()> {
        self.insert_prepared(record, Vec::new())
    }

    /// Stores a new plan that runs at once, with `events` appended to its
    /// journal in the same commit (its first step started, and any step
    /// whose answer is already known finished): the steps they start are
    /// durably RUNNING before their calls, with no commit of their own. A
    /// plan that waits or was refused is stored as by [`Db::insert_plan`]
    /// and `events` are not applied. An event the state machine refuses
    /// fails the whole write.
    pub fn insert_plan_with(&self, record: NewPlanRecord, events: Vec<PlanEvent>) -> Write<()> {
        self.insert_prepared(record, events)
    }

    /// The write of [`Db::insert_plan_with`]; a shape it stores is known
    /// stored once it committed.
    fn insert_prepared(&self, record: NewPlanRecord, events: Vec<PlanEvent>) -> Write<()> {
        let replica = self.replica.clone();
        let prepared = self.prepare_plan(record);
        let shapes = self.shapes.clone();
        self.write(move |conn| {
            let prepared = prepared.as_ref().map_err(DbError::duplicate)?;
            insert_record(conn, prepared, &replica, &events)?;
            if let Some(id) = prepared.new_shape() {
                let shapes = shapes.clone();
                crate::engine::writer::after_commit(move || shapes.stored(id));
            }
            Ok(())
        })
    }

    /// A new plan made ready for its write, outside the writer: its body
    /// stored by its shape when the shape repeats ([`crate::shapes`]).
    /// This runs on the caller's thread, often an async one, so whether a
    /// shape is stored is asked of a reader only when one is free at once
    /// (a point read of a local file; never on PostgreSQL, where a read is
    /// a network round trip the caller's thread must not wait for); else
    /// the write stores the shape again, which changes nothing when it is
    /// there.
    fn prepare_plan(&self, record: NewPlanRecord) -> Result<journal::PreparedPlan, DbError> {
        journal::prepare(record, |shape, intent_at| {
            self.shapes
                .payload(shape, intent_at, |id| match &self.readers {
                    crate::Readers::Lite(pool) => match pool.try_get() {
                        Some(conn) => crate::shapes::is_stored(&Conn::Lite(&conn), id),
                        None => Ok(false),
                    },
                    crate::Readers::Pg(_) => Ok(false),
                })
        })
    }

    /// The plan with its steps, metadata and intent.
    pub fn plan(&self, plan_id: Uuid) -> Result<Option<StoredPlan>, DbError> {
        self.read(|conn| journal::plan_in(conn, plan_id))
    }

    /// The plan's status as its projection row holds it, or `None` when no
    /// such plan is stored: one small read, for a caller that holds the
    /// plan already and only needs to know whether it changed hands or
    /// ended meanwhile (a plan that waited for a runner slot).
    pub fn plan_status(&self, plan_id: Uuid) -> Result<Option<Status>, DbError> {
        self.read(|conn| {
            let status: Option<String> = conn
                .prepare_cached("SELECT status FROM plans WHERE uuid = ?1")?
                .query_row([plan_id.to_string()], |r| r.get(0))
                .optional()?;
            status.map(|s| parse_enum(&s, "status")).transpose()
        })
    }

    /// Appends `events` to the plan's journal, as [`Db::apply_events`] does,
    /// and answers the plan as stored after them, read inside the same
    /// transaction: the end of a run and the answer it returns in one trip
    /// to the writer. `at_end`, when given, makes one more write from that
    /// plan, committed with it (a chat's history turn, say); a failure of
    /// that write is logged and undoes only itself.
    pub fn apply_events_and_read(
        &self,
        plan_id: Uuid,
        events: Vec<PlanEvent>,
        mut at_end: Option<AtEnd>,
    ) -> Write<StoredPlan> {
        let replica = self.replica.clone();
        self.write(move |conn| {
            let plan = journal::append(conn, plan_id, &events, &replica)?.stored;
            if let Some(at_end) = at_end.as_mut() {
                let mut write = at_end(&plan);
                match in_named_savepoint(conn, &AT_END, || write.run_inline(conn)) {
                    // SQLite gave the whole transaction up: nothing stands.
                    Err(e) if conn.is_autocommit() => return Err(e),
                    Err(e) => {
                        tracing::warn!(%plan_id, error = %e, "the write made at a plan's end failed and was undone; the end stands");
                    }
                    Ok(()) => {}
                }
            }
            Ok(plan)
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
            let mut sql = format!("SELECT {SUMMARY_COLUMNS}{extra} FROM plans WHERE 1 = 1");
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
            if with_result {
                resolve_results(conn, &mut rows);
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
                let result = r.result.as_deref().map(serde_json::from_str).transpose()?;
                Ok(TaskView {
                    task_id: r.summary.plan_id,
                    name: r.summary.name,
                    module: r.summary.module,
                    action: r.summary.action,
                    status: r.summary.status,
                    result,
                    error: r.summary.error,
                    created_at: r.summary.created_at,
                    updated_at: r.summary.updated_at,
                })
            })
            .collect::<Result<_, DbError>>()?;
        Ok((tasks, next))
    }

    /// Ids of RUNNING plans last changed before `before`, oldest first
    /// (through the status index: bounded by the plans running).
    pub fn plans_running_since_before(&self, before: DateTime<Utc>) -> Result<Vec<Uuid>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT uuid FROM plans WHERE status = 'RUNNING' AND updated_at < ?1 ORDER BY id",
            )?;
            let ids = stmt.query_map([ts(before)], |r| r.get::<_, String>(0))?;
            ids.map(|id| parse_uuid(&id?)).collect()
        })
    }

    /// Ids of every plan in `status`, oldest first (used to resume RUNNING plans).
    pub fn plan_ids_with_status(&self, status: Status) -> Result<Vec<Uuid>, DbError> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT uuid FROM plans WHERE status = ?1 ORDER BY id")?;
            let ids = stmt.query_map([status.as_str()], |r| r.get::<_, String>(0))?;
            ids.map(|id| parse_uuid(&id?)).collect()
        })
    }

    /// How many plans are in each status, from counters the database keeps
    /// current on every change (no scan of the plans).
    pub fn plan_counts(&self) -> Result<Vec<(Status, u64)>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(PLAN_COUNTS)?;
            let rows = stmt.query_map((), |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            rows.map(|row| {
                let (status, n) = row?;
                Ok((parse_enum(&status, "status")?, n as u64))
            })
            .collect()
        })
    }
}
