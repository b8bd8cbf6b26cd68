//! "Chat transactions per second": the writes one chat costs Madre — an
//! intent-log row; a plan with 4 steps, 3 context rows and 2 audit rows; 4
//! steps started and finished through the journal (the last ending the
//! plan); the close — with 1 writer and with 4 concurrent writers,
//! committed two ways: as one transaction (`Write::and`), and as seven
//! commits, one per write (the finest-grained way a runner could commit).
#![allow(missing_docs)]

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use madre_db::*;
use madre_models::{Intent, Mode, Plan, RiskLevel, SessionId, Status, Step, StepType};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How the writes of one chat are committed.
#[derive(Clone, Copy)]
enum Commits {
    /// All in one transaction.
    One,
    /// Each write its own commit.
    Seven,
}

fn one_chat(db: &Db, commits: Commits) {
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
    let plan = Plan {
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
    };
    let plan_id = plan.plan_id;
    let intent = Intent {
        intent_id,
        session_id: session,
        mode: Mode::Madre,
        dsl: madre_models::Dsl {
            domain: "general".into(),
            action: "chat".into(),
            parameters: Default::default(),
            targets: vec![],
            confidence: 0.3,
            original_text: "hello there".into(),
            warnings: vec![],
            source: madre_models::DslSource::Fallback,
        },
        risk: RiskLevel::Low,
        requires_confirmation: false,
        targets: vec![],
        created_at: now,
        alternatives: vec![],
    };
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
            module: "hermes".into(),
            action: "chat".into(),
            principal: "bench".into(),
        },
        intent: Some(intent),
        confirmation: None,
        actions: vec![action("plan_created"), action("plan_started")],
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
    let close = db.close_intent(intent_id, "DONE", None, now);
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

fn chat_transactions(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("bench.db")).unwrap());
    let mut group = c.benchmark_group("db");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    for (name, commits) in [("one_tx", Commits::One), ("7_commits", Commits::Seven)] {
        group.bench_function(format!("chat_{name}_1_writer"), |b| {
            b.iter(|| one_chat(&db, commits))
        });
        group.bench_function(format!("chat_{name}_4_writers"), |b| {
            b.iter_custom(|iters| {
                let per_thread = iters.div_ceil(4);
                let start = Instant::now();
                let threads: Vec<_> = (0..4)
                    .map(|_| {
                        let db = db.clone();
                        std::thread::spawn(move || {
                            (0..per_thread).for_each(|_| one_chat(&db, commits))
                        })
                    })
                    .collect();
                threads.into_iter().for_each(|t| t.join().unwrap());
                // time per chat as if one at a time: the wall clock of the batch
                start
                    .elapsed()
                    .mul_f64(iters as f64 / (per_thread * 4) as f64)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, chat_transactions);
criterion_main!(benches);
