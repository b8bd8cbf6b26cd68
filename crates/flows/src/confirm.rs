//! Confirming a waiting plan with its token, and cancelling a plan.

use chrono::Utc;
use madre_db::{ConsumeOutcome, PlanKind, StoredPlan};
use madre_models::{EndReason, RiskLevel, Status};
use madre_policy::{
    ConfirmationRecord, MAX_FAILED_ATTEMPTS, Principal, Role, TokenHash, Verdict,
    check_confirmation,
};
use uuid::Uuid;

use crate::plans::{audit, options};
use crate::{FlowError, Madre, require};

/// The result of confirming a plan.
#[derive(Debug)]
pub struct Confirmed {
    /// The plan after it ran, or while it still runs (RUNNING: it outlived
    /// the wait, or waits for a free slot).
    pub plan: StoredPlan,
}

impl Madre {
    /// Checks `presented` against the plan's pending confirmation and, when
    /// it is right and `principal` may confirm this risk, runs the plan and
    /// waits for it. A confirmed plan is never refused for a full queue: it
    /// runs as soon as a slot frees, and the answer says RUNNING.
    pub async fn confirm(
        &self,
        principal: &Principal,
        plan_id: Uuid,
        presented: &str,
        request_id: &str,
    ) -> Result<Confirmed, FlowError> {
        require(principal, Role::Operator)?;
        let (stored, row) = self
            .db
            .run_blocking(move |db| Ok((db.plan(plan_id)?, db.confirmation(plan_id)?)))
            .await?;
        let stored =
            stored.ok_or_else(|| FlowError::NotFound(format!("plan {plan_id} not found")))?;
        let row = row.ok_or_else(|| {
            FlowError::Conflict(format!("plan {plan_id} does not wait for a confirmation"))
        })?;
        if row.outcome.as_deref() == Some(EndReason::ConfirmationExpired.as_str()) {
            // The cleanup loop expired it before this try: still a 410.
            return Err(FlowError::ConfirmationExpired);
        }
        if stored.plan.status != Status::Waiting || row.outcome.is_some() {
            return Err(FlowError::Conflict(format!(
                "plan {plan_id} is not waiting for a confirmation (it is {})",
                stored.plan.status
            )));
        }
        if stored.meta.module == madre_models::Module::Madre {
            // Control of Madre itself is for admins (SPEC §5), confirming too.
            require(principal, Role::Admin)?;
        }
        if !principal.role.may_confirm(row.risk) {
            return Err(FlowError::Forbidden(format!(
                "confirming a {} risk plan needs the {} role",
                row.risk,
                Role::required_to_confirm(row.risk).as_str()
            )));
        }
        let token_hash = TokenHash::from_hex(&row.token_sha256)
            .map_err(|_| FlowError::Internal("stored token hash is not hex".into()))?;
        let record = ConfirmationRecord {
            token_hash,
            risk: row.risk,
            expires_at: row.expires_at,
            used_at: row.used_at,
            failed_attempts: row.failed_attempts,
        };
        let now = Utc::now();
        match check_confirmation(&record, presented, now) {
            Verdict::Accepted => {
                // A place first: when even the deferred plans are too many
                // the answer is 503 and the token still works, rather than
                // a consumed confirmation whose plan runs behind the
                // client's back.
                let place = self.runner.reserve_must_run()?;
                let action = audit(
                    principal,
                    "madre",
                    "confirm",
                    format!("{} risk plan confirmed", row.risk),
                    plan_id,
                );
                let consumed = self
                    .db
                    .consume_confirmation(
                        plan_id,
                        row.token_sha256.clone(),
                        principal.name.clone(),
                        Some(action),
                        now,
                    )
                    .await?;
                if consumed == ConsumeOutcome::NotPending {
                    return Err(FlowError::Conflict(format!(
                        "plan {plan_id} was already confirmed or cancelled"
                    )));
                }
                let run =
                    self.runner
                        .admit_reserved(place, plan_id, options(principal, request_id));
                let plan = match run {
                    Some(run) => {
                        match tokio::time::timeout(self.wait_for_plan(), run.finished()).await {
                            Ok(done) => done?,
                            Err(_) => self.load_plan(plan_id).await?,
                        }
                    }
                    None => self.load_plan(plan_id).await?,
                };
                Ok(Confirmed { plan })
            }
            Verdict::Rejected { .. } => {
                let attempts = self
                    .db
                    .record_failed_confirmation(plan_id, MAX_FAILED_ATTEMPTS, now)
                    .await?;
                Err(FlowError::WrongConfirmToken {
                    attempts,
                    max: MAX_FAILED_ATTEMPTS,
                    void: attempts >= MAX_FAILED_ATTEMPTS,
                })
            }
            Verdict::Expired => {
                match self.db.expire_confirmation(plan_id, now).await {
                    // Expired by the cleanup loop a moment ago: same answer.
                    Ok(()) | Err(madre_db::DbError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                Err(FlowError::ConfirmationExpired)
            }
            Verdict::AlreadyUsed | Verdict::Void => Err(FlowError::Conflict(format!(
                "the confirmation of plan {plan_id} was already used or voided"
            ))),
        }
    }

    /// Cancels a plan that has not finished (a step in flight is
    /// abandoned); answers its status now, CANCELLED. Cancelling needs the
    /// role that may confirm the plan's risk (an operator for LOW and MED,
    /// an admin for HIGH), and an admin for a control of Madre itself. A
    /// finished plan is a [`FlowError::Conflict`].
    pub async fn cancel(&self, principal: &Principal, plan_id: Uuid) -> Result<Status, FlowError> {
        require(principal, Role::Operator)?;
        let stored = self.load_plan(plan_id).await?;
        if stored.meta.kind != PlanKind::Chat && stored.meta.module == madre_models::Module::Madre {
            require(principal, Role::Admin)?;
        }
        let risk = match &stored.intent {
            Some(intent) => intent.risk,
            None => self
                .db
                .run_blocking(move |db| db.confirmation(plan_id))
                .await?
                .map_or(RiskLevel::Low, |row| row.risk),
        };
        if !principal.role.may_confirm(risk) {
            return Err(FlowError::Forbidden(format!(
                "cancelling a {risk} risk plan needs the {} role, as confirming it does",
                Role::required_to_confirm(risk).as_str()
            )));
        }
        Ok(self
            .runner
            .cancel(plan_id, EndReason::Cancelled, &principal.name)
            .await?)
    }
}
