//! The daughter-task queue a spawner service takes work from. Claiming is
//! one UPDATE … RETURNING inside the writer's IMMEDIATE transaction, so a
//! task is never handed to two workers, even across processes.

use crate::engine::sql::{Conn, OptionalExtension, Row};
use chrono::{DateTime, Utc};
use rusqlite::params;
use serde_json::Value;
use uuid::Uuid;

use crate::journal::Replica;
use crate::journal::{self, PlanEvent};
use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};
use madre_lifecycle::Event;
use madre_models::Status;

/// Where a daughter task is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaughterStatus {
    /// Waiting for a worker.
    Queued,
    /// Claimed by a worker.
    Running,
    /// Finished successfully.
    Completed,
    /// Failed after its last retry.
    Failed,
}

impl DaughterStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DaughterStatus::Queued => "queued",
            DaughterStatus::Running => "running",
            DaughterStatus::Completed => "completed",
            DaughterStatus::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Result<Self, DbError> {
        Ok(match text {
            "queued" => DaughterStatus::Queued,
            "running" => DaughterStatus::Running,
            "completed" => DaughterStatus::Completed,
            "failed" => DaughterStatus::Failed,
            other => {
                return Err(DbError::InvalidData(format!(
                    "unknown daughter status {other:?}"
                )));
            }
        })
    }
}

/// A task to queue.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewDaughterTask {
    /// The intent that asked for it.
    pub intent_id: Option<Uuid>,
    /// Who queued it (`madre`).
    pub source: String,
    /// Higher runs first.
    pub priority: i64,
    /// Kind of work.
    pub task_type: String,
    /// What to do, in words.
    pub description: String,
    /// How many times a failure is retried.
    pub max_retries: u32,
    /// Free metadata.
    pub metadata: Value,
    /// The plan to run, when the worker needs one.
    pub plan_json: Option<Value>,
    /// The Madre plan whose step waits for this task.
    pub plan_id: Option<Uuid>,
    /// The step of that plan which waits for this task.
    pub step_id: Option<Uuid>,
}

/// A queued, running or finished daughter task.
#[derive(Debug, Clone, PartialEq)]
pub struct DaughterTask {
    /// Row id.
    pub id: i64,
    /// The intent that asked for it.
    pub intent_id: Option<Uuid>,
    /// Who queued it.
    pub source: String,
    /// Higher runs first.
    pub priority: i64,
    /// Where it is.
    pub status: DaughterStatus,
    /// Kind of work.
    pub task_type: String,
    /// What to do.
    pub description: String,
    /// Retries allowed.
    pub max_retries: u32,
    /// Retries used.
    pub current_retry: u32,
    /// Free metadata.
    pub metadata: Value,
    /// The plan to run.
    pub plan_json: Option<Value>,
    /// The waiting Madre plan.
    pub plan_id: Option<Uuid>,
    /// The waiting step.
    pub step_id: Option<Uuid>,
    /// The worker holding it.
    pub claimed_by: Option<String>,
    /// Its worker's last sign of life.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// When queued.
    pub created_at: DateTime<Utc>,
    /// When finished.
    pub finished_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, intent_id, source, priority, status, task_type, description, max_retries,
    current_retry, metadata_json, plan_json, plan_id, step_id, claimed_by, heartbeat_at, created_at, finished_at";

type RawTask = (
    i64,
    Option<String>,
    String,
    i64,
    String,
    String,
    String,
    u32,
    u32,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<Ts>,
    Ts,
    Option<Ts>,
);

fn raw(r: &Row<'_>) -> Result<RawTask, DbError> {
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
        r.get(15)?,
        r.get(16)?,
    ))
}

fn uuid(text: Option<String>) -> Result<Option<Uuid>, DbError> {
    text.as_deref()
        .map(Uuid::parse_str)
        .transpose()
        .map_err(|e| DbError::InvalidData(e.to_string()))
}

fn cook(raw: RawTask) -> Result<DaughterTask, DbError> {
    let (
        id,
        intent,
        source,
        priority,
        status,
        task_type,
        description,
        max_retries,
        current_retry,
        metadata,
        plan_json,
        plan_id,
        step_id,
        claimed_by,
        heartbeat,
        created,
        finished,
    ) = raw;
    Ok(DaughterTask {
        id,
        intent_id: uuid(intent)?,
        source,
        priority,
        status: DaughterStatus::parse(&status)?,
        task_type,
        description,
        max_retries,
        current_retry,
        metadata: serde_json::from_str(&metadata)?,
        plan_json: plan_json.as_deref().map(serde_json::from_str).transpose()?,
        plan_id: uuid(plan_id)?,
        step_id: uuid(step_id)?,
        claimed_by,
        heartbeat_at: heartbeat.map(|t| t.0),
        created_at: created.0,
        finished_at: finished.map(|t| t.0),
    })
}

fn task_in(conn: &Conn<'_>, id: i64) -> Result<DaughterTask, DbError> {
    let raw = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM daughter_tasks WHERE id = ?1"
        ))?
        .query_row([id], raw)
        .optional()?
        .ok_or_else(|| DbError::not_found("daughter task", id))?;
    cook(raw)
}

/// The task, checked to be running and held by `worker`.
fn held_task(conn: &Conn<'_>, id: i64, worker: &str) -> Result<DaughterTask, DbError> {
    let task = task_in(conn, id)?;
    if task.status != DaughterStatus::Running || task.claimed_by.as_deref() != Some(worker) {
        return Err(DbError::Conflict(format!(
            "daughter task {id} is not running under worker {worker:?}"
        )));
    }
    Ok(task)
}

/// Finishes the waiting plan step through the journal, and the plan with
/// it when no step is left open or the step failed. A plan that ended
/// meanwhile (cancelled, say) is left as it is.
fn settle_plan(
    conn: &Conn<'_>,
    task: &DaughterTask,
    status: Status,
    result: Option<Value>,
    error: Option<String>,
    at: DateTime<Utc>,
    replica: &Replica,
) -> Result<(), DbError> {
    let (Some(plan_id), Some(step_id)) = (task.plan_id, task.step_id) else {
        return Ok(());
    };
    let idx = journal::load(conn, plan_id)?.and_then(|plan| {
        plan.stored
            .plan
            .steps
            .iter()
            .position(|s| s.step_id == step_id)
    });
    let Some(idx) = idx else {
        return Err(DbError::not_found("plan step", step_id));
    };
    let mut finished = PlanEvent::new(Event::StepFinished { step: idx, status }, at);
    finished.result = result.clone();
    finished.error = error;
    let state = match journal::append(conn, plan_id, &[finished], replica) {
        // The plan ended meanwhile: the task's outcome changes nothing.
        Err(DbError::Conflict(_)) => return Ok(()),
        other => other?,
    };
    let failed = status == Status::Error;
    let open = state.state.steps.iter().any(|s| !s.status.is_terminal());
    if !open || failed {
        let mut end = PlanEvent::finished(
            if failed { Status::Error } else { Status::Done },
            failed.then_some("spawner_task_failed"),
            at,
        );
        end.result = result;
        journal::append(conn, plan_id, &[end], replica)?;
    }
    Ok(())
}

impl Db {
    /// Queues a daughter task; answers its id. A task for a plan step is
    /// queued once: asking again for the same step (a resumed plan) answers
    /// the task already queued.
    pub fn enqueue_daughter_task(&self, task: NewDaughterTask, at: DateTime<Utc>) -> Write<i64> {
        self.write(move |conn| {
            if let Some(step_id) = task.step_id {
                let existing: Option<i64> = conn
                    .prepare_cached("SELECT id FROM daughter_tasks WHERE step_id = ?1")?
                    .query_row([step_id.to_string()], |r| r.get(0))
                    .optional()?;
                if let Some(id) = existing {
                    return Ok(id);
                }
            }
            conn.prepare_cached(
                "INSERT INTO daughter_tasks (intent_id, source, priority, status, task_type, description,
                     created_at, updated_at, max_retries, metadata_json, plan_json, plan_id, step_id)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                task.intent_id.map(|i| i.to_string()),
                task.source,
                task.priority,
                task.task_type,
                task.description,
                ts(at),
                task.max_retries,
                serde_json::to_string(&task.metadata)?,
                task.plan_json.as_ref().map(serde_json::to_string).transpose()?,
                task.plan_id.map(|i| i.to_string()),
                task.step_id.map(|i| i.to_string()),
            ])?;
            conn.last_insert_rowid()
        })
    }

    /// Hands the highest-priority, oldest queued task to `worker`, or `None`
    /// when the queue is empty. Never hands one task to two workers.
    pub fn claim_next_daughter_task(
        &self,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Write<Option<DaughterTask>> {
        let worker = worker.to_owned();
        self.write(move |conn| {
            // One writer claims at a time on SQLite, and on PostgreSQL too
            // while every writer takes the write lock (engine::sql::Conn::
            // begin). The claim passes over rows another transaction holds
            // (SKIP LOCKED) all the same, so it stays right without that
            // lock: a claim waiting for a row would take it once claimed.
            let claim = if conn.is_postgres() {
                "UPDATE daughter_tasks SET status = 'running', claimed_by = ?1, heartbeat_at = ?2, updated_at = ?2
                 WHERE id = (SELECT id FROM daughter_tasks WHERE status = 'queued'
                             ORDER BY priority DESC, id LIMIT 1 FOR UPDATE SKIP LOCKED)
                 RETURNING id"
            } else {
                "UPDATE daughter_tasks SET status = 'running', claimed_by = ?1, heartbeat_at = ?2, updated_at = ?2
                 WHERE id = (SELECT id FROM daughter_tasks WHERE status = 'queued'
                             ORDER BY priority DESC, id LIMIT 1)
                 RETURNING id"
            };
            let id: Option<i64> = conn
                .prepare_cached(claim)?
                .query_row(params![worker, ts(at)], |r| r.get(0))
                .optional()?;
            id.map(|id| task_in(conn, id)).transpose()
        })
    }

    /// Records that `worker` still works on task `id`; false when it no
    /// longer holds it (expired and re-queued, say).
    pub fn heartbeat(&self, id: i64, worker: &str, at: DateTime<Utc>) -> Write<bool> {
        let worker = worker.to_owned();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE daughter_tasks SET heartbeat_at = ?3, updated_at = ?3
                     WHERE id = ?1 AND claimed_by = ?2 AND status = 'running'",
                )?
                .execute(params![id, worker, ts(at)])?;
            Ok(n == 1)
        })
    }

    /// Marks a held task completed and moves its plan step to DONE with
    /// `result`; the plan finishes when no step is left open.
    pub fn complete_daughter_task(
        &self,
        id: i64,
        worker: &str,
        result: Value,
        at: DateTime<Utc>,
    ) -> Write<()> {
        let worker = worker.to_owned();
        let replica = self.replica.clone();
        self.write(move |conn| {
            let task = held_task(conn, id, &worker)?;
            conn.prepare_cached(
                "UPDATE daughter_tasks SET status = 'completed', finished_at = ?2, updated_at = ?2, result_json = ?3
                 WHERE id = ?1",
            )?
            .execute(params![id, ts(at), serde_json::to_string(&result)?])?;
            settle_plan(conn, &task, Status::Done, Some(result.clone()), None, at, &replica)
        })
    }

    /// Records a failure of a held task: it goes back to the queue while
    /// retries remain, else it is failed and its plan step and plan ERROR.
    /// Answers the task's new status.
    pub fn fail_daughter_task(
        &self,
        id: i64,
        worker: &str,
        error: &str,
        at: DateTime<Utc>,
    ) -> Write<DaughterStatus> {
        let (worker, error) = (worker.to_owned(), error.to_owned());
        let replica = self.replica.clone();
        self.write(move |conn| {
            let task = held_task(conn, id, &worker)?;
            if task.current_retry < task.max_retries {
                conn.prepare_cached(
                    "UPDATE daughter_tasks SET status = 'queued', current_retry = current_retry + 1,
                         claimed_by = NULL, heartbeat_at = NULL, error = ?2, updated_at = ?3
                     WHERE id = ?1",
                )?
                .execute(params![id, error, ts(at)])?;
                return Ok(DaughterStatus::Queued);
            }
            conn.prepare_cached(
                "UPDATE daughter_tasks SET status = 'failed', error = ?2, finished_at = ?3, updated_at = ?3
                 WHERE id = ?1",
            )?
            .execute(params![id, error, ts(at)])?;
            settle_plan(conn, &task, Status::Error, None, Some(error.clone()), at, &replica)?;
            Ok(DaughterStatus::Failed)
        })
    }

    /// Puts back in the queue every running task whose last heartbeat is
    /// older than `before`; answers how many.
    pub fn expire_stale_claims(&self, before: DateTime<Utc>) -> Write<u64> {
        self.write(move |conn| crate::retention::expire_claims_in(conn, before))
    }

    /// The daughter task `id`.
    pub fn daughter_task(&self, id: i64) -> Result<Option<DaughterTask>, DbError> {
        self.read(|conn| match task_in(conn, id) {
            Ok(task) => Ok(Some(task)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        })
    }

    /// Records a process started for a daughter task; answers the spawn id.
    pub fn record_spawn(
        &self,
        daughter_task_id: i64,
        pid: Option<i64>,
        at: DateTime<Utc>,
    ) -> Write<i64> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO madre_spawns (daughter_task_id, pid, status, created_at) VALUES (?1, ?2, 'running', ?3)",
            )?
            .execute(params![daughter_task_id, pid, ts(at)])?;
            conn.last_insert_rowid()
        })
    }

    /// Records that a spawned process ended (`completed` or `failed`).
    pub fn finish_spawn(
        &self,
        spawn_id: i64,
        status: DaughterStatus,
        at: DateTime<Utc>,
    ) -> Write<()> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached("UPDATE madre_spawns SET status = ?2, finished_at = ?3 WHERE id = ?1 AND finished_at IS NULL")?
                .execute(params![spawn_id, status.as_str(), ts(at)])?;
            if n == 1 { Ok(()) } else { Err(DbError::not_found("running spawn", spawn_id)) }
        })
    }

    /// How many spawn records exist (finished or not).
    pub fn count_spawns(&self) -> Result<u64, DbError> {
        self.read(|conn| {
            Ok(
                conn.query_row("SELECT count(*) FROM madre_spawns", (), |r| {
                    r.get::<_, i64>(0)
                })? as u64,
            )
        })
    }
}
