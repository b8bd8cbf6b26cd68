//! The append-only audit trail of what Madre did and on whose behalf.

use crate::engine::sql::{Conn, OptionalExtension};
use chrono::{DateTime, Utc};
use madre_models::{AuditAction, EndReason, EventType};
use rusqlite::params;
use uuid::Uuid;

use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};

/// An action to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAction {
    /// The module acted on (or `madre`).
    pub module: String,
    /// What was done.
    pub action: String,
    /// Why, or the outcome.
    pub reason: String,
    /// Who asked.
    pub principal: String,
    /// The plan it belongs to.
    pub plan_id: Option<Uuid>,
    /// When.
    pub created_at: DateTime<Utc>,
}

pub(crate) fn insert_action(conn: &Conn<'_>, action: &NewAction) -> Result<i64, DbError> {
    conn.prepare_cached(
        "INSERT INTO madre_actions (module, action, reason, principal, plan_id, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        action.module,
        action.action,
        action.reason,
        action.principal,
        action.plan_id.map(|p| p.to_string()),
        ts(action.created_at),
    ])?;
    conn.last_insert_rowid()
}

impl Db {
    /// Appends an audit row; answers its id.
    pub fn record_action(&self, action: NewAction) -> Write<i64> {
        self.write(move |conn| insert_action(conn, &action))
    }

    /// The audit trail of a plan, oldest first: its creation, read from
    /// its journal (see [`creation_entry`]), then the rows recorded about
    /// it. A plan made before schema 12 has its creation as a stored row.
    pub fn actions_for_plan(&self, plan_id: Uuid) -> Result<Vec<AuditAction>, DbError> {
        self.read(|conn| {
            let mut trail: Vec<AuditAction> = creation_entry(conn, plan_id)?.into_iter().collect();
            let mut stmt = conn.prepare_cached(
                "SELECT id, module, action, reason, principal, created_at
                 FROM madre_actions WHERE plan_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([plan_id.to_string()], |r| {
                Ok(AuditAction {
                    id: r.get(0)?,
                    module: r.get(1)?,
                    action: r.get(2)?,
                    reason: r.get(3)?,
                    principal: r.get(4)?,
                    plan_id: Some(plan_id),
                    created_at: r.get::<_, Ts>(5)?.0,
                })
            })?;
            for row in rows {
                trail.push(row?);
            }
            Ok(trail)
        })
    }
}

/// The audit entry of a plan's creation, for a plan whose journal records
/// it (made since schema 12): who made it and when (its `plan_created`
/// event), its module and action (its row), and the outcome the planner
/// gave it, which the event after `plan_created`, written in the same
/// commit, tells: `plan_waiting` for a plan that waits for a confirmation,
/// a `plan_finished` for `denied` for one the policy refused, else the
/// steps it was planned with. Its id is 0: it is no row of `madre_actions`.
pub(crate) fn creation_entry(
    conn: &Conn<'_>,
    plan_id: Uuid,
) -> Result<Option<AuditAction>, DbError> {
    let row = conn
        .prepare_cached(
            "SELECT p.module, p.action, p.risk, c.principal, c.created_at, c.payload_json,
                    n.type, n.payload_json
             FROM plans p
             JOIN plan_events c ON c.plan = p.id AND c.type = ?2
             LEFT JOIN plan_events n ON n.seq = (
                 SELECT min(seq) FROM plan_events WHERE plan = p.id AND seq > c.seq)
             WHERE p.uuid = ?1 AND c.seq >= (SELECT seq FROM creation_audited_from)",
        )?
        .query_row(
            params![
                plan_id.to_string(),
                crate::event_codes::type_code(EventType::PlanCreated)
            ],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Ts>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                ))
            },
        )
        .optional()?;
    let Some((module, action, risk, principal, at, body, next, next_payload)) = row else {
        return Ok(None);
    };
    let denied = EndReason::Denied.as_str();
    let reason = match next.and_then(crate::event_codes::type_of_code) {
        Some(EventType::PlanWaiting) => format!(
            "waiting for confirmation ({} risk)",
            risk.as_deref().unwrap_or("unknown")
        ),
        Some(EventType::PlanFinished)
            if next_payload
                .as_deref()
                .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
                .is_some_and(|p| p["reason"] == denied) =>
        {
            denied.to_owned()
        }
        _ => {
            let body = crate::shapes::expand(conn, serde_json::from_str(&body)?)?;
            let steps = body["steps"].as_array().map_or(0, Vec::len);
            format!("planned {steps} step(s)")
        }
    };
    Ok(Some(AuditAction {
        id: 0,
        module,
        action,
        reason,
        principal: principal.unwrap_or_default(),
        plan_id: Some(plan_id),
        created_at: at.0,
    }))
}
