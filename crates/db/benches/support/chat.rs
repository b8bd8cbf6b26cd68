//! The writes one chat costs Madre, shared by the `chat_tx` benchmark and
//! the `chat_wal_frames` example, two ways: [`one_chat`], the workload the
//! benchmark had before issue 13 (kept so figures compare across versions),
//! and [`low_chat`], a LOW chat's writes as Madre makes them now.
#![allow(dead_code)]

use chrono::Utc;
use madre_db::*;
use madre_models::{
    Intent, IntentOutcome, Mode, Plan, RiskLevel, SessionId, Status, Step, StepType,
};
use serde_json::json;
use uuid::Uuid;

/// How the writes of one chat are committed.
#[derive(Clone, Copy)]
pub(crate) enum Commits {
    /// All in one transaction.
    One,
    /// Each write its own commit (seven for [`one_chat`], three for
    /// [`low_chat`]).
    Seven,
}

/// The pre-issue-13 workload: an intent-log row; a plan with 4 steps, 3
/// context rows and 2 audit rows; 4 steps started and finished through the
/// journal (the last ending the plan); the close.
pub(crate) fn one_chat(db: &Db, commits: Commits) {
    let now = Utc::now();
    let session = SessionId::parse("bench".into()).unwrap();
    let intent_id = Uuid::now_v7();
    let log = db.log_intent(NewIntentLog {
        id: intent_id,
        source: "chat".into(),
        principal: "bench".into(),
        payload: json!({"message": "hello there"}),
        created_at: now,
    });
    let steps = [
        StepType::CallSwitch,
        StepType::CallHermes,
        StepType::Noop,
        StepType::Noop,
    ]
    .into_iter()
    .map(|ty| Step::new(Uuid::now_v7(), ty, json!({"prompt": "hello there"}), now))
    .collect();
    let plan = chat_plan(intent_id, &session, steps, now);
    let plan_id = plan.plan_id;
    let intent = low_intent(intent_id, &session, "hello there", now);
    let action = |what: &str| NewAction {
        module: "madre".into(),
        action: what.into(),
        reason: "bench".into(),
        principal: "bench".into(),
        plan_id: Some(plan_id),
        created_at: now,
    };
    let insert = db.insert_plan(NewPlanRecord {
        plan,
        meta: PlanMeta {
            kind: PlanKind::Chat,
            name: "chat".into(),
            module: madre_models::Module::Hermes,
            action: "chat".into(),
            principal: "bench".into(),
        },
        intent: Some(intent),
        confirmation: None,
        actions: vec![action("plan_created"), action("plan_started")],
        logged_message: None,
    });
    // Each step starts and finishes through the journal; the last one ends
    // the plan with it.
    let step = |idx: usize| {
        let mut events = vec![
            PlanEvent::new(Event::StepStarted { step: idx }, now),
            PlanEvent::new(
                Event::StepFinished {
                    step: idx,
                    status: Status::Done,
                },
                now,
            )
            .result(json!({"reply": "hi"})),
        ];
        if idx == 3 {
            events.push(PlanEvent::finished(Status::Done, None, now));
        }
        db.apply_events(plan_id, events, None)
    };
    let close = db.close_intent(intent_id, IntentOutcome::Plan(Status::Done), None, now);
    match commits {
        Commits::One => {
            log.and(insert)
                .and(step(0))
                .and(step(1))
                .and(step(2))
                .and(step(3))
                .and(close)
                .wait()
                .unwrap();
        }
        Commits::Seven => {
            log.wait().unwrap();
            insert.wait().unwrap();
            (0..4).for_each(|idx| {
                step(idx).wait().unwrap();
            });
            close.wait().unwrap();
        }
    }
}

/// The writes of a LOW chat as Madre makes them since storage v2: the
/// intent (its session read on a reader); the plan (a Switch step answered
/// at intake and a Hermes step; 1 audit row) stored already opened (the
/// Switch step finished, the Hermes step started); then the Hermes step's
/// end with the plan's, the plan read back, and the history turn with the
/// intent's close made from it. Three commits, as a chat makes them, or one
/// transaction.
pub(crate) fn low_chat(db: &Db, commits: Commits) {
    let now = Utc::now();
    let session = SessionId::parse(Uuid::now_v7().to_string()).unwrap();
    let intent_id = Uuid::now_v7();
    // The session is read on a reader, beside the intent's write.
    assert!(db.session(session.as_str()).unwrap().is_none());
    let log = db.log_intent(NewIntentLog {
        id: intent_id,
        source: "chat".into(),
        principal: "bench".into(),
        payload: json!({"message": "tell me about the weather in Lisbon"}),
        created_at: now,
    });
    let metadata = json!({"session_id": session, "intent_id": intent_id});
    let steps = vec![
        Step::new(
            Uuid::now_v7(),
            StepType::CallSwitch,
            json!({"prompt": "tell me about the weather in Lisbon", "metadata": metadata,
                   "engine": "local", "answered_at_intake": true}),
            now,
        ),
        Step::new(
            Uuid::now_v7(),
            StepType::CallHermes,
            json!({"prompt": "tell me about the weather in Lisbon", "metadata": metadata}),
            now,
        ),
    ];
    let mut plan = chat_plan(intent_id, &session, steps, now);
    let plan_id = plan.plan_id;
    // As Madre makes them: step ids derived from the plan's, and the
    // Switch step answered at intake created DONE (no events of its own).
    for (i, step) in plan.steps.iter_mut().enumerate() {
        step.step_id = Step::id_in_plan(plan_id, i);
    }
    plan.steps[0].status = Status::Done;
    plan.steps[0].attempts = 1;
    plan.steps[0].result = Some(json!({"engine": "local", "answered_at_intake": true}));
    let intent = low_intent(
        intent_id,
        &session,
        "tell me about the weather in Lisbon",
        now,
    );
    let started = |step| PlanEvent::new(Event::StepStarted { step }, now);
    let finished = |step, result| {
        PlanEvent::new(
            Event::StepFinished {
                step,
                status: Status::Done,
            },
            now,
        )
        .result(result)
    };
    let opening = vec![started(1)];
    let insert = db.insert_plan_with(
        NewPlanRecord {
            plan,
            meta: PlanMeta {
                kind: PlanKind::Chat,
                name: "chat".into(),
                module: madre_models::Module::Madre,
                action: "chat".into(),
                principal: "bench".into(),
            },
            intent: Some(intent),
            confirmation: None,
            // The plan's creation is audited by its journal (schema 12).
            actions: Vec::new(),
            logged_message: None,
        },
        opening,
    );
    let reply = "[hermes] the weather in Lisbon is mild";
    let end = vec![
        finished(1, json!({"reply": reply})),
        PlanEvent::finished(Status::Done, None, now).result(json!({"reply": reply})),
    ];
    let turn_db = db.clone();
    let at_end: AtEnd = Box::new(move |ended: &StoredPlan| {
        turn_db
            .record_turn(NewTurn {
                session_id: session.as_str().to_owned(),
                mode: Mode::Madre,
                intent_id: Some(intent_id),
                plan_id: Some(plan_id),
                asked: Said::Kept,
                answered: Said::Kept,
                keep: 100,
                at: now,
            })
            .and(turn_db.close_intent(intent_id, IntentOutcome::Plan(ended.plan.status), None, now))
            .discard()
    });
    let finish = db.apply_events_and_read(plan_id, end, Some(at_end));
    match commits {
        Commits::One => {
            log.and(insert).and(finish).wait().unwrap();
        }
        Commits::Seven => {
            log.wait().unwrap();
            insert.wait().unwrap();
            finish.wait().unwrap();
        }
    }
}

/// A new chat plan with these steps, every row PENDING.
fn chat_plan(
    intent_id: Uuid,
    session: &SessionId,
    steps: Vec<Step>,
    now: chrono::DateTime<Utc>,
) -> Plan {
    Plan {
        plan_id: Uuid::now_v7(),
        intent_id,
        session_id: session.clone(),
        status: Status::Pending,
        mode: Mode::Madre,
        steps,
        warnings: vec![],
        error: None,
        created_at: now,
        updated_at: now,
    }
}

/// The LOW intent of a general chat `text`, as the fallback parser reads it.
fn low_intent(
    intent_id: Uuid,
    session: &SessionId,
    text: &str,
    now: chrono::DateTime<Utc>,
) -> Intent {
    Intent {
        intent_id,
        session_id: session.clone(),
        mode: Mode::Madre,
        dsl: madre_models::Dsl {
            domain: "general".into(),
            action: "chat".into(),
            parameters: Default::default(),
            targets: vec![],
            confidence: 0.3,
            original_text: text.into(),
            warnings: vec![],
            source: madre_models::DslSource::Fallback,
            effect: madre_models::Effect::Read,
        },
        risk: RiskLevel::Low,
        requires_confirmation: false,
        targets: vec![],
        created_at: now,
        alternatives: vec![],
    }
}
