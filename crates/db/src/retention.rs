//! The periodic cleanup of SPEC §10. Nothing here touches `intents_log` or
//! `madre_actions`, which are append-only by trigger; only the archive
//! (`crate::archive`) moves a finished plan's rows out of them.

use crate::engine::sql::Conn;
use chrono::{DateTime, Duration, Utc};
use madre_models::EndReason;
use rusqlite::params;
use uuid::Uuid;

use crate::confirmations::expired;
use crate::journal;
use crate::journal::Replica;
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
    /// Stored `Idempotency-Key` answers older than this are deleted.
    pub idempotency_ttl: Duration,
    /// Sessions active within this window are checked against the history
    /// cap (at least the interval between two passes).
    pub active_window: Duration,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Sessions closed for idleness.
    pub sessions_closed: u64,
    /// Conversation turns dropped over the history cap.
    pub turns_trimmed: u64,
    /// Finished spawn records deleted.
    pub spawns_deleted: u64,
    /// Plans cancelled because their confirmation expired.
    pub confirmations_expired: Vec<Uuid>,
    /// Stale claims put back in the queue.
    pub claims_expired: u64,
    /// Stored idempotent answers past their lifetime, deleted.
    pub idempotency_keys_deleted: u64,
}

// The statements of a cleanup pass. Each finds its rows through an index,
// never by scanning history (checked by `every_background_query_uses_an_index`).
const EXPIRE_CLAIMS: &str = "UPDATE daughter_tasks SET status = 'queued', claimed_by = NULL, heartbeat_at = NULL WHERE status = 'running' AND heartbeat_at < ?1";
const ACTIVE_SESSIONS: &str =
    "SELECT session_id FROM sessions WHERE closed_at IS NULL AND last_activity_at >= ?1";
const CLOSE_IDLE_SESSIONS: &str =
    "UPDATE sessions SET closed_at = ?1 WHERE closed_at IS NULL AND last_activity_at < ?2";
const DELETE_OLD_SPAWNS: &str =
    "DELETE FROM madre_spawns WHERE status IN ('completed','failed') AND finished_at < ?1";
const LAPSED_CONFIRMATIONS: &str = "SELECT plan_id FROM confirmations WHERE outcome IS NULL AND used_at IS NULL AND expires_at <= ?1";
const DELETE_OLD_IDEMPOTENCY_KEYS: &str = "DELETE FROM idempotency_keys WHERE created_at < ?1";

pub(crate) fn expire_claims_in(conn: &Conn<'_>, before: DateTime<Utc>) -> Result<u64, DbError> {
    let n = conn.prepare_cached(EXPIRE_CLAIMS)?.execute([ts(before)])?;
    Ok(n as u64)
}

fn cleanup_in(
    conn: &Conn<'_>,
    policy: &RetentionPolicy,
    now: DateTime<Utc>,
    replica: &Replica,
) -> Result<CleanupReport, DbError> {
    // Every session's history is trimmed by its own turns (every eighth,
    // in `record_turn`: at most 14 messages over the cap, which no read
    // returns); this pass also trims the sessions with a row (a mode
    // other than the default) active since the last pass (the
    // sessions_open index bounds the search; no scan of the history).
    let active: Vec<String> = conn
        .prepare_cached(ACTIVE_SESSIONS)?
        .query_map([ts(now - policy.active_window)], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut turns_trimmed = 0;
    for session in active {
        turns_trimmed += trim_session(conn, &session, policy.history_max)?;
    }

    let mut report = CleanupReport {
        sessions_closed: conn
            .prepare_cached(CLOSE_IDLE_SESSIONS)?
            .execute(params![ts(now), ts(now - policy.session_idle)])?
            as u64,
        turns_trimmed,
        ..CleanupReport::default()
    };

    report.spawns_deleted = conn
        .prepare_cached(DELETE_OLD_SPAWNS)?
        .execute([ts(now - policy.spawn_retention)])? as u64;

    let lapsed: Vec<String> = conn
        .prepare_cached(LAPSED_CONFIRMATIONS)?
        .query_map([ts(now)], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for plan in lapsed {
        let plan_id = Uuid::parse_str(&plan).map_err(|e| DbError::InvalidData(e.to_string()))?;
        match journal::append(conn, plan_id, &[expired(now)], replica) {
            Ok(_) => report.confirmations_expired.push(plan_id),
            // The plan ended some other way; just close the confirmation.
            Err(DbError::Conflict(_)) => {
                conn.prepare_cached("UPDATE confirmations SET outcome = ?2 WHERE plan_id = ?1")?
                    .execute(params![plan, EndReason::ConfirmationExpired.as_str()])?;
            }
            Err(e) => return Err(e),
        }
    }

    report.claims_expired = expire_claims_in(conn, now - policy.stale_claim_after)?;
    report.idempotency_keys_deleted = conn
        .prepare_cached(DELETE_OLD_IDEMPOTENCY_KEYS)?
        .execute([ts(now - policy.idempotency_ttl)])? as u64;
    Ok(report)
}

impl Db {
    /// One cleanup pass, in one transaction.
    pub fn cleanup(&self, policy: RetentionPolicy, now: DateTime<Utc>) -> Write<CleanupReport> {
        let replica = self.replica.clone();
        self.write(move |conn| cleanup_in(conn, &policy, now, &replica))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` and every cleanup statement find their rows through an
    /// index: none scans a table that grows with history.
    #[test]
    fn every_background_query_uses_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("vx11.db")).unwrap();
        let growing = [
            "plans",
            "plan_events",
            "intents_log",
            "turns",
            "madre_actions",
            "idempotency_keys",
            "daughter_tasks",
            "confirmations",
            "sessions",
            "madre_spawns",
            "archived_plans",
        ];
        let statements = [
            EXPIRE_CLAIMS,
            ACTIVE_SESSIONS,
            CLOSE_IDLE_SESSIONS,
            DELETE_OLD_SPAWNS,
            LAPSED_CONFIRMATIONS,
            DELETE_OLD_IDEMPOTENCY_KEYS,
            crate::sessions::TRIM_SESSION,
            crate::plans::PLAN_COUNTS,
            crate::journal::OPEN_PLANS,
            crate::sessions::SETTLE_TURNS,
            crate::archive::ARCHIVE_CANDIDATES,
        ];
        db.read(|conn| {
            let Conn::Lite(conn) = conn else {
                unreachable!("a SQLite file was opened")
            };
            for sql in statements {
                let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let params = stmt.parameter_count();
                let values: Vec<String> = (0..params).map(|_| "x".to_owned()).collect();
                let plan: Vec<String> = stmt
                    .query_map(rusqlite::params_from_iter(values.iter()), |r| r.get(3))?
                    .collect::<Result<_, _>>()?;
                for line in &plan {
                    for table in growing {
                        assert!(
                            !(line.starts_with("SCAN")
                                && line.split_whitespace().nth(1) == Some(table)),
                            "{sql}\n scans {table}: {plan:?}"
                        );
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    }
}
