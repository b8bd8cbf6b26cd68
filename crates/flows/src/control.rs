//! Control actions (`/madre/control`), the v6 task, and Madre's own status.

use chrono::{DateTime, Utc};
use madre_db::{NewAction, PlanKind, PlanMeta, StoredPlan};
use madre_models::{
    ControlCommand, ControlResponse, ControlStatus, Dsl, Intent, Mode, Module, RiskLevel,
    SessionId, TaskAccepted, TaskCommand, Word,
};
use madre_planner::Origin;
use madre_policy::{Decision, MAX_FAILED_ATTEMPTS, Principal, Role, TokenHash};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::confirm::Confirmed;
use crate::plans::{no_place, options};
use crate::{FlowError, Madre, require};

/// What a control action did: the answer, and the plan when one was made.
#[derive(Debug)]
pub struct ControlOutcome {
    /// The answer of SPEC §9.
    pub response: ControlResponse,
    /// The plan, when one was made or confirmed.
    pub plan: Option<StoredPlan>,
}

fn control_intent(
    caller_session: &str,
    module: &str,
    action: &str,
    params: &Value,
    risk: RiskLevel,
) -> Intent {
    let parameters = params.as_object().cloned().unwrap_or_default();
    let targets: Vec<Module> = module.parse().ok().into_iter().collect();
    Intent {
        intent_id: Uuid::now_v7(),
        session_id: SessionId::parse(caller_session.to_owned())
            .unwrap_or_else(|_| SessionId::generate()),
        mode: Mode::Madre,
        dsl: Dsl {
            domain: "system".into(),
            action: action.to_owned(),
            parameters,
            targets: targets.clone(),
            confidence: 1.0,
            original_text: format!("{action} {module}"),
            warnings: Vec::new(),
            source: madre_models::DslSource::Fallback,
            // A programmatic action names no text to read: what is not
            // known to be harmless (LOW in the tables) changes something.
            effect: if risk == madre_models::RiskLevel::Low {
                madre_models::Effect::Read
            } else {
                madre_models::Effect::Change
            },
        },
        risk,
        requires_confirmation: risk.requires_confirmation(),
        targets,
        created_at: Utc::now(),
        alternatives: Vec::new(),
    }
}

fn accepted(stored: &StoredPlan) -> ControlResponse {
    let result = stored.plan.steps.iter().rev().find_map(|s| {
        s.result
            .clone()
            .or_else(|| s.error.clone().map(|e| json!({ "error": e })))
    });
    ControlResponse {
        status: ControlStatus::Accepted,
        action_id: None,
        confirm_token: None,
        confirm_expires_at: None,
        reason: stored.plan.error.clone(),
        plan_id: Some(stored.plan.plan_id),
        result,
    }
}

impl Madre {
    /// Madre's own status: version, uptime, plans executing and queued,
    /// database size.
    pub fn own_status(&self) -> Value {
        json!({
            "module": "madre",
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.started_at.elapsed().as_secs(),
            "active_plans": self.runner.running(),
            "queued_plans": self.runner.queued(),
            "db_size_bytes": self.db.size_bytes(),
        })
    }

    /// `POST /madre/control`: classify, deny, run LOW at once, gate MED/HIGH
    /// behind a confirmation (or confirm it when the token is re-posted).
    pub async fn control(
        &self,
        principal: &Principal,
        command: ControlCommand,
        request_id: &str,
    ) -> Result<ControlOutcome, FlowError> {
        self.control_as(principal, command, PlanKind::Control, None, request_id)
            .await
    }

    /// The v6 task: a control action on a module that runs in the
    /// background (202); the caller polls `/tasks/{id}`.
    pub async fn task(
        &self,
        principal: &Principal,
        task: TaskCommand,
        request_id: &str,
    ) -> Result<TaskAccepted, FlowError> {
        require(principal, Role::Operator)?;
        let risk = match self
            .tables()
            .classify(task.module.as_str(), task.action.as_str())
        {
            Decision::Risk(risk) => risk,
            Decision::Deny => {
                // Audited like a denied control action, answered 403.
                self.deny(
                    principal,
                    task.module.as_str(),
                    task.action.as_str(),
                    Utc::now(),
                )
                .await?;
                return Err(FlowError::Forbidden(format!(
                    "\"{}\" on {} is never allowed",
                    task.action, task.module
                )));
            }
        };
        let command = ControlCommand {
            target: Word::parse("module", task.module.as_str())?,
            action: task.action.clone(),
            params: task.payload.clone(),
            confirm_token: None,
        };
        let outcome = self
            .control_as(
                principal,
                command,
                PlanKind::Task,
                Some(task.name.clone()),
                request_id,
            )
            .await?;
        let (task_id, status) = match (&outcome.plan, outcome.response.plan_id) {
            (Some(s), _) => (s.plan.plan_id, s.plan.status),
            (None, Some(id)) => (id, madre_models::Status::Waiting),
            (None, None) => return Err(FlowError::Internal("task accepted without a plan".into())),
        };
        Ok(TaskAccepted {
            task_id,
            status,
            risk,
            confirm_token: outcome.response.confirm_token,
        })
    }

    async fn control_as(
        &self,
        principal: &Principal,
        command: ControlCommand,
        kind: PlanKind,
        name: Option<String>,
        request_id: &str,
    ) -> Result<ControlOutcome, FlowError> {
        require(principal, Role::Operator)?;
        let target = command.target.as_str();
        let action = match (target, command.action.as_str()) {
            // One action under two names: classified, planned and audited as restart.
            ("madre", "reload") => "restart",
            (_, action) => action,
        };
        let now = Utc::now();
        let risk = match self.tables().classify(target, action) {
            Decision::Risk(risk) => risk,
            Decision::Deny => return self.deny(principal, target, action, now).await,
        };
        if target == "madre" {
            require(principal, Role::Admin)?;
            match action {
                "status" => {
                    let response = ControlResponse {
                        status: ControlStatus::Accepted,
                        action_id: None,
                        confirm_token: None,
                        confirm_expires_at: None,
                        reason: None,
                        plan_id: None,
                        result: Some(self.own_status()),
                    };
                    return Ok(ControlOutcome {
                        response,
                        plan: None,
                    });
                }
                // A restart is a plan like any other action (MED: it waits
                // for a confirmation), run by Madre itself.
                "restart" | "reload" => {}
                other => {
                    let response = ControlResponse {
                        status: ControlStatus::Denied,
                        action_id: None,
                        confirm_token: None,
                        confirm_expires_at: None,
                        reason: Some(format!(
                            "madre supports status and restart, not \"{other}\""
                        )),
                        plan_id: None,
                        result: Some(self.own_status()),
                    };
                    return Ok(ControlOutcome {
                        response,
                        plan: None,
                    });
                }
            }
        }
        let module: Module = target.parse().map_err(|_| {
            FlowError::InvalidField(format!(
                "invalid field `target`: {target:?} is not a VX11 module"
            ))
        })?;

        // A MED/HIGH action re-posted with its token: confirm that plan.
        if let Some(presented) = command
            .confirm_token
            .as_deref()
            .filter(|_| risk.requires_confirmation())
        {
            let confirmed = self
                .confirm_repost(
                    principal,
                    target,
                    action,
                    &command.params,
                    presented,
                    risk,
                    request_id,
                )
                .await?;
            return Ok(ControlOutcome {
                response: accepted(&confirmed.plan),
                plan: Some(confirmed.plan),
            });
        }

        let intent = control_intent(
            &format!("control-{}", principal.name),
            target,
            action,
            &command.params,
            risk,
        );
        let meta = PlanMeta {
            kind,
            name: name.unwrap_or_else(|| format!("control:{target}:{action}")),
            module,
            action: action.to_owned(),
            principal: principal.name.clone(),
        };
        let planned = self
            .make_plan(
                principal,
                crate::plans::PlanOrder {
                    intent: &intent,
                    origin: Origin::ModuleCall { module },
                    denied: false,
                    meta,
                    switch_step: crate::plans::SwitchStep::Call,
                    logged_message: None,
                },
            )
            .await?;
        let plan_id = planned.plan.plan_id;
        if let Some(token) = planned.token {
            let response = ControlResponse {
                status: ControlStatus::PendingConfirmation,
                action_id: None,
                confirm_token: Some(token.expose().to_owned()),
                confirm_expires_at: planned.expires_at,
                reason: Some(format!("{risk} risk: confirm with this token")),
                plan_id: Some(plan_id),
                result: None,
            };
            return Ok(ControlOutcome {
                response,
                plan: None,
            });
        }
        let place = planned.place.ok_or_else(no_place)?;
        let stored = if kind == PlanKind::Task {
            // v6 tasks run in the background; the caller polls /tasks/{id}.
            let _run = self.runner.start_reserved(
                place,
                planned.plan,
                options(principal, request_id),
                None,
            );
            self.load_plan(plan_id).await?
        } else {
            self.run_new_plan(principal, planned.plan, place, request_id, None)
                .await?
        };
        Ok(ControlOutcome {
            response: accepted(&stored),
            plan: Some(stored),
        })
    }

    /// Confirms the pending action a control request re-posted with
    /// `presented` names, answering as the confirm route does: a token
    /// issued for another target, action or params is a 409; a used,
    /// voided or cancelled one 409; an expired one 410. A token Madre never
    /// issued counts as a wrong try against every pending confirmation of
    /// this target and action (each could be the one it guesses at), so
    /// the five-try limit holds on this route too.
    #[allow(clippy::too_many_arguments)]
    async fn confirm_repost(
        &self,
        principal: &Principal,
        target: &str,
        action: &str,
        params: &Value,
        presented: &str,
        risk: RiskLevel,
        request_id: &str,
    ) -> Result<Confirmed, FlowError> {
        let hash = TokenHash::of(presented).to_hex();
        let now = Utc::now();
        let (module, verb) = (target.to_owned(), action.to_owned());
        let (owner, candidates) = self
            .db
            .run_blocking(move |db| {
                Ok((
                    db.plan_for_token(&hash)?,
                    db.pending_confirmations_for(&module, &verb, now)?,
                ))
            })
            .await?;
        if let Some(plan_id) = owner {
            let pending = self.load_plan(plan_id).await?;
            if pending.meta.module.as_str() != target || pending.meta.action != action {
                return Err(FlowError::Conflict(
                    "that confirmation token belongs to another action".into(),
                ));
            }
            // A plan stored without its intent has no params to compare.
            let issued_for = pending
                .intent
                .as_ref()
                .map(|i| Value::Object(i.dsl.parameters.clone()));
            if issued_for.is_some_and(|issued| issued != *params) {
                return Err(FlowError::Conflict(
                    "that confirmation token was issued for other params; re-post the pending action with its own params, or post the new one without a token".into(),
                ));
            }
            return self
                .confirm(
                    principal,
                    plan_id,
                    crate::Approval::token(presented),
                    request_id,
                )
                .await;
        }
        if candidates.is_empty() {
            return Err(FlowError::Conflict(format!(
                "no {action} on {target} waits for a confirmation; post it without a token to ask for one"
            )));
        }
        if !principal.role.may_confirm(risk) {
            return Err(FlowError::Forbidden(format!(
                "confirming a {risk} risk action needs the {} role",
                Role::required_to_confirm(risk).as_str()
            )));
        }
        let (mut attempts, mut void) = (0, false);
        for plan_id in candidates {
            match self
                .db
                .record_failed_confirmation(plan_id, MAX_FAILED_ATTEMPTS, now)
                .await
            {
                Ok(n) => {
                    attempts = attempts.max(n);
                    void |= n >= MAX_FAILED_ATTEMPTS;
                }
                // Confirmed, cancelled or expired since it was listed.
                Err(madre_db::DbError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(FlowError::WrongConfirmToken {
            attempts,
            max: MAX_FAILED_ATTEMPTS,
            void,
        })
    }

    /// Records and answers a control action refused by the deny rule;
    /// nothing is called.
    async fn deny(
        &self,
        principal: &Principal,
        target: &str,
        action: &str,
        now: DateTime<Utc>,
    ) -> Result<ControlOutcome, FlowError> {
        let id = self
            .db
            .record_action(NewAction {
                module: target.to_owned(),
                action: action.to_owned(),
                reason: "denied by policy".into(),
                principal: principal.name.clone(),
                plan_id: None,
                created_at: now,
            })
            .await?;
        let response = ControlResponse {
            status: ControlStatus::Denied,
            action_id: Some(id),
            confirm_token: None,
            confirm_expires_at: None,
            reason: Some(format!("\"{action}\" on {target} is never allowed")),
            plan_id: None,
            result: None,
        };
        Ok(ControlOutcome {
            response,
            plan: None,
        })
    }
}
