//! What each step type does when it runs.

use chrono::Utc;
use madre_db::NewDaughterTask;
use madre_delegation::{PROBE_TIMEOUT, reply_text, request_for_step};
use madre_models::{DepState, Module, OwnAction, Plan, StepType};
use serde_json::{Value, json};
use std::collections::BTreeMap;

use crate::Inner;

/// How a step ended.
pub(crate) enum StepOutcome {
    /// Finished; `retried` when the module needed the one retry.
    Done { result: Value, retried: bool },
    /// Failed with a machine code and a human message.
    Failed { code: String, message: String },
    /// Waits for something outside (the spawner).
    Waiting { result: Value },
}

impl StepOutcome {
    /// A word for logs.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            StepOutcome::Done { .. } => "done",
            StepOutcome::Failed { .. } => "failed",
            StepOutcome::Waiting { .. } => "waiting",
        }
    }
}

/// The result of a step that needs no call because its answer is already
/// known: a CALL_SWITCH whose engine Switch chose when it was asked for the
/// intent at intake (SPEC §4a).
pub(crate) fn answered_without_call(step: &madre_models::Step) -> Option<Value> {
    let answered = step.step_type == StepType::CallSwitch
        && step.payload.get("answered_at_intake") == Some(&Value::Bool(true));
    answered.then(|| {
        json!({
            "engine": step.payload.get("engine").cloned().unwrap_or(Value::Null),
            "answered_at_intake": true,
        })
    })
}

/// Why a CALL_SWITCH step fails without a call: Switch did not answer this
/// chat's intake question (timeout, unreachable, or its breaker open), so
/// calling it again, with the full call timeout and a retry, would only
/// cost the chat more time. The plan goes on with the fallback engine.
pub(crate) fn unavailable_at_intake(step: &madre_models::Step) -> Option<String> {
    if step.step_type != StepType::CallSwitch {
        return None;
    }
    step.payload
        .get(UNAVAILABLE_AT_INTAKE)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// The payload key of a CALL_SWITCH step whose Switch did not answer at
/// intake; its value says why.
pub const UNAVAILABLE_AT_INTAKE: &str = "unavailable_at_intake";

/// The text a step's result offers the user, if any.
pub(crate) fn reply_of(result: &Value) -> Option<String> {
    reply_text(result)
}

fn modules_in(payload: &Value, key: &str) -> Vec<Module> {
    payload
        .get(key)
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .filter_map(|m| m.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn run_step(
    inner: &Inner,
    plan: &Plan,
    idx: usize,
    engine: Option<&str>,
    request_id: &str,
) -> StepOutcome {
    let step = &plan.steps[idx];
    if let Some(result) = answered_without_call(step) {
        return StepOutcome::Done {
            result,
            retried: false,
        };
    }
    if let Some(why) = unavailable_at_intake(step) {
        return StepOutcome::Failed {
            code: format!("{}_unavailable", Module::Switch),
            message: format!(
                "switch was not called again: it did not answer this chat's intake call ({why})"
            ),
        };
    }
    match step.step_type {
        StepType::SystemHealthcheck => {
            let targets = modules_in(&step.payload, "targets");
            let mut deps: BTreeMap<Module, DepState> =
                inner.delegator.probe(&targets, PROBE_TIMEOUT).await;
            for module in modules_in(&step.payload, "disabled") {
                deps.insert(module, DepState::Disabled);
            }
            let summary = deps
                .iter()
                .map(|(m, s)| format!("{m}: {}", json!(s).as_str().unwrap_or("unknown")))
                .collect::<Vec<_>>()
                .join(", ");
            StepOutcome::Done {
                result: json!({ "deps": deps, "reply": format!("Module health: {summary}") }),
                retried: false,
            }
        }
        StepType::Noop => {
            let mut result = step.payload.clone();
            if let Some(list) = step.payload.get("capabilities").and_then(Value::as_array) {
                let lines: Vec<&str> = list.iter().filter_map(Value::as_str).collect();
                result["reply"] = json!(format!("I can help with:\n- {}", lines.join("\n- ")));
            }
            StepOutcome::Done {
                result,
                retried: false,
            }
        }
        StepType::AwaitConfirmation => StepOutcome::Waiting {
            result: json!({ "waiting_for": "confirmation" }),
        },
        StepType::SpawnerRequest => {
            let payload = &step.payload;
            let task = NewDaughterTask {
                intent_id: Some(plan.intent_id),
                source: "madre".into(),
                priority: payload.get("priority").and_then(Value::as_i64).unwrap_or(0),
                task_type: payload
                    .get("task_type")
                    .and_then(Value::as_str)
                    .unwrap_or("task")
                    .into(),
                description: payload
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .into(),
                max_retries: 2,
                metadata: json!({ "session_id": plan.session_id }),
                plan_json: None,
                plan_id: Some(plan.plan_id),
                step_id: Some(step.step_id),
            };
            match inner.db.enqueue_daughter_task(task, Utc::now()).await {
                Ok(id) => StepOutcome::Waiting {
                    result: json!({
                        "daughter_task_id": id,
                        "reply": format!("Queued background task {id} for the spawner"),
                    }),
                },
                Err(e) => StepOutcome::Failed {
                    code: "storage".into(),
                    message: e.to_string(),
                },
            }
        }
        StepType::CallModule if step.module() == Module::Madre => {
            let Some(actions) = inner.own_actions.get() else {
                return StepOutcome::Failed {
                    code: "no_own_actions".into(),
                    message: "this Madre runs no actions of its own".into(),
                };
            };
            let named = step
                .payload
                .get("action")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let Ok(action) = named.parse::<OwnAction>() else {
                return StepOutcome::Failed {
                    code: "madre_action_failed".into(),
                    message: format!("madre has no action \"{named}\""),
                };
            };
            let params = step.payload.get("params").cloned().unwrap_or(Value::Null);
            match actions.run(action, &params).await {
                Ok(result) => StepOutcome::Done {
                    result,
                    retried: false,
                },
                Err(message) => StepOutcome::Failed {
                    code: "madre_action_failed".into(),
                    message,
                },
            }
        }
        StepType::CallSwitch
        | StepType::CallHermes
        | StepType::CallHormigueroTask
        | StepType::CallManifestator
        | StepType::CallShub
        | StepType::CallModule => {
            let Some(request) = request_for_step(step, engine, request_id) else {
                return StepOutcome::Failed {
                    code: "bad_step".into(),
                    message: "step has no module call".into(),
                };
            };
            match inner.delegator.call(&request).await {
                Ok(outcome) => StepOutcome::Done {
                    result: outcome.body,
                    retried: outcome.attempts > 1,
                },
                Err(e) => StepOutcome::Failed {
                    code: e.code(),
                    message: e.to_string(),
                },
            }
        }
    }
}
