//! Madre's planner: a classified [`Intent`] in, a [`Plan`] of steps out.
//!
//! Pure: the clock and the id source are passed in, so the same input always
//! gives the same plan. The rules are those of SPEC §6, applied in order:
//! denial, confirmation gate, audio mode, then the MADRE-mode routes, and
//! finally disabled modules turned into NOOP steps.

use chrono::{DateTime, Utc};
use madre_models::{EndReason, Intent, Mode, Module, ModuleSet, Plan, Status, Step, StepType};
use serde_json::{Value, json};
use uuid::Uuid;

/// What Madre can do, listed by the help step.
pub const CAPABILITIES: &[&str] = &[
    "chat: answer through Switch (engine choice) and Hermes (execution)",
    "status / health: probe the VX11 modules",
    "audio work (mix, master, render…): delegated to Shub",
    "drift audit: ask Manifestator",
    "in parallel: hand a batch to Hormiguero",
    "in the background: queue a daughter task for the spawner",
    "restart, update, delete…: run after a human confirms with a token",
];

/// Where the intent came from, which decides the shape of the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A chat message: the routes of SPEC §6 rule 4.
    Chat,
    /// A control action or v6 task: one CALL_MODULE step to `module`.
    ModuleCall {
        /// The module to call.
        module: Module,
    },
}

/// Everything the planner needs besides the intent.
#[derive(Debug, Clone, Copy)]
pub struct PlanRequest<'a> {
    /// The classified intent.
    pub intent: &'a Intent,
    /// Where it came from.
    pub origin: Origin,
    /// True when the deny rule refused it.
    pub denied: bool,
    /// Modules that are enabled; steps for the others become NOOP.
    pub enabled: ModuleSet,
    /// The time the plan is made.
    pub now: DateTime<Utc>,
}

/// Builds the plan for `request`, drawing the plan id from `new_id`; each
/// step's id derives from it ([`Step::id_in_plan`]).
pub fn plan(request: &PlanRequest<'_>, new_id: impl FnOnce() -> Uuid) -> Plan {
    let intent = request.intent;
    let now = request.now;
    let plan_id = new_id();
    let mut plan = Plan {
        plan_id,
        intent_id: intent.intent_id,
        session_id: intent.session_id.clone(),
        status: Status::Pending,
        mode: intent.mode,
        steps: Vec::new(),
        warnings: Vec::new(),
        error: None,
        created_at: now,
        updated_at: now,
    };

    // Rule 1: a denied intent gets no step at all.
    if request.denied {
        plan.status = Status::Error;
        plan.error = Some(EndReason::Denied.into());
        plan.warnings.push(EndReason::Denied.into());
        return plan;
    }

    // Rule 2: the confirmation gate comes first and blocks the rest.
    if intent.requires_confirmation {
        let mut gate = Step::new(
            Step::id_in_plan(plan_id, plan.steps.len()),
            StepType::AwaitConfirmation,
            json!({ "risk": intent.risk }),
            now,
        );
        gate.status = Status::Waiting;
        plan.steps.push(gate);
        plan.status = Status::Waiting;
    }

    let work = match request.origin {
        Origin::ModuleCall { module } => vec![module_call(intent, module, plan_id)],
        Origin::Chat => chat_steps(intent, request.enabled),
    };
    for (step_type, payload, optional) in work {
        let mut step = Step::new(
            Step::id_in_plan(plan_id, plan.steps.len()),
            step_type,
            payload,
            now,
        );
        step.optional = optional;
        plan.steps.push(step);
    }

    // Rule 5: steps for disabled modules become NOOP with a warning.
    for step in &mut plan.steps {
        let module = step.module();
        if step.step_type != StepType::Noop
            && module != Module::Madre
            && !request.enabled.contains(module)
        {
            let warning = format!("{module}_disabled");
            step.payload = json!({
                "module": module,
                "replaced": step.step_type,
                "reason": warning,
            });
            step.step_type = StepType::Noop;
            if !plan.warnings.contains(&warning) {
                plan.warnings.push(warning);
            }
        }
    }
    plan
}

type StepSpec = (StepType, Value, bool);

fn module_call(intent: &Intent, module: Module, plan_id: Uuid) -> StepSpec {
    let params = Value::Object(intent.dsl.parameters.clone());
    (
        StepType::CallModule,
        json!({
            "module": module,
            "action": intent.dsl.action,
            "params": params,
            "task_id": plan_id,
        }),
        false,
    )
}

fn chat_steps(intent: &Intent, enabled: ModuleSet) -> Vec<StepSpec> {
    let dsl = &intent.dsl;
    let text = dsl.original_text.as_str();

    // Rule 3: audio work goes to Shub.
    if intent.mode == Mode::AudioEngineer {
        return vec![(
            StepType::CallShub,
            json!({
                "task_id": intent.intent_id,
                "task_type": "audio",
                "payload": {
                    "action": dsl.action,
                    "parameters": dsl.parameters,
                    "text": text,
                    "session_id": intent.session_id,
                },
            }),
            false,
        )];
    }

    // Rule 4: MADRE mode, by intent.
    let action = dsl.action.as_str();
    if matches!(action, "status" | "health") || (action == "analyze" && !dsl.targets.is_empty()) {
        let mut targets: Vec<Module> = dsl
            .targets
            .iter()
            .copied()
            .filter(|m| *m != Module::Madre)
            .collect();
        if targets.is_empty() {
            targets = Module::REMOTE.to_vec();
        }
        let disabled: Vec<Module> = targets
            .iter()
            .copied()
            .filter(|m| !enabled.contains(*m))
            .collect();
        return vec![(
            StepType::SystemHealthcheck,
            json!({ "targets": targets, "disabled": disabled }),
            false,
        )];
    }
    if dsl.flag("drift") {
        return vec![(StepType::CallManifestator, json!({}), false)];
    }
    if dsl.flag("parallel") {
        return vec![(
            StepType::CallHormigueroTask,
            json!({
                "intent_id": intent.intent_id,
                "tasks": [{
                    "action": dsl.action,
                    "domain": dsl.domain,
                    "targets": dsl.targets,
                    "parameters": dsl.parameters,
                }],
                "prompt": text,
            }),
            false,
        )];
    }
    if dsl.flag("spawn") {
        return vec![(
            StepType::SpawnerRequest,
            json!({
                "task_type": dsl.action,
                "description": text,
                "priority": 0,
                "intent_id": intent.intent_id,
            }),
            false,
        )];
    }
    if action == "help" {
        return vec![(
            StepType::Noop,
            json!({ "reason": "help", "capabilities": CAPABILITIES }),
            false,
        )];
    }
    vec![
        (
            StepType::CallSwitch,
            json!({
                "prompt": text,
                "metadata": {
                    "session_id": intent.session_id,
                    "intent_id": intent.intent_id,
                    "mode": intent.mode,
                    "domain": dsl.domain,
                    "action": dsl.action,
                },
                "source": "madre",
            }),
            true,
        ),
        (
            StepType::CallHermes,
            json!({
                "prompt": text,
                "metadata": {
                    "session_id": intent.session_id,
                    "intent_id": intent.intent_id,
                },
            }),
            false,
        ),
    ]
}
