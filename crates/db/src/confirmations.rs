//! Pending confirmations: only the token's SHA-256 is stored. Consuming is a
//! single conditional UPDATE, so two concurrent confirmations of one plan can
//! never both succeed, even from two processes.

use crate::engine::sql::{Conn, OptionalExtension};
use chrono::{DateTime, Utc};
use madre_models::{EndReason, RiskLevel};
use rusqlite::params;
use serde_json::json;
use uuid::Uuid;

use crate::audit::{NewAction, insert_action};
use crate::journal::Replica;
use crate::journal::{self, PlanEvent};
use crate::records::NewConfirmation;
use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};
use madre_lifecycle::Event;
use madre_models::Status;

/// A stored confirmation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmationRow {
    /// The plan it gates.
    pub plan_id: Uuid,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// The plan's risk.
    pub risk: RiskLevel,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// When it was consumed.
    pub used_at: Option<DateTime<Utc>>,
    /// Wrong tries so far.
    pub failed_attempts: u32,
    /// Who asked for the plan.
    pub principal: String,
    /// Who confirmed it.
    pub confirmed_by: Option<String>,
    /// `confirmed`, `confirmation_expired`, `confirmation_void`, a cancel reason, or `None` while pending.
    pub outcome: Option<String>,
}

/// What an attempt to consume a confirmation did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeOutcome {
    /// Consumed now; the gate step is DONE and the plan RUNNING (event
    /// `plan_confirmed`).
    Consumed,
    /// Nothing pending matched (already used, void, expired, wrong hash, or
    /// another confirmation won the race).
    NotPending,
}

/// What one approval of a waiting plan did (SPEC §15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalOutcome {
    /// Recorded (event `approval_recorded`); more are needed.
    Recorded {
        /// Distinct approvals so far, this one included.
        approvals: u32,
    },
    /// The last approval needed: the confirmation is spent, the gate DONE
    /// and the plan RUNNING (event `plan_confirmed`).
    Confirmed {
        /// Distinct approvals, this one included.
        approvals: u32,
    },
    /// This principal approved already; nothing was written.
    AlreadyApproved {
        /// Distinct approvals so far.
        approvals: u32,
    },
    /// Nothing pending matched (used, void, expired, rejected, wrong hash).
    NotPending,
}

/// True when the plan's confirmation is pending, with this token hash and
/// unexpired at `at`.
fn pending_with(
    conn: &Conn<'_>,
    plan_id: Uuid,
    token_sha256: &str,
    at: DateTime<Utc>,
) -> Result<bool, DbError> {
    Ok(conn
        .prepare_cached(
            "SELECT 1 FROM confirmations
             WHERE plan_id = ?1 AND token_sha256 = ?2 AND used_at IS NULL
               AND outcome IS NULL AND expires_at > ?3",
        )?
        .query_row(params![plan_id.to_string(), token_sha256, ts(at)], |_| {
            Ok(())
        })
        .optional()?
        .is_some())
}

/// Spends the plan's pending confirmation for `by` when `token_sha256`
/// matches and it is unused, not void and unexpired at `at`: the waiting
/// gate is DONE and the plan RUNNING (event `plan_confirmed`, carrying
/// `comment`). False when nothing pending matched.
fn spend(
    conn: &Conn<'_>,
    plan_id: Uuid,
    token_sha256: &str,
    by: &str,
    comment: Option<String>,
    at: DateTime<Utc>,
    replica: &Replica,
) -> Result<bool, DbError> {
    let changed = conn
        .prepare_cached(
            "UPDATE confirmations SET used_at = ?3, confirmed_by = ?4, outcome = 'confirmed'
             WHERE plan_id = ?1 AND token_sha256 = ?2 AND used_at IS NULL
               AND outcome IS NULL AND expires_at > ?3",
        )?
        .execute(params![plan_id.to_string(), token_sha256, ts(at), by])?;
    if changed != 1 {
        return Ok(false);
    }
    let confirmed = PlanEvent::new(Event::PlanConfirmed, at)
        .result(json!({ "confirmed_by": by }))
        .by(by)
        .comment(comment);
    journal::append(conn, plan_id, &[confirmed], replica)?;
    Ok(true)
}

/// The principals whose approvals of the plan are recorded, each once,
/// oldest first.
fn approvers(conn: &Conn<'_>, plan_id: Uuid) -> Result<Vec<String>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT e.principal FROM plan_events e
         WHERE e.plan = (SELECT id FROM plans WHERE uuid = ?1)
           AND e.type = ?2 AND e.principal IS NOT NULL
         GROUP BY e.principal ORDER BY min(e.seq)",
    )?;
    let recorded = crate::event_codes::type_code(madre_models::EventType::ApprovalRecorded);
    let names = stmt
        .query_map(rusqlite::params![plan_id.to_string(), recorded], |r| {
            r.get::<_, String>(0)
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(names)
}

pub(crate) fn insert_confirmation(
    conn: &Conn<'_>,
    plan_id: Uuid,
    c: &NewConfirmation,
) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO confirmations (plan_id, token_sha256, risk, expires_at, principal)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .run(params![
        plan_id.to_string(),
        c.token_sha256,
        c.risk.as_str(),
        ts(c.expires_at),
        c.principal
    ])?;
    Ok(())
}

/// The journal event of an expired confirmation.
pub(crate) fn expired(at: DateTime<Utc>) -> PlanEvent {
    PlanEvent::new(Event::PlanExpired, at).error(EndReason::ConfirmationExpired.as_str())
}

impl Db {
    /// The confirmation of a plan.
    pub fn confirmation(&self, plan_id: Uuid) -> Result<Option<ConfirmationRow>, DbError> {
        self.read(|conn| {
            let row = conn
                .prepare_cached(
                    "SELECT token_sha256, risk, expires_at, used_at, failed_attempts, principal,
                            confirmed_by, outcome
                     FROM confirmations WHERE plan_id = ?1",
                )?
                .query_row([plan_id.to_string()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Ts>(2)?,
                        r.get::<_, Option<Ts>>(3)?,
                        r.get::<_, u32>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, Option<String>>(6)?,
                        r.get::<_, Option<String>>(7)?,
                    ))
                })
                .optional()?;
            row.map(
                |(hash, risk, expires, used, failed, principal, by, outcome)| {
                    Ok(ConfirmationRow {
                        plan_id,
                        token_sha256: hash,
                        risk: risk
                            .parse()
                            .map_err(|_| DbError::InvalidData(format!("unknown risk {risk:?}")))?,
                        expires_at: expires.0,
                        used_at: used.map(|t| t.0),
                        failed_attempts: failed,
                        principal,
                        confirmed_by: by,
                        outcome,
                    })
                },
            )
            .transpose()
        })
    }

    /// The plan whose still-pending confirmation has this token hash.
    pub fn plan_for_pending_token(&self, token_sha256: &str) -> Result<Option<Uuid>, DbError> {
        self.read(|conn| {
            let id: Option<String> = conn
                .prepare_cached(
                    "SELECT plan_id FROM confirmations
                     WHERE token_sha256 = ?1 AND outcome IS NULL AND used_at IS NULL",
                )?
                .query_row([token_sha256], |r| r.get(0))
                .optional()?;
            id.map(|id| Uuid::parse_str(&id).map_err(|e| DbError::InvalidData(e.to_string())))
                .transpose()
        })
    }

    /// The plan whose confirmation, pending or not, was issued with this
    /// token hash (a token reissued for a replay no longer names its plan).
    pub fn plan_for_token(&self, token_sha256: &str) -> Result<Option<Uuid>, DbError> {
        self.read(|conn| {
            let id: Option<String> = conn
                .prepare_cached("SELECT plan_id FROM confirmations WHERE token_sha256 = ?1")?
                .query_row([token_sha256], |r| r.get(0))
                .optional()?;
            id.map(|id| Uuid::parse_str(&id).map_err(|e| DbError::InvalidData(e.to_string())))
                .transpose()
        })
    }

    /// The control and task plans on `module` doing `action` whose
    /// confirmation is still pending and unexpired at `at`: the plans a
    /// token re-posted for that action could be meant for.
    pub fn pending_confirmations_for(
        &self,
        module: &str,
        action: &str,
        at: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, DbError> {
        self.read(|conn| {
            let mut statement = conn.prepare_cached(
                "SELECT c.plan_id FROM confirmations c JOIN plans t ON t.uuid = c.plan_id
                 WHERE c.outcome IS NULL AND c.used_at IS NULL AND c.expires_at > ?3
                   AND t.module = ?1 AND t.action = ?2 AND t.kind != 'chat'",
            )?;
            let ids = statement
                .query_map(params![module, action, ts(at)], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            ids.iter()
                .map(|id| Uuid::parse_str(id).map_err(|e| DbError::InvalidData(e.to_string())))
                .collect()
        })
    }

    /// Consumes the pending confirmation of `plan_id` if `token_sha256`
    /// matches, it is unused, not void and not expired at `at`: marks it
    /// used by `by`, the waiting gate step DONE and the plan RUNNING, and
    /// appends `action`, all in one transaction.
    pub fn consume_confirmation(
        &self,
        plan_id: Uuid,
        token_sha256: String,
        by: String,
        action: Option<NewAction>,
        at: DateTime<Utc>,
    ) -> Write<ConsumeOutcome> {
        let replica = self.replica.clone();
        self.write(move |conn| {
            if !spend(conn, plan_id, &token_sha256, &by, None, at, &replica)? {
                return Ok(ConsumeOutcome::NotPending);
            }
            if let Some(action) = &action {
                insert_action(conn, action)?;
            }
            Ok(ConsumeOutcome::Consumed)
        })
    }

    /// The principals who approved the plan so far (its `approval_recorded`
    /// events), oldest first.
    pub fn approvals(&self, plan_id: Uuid) -> Result<Vec<String>, DbError> {
        self.read(|conn| approvers(conn, plan_id))
    }

    /// Records `by`'s approval of the plan, in one transaction, when its
    /// confirmation is pending under `token_sha256` at `at`: a principal
    /// counts once; the approval that brings the distinct approvers to
    /// `required` spends the confirmation and starts the plan (as
    /// [`Db::consume_confirmation`]), an earlier one is an
    /// `approval_recorded` event. `reason` goes with the event; `action`
    /// is appended to the audit trail with it.
    #[allow(clippy::too_many_arguments)]
    pub fn approve(
        &self,
        plan_id: Uuid,
        token_sha256: String,
        by: String,
        reason: Option<String>,
        required: u32,
        action: Option<NewAction>,
        at: DateTime<Utc>,
    ) -> Write<ApprovalOutcome> {
        let replica = self.replica.clone();
        self.write(move |conn| {
            if !pending_with(conn, plan_id, &token_sha256, at)? {
                return Ok(ApprovalOutcome::NotPending);
            }
            let approvers = approvers(conn, plan_id)?;
            let so_far = approvers.len() as u32;
            if approvers.contains(&by) {
                return Ok(ApprovalOutcome::AlreadyApproved { approvals: so_far });
            }
            let approvals = so_far + 1;
            let outcome = if approvals >= required {
                if !spend(
                    conn,
                    plan_id,
                    &token_sha256,
                    &by,
                    reason.clone(),
                    at,
                    &replica,
                )? {
                    return Ok(ApprovalOutcome::NotPending);
                }
                ApprovalOutcome::Confirmed { approvals }
            } else {
                let recorded = PlanEvent::new(Event::ApprovalRecorded, at)
                    .by(by.clone())
                    .comment(reason.clone());
                journal::append(conn, plan_id, &[recorded], &replica)?;
                ApprovalOutcome::Recorded { approvals }
            };
            if let Some(action) = &action {
                insert_action(conn, action)?;
            }
            Ok(outcome)
        })
    }

    /// Refuses the plan for `by` when its confirmation is pending under
    /// `token_sha256` at `at`: the plan is CANCELLED with reason `rejected`
    /// (event `plan_rejected`) and `action`, which says why, appended, in
    /// one transaction.
    pub fn reject(
        &self,
        plan_id: Uuid,
        token_sha256: String,
        by: String,
        action: Option<NewAction>,
        at: DateTime<Utc>,
    ) -> Write<ConsumeOutcome> {
        let replica = self.replica.clone();
        self.write(move |conn| {
            if !pending_with(conn, plan_id, &token_sha256, at)? {
                return Ok(ConsumeOutcome::NotPending);
            }
            let rejected = PlanEvent::new(Event::PlanRejected, at)
                .error(EndReason::Rejected.as_str())
                .by(by.clone());
            journal::append(conn, plan_id, &[rejected], &replica)?;
            if let Some(action) = &action {
                insert_action(conn, action)?;
            }
            Ok(ConsumeOutcome::Consumed)
        })
    }

    /// Counts a wrong token for a pending confirmation and answers the new
    /// count; at `void_after` wrong tries the confirmation is void and the
    /// plan CANCELLED (`confirmation_void`) in the same transaction.
    pub fn record_failed_confirmation(
        &self,
        plan_id: Uuid,
        void_after: u32,
        at: DateTime<Utc>,
    ) -> Write<u32> {
        let replica = self.replica.clone();
        self.write(move |conn| {
            let attempts: Option<u32> = conn
                .prepare_cached(
                    "UPDATE confirmations SET failed_attempts = failed_attempts + 1
                     WHERE plan_id = ?1 AND used_at IS NULL AND outcome IS NULL
                     RETURNING failed_attempts",
                )?
                .query_row([plan_id.to_string()], |r| r.get(0))
                .optional()?;
            let Some(attempts) = attempts else {
                return Err(DbError::Conflict(format!(
                    "plan {plan_id} has no pending confirmation"
                )));
            };
            if attempts >= void_after {
                let void = PlanEvent::finished(
                    Status::Cancelled,
                    Some(EndReason::ConfirmationVoid.as_str()),
                    at,
                );
                journal::append(conn, plan_id, &[void], &replica)?;
            }
            Ok(attempts)
        })
    }

    /// Ends a pending confirmation that expired: the plan is CANCELLED with
    /// reason `confirmation_expired` (kept apart from a human cancel).
    pub fn expire_confirmation(&self, plan_id: Uuid, at: DateTime<Utc>) -> Write<()> {
        let replica = self.replica.clone();
        self.write(move |conn| {
            journal::append(conn, plan_id, &[expired(at)], &replica)?;
            Ok(())
        })
    }

    /// Gives a still-pending confirmation a new token hash (the old token
    /// stops working) and a new expiry; false when nothing was pending.
    /// Used when a lost WAITING answer is replayed for its `Idempotency-Key`:
    /// stored answers never keep a token, so the replay carries a fresh one.
    pub fn reissue_confirmation(
        &self,
        plan_id: Uuid,
        token_sha256: String,
        expires_at: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Write<bool> {
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE confirmations SET token_sha256 = ?2, expires_at = ?3
                     WHERE plan_id = ?1 AND used_at IS NULL AND outcome IS NULL AND expires_at > ?4",
                )?
                .execute(params![plan_id.to_string(), token_sha256, ts(expires_at), ts(at)])?;
            Ok(n == 1)
        })
    }
}
