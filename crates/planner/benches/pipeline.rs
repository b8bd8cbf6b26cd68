//! The whole pure path of a chat: parse → classify → plan.
#![allow(missing_docs)]

use chrono::Utc;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use madre_models::{Intent, Mode, ModuleSet, SessionId};
use madre_planner::{Origin, PlanRequest, plan};
use madre_policy::RiskTables;
use std::hint::black_box;
use uuid::Uuid;

const MESSAGES: &[&str] = &[
    "hello, what can you tell me about the weather",
    "restart the switch",
    "delete all data",
    "mix these 3 stems",
    "status of hermes",
    "run job=nightly retries=3 in parallel",
];

fn pipeline(c: &mut Criterion) {
    let tables = RiskTables::default();
    let session = SessionId::parse("bench".into()).unwrap();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(MESSAGES.len() as u64));
    group.bench_function("parse_classify_plan", |b| {
        b.iter(|| {
            for text in MESSAGES {
                let dsl = madre_parser::parse(black_box(text));
                let assessment = tables.assess(&dsl);
                let mode = madre_parser::select_mode(None, &dsl, Mode::Madre);
                let now = Utc::now();
                let intent = Intent {
                    intent_id: Uuid::new_v4(),
                    session_id: session.clone(),
                    mode,
                    risk: assessment.risk(),
                    requires_confirmation: assessment.requires_confirmation(),
                    targets: dsl.targets.clone(),
                    dsl,
                    created_at: now,
                    alternatives: Vec::new(),
                };
                let request = PlanRequest {
                    intent: &intent,
                    origin: Origin::Chat,
                    denied: assessment.is_denied(),
                    enabled: ModuleSet::all(),
                    now,
                };
                black_box(plan(&request, Uuid::new_v4));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
