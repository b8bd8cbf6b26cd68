//! The periodic cleanup of SPEC §10. Nothing here touches `intents_log` or
//! `madre_actions`, which are append-only by trigger anyway.

use chrono::{DateTime, Duration, Utc};
use rusqlite::{Connection, params};
use uuid::Uuid;

use crate::confirmations::CONFIRMATION_EXPIRED;
use crate::plans::cancel_in;
use crate::sessions::trim_session;
use crate::time::ts;
use crate::{Db, DbError, Write};

/// How long things are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Sessions idle longer than this are closed.
    pub session_idle: Duration,
    /// Messages kept per session.
    pub history_max: u32,
    /// Finished spawn records older than this are deleted.
    pub spawn_retention: Duration,
    /// Claims without a heartbeat for this long go back to the queue.
    pub stale_claim_after: Duration,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Sessions closed for idleness.
    pub sessions_closed: u64,
    /// History messages dropped over the cap.
    pub messages_trimmed: u64,
    /// Finished spawn records deleted.
    pub spawns_deleted: u64,
    /// Plans cancelled because their confirmation expired.
    pub confirmations_expired: Vec<Uuid>,
    /// Stale claims put back in the queue.
    pub claims_expired: u64,
}

pub(crate) fn expire_claims_in(conn: &Connection, before: DateTime<Utc>) -> Result<u64, DbError> {
    let n = conn
        .prepare_cached(
            "UPDATE daughter_tasks SET status = 'queued', claimed_by = NULL, heartbeat_at = NULL
             WHERE status = 'running' AND heartbeat_at < ?1",
        )?
        .execute([ts(before)])?;
    Ok(n as u64)
}

fn cleanup_in(
    conn: &Connection,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
) -> Result<CleanupReport, DbError> {
    let mut report = CleanupReport {
        sessions_closed: conn
            .prepare_cached(
                "UPDATE sessions SET closed_at = ?1 WHERE closed_at IS NULL AND last_activity_at < ?2",
            )?
            .execute(params![ts(now), ts(now - policy.session_idle)])? as u64,
        ..CleanupReport::default()
    };

    let crowded: Vec<String> = conn
        .prepare_cached(
            "SELECT session_id FROM madre_context GROUP BY session_id HAVING count(*) > ?1",
        )?
        .query_map([policy.history_max], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for session in crowded {
        report.messages_trimmed += trim_session(conn, &session, policy.history_max)?;
    }

    report.spawns_deleted = conn
        .prepare_cached(
            "DELETE FROM madre_spawns WHERE status IN ('completed','failed') AND finished_at < ?1",
        )?
        .execute([ts(now - policy.spawn_retention)])? as u64;

    let expired: Vec<String> = conn
        .prepare_cached(
            "SELECT plan_id FROM confirmations WHERE outcome IS NULL AND used_at IS NULL AND expires_at <= ?1",
        )?
        .query_map([ts(now)], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for plan in expired {
        let plan_id = Uuid::parse_str(&plan).map_err(|e| DbError::InvalidData(e.to_string()))?;
        match cancel_in(conn, plan_id, CONFIRMATION_EXPIRED, now) {
            Ok(_) => report.confirmations_expired.push(plan_id),
            // The plan ended some other way; just close the confirmation.
            Err(DbError::Conflict(_)) => {
                conn.prepare_cached("UPDATE confirmations SET outcome = ?2 WHERE plan_id = ?1")?
                    .execute(params![plan, CONFIRMATION_EXPIRED])?;
            }
            Err(e) => return Err(e),
        }
    }

    report.claims_expired = expire_claims_in(conn, now - policy.stale_claim_after)?;
    Ok(report)
}

impl Db {
    /// One cleanup pass, in one transaction.
    pub fn cleanup(&self, policy: RetentionPolicy, now: DateTime<Utc>) -> Write<CleanupReport> {
        self.write(move |conn| cleanup_in(conn, &policy, now))
    }
}
