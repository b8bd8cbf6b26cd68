//! One test per planning rule of SPEC §6 and per mode, built from real parses.

use chrono::{TimeZone, Utc};
use madre_models::{Intent, Mode, Module, ModuleSet, Plan, SessionId, Status, StepType};
use madre_planner::{Origin, PlanRequest, plan};
use madre_policy::RiskTables;
use serde_json::json;
use uuid::Uuid;

struct Case {
    text: &'static str,
    mode: Mode,
    enabled: ModuleSet,
    origin: Origin,
}

impl Case {
    fn new(text: &'static str) -> Self {
        Self {
            text,
            mode: Mode::Madre,
            enabled: ModuleSet::all(),
            origin: Origin::Chat,
        }
    }
    fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }
    fn without(mut self, module: Module) -> Self {
        self.enabled = self.enabled.without(module);
        self
    }
    fn origin(mut self, origin: Origin) -> Self {
        self.origin = origin;
        self
    }
    fn run(&self) -> Plan {
        let dsl = madre_parser::parse(self.text);
        let assessment = RiskTables::default().assess(&dsl);
        let intent = Intent {
            intent_id: Uuid::new_v4(),
            session_id: SessionId::parse("s-1".into()).unwrap(),
            mode: self.mode,
            risk: assessment.risk(),
            requires_confirmation: assessment.requires_confirmation(),
            targets: dsl.targets.clone(),
            dsl,
            created_at: Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap(),
            alternatives: Vec::new(),
        };
        let request = PlanRequest {
            intent: &intent,
            origin: self.origin,
            denied: assessment.is_denied(),
            enabled: self.enabled,
            now: intent.created_at,
        };
        let plan = plan(&request, Uuid::new_v4);
        assert_eq!(plan.intent_id, intent.intent_id);
        plan
    }
}

fn types(plan: &Plan) -> Vec<StepType> {
    plan.steps.iter().map(|s| s.step_type).collect()
}

#[test]
fn rule1_denied_intents_get_no_steps() {
    let plan = Case::new("stop tentaculo_link").run();
    assert!(plan.steps.is_empty());
    assert_eq!(plan.status, Status::Error);
    assert_eq!(plan.error.as_deref(), Some("denied"));
    assert_eq!(plan.warnings, vec!["denied"]);
}

#[test]
fn rule2_confirmation_gate_is_the_first_blocking_waiting_step() {
    for text in ["restart the switch", "delete all data"] {
        let plan = Case::new(text).run();
        assert_eq!(
            types(&plan),
            vec![
                StepType::AwaitConfirmation,
                StepType::CallSwitch,
                StepType::CallHermes
            ],
            "{text}"
        );
        let gate = &plan.steps[0];
        assert!(gate.blocking && !gate.optional);
        assert_eq!(gate.status, Status::Waiting);
        assert_eq!(plan.status, Status::Waiting);
        assert!(plan.steps[1..].iter().all(|s| s.status == Status::Pending));
    }
    assert_eq!(
        Case::new("delete all data").run().steps[0].payload,
        json!({"risk": "HIGH"})
    );
    assert_eq!(
        Case::new("restart the switch").run().steps[0].payload,
        json!({"risk": "MED"})
    );
}

#[test]
fn rule3_audio_mode_calls_shub() {
    let plan = Case::new("mix these 3 stems")
        .mode(Mode::AudioEngineer)
        .run();
    assert_eq!(types(&plan), vec![StepType::CallShub]);
    let payload = &plan.steps[0].payload;
    assert_eq!(payload["task_type"], json!("audio"));
    assert_eq!(payload["task_id"], json!(plan.intent_id));
    assert_eq!(payload["payload"]["parameters"]["stems"], json!(3));
    assert_eq!(plan.status, Status::Pending);
    // a HIGH audio intent still waits for confirmation first
    let plan = Case::new("delete the stems")
        .mode(Mode::AudioEngineer)
        .run();
    assert_eq!(
        types(&plan),
        vec![StepType::AwaitConfirmation, StepType::CallShub]
    );
}

#[test]
fn rule4_status_and_analyze_with_targets_are_healthchecks() {
    let plan = Case::new("status of hermes and switch").run();
    assert_eq!(types(&plan), vec![StepType::SystemHealthcheck]);
    assert_eq!(
        plan.steps[0].payload["targets"],
        json!(["hermes", "switch"])
    );

    let plan = Case::new("health").run();
    assert_eq!(
        plan.steps[0].payload["targets"].as_array().unwrap().len(),
        Module::REMOTE.len()
    );

    let plan = Case::new("check hermes").run();
    assert_eq!(types(&plan), vec![StepType::SystemHealthcheck]);

    // analyze without a target is a question for Switch and Hermes
    let plan = Case::new("analyze the logs").run();
    assert_eq!(
        types(&plan),
        vec![StepType::CallSwitch, StepType::CallHermes]
    );
}

#[test]
fn rule4_drift_parallel_spawn_and_help() {
    assert_eq!(
        types(&Case::new("look for drift").run()),
        vec![StepType::CallManifestator]
    );

    // Running tests or an import runs code: the effect is execute, so the
    // plan waits for a human before the delegated step.
    let plan = Case::new("run the tests in parallel").run();
    assert_eq!(
        types(&plan),
        vec![StepType::AwaitConfirmation, StepType::CallHormigueroTask]
    );
    assert_eq!(
        plan.steps[1].payload["prompt"],
        json!("run the tests in parallel")
    );
    assert_eq!(plan.steps[1].payload["tasks"].as_array().unwrap().len(), 1);

    let plan = Case::new("run the import in the background").run();
    assert_eq!(
        types(&plan),
        vec![StepType::AwaitConfirmation, StepType::SpawnerRequest]
    );
    assert_eq!(
        plan.steps[1].payload["description"],
        json!("run the import in the background")
    );

    let plan = Case::new("help").run();
    assert_eq!(types(&plan), vec![StepType::Noop]);
    assert!(
        !plan.steps[0].payload["capabilities"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn rule4_chat_goes_switch_then_hermes_and_switch_is_optional() {
    let plan = Case::new("hello, what can you tell me about the weather").run();
    assert_eq!(
        types(&plan),
        vec![StepType::CallSwitch, StepType::CallHermes]
    );
    assert!(plan.steps[0].optional);
    assert!(!plan.steps[1].optional);
    assert_eq!(plan.steps[0].payload["source"], json!("madre"));
    assert_eq!(plan.steps[0].payload["metadata"]["action"], json!("chat"));
    assert_eq!(plan.status, Status::Pending);
    assert!(
        plan.steps
            .iter()
            .all(|s| s.attempts == 0 && s.status == Status::Pending)
    );
}

#[test]
fn madre_never_parallelises_on_its_own() {
    for text in [
        "run the nightly job",
        "execute everything",
        "analyze the logs",
    ] {
        assert!(
            !types(&Case::new(text).run()).contains(&StepType::CallHormigueroTask),
            "{text}"
        );
    }
}

#[test]
fn rule5_disabled_modules_become_noop_with_a_warning() {
    let plan = Case::new("hello").without(Module::Hermes).run();
    assert_eq!(types(&plan), vec![StepType::CallSwitch, StepType::Noop]);
    assert_eq!(plan.warnings, vec!["hermes_disabled"]);
    assert_eq!(plan.steps[1].payload["replaced"], json!("CALL_HERMES"));
    assert_eq!(plan.steps[1].module(), Module::Hermes);

    let plan = Case::new("mix the track")
        .mode(Mode::AudioEngineer)
        .without(Module::Shub)
        .run();
    assert_eq!(types(&plan), vec![StepType::Noop]);
    assert_eq!(plan.warnings, vec!["shub_disabled"]);

    // the gate stays: confirmation is Madre's own step
    let plan = Case::new("restart switch").without(Module::Switch).run();
    assert_eq!(
        types(&plan),
        vec![
            StepType::AwaitConfirmation,
            StepType::Noop,
            StepType::CallHermes
        ]
    );

    // healthchecks report disabled modules instead of skipping the probe
    let plan = Case::new("status").without(Module::Mcp).run();
    assert_eq!(plan.steps[0].payload["disabled"], json!(["mcp"]));
    assert!(plan.warnings.is_empty());
}

#[test]
fn module_calls_for_control_and_tasks() {
    let plan = Case::new("restart")
        .origin(Origin::ModuleCall {
            module: Module::Shub,
        })
        .run();
    assert_eq!(
        types(&plan),
        vec![StepType::AwaitConfirmation, StepType::CallModule]
    );
    let call = &plan.steps[1];
    assert_eq!(call.payload["module"], json!("shub"));
    assert_eq!(call.payload["action"], json!("restart"));
    assert_eq!(call.payload["task_id"], json!(plan.plan_id));
    assert_eq!(call.module(), Module::Shub);

    let plan = Case::new("status")
        .origin(Origin::ModuleCall {
            module: Module::Mcp,
        })
        .without(Module::Mcp)
        .run();
    assert_eq!(types(&plan), vec![StepType::Noop]);
    assert_eq!(plan.warnings, vec!["mcp_disabled"]);
}

#[test]
fn plan_and_step_ids_are_all_distinct() {
    let plan = Case::new("restart the switch").run();
    let mut ids: Vec<Uuid> = plan.steps.iter().map(|s| s.step_id).collect();
    ids.push(plan.plan_id);
    let before = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), before);
}
