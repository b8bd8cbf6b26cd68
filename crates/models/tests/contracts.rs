//! The JSON contract of SPEC §3: enum spellings, exact field names, round
//! trips, and validation errors that name the field.

use chrono::{TimeZone, Utc};
use madre_models::*;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

fn now() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap()
}

fn sample_dsl() -> Dsl {
    let mut parameters = serde_json::Map::new();
    parameters.insert("stems".into(), json!(3));
    Dsl {
        domain: "audio".into(),
        action: "chat".into(),
        parameters,
        targets: vec![Module::Shub],
        confidence: 0.3,
        original_text: "mix these 3 stems".into(),
        warnings: vec![],
        source: madre_models::DslSource::Fallback,
        effect: madre_models::Effect::Read,
    }
}

fn sample_step() -> Step {
    Step::new(
        Uuid::new_v4(),
        StepType::CallShub,
        json!({"task_id": "t"}),
        now(),
    )
}

fn sample_plan() -> Plan {
    Plan {
        plan_id: Uuid::new_v4(),
        intent_id: Uuid::new_v4(),
        session_id: SessionId::parse("s-1".into()).unwrap(),
        status: Status::Done,
        mode: Mode::AudioEngineer,
        steps: vec![sample_step()],
        warnings: vec![],
        error: None,
        created_at: now(),
        updated_at: now(),
    }
}

#[test]
fn enums_serialise_in_screaming_case_exactly_as_named() {
    let cases: Vec<(Value, &str)> = vec![
        (json!(Mode::Madre), "MADRE"),
        (json!(Mode::AudioEngineer), "AUDIO_ENGINEER"),
        (json!(RiskLevel::Low), "LOW"),
        (json!(RiskLevel::Med), "MED"),
        (json!(RiskLevel::High), "HIGH"),
        (json!(Status::Pending), "PENDING"),
        (json!(Status::Running), "RUNNING"),
        (json!(Status::Waiting), "WAITING"),
        (json!(Status::Done), "DONE"),
        (json!(Status::Error), "ERROR"),
        (json!(Status::Cancelled), "CANCELLED"),
        (json!(StepType::SystemHealthcheck), "SYSTEM_HEALTHCHECK"),
        (json!(StepType::AwaitConfirmation), "AWAIT_CONFIRMATION"),
        (json!(StepType::CallSwitch), "CALL_SWITCH"),
        (json!(StepType::CallHermes), "CALL_HERMES"),
        (json!(StepType::CallHormigueroTask), "CALL_HORMIGUERO_TASK"),
        (json!(StepType::CallManifestator), "CALL_MANIFESTATOR"),
        (json!(StepType::CallShub), "CALL_SHUB"),
        (json!(StepType::CallModule), "CALL_MODULE"),
        (json!(StepType::SpawnerRequest), "SPAWNER_REQUEST"),
        (json!(StepType::Noop), "NOOP"),
        (json!(Module::TentaculoLink), "tentaculo_link"),
    ];
    for (value, name) in cases {
        assert_eq!(value, json!(name));
    }
}

#[test]
fn enum_text_names_agree_with_serde_and_parse_back() {
    for status in [
        Status::Pending,
        Status::Running,
        Status::Waiting,
        Status::Done,
        Status::Error,
        Status::Cancelled,
    ] {
        assert_eq!(json!(status), json!(status.as_str()));
        assert_eq!(status.as_str().parse::<Status>().unwrap(), status);
    }
    for module in Module::ALL {
        assert_eq!(json!(module), json!(module.as_str()));
        assert_eq!(module.as_str().parse::<Module>().unwrap(), module);
    }
    assert_eq!("nope".parse::<Mode>().unwrap_err().field, "mode");

    // Each vocabulary's stored names (as_str) and its JSON names (serde)
    // are written apart; they must be the same words, and parse back.
    fn agree<T>(values: &[T], name: fn(T) -> &'static str)
    where
        T: Copy + std::fmt::Debug + PartialEq + serde::Serialize + std::str::FromStr,
        <T as std::str::FromStr>::Err: std::fmt::Debug,
    {
        let mut seen = std::collections::BTreeSet::new();
        for &value in values {
            assert_eq!(json!(value), json!(name(value)), "{value:?}");
            assert_eq!(name(value).parse::<T>().unwrap(), value);
            assert!(seen.insert(name(value)), "{value:?}'s name is taken");
        }
    }
    agree(
        &[
            EventType::PlanCreated,
            EventType::PlanWaiting,
            EventType::ApprovalRecorded,
            EventType::PlanConfirmed,
            EventType::PlanRejected,
            EventType::PlanExpired,
            EventType::StepStarted,
            EventType::StepFinished,
            EventType::PlanFinished,
            EventType::PlanTakenOver,
        ],
        EventType::as_str,
    );
    agree(
        &[
            EndReason::Timeout,
            EndReason::Cancelled,
            EndReason::Denied,
            EndReason::ConfirmationExpired,
            EndReason::ConfirmationVoid,
            EndReason::Rejected,
        ],
        EndReason::as_str,
    );
    agree(&[OwnAction::Restart, OwnAction::Reload], OwnAction::as_str);
    agree(&[Mode::Madre, Mode::AudioEngineer], Mode::as_str);
    agree(
        &[RiskLevel::Low, RiskLevel::Med, RiskLevel::High],
        RiskLevel::as_str,
    );
    agree(
        &[
            StepType::SystemHealthcheck,
            StepType::AwaitConfirmation,
            StepType::CallSwitch,
            StepType::CallHermes,
            StepType::CallHormigueroTask,
            StepType::CallManifestator,
            StepType::CallShub,
            StepType::CallModule,
            StepType::SpawnerRequest,
            StepType::Noop,
        ],
        StepType::as_str,
    );
}

#[test]
fn risk_levels_order_and_confirmation_rule() {
    assert!(RiskLevel::Low < RiskLevel::Med && RiskLevel::Med < RiskLevel::High);
    assert!(!RiskLevel::Low.requires_confirmation());
    assert!(RiskLevel::Med.requires_confirmation());
    assert!(RiskLevel::High.requires_confirmation());
}

#[test]
fn dsl_intent_step_plan_have_exactly_the_documented_fields_and_round_trip() {
    let dsl = sample_dsl();
    let v = serde_json::to_value(&dsl).unwrap();
    assert_eq!(
        keys(&v),
        sorted(&[
            "domain",
            "action",
            "parameters",
            "targets",
            "confidence",
            "original_text",
            "warnings",
            "source",
            "effect"
        ])
    );
    assert_eq!(v["source"], json!("fallback"));
    assert_eq!(serde_json::from_value::<Dsl>(v).unwrap(), dsl);

    let intent = Intent {
        intent_id: Uuid::new_v4(),
        session_id: SessionId::parse("s-1".into()).unwrap(),
        mode: Mode::AudioEngineer,
        dsl: dsl.clone(),
        risk: RiskLevel::Low,
        requires_confirmation: false,
        targets: vec![Module::Shub],
        created_at: now(),
        alternatives: vec![],
    };
    let v = serde_json::to_value(&intent).unwrap();
    assert_eq!(
        keys(&v),
        sorted(&[
            "intent_id",
            "session_id",
            "mode",
            "dsl",
            "risk",
            "requires_confirmation",
            "targets",
            "created_at"
        ])
    );
    assert_eq!(v["created_at"], json!("2026-11-22T10:00:00Z"));
    assert_eq!(serde_json::from_value::<Intent>(v).unwrap(), intent);
    // Switch-first intake (SPEC 4a): the other reading is kept, when there is one.
    let mut switch = dsl.clone();
    switch.source = madre_models::DslSource::Switch;
    let both = Intent {
        alternatives: vec![switch],
        ..intent.clone()
    };
    let v = serde_json::to_value(&both).unwrap();
    assert_eq!(v["alternatives"][0]["source"], json!("switch"));
    assert_eq!(serde_json::from_value::<Intent>(v).unwrap(), both);

    let mut step = sample_step();
    let v = serde_json::to_value(&step).unwrap();
    assert_eq!(
        keys(&v),
        sorted(&[
            "step_id",
            "type",
            "payload",
            "blocking",
            "optional",
            "status",
            "attempts",
            "created_at",
            "updated_at"
        ])
    );
    step.result = Some(json!({"reply": "ok"}));
    step.error = Some("boom".into());
    let v = serde_json::to_value(&step).unwrap();
    assert!(v.get("result").is_some() && v.get("error").is_some());
    assert_eq!(serde_json::from_value::<Step>(v).unwrap(), step);

    let plan = sample_plan();
    let v = serde_json::to_value(&plan).unwrap();
    assert_eq!(
        keys(&v),
        sorted(&[
            "plan_id",
            "intent_id",
            "session_id",
            "status",
            "mode",
            "steps",
            "warnings",
            "created_at",
            "updated_at"
        ])
    );
    assert_eq!(serde_json::from_value::<Plan>(v).unwrap(), plan);
}

#[test]
fn chat_response_carries_the_confirm_token_only_when_set() {
    let mut response = ChatResponse {
        response: "done".into(),
        session_id: SessionId::parse("s".into()).unwrap(),
        intent_id: Uuid::new_v4(),
        plan_id: Uuid::new_v4(),
        status: Status::Done,
        mode: Mode::Madre,
        risk: RiskLevel::Low,
        warnings: vec![],
        targets: vec![],
        actions: vec![ActionSummary::from(&sample_step())],
        confirm_token: None,
        confirm_expires_at: None,
    };
    let v = serde_json::to_value(&response).unwrap();
    assert_eq!(
        keys(&v),
        sorted(&[
            "response",
            "session_id",
            "intent_id",
            "plan_id",
            "status",
            "mode",
            "risk",
            "warnings",
            "targets",
            "actions"
        ])
    );
    assert_eq!(
        keys(&v["actions"][0]),
        sorted(&["step_id", "type", "module", "status"])
    );
    assert_eq!(v["actions"][0]["module"], json!("shub"));

    response.status = Status::Waiting;
    response.confirm_token = Some("secret-token-value".into());
    response.confirm_expires_at = Some(now());
    let v = serde_json::to_value(&response).unwrap();
    assert_eq!(v["confirm_token"], json!("secret-token-value"));
    assert!(v.get("confirm_expires_at").is_some());
    assert!(
        !format!("{response:?}").contains("secret-token-value"),
        "Debug must not print the token"
    );
    assert_eq!(serde_json::from_value::<ChatResponse>(v).unwrap(), response);
}

#[test]
fn control_task_health_and_error_shapes() {
    let control = ControlResponse {
        status: ControlStatus::PendingConfirmation,
        action_id: None,
        confirm_token: Some("tok".into()),
        confirm_expires_at: Some(now()),
        reason: None,
        plan_id: Some(Uuid::new_v4()),
        result: None,
    };
    let v = serde_json::to_value(&control).unwrap();
    assert_eq!(v["status"], json!("pending_confirmation"));
    assert_eq!(
        keys(&v),
        sorted(&["status", "confirm_token", "confirm_expires_at", "plan_id"])
    );
    assert_eq!(json!(ControlStatus::Denied), json!("denied"));

    let accepted = TaskAccepted {
        task_id: Uuid::new_v4(),
        status: Status::Pending,
        risk: RiskLevel::Low,
        confirm_token: None,
    };
    assert_eq!(
        keys(&json!(accepted)),
        sorted(&["task_id", "status", "risk"])
    );

    let mut deps = BTreeMap::new();
    deps.insert(Module::Switch, DepState::Up);
    deps.insert(Module::Shub, DepState::Disabled);
    let health = HealthResponse {
        module: "madre".into(),
        status: HealthStatus::Degraded,
        version: "0.1.0".into(),
        time: now(),
        deps,
        db: DepState::Up,
        breakers: BTreeMap::from([
            (Module::Switch, BreakerState::HalfOpen),
            (Module::Hermes, BreakerState::Closed),
        ]),
        warnings: vec![],
    };
    let v = json!(health);
    assert_eq!(
        keys(&v),
        sorted(&[
            "module", "status", "version", "time", "deps", "db", "breakers"
        ])
    );
    assert_eq!(v["db"], json!("up"));
    assert_eq!(
        v["breakers"],
        json!({"switch": "half_open", "hermes": "closed"})
    );
    assert_eq!(v["deps"], json!({"switch": "up", "shub": "disabled"}));
    assert_eq!(v["status"], json!("degraded"));

    let err = ErrorBody {
        error: "unauthorized".into(),
        detail: "missing token".into(),
        request_id: "r".into(),
    };
    assert_eq!(
        keys(&json!(err)),
        sorted(&["error", "detail", "request_id"])
    );

    let v6 = ChatV6Response {
        session_id: SessionId::parse("s".into()).unwrap(),
        response: "hi".into(),
        task_id: Uuid::new_v4(),
        actions_taken: vec![ActionTaken {
            module: "hermes".into(),
            action: "CALL_HERMES".into(),
            result: json!("hi"),
        }],
        status: V6Status::Ok,
        timestamp: now(),
        confirm_token: None,
        confirm_expires_at: None,
    };
    assert_eq!(
        keys(&json!(v6)),
        sorted(&[
            "session_id",
            "response",
            "task_id",
            "actions_taken",
            "status",
            "timestamp"
        ])
    );
    let waiting = ChatV6Response {
        status: V6Status::PendingConfirmation,
        confirm_token: Some("t0ken-t0ken-t0ken-t0ken".into()),
        confirm_expires_at: Some(now()),
        ..v6
    };
    let v = json!(waiting);
    assert_eq!(v["status"], json!("pending_confirmation"));
    assert!(v["confirm_token"].is_string() && v["confirm_expires_at"].is_string());
    assert!(!format!("{waiting:?}").contains("t0ken"), "never in Debug");
}

#[test]
fn chat_request_validation_names_the_field() {
    let ok: ChatRequest = serde_json::from_value(
        json!({"message": "hello", "session_id": "abc-1", "context": {"mode": "AUDIO_ENGINEER"}}),
    )
    .unwrap();
    let cmd = ok.validate().unwrap();
    assert_eq!(cmd.message.as_str(), "hello");
    assert_eq!(cmd.session_id.unwrap().as_str(), "abc-1");
    assert_eq!(cmd.mode, Some(Mode::AudioEngineer));

    let check = |body: Value, field: &str| {
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        let err = req.validate().unwrap_err();
        assert_eq!(err.field, field, "for {body}");
        assert!(err.to_string().contains(field));
    };
    check(json!({"message": ""}), "message");
    check(json!({"message": "   \n\t"}), "message");
    check(
        json!({"message": "a".repeat(MAX_MESSAGE_CHARS + 1)}),
        "message",
    );
    check(json!({"message": "hi", "session_id": ""}), "session_id");
    check(json!({"message": "hi", "session_id": "a b"}), "session_id");
    check(
        json!({"message": "hi", "session_id": "x".repeat(129)}),
        "session_id",
    );
    check(
        json!({"message": "hi", "context": {"mode": "LOUD"}}),
        "context.mode",
    );
    check(
        json!({"message": "hi", "context": {"mode": 3}}),
        "context.mode",
    );

    // exactly 8000 characters (multi-byte) is accepted
    let long: ChatRequest =
        serde_json::from_value(json!({"message": "é".repeat(MAX_MESSAGE_CHARS)})).unwrap();
    assert!(long.validate().is_ok());
    // unknown fields are refused at decoding time
    assert!(serde_json::from_value::<ChatRequest>(json!({"message": "hi", "extra": 1})).is_err());
}

#[test]
fn control_and_task_validation_names_the_field() {
    let cmd = ControlRequest {
        target: "shub".into(),
        action: "restart".into(),
        params: None,
        confirm_token: None,
    }
    .validate()
    .unwrap();
    assert_eq!(
        (cmd.target.as_str(), cmd.action.as_str()),
        ("shub", "restart")
    );
    assert_eq!(cmd.params, json!({}));

    let bad =
        |req: ControlRequest, field: &str| assert_eq!(req.validate().unwrap_err().field, field);
    bad(
        ControlRequest {
            target: "".into(),
            action: "status".into(),
            params: None,
            confirm_token: None,
        },
        "target",
    );
    bad(
        ControlRequest {
            target: "shub".into(),
            action: "rm -rf".into(),
            params: None,
            confirm_token: None,
        },
        "action",
    );
    bad(
        ControlRequest {
            target: "shub".into(),
            action: "status".into(),
            params: Some(json!([1])),
            confirm_token: None,
        },
        "params",
    );
    bad(
        ControlRequest {
            target: "shub".into(),
            action: "status".into(),
            params: None,
            confirm_token: Some(String::new()),
        },
        "confirm_token",
    );

    let task = TaskRequest {
        name: "nightly".into(),
        module: "hermes".into(),
        action: "run".into(),
        payload: Some(json!({"a": 1})),
    }
    .validate()
    .unwrap();
    assert_eq!(task.module, Module::Hermes);
    let bad_task =
        |req: TaskRequest, field: &str| assert_eq!(req.validate().unwrap_err().field, field);
    bad_task(
        TaskRequest {
            name: " ".into(),
            module: "hermes".into(),
            action: "run".into(),
            payload: None,
        },
        "name",
    );
    bad_task(
        TaskRequest {
            name: "n".into(),
            module: "storage".into(),
            action: "run".into(),
            payload: None,
        },
        "module",
    );
    bad_task(
        TaskRequest {
            name: "n".into(),
            module: "hermes".into(),
            action: "".into(),
            payload: None,
        },
        "action",
    );
    bad_task(
        TaskRequest {
            name: "n".into(),
            module: "hermes".into(),
            action: "run".into(),
            payload: Some(json!("x")),
        },
        "payload",
    );
}

#[test]
fn v6_chat_accepts_either_message_name() {
    let a: ChatV6Request = serde_json::from_value(json!({"user_message": "hola"})).unwrap();
    assert_eq!(a.validate().unwrap().message.as_str(), "hola");
    let b: ChatV6Request = serde_json::from_value(json!({"message": "hello"})).unwrap();
    assert_eq!(b.validate().unwrap().message.as_str(), "hello");
    let none: ChatV6Request = serde_json::from_value(json!({})).unwrap();
    assert_eq!(none.validate().unwrap_err().field, "user_message");
}

#[test]
fn secrets_never_show_in_debug_output() {
    let control = ControlRequest {
        target: "shub".into(),
        action: "restart".into(),
        params: None,
        confirm_token: Some("TOPSECRET".into()),
    };
    assert!(!format!("{control:?}").contains("TOPSECRET"));
    assert!(!format!("{:?}", control.validate().unwrap()).contains("TOPSECRET"));
    let confirm = ConfirmRequest {
        reason: None,
        fingerprint: None,
        confirm_token: "TOPSECRET".into(),
    };
    assert!(!format!("{confirm:?}").contains("TOPSECRET"));
}

#[test]
fn step_module_comes_from_type_or_payload() {
    let s = Step::new(
        Uuid::new_v4(),
        StepType::CallModule,
        json!({"module": "mcp"}),
        now(),
    );
    assert_eq!(s.module(), Module::Mcp);
    let s = Step::new(
        Uuid::new_v4(),
        StepType::SystemHealthcheck,
        json!({}),
        now(),
    );
    assert_eq!(s.module(), Module::Madre);
    assert_eq!(Module::TentaculoLink.env_name(), "TENTACULO_LINK");
    assert_eq!(Module::Spawner.default_port(), 8008);
}

#[test]
fn module_sets() {
    let all = ModuleSet::all();
    assert!(Module::ALL.iter().all(|m| all.contains(*m)));
    let some = all.without(Module::Shub).without(Module::Mcp);
    assert!(!some.contains(Module::Shub) && some.contains(Module::Hermes));
    assert_eq!(some.iter().count(), 7);
    assert_eq!(
        ModuleSet::empty()
            .with(Module::Switch)
            .iter()
            .collect::<Vec<_>>(),
        vec![Module::Switch]
    );
}

#[test]
fn words_and_modules_are_case_folded_and_nothing_is_trimmed() {
    let control = |target: &str, action: &str| {
        ControlRequest {
            target: target.into(),
            action: action.into(),
            params: None,
            confirm_token: None,
        }
        .validate()
    };
    assert_eq!(control(" shub", "status").unwrap_err().field, "target");
    let folded = control("SHUB", "ReStart").unwrap();
    assert_eq!(
        (folded.target.as_str(), folded.action.as_str()),
        ("shub", "restart")
    );
    assert_eq!(
        control("shub", "re\u{212A}start").unwrap_err().field,
        "action",
        "only ASCII letters fold: the Kelvin sign is not a k"
    );
    let task = |name: &str, module: &str| {
        TaskRequest {
            name: name.into(),
            module: module.into(),
            action: "run".into(),
            payload: None,
        }
        .validate()
    };
    assert_eq!(task("n", "HERMES").unwrap().module, Module::Hermes);
    // blank is every character Unicode White_Space, as the schema's class says
    assert_eq!(
        task("\u{3000}\u{85}\u{2028}", "hermes").unwrap_err().field,
        "name"
    );
    assert!(
        task("\u{feff}", "hermes").is_ok(),
        "U+FEFF is not White_Space"
    );
    assert!(is_blank(
        " \t\n\u{a0}\u{1680}\u{2000}\u{200a}\u{202f}\u{205f}\u{3000}\u{b}\u{c}\u{d}\u{85}\u{2029}"
    ));
}

#[test]
fn v6_chat_with_both_names_needs_both_valid() {
    let both: ChatV6Request =
        serde_json::from_value(json!({"user_message": "hola", "message": "\u{c}"})).unwrap();
    assert_eq!(both.validate().unwrap_err().field, "message");
    let both: ChatV6Request =
        serde_json::from_value(json!({"user_message": "hola", "message": "hi"})).unwrap();
    assert_eq!(both.validate().unwrap().message.as_str(), "hola");
}
