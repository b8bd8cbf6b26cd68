//! Approving or rejecting a waiting plan with its token under its risk's
//! approval rule (SPEC §15), and cancelling a plan.

use chrono::Utc;
use madre_db::{ApprovalOutcome, ConfirmationRow, ConsumeOutcome, PlanKind, StoredPlan};
use madre_models::{EndReason, RiskLevel, Status};
use madre_policy::{
    ApprovalRule, ConfirmationRecord, MAX_FAILED_ATTEMPTS, Principal, Role, TokenHash, Verdict,
    check_confirmation,
};
use uuid::Uuid;

use crate::bus::Resolution;
use crate::plans::{audit, options};
use crate::{FlowError, Madre, require};

/// The result of one approval of a waiting plan.
#[derive(Debug)]
pub struct Confirmed {
    /// The plan after it ran, or while it still runs (RUNNING: it outlived
    /// the wait, or waits for a free slot), or WAITING for more approvals.
    pub plan: StoredPlan,
    /// Distinct approvals so far, this one included.
    pub approvals: u32,
    /// Approvals the plan's risk requires.
    pub required: u32,
}

impl Confirmed {
    /// True when this approval was the last one needed and the plan ran.
    pub fn confirmed(&self) -> bool {
        self.approvals >= self.required
    }
}

/// The longest reason an approver may give.
pub const MAX_REASON_CHARS: usize = 2000;

/// A reason as given: trimmed, `None` when blank, refused when too long.
fn reason_of(reason: Option<&str>) -> Result<Option<String>, FlowError> {
    let reason = reason.map(str::trim).filter(|r| !r.is_empty());
    if reason.is_some_and(|r| r.chars().count() > MAX_REASON_CHARS) {
        return Err(FlowError::InvalidField(format!(
            "invalid field `reason`: at most {MAX_REASON_CHARS} characters"
        )));
    }
    Ok(reason.map(str::to_owned))
}

/// What an approver presents (SPEC §15).
#[derive(Debug, Clone, Copy)]
pub struct Approval<'a> {
    /// The plan's confirm token.
    pub token: &'a str,
    /// Why they decide so.
    pub reason: Option<&'a str>,
    /// The plan's fingerprint as the approver saw it; when given, a plan
    /// that does not match it is not approved.
    pub fingerprint: Option<&'a str>,
}

impl<'a> Approval<'a> {
    /// Just the token.
    pub fn token(token: &'a str) -> Self {
        Self {
            token,
            reason: None,
            fingerprint: None,
        }
    }
}

/// A waiting plan with its pending confirmation, as an approver acts on it.
struct Pending {
    stored: StoredPlan,
    row: ConfirmationRow,
    rule: ApprovalRule,
}

impl Madre {
    /// Loads the plan and its pending confirmation, and checks that
    /// `principal` may act on it under its risk's approval rule (SPEC §15):
    /// the role is one the rule names, the requester only when the rule
    /// allows self-approval, with a reason when the rule requires one.
    async fn pending_for(
        &self,
        principal: &Principal,
        plan_id: Uuid,
        approval: Approval<'_>,
        reason: Option<&str>,
        reason_needed: bool,
    ) -> Result<Pending, FlowError> {
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
        let rule = self.tables().approvals.for_risk(row.risk).clone();
        if !rule.allows(principal.role) {
            let roles: Vec<&str> = rule.roles.iter().map(|r| r.as_str()).collect();
            return Err(FlowError::Forbidden(format!(
                "approving a {} risk plan needs the role {}",
                row.risk,
                roles.join(" or ")
            )));
        }
        if !rule.self_approval && principal.name == row.principal {
            return Err(FlowError::SelfApprovalForbidden(format!(
                "{} asked for plan {plan_id}; a {} risk plan needs someone else's approval",
                principal.name, row.risk
            )));
        }
        if let Some(seen) = approval.fingerprint
            && madre_policy::plan_fingerprint(&stored.plan.steps).as_deref() != Some(seen.trim())
        {
            return Err(FlowError::Conflict(format!(
                "plan {plan_id} is not the plan approved: its fingerprint differs from {seen:?}"
            )));
        }
        if (reason_needed || rule.reason_required) && reason.is_none() {
            return Err(FlowError::InvalidField(
                "invalid field `reason`: required to approve or reject this plan".into(),
            ));
        }
        Ok(Pending { stored, row, rule })
    }

    /// Checks the token; a wrong one counts toward voiding the
    /// confirmation. Answers the error to return when it is not accepted.
    async fn check_token(
        &self,
        plan_id: Uuid,
        row: &ConfirmationRow,
        presented: &str,
        now: chrono::DateTime<Utc>,
    ) -> Result<(), FlowError> {
        let token_hash = TokenHash::from_hex(&row.token_sha256)
            .map_err(|_| FlowError::Internal("stored token hash is not hex".into()))?;
        let record = ConfirmationRecord {
            token_hash,
            risk: row.risk,
            expires_at: row.expires_at,
            used_at: row.used_at,
            failed_attempts: row.failed_attempts,
        };
        match check_confirmation(&record, presented, now) {
            Verdict::Accepted => Ok(()),
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
                    Ok(()) => self.publish_resolved(plan_id, Resolution::Expired, None, None),
                    // Expired by the cleanup loop a moment ago: same answer.
                    Err(madre_db::DbError::Conflict(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                Err(FlowError::ConfirmationExpired)
            }
            Verdict::AlreadyUsed | Verdict::Void => Err(FlowError::Conflict(format!(
                "the confirmation of plan {plan_id} was already used or voided"
            ))),
        }
    }

    /// Records `principal`'s approval of a waiting plan with its token
    /// (SPEC §15). When the approvals of distinct principals reach what the
    /// plan's risk requires, the plan runs and this waits for it; before
    /// that the approval is recorded and the plan keeps waiting. A plan
    /// that runs is never refused for a full queue: it runs as soon as a
    /// slot frees, and the answer says RUNNING.
    pub async fn confirm(
        &self,
        principal: &Principal,
        plan_id: Uuid,
        approval: Approval<'_>,
        request_id: &str,
    ) -> Result<Confirmed, FlowError> {
        let reason = reason_of(approval.reason)?;
        let Pending { stored, row, rule } = self
            .pending_for(principal, plan_id, approval, reason.as_deref(), false)
            .await?;
        let now = Utc::now();
        self.check_token(plan_id, &row, approval.token, now).await?;
        // A place first: when even the deferred plans are too many the
        // answer is 503 and the token still works, rather than a spent
        // confirmation whose plan runs behind the client's back. An
        // approval that does not complete the count gives it back.
        let place = self.runner.reserve_must_run()?;
        // With one approval required, it is the confirmation (as before
        // approval rules); with more, each is an approval.
        let verb = if rule.required == 1 {
            "confirmed"
        } else {
            "approved"
        };
        let what = match &reason {
            Some(reason) => format!("{} risk plan {verb}: {reason}", row.risk),
            None => format!("{} risk plan {verb}", row.risk),
        };
        let action = audit(principal, "madre", "confirm", what, plan_id);
        let published_reason = reason.clone();
        let outcome = self
            .db
            .approve(
                plan_id,
                row.token_sha256.clone(),
                principal.name.clone(),
                reason,
                rule.required,
                Some(action),
                now,
            )
            .await?;
        let approvals = match outcome {
            ApprovalOutcome::NotPending => {
                return Err(FlowError::Conflict(format!(
                    "plan {plan_id} was already confirmed or cancelled"
                )));
            }
            ApprovalOutcome::AlreadyApproved { approvals } => {
                return Err(FlowError::Conflict(format!(
                    "{} already approved plan {plan_id} ({approvals} of {} approvals)",
                    principal.name, rule.required
                )));
            }
            ApprovalOutcome::Recorded { approvals } => {
                drop(place);
                let mut plan = stored;
                plan.plan.updated_at = now;
                return Ok(Confirmed {
                    plan,
                    approvals,
                    required: rule.required,
                });
            }
            ApprovalOutcome::Confirmed { approvals } => approvals,
        };
        self.publish_resolved(
            plan_id,
            Resolution::Confirmed,
            Some(&principal.name),
            published_reason.as_deref(),
        );
        let run = self
            .runner
            .admit_reserved(place, plan_id, options(principal, request_id));
        let plan = match run {
            Some(run) => match tokio::time::timeout(self.wait_for_plan(), run.finished()).await {
                Ok(done) => done?,
                Err(_) => self.load_plan(plan_id).await?,
            },
            None => self.load_plan(plan_id).await?,
        };
        Ok(Confirmed {
            plan,
            approvals,
            required: rule.required,
        })
    }

    /// Refuses a waiting plan with its token and a reason (SPEC §15): the
    /// plan is CANCELLED with reason `rejected`, the refusal a journal
    /// event and an audit row. Anyone the plan's rule lets approve may
    /// reject; a reason is always needed.
    pub async fn reject(
        &self,
        principal: &Principal,
        plan_id: Uuid,
        approval: Approval<'_>,
    ) -> Result<Status, FlowError> {
        let reason = reason_of(approval.reason)?;
        let Pending { row, .. } = self
            .pending_for(principal, plan_id, approval, reason.as_deref(), true)
            .await?;
        let now = Utc::now();
        self.check_token(plan_id, &row, approval.token, now).await?;
        let what = format!(
            "{} risk plan rejected: {}",
            row.risk,
            reason.as_deref().unwrap_or_default()
        );
        let action = audit(principal, "madre", "reject", what, plan_id);
        let outcome = self
            .db
            .reject(
                plan_id,
                row.token_sha256.clone(),
                principal.name.clone(),
                Some(action),
                now,
            )
            .await?;
        match outcome {
            ConsumeOutcome::Consumed => {
                self.publish_resolved(
                    plan_id,
                    Resolution::Rejected,
                    Some(&principal.name),
                    reason.as_deref(),
                );
                Ok(Status::Cancelled)
            }
            ConsumeOutcome::NotPending => Err(FlowError::Conflict(format!(
                "plan {plan_id} was already confirmed or cancelled"
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
