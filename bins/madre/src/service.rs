//! The flows behind the endpoints, shared by v7 and v6: chat, control,
//! confirmation. Handlers decode and encode; everything else is here.

use chrono::{Duration as ChronoDuration, Utc};
use madre_db::{
    ConsumeOutcome, NewAction, NewConfirmation, NewIntentLog, NewPlanRecord, PlanKind, PlanMeta,
    StoredPlan,
};
use madre_models::{
    ActionSummary, ChatCommand, ChatResponse, ControlCommand, ControlResponse, ControlStatus, Dsl,
    Intent, Mode, Module, Plan, RiskLevel, SessionId, Status,
};
use madre_planner::{Origin, PlanRequest};
use madre_policy::{
    ConfirmToken, ConfirmationRecord, Decision, MAX_FAILED_ATTEMPTS, Role, TokenHash, Verdict,
    check_confirmation,
};
use madre_runner::RunOptions;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;

/// How long a request waits for its plan before answering 202/RUNNING.
const WAIT_FOR_PLAN: Duration = Duration::from_secs(150);

/// A plan made and stored, with the token to confirm it when it waits.
struct Planned {
    plan: Plan,
    token: Option<ConfirmToken>,
    expires_at: Option<chrono::DateTime<Utc>>,
}

fn audit(caller: &Caller, module: &str, action: &str, reason: String, plan_id: Uuid) -> NewAction {
    NewAction {
        module: module.to_owned(),
        action: action.to_owned(),
        reason,
        principal: caller.name().to_owned(),
        plan_id: Some(plan_id),
        created_at: Utc::now(),
    }
}

/// Plans the intent and stores plan, confirmation and audit row at once.
async fn make_plan(
    state: &AppState,
    caller: &Caller,
    intent: &Intent,
    origin: Origin,
    denied: bool,
    meta: PlanMeta,
) -> Result<Planned, ApiError> {
    let now = Utc::now();
    let request = PlanRequest {
        intent,
        origin,
        denied,
        enabled: state.settings.registry.enabled(),
        now,
    };
    let plan = madre_planner::plan(&request, Uuid::new_v4);
    let waits = plan.status == Status::Waiting;
    let (token, confirmation, expires_at) = if waits {
        let token = ConfirmToken::generate()
            .map_err(|e| ApiError::Internal(format!("no randomness for a token: {e}")))?;
        let expires_at = now + ChronoDuration::seconds(state.settings.confirm_ttl_s as i64);
        let confirmation = NewConfirmation {
            token_sha256: token.hash().to_hex(),
            risk: intent.risk,
            expires_at,
            principal: caller.name().to_owned(),
        };
        (Some(token), Some(confirmation), Some(expires_at))
    } else {
        (None, None, None)
    };
    let outcome = if denied {
        "denied".to_owned()
    } else if waits {
        format!("waiting for confirmation ({} risk)", intent.risk)
    } else {
        format!("planned {} step(s)", plan.steps.len())
    };
    let action = audit(caller, &meta.module, &meta.action, outcome, plan.plan_id);
    let record = NewPlanRecord {
        plan: plan.clone(),
        meta,
        intent: Some(intent.clone()),
        confirmation,
        actions: vec![action],
    };
    state.db.insert_plan(record).await?;
    Ok(Planned {
        plan,
        token,
        expires_at,
    })
}

/// Runs a stored plan and waits for it (up to [`WAIT_FOR_PLAN`]); on a full
/// queue the plan is cancelled (`queue_full`) and 503 answered.
async fn run_plan(
    state: &AppState,
    caller: &Caller,
    plan_id: Uuid,
    request_id: &str,
) -> Result<StoredPlan, ApiError> {
    let options = RunOptions {
        request_id: request_id.to_owned(),
        principal: caller.name().to_owned(),
        resumed: false,
    };
    let run = match state.runner.start(plan_id, options) {
        Ok(run) => run,
        Err(madre_runner::RunnerError::QueueFull { queued }) => {
            let _ = state
                .db
                .cancel_plan(plan_id, "queue_full", None, Utc::now())
                .await;
            return Err(ApiError::QueueFull(queued));
        }
        Err(e) => return Err(e.into()),
    };
    match tokio::time::timeout(WAIT_FOR_PLAN, run.finished()).await {
        Ok(done) => Ok(done?),
        Err(_) => load_plan(state, plan_id).await,
    }
}

/// The stored plan, or 404.
pub async fn load_plan(state: &AppState, plan_id: Uuid) -> Result<StoredPlan, ApiError> {
    state
        .db
        .run_blocking(move |db| db.plan(plan_id))
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("plan {plan_id} not found")))
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
                stored.plan.error.as_deref().unwrap_or("cancelled")
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

fn merge_warnings(dsl: &Dsl, plan: &Plan) -> Vec<String> {
    let mut all = dsl.warnings.clone();
    for w in &plan.warnings {
        if !all.contains(w) {
            all.push(w.clone());
        }
    }
    all
}

/// The chat flow of SPEC §9: log the intent first, parse, classify, plan,
/// persist; then answer WAITING with a token, ERROR for a denial, or run
/// the plan and answer its outcome.
#[tracing::instrument(skip_all, fields(session_id, plan_id))]
pub async fn chat(
    state: &AppState,
    caller: &Caller,
    command: ChatCommand,
    source: &str,
    request_id: &str,
) -> Result<ChatResponse, ApiError> {
    let now = Utc::now();
    let intent_id = Uuid::new_v4();
    let session_id = command
        .session_id
        .clone()
        .unwrap_or_else(SessionId::generate);
    tracing::Span::current().record("session_id", session_id.as_str());
    state
        .db
        .log_intent(NewIntentLog {
            id: intent_id,
            source: source.to_owned(),
            principal: caller.name().to_owned(),
            payload: json!({
                "message": command.message.as_str(),
                "session_id": session_id,
                "mode": command.mode,
            }),
            created_at: now,
        })
        .await?;

    let session_key = session_id.as_str().to_owned();
    let session = state
        .db
        .run_blocking(move |db| db.session(&session_key))
        .await?;
    let session_mode = match session {
        Some(s) if s.closed_at.is_none() => s.mode,
        _ => Mode::Madre,
    };
    let dsl = madre_parser::parse(command.message.as_str());
    let mode = madre_parser::select_mode(command.mode, &dsl, session_mode);
    let assessment = state.tables().assess(&dsl);
    let intent = Intent {
        intent_id,
        session_id: session_id.clone(),
        mode,
        risk: assessment.risk(),
        requires_confirmation: assessment.requires_confirmation(),
        targets: dsl.targets.clone(),
        dsl,
        created_at: now,
    };
    let meta = PlanMeta {
        kind: PlanKind::Chat,
        name: "chat".into(),
        module: intent
            .targets
            .first()
            .map_or("madre", |m| m.as_str())
            .to_owned(),
        action: intent.dsl.action.clone(),
        principal: caller.name().to_owned(),
    };
    let planned = make_plan(
        state,
        caller,
        &intent,
        Origin::Chat,
        assessment.is_denied(),
        meta,
    )
    .await?;
    tracing::Span::current().record("plan_id", planned.plan.plan_id.to_string());

    let (status, response, actions, warnings) = if assessment.is_denied() {
        let target = assessment.denied_target.clone().unwrap_or_default();
        let text = format!(
            "Refused: \"{}\" on {target} is never allowed, with or without confirmation",
            intent.dsl.action
        );
        (
            Status::Error,
            text,
            Vec::new(),
            merge_warnings(&intent.dsl, &planned.plan),
        )
    } else if planned.token.is_some() {
        let text = format!(
            "This needs a human confirmation ({} risk): POST /madre/plans/{}/confirm with the confirm_token within {} s",
            intent.risk, planned.plan.plan_id, state.settings.confirm_ttl_s
        );
        (
            Status::Waiting,
            text,
            actions_of(&planned.plan),
            merge_warnings(&intent.dsl, &planned.plan),
        )
    } else {
        let stored = run_plan(state, caller, planned.plan.plan_id, request_id).await?;
        (
            stored.plan.status,
            reply_of(&stored),
            actions_of(&stored.plan),
            merge_warnings(&intent.dsl, &stored.plan),
        )
    };

    let messages = vec![
        ("user".to_owned(), command.message.as_str().to_owned()),
        ("assistant".to_owned(), response.clone()),
    ];
    let closing = if assessment.is_denied() {
        "denied".to_owned()
    } else {
        status.as_str().to_owned()
    };
    // The turn and the intent's close commit together: one commit, and the
    // history never shows a turn whose intent is still open.
    let now = Utc::now();
    let turn = state.db.record_turn(
        session_id.as_str().to_owned(),
        mode,
        Some(intent_id),
        messages,
        state.settings.history_max,
        now,
    );
    turn.and(state.db.close_intent(intent_id, &closing, None, now))
        .await?;

    Ok(ChatResponse {
        response,
        session_id,
        intent_id,
        plan_id: planned.plan.plan_id,
        status,
        mode,
        risk: intent.risk,
        warnings,
        targets: intent.targets,
        actions,
        confirm_token: planned.token.as_ref().map(|t| t.expose().to_owned()),
        confirm_expires_at: planned.expires_at,
    })
}

/// The result of confirming a plan.
pub struct Confirmed {
    /// The plan after it ran (or while it still runs).
    pub plan: StoredPlan,
}

/// Checks `presented` against the plan's pending confirmation and, when it
/// is right and the caller may confirm this risk, resumes and runs the plan.
pub async fn confirm(
    state: &AppState,
    caller: &Caller,
    plan_id: Uuid,
    presented: &str,
    request_id: &str,
) -> Result<Confirmed, ApiError> {
    caller.require(Role::Operator)?;
    let stored = load_plan(state, plan_id).await?;
    let row = state
        .db
        .run_blocking(move |db| db.confirmation(plan_id))
        .await?
        .ok_or_else(|| {
            ApiError::Conflict(format!("plan {plan_id} does not wait for a confirmation"))
        })?;
    if stored.plan.status != Status::Waiting || row.outcome.is_some() {
        return Err(ApiError::Conflict(format!(
            "plan {plan_id} is not waiting for a confirmation (it is {})",
            stored.plan.status
        )));
    }
    if !caller.0.role.may_confirm(row.risk) {
        return Err(ApiError::Forbidden(format!(
            "confirming a {} risk plan needs the {} role",
            row.risk,
            Role::required_to_confirm(row.risk).as_str()
        )));
    }
    let token_hash = TokenHash::from_hex(&row.token_sha256)
        .map_err(|_| ApiError::Internal("stored token hash is not hex".into()))?;
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
            let action = audit(
                caller,
                "madre",
                "confirm",
                format!("{} risk plan confirmed", row.risk),
                plan_id,
            );
            match state
                .db
                .consume_confirmation(
                    plan_id,
                    row.token_sha256.clone(),
                    caller.name().to_owned(),
                    Some(action),
                    now,
                )
                .await?
            {
                ConsumeOutcome::Consumed => {}
                ConsumeOutcome::NotPending => {
                    return Err(ApiError::Conflict(format!(
                        "plan {plan_id} was already confirmed or cancelled"
                    )));
                }
            }
            let plan = run_plan(state, caller, plan_id, request_id).await?;
            Ok(Confirmed { plan })
        }
        Verdict::Rejected { .. } => {
            let attempts = state
                .db
                .record_failed_confirmation(plan_id, MAX_FAILED_ATTEMPTS, now)
                .await?;
            Err(ApiError::WrongConfirmToken {
                attempts,
                max: MAX_FAILED_ATTEMPTS,
                void: attempts >= MAX_FAILED_ATTEMPTS,
            })
        }
        Verdict::Expired => {
            state.db.expire_confirmation(plan_id, now).await?;
            Err(ApiError::ConfirmationExpired)
        }
        Verdict::AlreadyUsed | Verdict::Void => Err(ApiError::Conflict(format!(
            "the confirmation of plan {plan_id} was already used or voided"
        ))),
    }
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
        intent_id: Uuid::new_v4(),
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
        },
        risk,
        requires_confirmation: risk.requires_confirmation(),
        targets,
        created_at: Utc::now(),
    }
}

/// Madre's own status, for `/control` and `/madre/control` on target madre.
pub fn own_status(state: &AppState) -> Value {
    json!({
        "module": "madre",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started_at.elapsed().as_secs(),
        "active_plans": state.runner.running(),
        "queued_plans": state.runner.queued(),
        "db_size_bytes": state.db.size_bytes(),
    })
}

/// `POST /madre/control` (and the v6 task flow): classify, deny, run LOW at
/// once, gate MED/HIGH behind a confirmation.
pub async fn control(
    state: &AppState,
    caller: &Caller,
    command: ControlCommand,
    kind: PlanKind,
    name: Option<String>,
    request_id: &str,
) -> Result<(ControlResponse, Option<StoredPlan>), ApiError> {
    caller.require(Role::Operator)?;
    let target = command.target.as_str();
    let action = command.action.as_str();
    let now = Utc::now();
    let risk = match state.tables().classify(target, action) {
        Decision::Risk(risk) => risk,
        Decision::Deny => return deny(state, caller, target, action, now).await,
    };
    if target == "madre" {
        caller.require(Role::Admin)?;
        let (status, reason) = match action {
            "status" => (ControlStatus::Accepted, None),
            "restart" | "reload" => {
                crate::app::reload(state)?;
                (ControlStatus::Accepted, Some("policy reloaded".to_owned()))
            }
            other => (
                ControlStatus::Denied,
                Some(format!(
                    "madre supports status and restart, not \"{other}\""
                )),
            ),
        };
        let response = ControlResponse {
            status,
            action_id: None,
            confirm_token: None,
            confirm_expires_at: None,
            reason,
            plan_id: None,
            result: Some(own_status(state)),
        };
        return Ok((response, None));
    }
    let module: Module = target.parse().map_err(|_| {
        ApiError::InvalidField(format!(
            "invalid field `target`: {target:?} is not a VX11 module"
        ))
    })?;

    // A MED/HIGH action re-posted with its token: confirm that plan.
    if let Some(presented) = command
        .confirm_token
        .as_deref()
        .filter(|_| risk.requires_confirmation())
    {
        let hash = TokenHash::of(presented).to_hex();
        let plan_id = state
            .db
            .run_blocking(move |db| db.plan_for_pending_token(&hash))
            .await?
            .ok_or(ApiError::WrongConfirmToken {
                attempts: 0,
                max: MAX_FAILED_ATTEMPTS,
                void: false,
            })?;
        let pending = load_plan(state, plan_id).await?;
        if pending.meta.module != target || pending.meta.action != action {
            return Err(ApiError::Conflict(
                "that confirmation token belongs to another action".into(),
            ));
        }
        let confirmed = confirm(state, caller, plan_id, presented, request_id).await?;
        return Ok((accepted(&confirmed.plan), Some(confirmed.plan)));
    }

    let intent = control_intent(
        &format!("control-{}", caller.name()),
        target,
        action,
        &command.params,
        risk,
    );
    let meta = PlanMeta {
        kind,
        name: name.unwrap_or_else(|| format!("control:{target}:{action}")),
        module: target.to_owned(),
        action: action.to_owned(),
        principal: caller.name().to_owned(),
    };
    let planned = make_plan(
        state,
        caller,
        &intent,
        Origin::ModuleCall { module },
        false,
        meta,
    )
    .await?;
    if let Some(token) = planned.token {
        let response = ControlResponse {
            status: ControlStatus::PendingConfirmation,
            action_id: None,
            confirm_token: Some(token.expose().to_owned()),
            confirm_expires_at: planned.expires_at,
            reason: Some(format!("{risk} risk: confirm with this token")),
            plan_id: Some(planned.plan.plan_id),
            result: None,
        };
        return Ok((response, None));
    }
    if kind == PlanKind::Task {
        // v6 tasks run in the background; the caller polls /tasks/{id}.
        let options = RunOptions {
            request_id: request_id.to_owned(),
            principal: caller.name().to_owned(),
            resumed: false,
        };
        if let Err(e) = state.runner.start(planned.plan.plan_id, options) {
            let _ = state
                .db
                .cancel_plan(planned.plan.plan_id, "queue_full", None, Utc::now())
                .await;
            return Err(e.into());
        }
        let stored = load_plan(state, planned.plan.plan_id).await?;
        return Ok((accepted(&stored), Some(stored)));
    }
    let stored = run_plan(state, caller, planned.plan.plan_id, request_id).await?;
    Ok((accepted(&stored), Some(stored)))
}

/// Records and answers a control action refused by the deny rule; nothing
/// is called.
async fn deny(
    state: &AppState,
    caller: &Caller,
    target: &str,
    action: &str,
    now: chrono::DateTime<Utc>,
) -> Result<(ControlResponse, Option<StoredPlan>), ApiError> {
    let id = state
        .db
        .record_action(NewAction {
            module: target.to_owned(),
            action: action.to_owned(),
            reason: "denied by policy".into(),
            principal: caller.name().to_owned(),
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
    Ok((response, None))
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
