//! A schema-4 file as Madre wrote it before storage v2: plans in `tasks`,
//! their steps in `plan_steps`, context rows, the journal keyed by step id,
//! a live confirmation, a session with history, an idempotency key and a
//! queued daughter task. Shared by the upgrade tests of madre-db and of the
//! madre binary (included by path).
#![allow(dead_code)]

use madre_db::migrate_to;
use madre_models::StepType;
use rusqlite::{Connection, params};
use serde_json::{Value, json};
use std::path::Path;
use uuid::Uuid;

pub(crate) const T0: &str = "2026-11-22T12:00:00.000000Z";
pub(crate) const T1: &str = "2026-11-22T12:00:01.000000Z";

/// One step as schema 4 stored it.
pub(crate) struct OldStep {
    pub(crate) step_type: StepType,
    pub(crate) status: &'static str,
    pub(crate) attempts: u32,
    pub(crate) result: Option<Value>,
    pub(crate) error: Option<&'static str>,
}

pub(crate) fn step(
    step_type: StepType,
    status: &'static str,
    attempts: u32,
    result: Option<Value>,
    error: Option<&'static str>,
) -> OldStep {
    OldStep {
        step_type,
        status,
        attempts,
        result,
        error,
    }
}

/// A plan as schema 4 stored it; `events` are its journal as
/// (type, step index, status after).
pub(crate) struct OldPlan {
    pub(crate) id: Uuid,
    pub(crate) status: &'static str,
    pub(crate) error: Option<&'static str>,
    pub(crate) steps: Vec<OldStep>,
    pub(crate) step_ids: Vec<Uuid>,
    pub(crate) events: Vec<(&'static str, Option<usize>, &'static str)>,
}

pub(crate) fn old_plan(
    status: &'static str,
    error: Option<&'static str>,
    steps: Vec<OldStep>,
    events: Vec<(&'static str, Option<usize>, &'static str)>,
) -> OldPlan {
    let step_ids = steps.iter().map(|_| Uuid::now_v7()).collect();
    OldPlan {
        id: Uuid::now_v7(),
        status,
        error,
        steps,
        step_ids,
        events,
    }
}

/// A DONE plan of one Hermes step that answered "hello", with its events.
pub(crate) fn old_done_plan() -> OldPlan {
    old_plan(
        "DONE",
        None,
        vec![step(
            StepType::CallHermes,
            "DONE",
            1,
            Some(json!({"reply": "hello"})),
            None,
        )],
        vec![
            ("plan_created", None, "PENDING"),
            ("step_started", Some(0), "RUNNING"),
            ("step_finished", Some(0), "DONE"),
            ("plan_finished", None, "DONE"),
        ],
    )
}

/// A plan waiting at its confirmation gate, with a Hermes step after it.
pub(crate) fn old_waiting_plan() -> OldPlan {
    old_plan(
        "WAITING",
        None,
        vec![
            step(StepType::AwaitConfirmation, "WAITING", 0, None, None),
            step(StepType::CallHermes, "PENDING", 0, None, None),
        ],
        vec![
            ("plan_created", None, "PENDING"),
            ("plan_waiting", Some(0), "WAITING"),
        ],
    )
}

/// A plan whose one Hermes step failed twice with HTTP 500.
pub(crate) fn old_error_plan() -> OldPlan {
    old_plan(
        "ERROR",
        Some("http_500"),
        vec![step(
            StepType::CallHermes,
            "ERROR",
            2,
            None,
            Some("hermes answered HTTP 500"),
        )],
        vec![
            ("plan_created", None, "PENDING"),
            ("step_started", Some(0), "RUNNING"),
            ("step_finished", Some(0), "ERROR"),
            ("plan_finished", None, "ERROR"),
        ],
    )
}

pub(crate) fn write_v4(conn: &Connection, plan: &OldPlan) {
    conn.execute(
        "INSERT INTO tasks (uuid, name, module, action, status, created_at, updated_at, error,
                            kind, intent_id, session_id, mode, principal, warnings_json, risk)
         VALUES (?1, 'chat', 'hermes', 'chat', ?2, ?3, ?4, ?5, 'chat', ?6, 's-old', 'MADRE',
                 'alice', '[\"hermes_slow\"]', 'LOW')",
        params![
            plan.id.to_string(),
            plan.status,
            T0,
            T1,
            plan.error,
            Uuid::now_v7().to_string()
        ],
    )
    .unwrap();
    let task_id = conn.last_insert_rowid();
    for (idx, (s, id)) in plan.steps.iter().zip(&plan.step_ids).enumerate() {
        conn.execute(
            "INSERT INTO plan_steps (task_id, idx, step_id, type, payload_json, blocking, optional,
                                     status, attempts, result_json, error, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, '{\"prompt\":\"hi\"}', 1, 0, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                task_id,
                idx as i64,
                id.to_string(),
                s.step_type.as_str(),
                s.status,
                s.attempts,
                s.result.as_ref().map(Value::to_string),
                s.error,
                T0,
                if s.status == "PENDING" { T0 } else { T1 },
            ],
        )
        .unwrap();
    }
    conn.execute(
        "INSERT INTO context (task_id, key, value, scope, created_at)
         VALUES (?1, 'mode', 'MADRE', 'plan', ?2)",
        params![task_id, T0],
    )
    .unwrap();
    for (event_type, idx, status) in &plan.events {
        let mut payload = json!({ "status": status });
        if let Some(i) = idx {
            payload["step_type"] = json!(plan.steps[*i].step_type);
        }
        conn.execute(
            "INSERT INTO plan_events (task_id, plan_id, session_id, type, step_id, payload_json,
                                      principal, replica, created_at)
             VALUES (?1, ?2, 's-old', ?3, ?4, ?5, 'alice', 'old-replica', ?6)",
            params![
                task_id,
                plan.id.to_string(),
                event_type,
                idx.map(|i| plan.step_ids[i].to_string()),
                payload.to_string(),
                T0
            ],
        )
        .unwrap();
    }
}

pub(crate) fn make_v4(path: &Path, plans: &[&OldPlan], waiting_token_sha256: &str) {
    let mut conn = Connection::open(path).unwrap();
    migrate_to(&mut conn, path, 4).unwrap();
    for plan in plans {
        write_v4(&conn, plan);
    }
    let waiting = plans.iter().find(|p| p.status == "WAITING").unwrap();
    conn.execute(
        "INSERT INTO confirmations (plan_id, token_sha256, risk, expires_at, principal)
         VALUES (?1, ?2, 'HIGH', '2999-01-01T00:00:00.000000Z', 'alice')",
        params![waiting.id.to_string(), waiting_token_sha256],
    )
    .unwrap();
    conn.execute_batch(&format!(
        "INSERT INTO sessions (session_id, mode, created_at, last_activity_at)
         VALUES ('s-old', 'MADRE', '{T0}', '{T1}');
         INSERT INTO madre_context (session_id, role, content, intent_id, created_at)
         VALUES ('s-old', 'user', 'hello', NULL, '{T0}'),
                ('s-old', 'assistant', 'hi there', NULL, '{T1}');
         INSERT INTO idempotency_keys (principal, key, request_hash, status_code, response_json,
                                       plan_id, created_at)
         VALUES ('alice', 'k1', 'h1', 200, '{{\"status\":\"DONE\"}}', NULL, '{T0}');
         INSERT INTO daughter_tasks (source, priority, status, task_type, description,
                                     created_at, updated_at)
         VALUES ('spawner', 1, 'queued', 'build', 'a queued job', '{T0}', '{T0}');"
    ))
    .unwrap();
}
