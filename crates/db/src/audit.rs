//! The append-only audit trail of what Madre did and on whose behalf.

use chrono::{DateTime, Utc};
use madre_models::AuditAction;
use rusqlite::{Connection, params};
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

pub(crate) fn insert_action(conn: &Connection, action: &NewAction) -> Result<i64, DbError> {
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
    Ok(conn.last_insert_rowid())
}

impl Db {
    /// Appends an audit row; answers its id.
    pub fn record_action(&self, action: NewAction) -> Write<i64> {
        self.write(move |conn| insert_action(conn, &action))
    }

    /// The audit rows of a plan, oldest first.
    pub fn actions_for_plan(&self, plan_id: Uuid) -> Result<Vec<AuditAction>, DbError> {
        self.read(|conn| {
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
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}
