//! Making, running and reading plans: what every flow shares.

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use madre_db::{AtEnd, NewAction, NewConfirmation, NewPlanRecord, PlanMeta, StoredPlan};
use madre_models::{ActionSummary, EndReason, Intent, Plan, Status};
use madre_planner::{Origin, PlanRequest};
use madre_policy::{ConfirmToken, Principal};
use madre_runner::{Place, RunOptions};
use serde_json::Value;
use uuid::Uuid;

use crate::{FlowError, Madre};

/// How long a plan that runs at once waits for a runner slot before it is
/// stored (see [`Madre::make_plan`]): about what a few short plans take.
const SLOT_BEFORE_STORING: std::time::Duration = std::time::Duration::from_secs(1);

/// A plan made and stored, as stored (opened by `madre_runner::open` when
/// it runs at once), with the token to confirm it when it waits.
pub(crate) struct Planned {
    pub(crate) plan: Plan,
    pub(crate) token: Option<ConfirmToken>,
    pub(crate) expires_at: Option<DateTime<Utc>>,
    /// The runner's place, taken before the plan was stored, for a plan
    /// that runs at once; `None` for one that waits or was denied.
    pub(crate) place: Option<Place>,
}

/// An audit row by `principal` about `plan_id`.
pub(crate) fn audit(
    principal: &Principal,
    module: &str,
    action: &str,
    reason: String,
    plan_id: Uuid,
) -> NewAction {
    NewAction {
        module: module.to_owned(),
        action: action.to_owned(),
        reason,
        principal: principal.name.clone(),
        plan_id: Some(plan_id),
        created_at: Utc::now(),
    }
}

/// A new confirmation token and the row that stores only its hash.
pub(crate) fn new_token(
    madre: &Madre,
    risk: madre_models::RiskLevel,
    principal: &Principal,
    now: DateTime<Utc>,
) -> Result<(ConfirmToken, NewConfirmation), FlowError> {
    let token = ConfirmToken::generate()
        .map_err(|e| FlowError::Internal(format!("no randomness for a token: {e}")))?;
    let confirmation = NewConfirmation {
        token_sha256: token.hash().to_hex(),
        risk,
        expires_at: now + confirm_ttl(madre),
        principal: principal.name.clone(),
    };
    Ok((token, confirmation))
}

pub(crate) fn confirm_ttl(madre: &Madre) -> ChronoDuration {
    ChronoDuration::seconds(i64::try_from(madre.config().confirm_ttl_s).unwrap_or(i64::MAX / 1000))
}

/// What a plan's CALL_SWITCH step does, from what Switch said at intake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SwitchStep {
    /// Calls Switch (SPEC §7): it was not asked, or gave no engine.
    Call,
    /// Uses the engine Switch chose at intake, without a call.
    Answered(String),
    /// Fails at once without a call, `switch_unavailable`: Switch did not
    /// answer the intake call (the reason).
    Skip(String),
}

/// What a flow asks [`Madre::make_plan`] to plan and store.
pub(crate) struct PlanOrder<'a> {
    /// The classified intent.
    pub(crate) intent: &'a Intent,
    /// Which flow asks (chat, a module call).
    pub(crate) origin: Origin,
    /// The policy refused it: the plan is stored as refused.
    pub(crate) denied: bool,
    /// The plan's metadata.
    pub(crate) meta: PlanMeta,
    /// What the Switch step does.
    pub(crate) switch_step: SwitchStep,
    /// The request's message as the intent log holds it, if it does: the
    /// plan refers to it there.
    pub(crate) logged_message: Option<&'a str>,
}

impl Madre {
    /// Plans the intent and stores plan, confirmation and audit row at once.
    pub(crate) async fn make_plan(
        &self,
        principal: &Principal,
        order: PlanOrder<'_>,
    ) -> Result<Planned, FlowError> {
        let PlanOrder {
            intent,
            origin,
            denied,
            meta,
            switch_step,
            logged_message,
        } = order;
        let now = Utc::now();
        let chat = meta.kind == madre_db::PlanKind::Chat;
        let request = PlanRequest {
            intent,
            origin,
            denied,
            enabled: self.delegator.registry().enabled(),
            now,
        };
        // Time-ordered ids (UUID v7): new rows land at the end of every index
        // keyed by them, so concurrent chats share pages in a group commit.
        let mut plan = madre_planner::plan(&request, Uuid::now_v7);
        for step in &mut plan.steps {
            if step.step_type != madre_models::StepType::CallSwitch {
                continue;
            }
            match &switch_step {
                SwitchStep::Call => {}
                // Switch chose the engine at intake: its step uses that
                // answer instead of calling Switch a second time (SPEC §4a).
                SwitchStep::Answered(engine) => {
                    step.payload["engine"] = Value::String(engine.clone());
                    step.payload["answered_at_intake"] = Value::Bool(true);
                }
                // Switch did not answer the intake call: the step fails
                // without calling it again, and the plan goes on with the
                // fallback engine.
                SwitchStep::Skip(why) => {
                    step.payload[madre_runner::UNAVAILABLE_AT_INTAKE] = Value::String(why.clone());
                }
            }
        }
        let waits = plan.status == Status::Waiting;
        let (token, confirmation) = if waits {
            let (token, row) = new_token(self, intent.risk, principal, now)?;
            (Some(token), Some(row))
        } else {
            (None, None)
        };
        let expires_at = confirmation.as_ref().map(|c| c.expires_at);
        // The plan's creation needs no audit row of its own: its journal
        // records who made it, and its outcome (madre-db reads the audit
        // entry from there).
        let mut record = NewPlanRecord {
            plan: plan.clone(),
            meta,
            intent: Some(intent.clone()),
            confirmation,
            actions: Vec::new(),
            logged_message: logged_message.map(str::to_owned),
        };
        let place = if waits || denied {
            self.db.insert_plan(record).await?;
            if let Some(token) = &token {
                let text = &intent.dsl.original_text;
                let summary = if text.trim().is_empty() {
                    format!("{} on {}", intent.dsl.action, intent.dsl.domain)
                } else {
                    text.clone()
                };
                self.publish_requested(crate::bus::Requested {
                    plan_id: plan.plan_id,
                    risk: intent.risk,
                    summary: &summary,
                    requested_by: &principal.name,
                    token: token.expose(),
                    expires_at,
                    approvals: 0,
                    approvals_required: self.tables().approvals.for_risk(intent.risk).required,
                });
            }
            None
        } else {
            // It runs at once. Its place is taken first: a plan refused
            // for a full queue is never stored, so nothing on disk can run
            // it after its client was told 503. Its first call's step
            // starts in the creation commit, and the runner gets the plan
            // as stored.
            let mut place = self.runner.reserve()?;
            // A chat's place in the queue waits for its slot before the
            // plan is stored, for a while (its client waits for the plan's
            // end anyway; a task is answered at once): stored on a slot,
            // the plan starts as stored, where one stored first and queued
            // reads its status again when its slot comes (a cancel from
            // another replica may have ended it meanwhile). Past the
            // while, it is stored and waits on in the queue, in its turn,
            // listed like any plan.
            if chat {
                let _ = tokio::time::timeout(SLOT_BEFORE_STORING, place.ready()).await;
            }
            madre_runner::settle_known_answers(&mut plan);
            record.plan.steps.clone_from(&plan.steps);
            let opening = madre_runner::open(&mut plan, now);
            self.db.insert_plan_with(record, opening).await?;
            Some(place)
        };
        Ok(Planned {
            plan,
            token,
            expires_at,
            place,
        })
    }

    /// Runs a new plan on the place [`Madre::make_plan`] took for it, and
    /// waits for it.
    pub(crate) async fn run_new_plan(
        &self,
        principal: &Principal,
        plan: Plan,
        place: Place,
        request_id: &str,
        at_end: Option<AtEnd>,
    ) -> Result<StoredPlan, FlowError> {
        let plan_id = plan.plan_id;
        let run = self
            .runner
            .start_reserved(place, plan, options(principal, request_id), at_end);
        match tokio::time::timeout(self.wait_for_plan(), run.finished()).await {
            Ok(done) => Ok(done?),
            Err(_) => self.load_plan(plan_id).await,
        }
    }

    /// The stored plan, or [`FlowError::NotFound`].
    pub async fn load_plan(&self, plan_id: Uuid) -> Result<StoredPlan, FlowError> {
        match self.db.run_blocking(move |db| db.plan(plan_id)).await? {
            Some(stored) => Ok(stored),
            None => Err(self.missing_plan(plan_id).await),
        }
    }

    /// Why `plan_id` is not stored: it was archived (410), or it never was
    /// (404).
    async fn missing_plan(&self, plan_id: Uuid) -> FlowError {
        match self
            .db
            .run_blocking(move |db| db.archived_plan(plan_id))
            .await
        {
            Ok(Some(archive)) => FlowError::Archived { plan_id, archive },
            Ok(None) => FlowError::NotFound(format!("plan {plan_id} not found")),
            Err(e) => e.into(),
        }
    }

    /// The plan with its intent, audit rows and journal, as
    /// `GET /madre/plans/{id}` shows it.
    pub async fn plan_detail(&self, plan_id: Uuid) -> Result<madre_models::PlanDetail, FlowError> {
        let (stored, actions, events, confirmation, mut approvers) = self
            .db
            .run_blocking(move |db| {
                let stored = db.plan(plan_id)?;
                let actions = db.actions_for_plan(plan_id)?;
                let events = db.plan_events(plan_id)?;
                let confirmation = db.confirmation(plan_id)?;
                let approvers = db.approvals(plan_id)?;
                Ok((stored, actions, events, confirmation, approvers))
            })
            .await?;
        let Some(stored) = stored else {
            return Err(self.missing_plan(plan_id).await);
        };
        let approval = confirmation.map(|row| {
            // The last approval is the confirmation itself.
            if row.outcome.as_deref() == Some("confirmed")
                && let Some(by) = &row.confirmed_by
                && !approvers.contains(by)
            {
                approvers.push(by.clone());
            }
            madre_models::ApprovalState {
                approvals: approvers.len() as u32,
                required: self.tables().approvals.for_risk(row.risk).required,
                approvers,
                requested_by: row.principal,
                expires_at: row.expires_at,
            }
        });
        Ok(madre_models::PlanDetail {
            approval,
            fingerprint: madre_policy::plan_fingerprint(&stored.plan.steps),
            plan: stored.plan,
            intent: stored.intent,
            actions,
            events,
        })
    }
}

/// [`Madre::make_plan`] takes a place for every plan that runs at once;
/// a plan that runs without one is a bug, answered as one.
pub(crate) fn no_place() -> FlowError {
    FlowError::Internal("a plan that runs at once was stored without a place".into())
}

pub(crate) fn options(principal: &Principal, request_id: &str) -> RunOptions {
    RunOptions {
        request_id: request_id.to_owned(),
        principal: principal.name.clone(),
        resumed: false,
    }
}

/// The text the user sees for a finished plan.
pub fn reply_of(stored: &StoredPlan) -> String {
    stored
        .result
        .as_ref()
        .and_then(|r| r.get("reply"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| match stored.plan.status {
            Status::Running | Status::Pending => {
                "The plan is still running; poll GET /madre/plans/{id}".into()
            }
            Status::Cancelled => format!(
                "Plan cancelled ({})",
                stored
                    .plan
                    .error
                    .as_deref()
                    .unwrap_or(EndReason::Cancelled.as_str())
            ),
            status => format!("Plan {status}"),
        })
}

/// The executed steps of a plan, as reported to the caller.
pub fn actions_of(plan: &Plan) -> Vec<ActionSummary> {
    plan.steps
        .iter()
        .filter(|s| s.status != Status::Pending)
        .map(ActionSummary::from)
        .collect()
}
