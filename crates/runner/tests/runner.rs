//! The runner over real HTTP (vx11-stubs) and a real SQLite file.

use chrono::Utc;
use madre_db::{Db, Event, NewPlanRecord, PlanEvent, PlanKind, PlanMeta, StoredPlan};
use madre_delegation::{Delegator, Registry};
use madre_models::{EndReason, Intent, Mode, Module, ModuleSet, SessionId, Status, StepType};
use madre_planner::{Origin, PlanRequest};
use madre_policy::RiskTables;
use madre_runner::*;
use secrecy::SecretString;
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use uuid::Uuid;
use vx11_stubs::{Behaviour, StubServer};

struct Harness {
    dir: tempfile::TempDir,
    db: Db,
    stubs: StubServer,
    runner: Runner,
}

struct Setup {
    config: RunnerConfig,
    call_timeout_ms: u64,
    switch_url: Option<String>,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            config: RunnerConfig::default(),
            call_timeout_ms: 2000,
            switch_url: None,
        }
    }
}

fn opts() -> RunOptions {
    RunOptions {
        request_id: "test".into(),
        principal: "tester".into(),
        resumed: false,
    }
}

fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

impl Harness {
    fn new(setup: Setup) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("madre.db")).unwrap();
        let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
        let mut urls: BTreeMap<Module, String> =
            Module::REMOTE.iter().map(|&m| (m, stubs.url(m))).collect();
        if let Some(url) = setup.switch_url {
            urls.insert(Module::Switch, url);
        }
        let registry = Registry::new(
            urls,
            &[],
            SecretString::from("t"),
            Duration::from_millis(setup.call_timeout_ms),
        );
        let runner = Runner::new(
            db.clone(),
            Delegator::new(std::sync::Arc::new(registry)),
            setup.config,
        );
        Self {
            dir,
            db,
            stubs,
            runner,
        }
    }

    /// Parses, classifies and plans `text` as the server would, and stores
    /// the plan. Confirmation gates are left for the test to open.
    async fn plan(&self, text: &str, mode: Mode) -> Uuid {
        let dsl = madre_parser::parse(text);
        let assessment = RiskTables::default().assess(&dsl);
        let intent = Intent {
            intent_id: Uuid::new_v4(),
            session_id: SessionId::parse("s-1".into()).unwrap(),
            mode,
            risk: assessment.risk(),
            requires_confirmation: assessment.requires_confirmation(),
            targets: dsl.targets.clone(),
            dsl,
            created_at: Utc::now(),
            alternatives: Vec::new(),
        };
        let request = PlanRequest {
            intent: &intent,
            origin: Origin::Chat,
            denied: false,
            enabled: ModuleSet::all(),
            now: intent.created_at,
        };
        let plan = madre_planner::plan(&request, Uuid::new_v4);
        let plan_id = plan.plan_id;
        let meta = PlanMeta {
            kind: PlanKind::Chat,
            name: "chat".into(),
            module: madre_models::Module::Hermes,
            action: intent.dsl.action.clone(),
            principal: "tester".into(),
        };
        self.db
            .insert_plan(NewPlanRecord {
                plan,
                meta,
                intent: Some(intent),
                confirmation: None,
                actions: vec![],
                logged_message: None,
            })
            .await
            .unwrap();
        plan_id
    }

    async fn run(&self, text: &str) -> StoredPlan {
        let id = self.plan(text, Mode::Madre).await;
        self.runner.run(id, opts()).await.unwrap()
    }

    async fn behave(&self, module: Module, behaviour: Behaviour) {
        self.stubs.behave(module, &behaviour).await.unwrap();
    }

    async fn calls(&self, module: Module) -> u64 {
        self.stubs.stats(module).await.unwrap().calls
    }
}

fn reply(stored: &StoredPlan) -> String {
    stored
        .result
        .as_ref()
        .and_then(|r| r["reply"].as_str())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_low_chat_runs_switch_then_hermes_with_the_chosen_engine() {
    let h = Harness::new(Setup::default());
    let done = h.run("hello there").await;
    assert_eq!(done.plan.status, Status::Done);
    assert!(
        done.plan
            .steps
            .iter()
            .all(|s| s.status == Status::Done && s.attempts == 1)
    );
    assert_eq!(reply(&done), "[hermes stub via stub-engine] hello there");
    assert_eq!(
        (h.calls(Module::Switch).await, h.calls(Module::Hermes).await),
        (1, 1)
    );
}

/// A plan opened at creation: the Switch step answered at intake is
/// finished and the Hermes step started in the plan's own commit, so the
/// runner makes the Hermes call with no commit before it, from the plan it
/// was handed, and ends the plan with the engine Switch chose.
#[tokio::test]
async fn an_opened_plan_calls_hermes_at_once_with_the_engine_chosen_at_intake() {
    let h = Harness::new(Setup::default());
    let plan = store_opened(&h, "hello there", "intake-engine").await;
    assert_eq!(
        plan.steps.iter().map(|s| s.status).collect::<Vec<_>>(),
        [Status::Done, Status::Running]
    );
    let opening: Vec<String> =
        h.db.plan_events(plan.plan_id)
            .unwrap()
            .into_iter()
            .map(|e| e.event_type.as_str().to_owned())
            .collect();
    assert_eq!(
        opening,
        [
            "plan_created",
            "step_started",
            "step_finished",
            "step_started"
        ],
        "the Hermes step is durably RUNNING before the runner even starts"
    );
    let plan_id = plan.plan_id;
    // The write made at the plan's end sees the plan as it ended and
    // commits with it.
    let note = Uuid::now_v7();
    let db = h.db.clone();
    let at_end: madre_db::AtEnd = Box::new(move |ended: &StoredPlan| {
        db.log_intent(madre_db::NewIntentLog {
            id: note,
            source: "test".into(),
            principal: "tester".into(),
            payload: json!({ "ended": ended.plan.status }),
            created_at: Utc::now(),
        })
    });
    let done = h
        .runner
        .start_opened(plan, opts(), Some(at_end))
        .unwrap()
        .finished()
        .await
        .unwrap();
    assert_eq!(done.plan.status, Status::Done);
    assert_eq!(
        h.db.intent_log(note).unwrap().map(|row| row.payload),
        Some(json!({ "ended": "DONE" }))
    );
    assert_eq!(reply(&done), "[hermes stub via intake-engine] hello there");
    assert_eq!(
        (h.calls(Module::Switch).await, h.calls(Module::Hermes).await),
        (0, 1)
    );
    let journal: Vec<String> =
        h.db.plan_events(plan_id)
            .unwrap()
            .into_iter()
            .map(|e| e.event_type.as_str().to_owned())
            .collect();
    assert_eq!(
        journal,
        [
            "plan_created",
            "step_started",
            "step_finished",
            "step_started",
            "step_finished",
            "plan_finished"
        ]
    );
}

#[tokio::test]
async fn one_failure_is_retried_and_counted_as_an_attempt() {
    let h = Harness::new(Setup::default());
    h.behave(
        Module::Hermes,
        Behaviour {
            fail_first: 1,
            ..Default::default()
        },
    )
    .await;
    let done = h.run("hello").await;
    assert_eq!(done.plan.status, Status::Done);
    assert_eq!(done.plan.steps[1].attempts, 2);
    assert_eq!(h.calls(Module::Hermes).await, 2);
}

#[tokio::test]
async fn a_required_step_that_keeps_failing_makes_the_plan_error() {
    let h = Harness::new(Setup::default());
    h.behave(
        Module::Hermes,
        Behaviour {
            error_status: Some(500),
            ..Default::default()
        },
    )
    .await;
    let failed = h.run("hello").await;
    assert_eq!(
        (failed.plan.status, failed.plan.error.as_deref()),
        (Status::Error, Some("http_500"))
    );
    assert_eq!(
        failed.plan.steps[0].status,
        Status::Done,
        "earlier steps are not undone"
    );
    assert_eq!(failed.plan.steps[1].status, Status::Error);
    assert!(
        reply(&failed).starts_with("Plan failed: hermes answered HTTP 500"),
        "{}",
        reply(&failed)
    );
    assert_eq!(h.calls(Module::Hermes).await, 2);

    h.behave(
        Module::Hermes,
        Behaviour {
            error_status: Some(400),
            ..Default::default()
        },
    )
    .await;
    let failed = h.run("hello").await;
    assert_eq!(failed.plan.error.as_deref(), Some("http_400"));
    assert_eq!(h.calls(Module::Hermes).await, 3, "a 400 is not retried");

    h.behave(
        Module::Hermes,
        Behaviour {
            garbage: true,
            ..Default::default()
        },
    )
    .await;
    let failed = h.run("hello").await;
    assert_eq!(failed.plan.error.as_deref(), Some("invalid_body"));
}

#[tokio::test]
async fn switch_down_falls_back_to_the_default_engine_with_a_warning() {
    let h = Harness::new(Setup {
        switch_url: Some(closed_port_url()),
        ..Default::default()
    });
    let done = h.run("hello").await;
    assert_eq!(done.plan.status, Status::Done);
    assert_eq!(done.plan.steps[0].status, Status::Error);
    assert_eq!(done.plan.warnings, vec![SWITCH_UNAVAILABLE]);
    assert_eq!(reply(&done), "[hermes stub via default] hello");
}

#[tokio::test]
async fn a_hanging_module_fails_its_step_within_the_call_timeout() {
    let h = Harness::new(Setup {
        call_timeout_ms: 300,
        ..Default::default()
    });
    h.behave(
        Module::Hermes,
        Behaviour {
            hang: true,
            ..Default::default()
        },
    )
    .await;
    let started = Instant::now();
    let failed = h.run("hello").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (failed.plan.status, failed.plan.error.as_deref()),
        (Status::Error, Some("timeout"))
    );
    assert!(
        failed.plan.steps[1]
            .error
            .as_deref()
            .unwrap()
            .contains("did not answer within 300 ms")
    );
}

#[tokio::test]
async fn the_plan_deadline_abandons_the_running_step_and_cancels_the_rest() {
    let config = RunnerConfig {
        task_timeout: Duration::from_secs(2),
        ..RunnerConfig::default()
    };
    let h = Harness::new(Setup {
        config,
        call_timeout_ms: 5000,
        ..Default::default()
    });
    h.behave(
        Module::Switch,
        Behaviour {
            latency_ms: 1500,
            ..Default::default()
        },
    )
    .await;
    h.behave(
        Module::Hermes,
        Behaviour {
            latency_ms: 1500,
            ..Default::default()
        },
    )
    .await;
    let started = Instant::now();
    let failed = h.run("hello").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (failed.plan.status, failed.plan.error.as_deref()),
        (Status::Error, Some("timeout"))
    );
    assert_eq!(failed.plan.steps[0].status, Status::Done);
    assert_eq!(
        failed.plan.steps[1].status,
        Status::Error,
        "the running step is abandoned"
    );
    assert_eq!(reply(&failed), "Plan timed out after 2 s");

    // three steps: the one after the abandoned step is cancelled
    let h2 = Harness::new(Setup {
        config,
        ..Default::default()
    });
    h2.behave(
        Module::Hermes,
        Behaviour {
            latency_ms: 2500,
            ..Default::default()
        },
    )
    .await;
    let id = h2.plan("restart the switch", Mode::Madre).await; // gate, switch, hermes
    open_gate(&h2.db, id).await;
    let failed = h2.runner.run(id, opts()).await.unwrap();
    let statuses: Vec<Status> = failed.plan.steps.iter().map(|s| s.status).collect();
    assert_eq!(statuses, vec![Status::Done, Status::Done, Status::Error]);
}

async fn open_gate(db: &Db, plan_id: Uuid) {
    let confirmed = PlanEvent::new(Event::PlanConfirmed, Utc::now())
        .result(json!({"confirmed_by": "test"}))
        .by("test");
    db.apply_events(plan_id, vec![confirmed], None)
        .await
        .unwrap();
}

#[tokio::test]
async fn thirty_plans_at_once_never_exceed_ten_in_flight() {
    let h = Harness::new(Setup::default());
    h.behave(
        Module::Hermes,
        Behaviour {
            latency_ms: 300,
            ..Default::default()
        },
    )
    .await;
    let mut runs = Vec::new();
    for _ in 0..30 {
        let id = h.plan("hello", Mode::Madre).await;
        runs.push(h.runner.start(id, opts()).unwrap());
    }
    assert!(
        h.runner.queued() > 0,
        "plans wait for a slot rather than being refused"
    );
    for run in runs {
        assert_eq!(run.finished().await.unwrap().plan.status, Status::Done);
    }
    let stats = h.stubs.stats(Module::Hermes).await.unwrap();
    assert_eq!(stats.calls, 30);
    assert!(stats.peak_in_flight <= 10, "peak {}", stats.peak_in_flight);
    assert!(stats.peak_in_flight >= 2, "plans did run concurrently");
    assert_eq!((h.runner.running(), h.runner.queued()), (0, 0));
}

#[tokio::test]
async fn past_the_queue_bound_plans_are_refused() {
    let config = RunnerConfig {
        max_concurrent: 1,
        max_queued: 1,
        ..RunnerConfig::default()
    };
    let h = Harness::new(Setup {
        config,
        ..Default::default()
    });
    h.behave(
        Module::Hermes,
        Behaviour {
            latency_ms: 300,
            ..Default::default()
        },
    )
    .await;
    let a = h
        .runner
        .start(h.plan("one", Mode::Madre).await, opts())
        .unwrap();
    let b = h
        .runner
        .start(h.plan("two", Mode::Madre).await, opts())
        .unwrap();
    let refused = h.runner.start(h.plan("three", Mode::Madre).await, opts());
    assert!(matches!(refused, Err(RunnerError::QueueFull { queued: 1 })));
    assert_eq!(a.finished().await.unwrap().plan.status, Status::Done);
    assert_eq!(b.finished().await.unwrap().plan.status, Status::Done);
}

#[tokio::test]
async fn an_interrupted_plan_is_resumed_with_the_idempotency_key() {
    let h = Harness::new(Setup::default());
    let id = h.plan("hello", Mode::Madre).await;
    let now = Utc::now();
    // what a crash mid-call leaves behind: Switch done, Hermes running
    let events = vec![
        PlanEvent::new(Event::StepStarted { step: 0 }, now),
        PlanEvent::new(
            Event::StepFinished {
                step: 0,
                status: Status::Done,
            },
            now,
        )
        .result(json!({"engine": "engine-before-crash"})),
        PlanEvent::new(Event::StepStarted { step: 1 }, now),
    ];
    h.db.apply_events(id, events, None).await.unwrap();
    let hermes_step = h.db.plan(id).unwrap().unwrap().plan.steps[1].step_id;

    // a fresh runner on the same database
    let runner = Runner::new(
        h.db.clone(),
        Delegator::new(std::sync::Arc::new(Registry::new(
            Module::REMOTE
                .iter()
                .map(|&m| (m, h.stubs.url(m)))
                .collect(),
            &[],
            SecretString::from("t"),
            Duration::from_secs(2),
        ))),
        RunnerConfig::default(),
    );
    // and a plan that was stored but never started before the crash
    let never_started = h.plan("hello again", Mode::Madre).await;
    let runs = runner.resume_interrupted("resume").await.unwrap();
    assert_eq!(runs.len(), 2);
    let mut runs: Vec<_> = runs.into_iter().collect();
    let second = runs.pop().unwrap();
    assert_eq!(second.plan_id(), never_started);
    assert_eq!(second.finished().await.unwrap().plan.status, Status::Done);
    let done = runs.into_iter().next().unwrap().finished().await.unwrap();
    assert_eq!(done.plan.status, Status::Done);
    assert_eq!(reply(&done), "[hermes stub via engine-before-crash] hello");
    assert_eq!(
        h.calls(Module::Switch).await,
        1,
        "only the never-started plan calls Switch: finished steps never run twice"
    );
    let stats = h.stubs.stats(Module::Hermes).await.unwrap();
    // Every call carries its step's key (SPEC §7): the resumed step's call
    // carries the key of the call the crash interrupted.
    let resumed_hermes = stats
        .idempotency_keys
        .iter()
        .filter(|k| **k == hermes_step.to_string())
        .count();
    assert_eq!((stats.idempotency_keys.len(), resumed_hermes), (2, 1));
    assert_eq!(done.plan.steps[1].attempts, 2);
}

#[tokio::test]
async fn waiting_plans_are_not_run_and_cancel_stops_a_running_plan() {
    let h = Harness::new(Setup::default());
    let waiting = h.plan("delete all data", Mode::Madre).await;
    let stored = h.runner.run(waiting, opts()).await.unwrap();
    assert_eq!(stored.plan.status, Status::Waiting);
    assert_eq!(h.calls(Module::Switch).await, 0);

    h.behave(
        Module::Hermes,
        Behaviour {
            hang: true,
            ..Default::default()
        },
    )
    .await;
    let id = h.plan("hello", Mode::Madre).await;
    let run = h.runner.start(id, opts()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.stubs.stats(Module::Hermes).await.unwrap().in_flight == 0 {
        assert!(Instant::now() < deadline, "hermes was never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.runner
            .cancel(id, EndReason::Cancelled, "tester")
            .await
            .unwrap(),
        Status::Cancelled
    );
    let cancelled = run.finished().await.unwrap();
    assert_eq!(
        (cancelled.plan.status, cancelled.plan.error.as_deref()),
        (Status::Cancelled, Some("cancelled"))
    );
    assert_eq!(cancelled.plan.steps[1].status, Status::Cancelled);
    assert!(matches!(
        h.runner.cancel(id, EndReason::Cancelled, "tester").await,
        Err(RunnerError::Db(_))
    ));
}

#[tokio::test]
async fn spawner_requests_wait_for_the_queue_and_finish_the_plan() {
    let h = Harness::new(Setup::default());
    let stored = h.run("transcribe the interviews in the background").await;
    assert_eq!(stored.plan.status, Status::Waiting);
    assert_eq!(stored.plan.steps[0].status, Status::Waiting);
    let task =
        h.db.claim_next_daughter_task("spawner-1", Utc::now())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(task.plan_id, Some(stored.plan.plan_id));
    h.db.complete_daughter_task(
        task.id,
        "spawner-1",
        json!({"reply": "imported"}),
        Utc::now(),
    )
    .await
    .unwrap();
    let done = h.db.plan(stored.plan.plan_id).unwrap().unwrap();
    assert_eq!(done.plan.status, Status::Done);
}

#[tokio::test]
async fn healthchecks_help_and_audio_are_answered() {
    let h = Harness::new(Setup::default());
    let status = h.run("status").await;
    assert_eq!(status.plan.status, Status::Done);
    assert_eq!(
        status.plan.steps[0].result.as_ref().unwrap()["deps"]["hermes"],
        json!("up")
    );
    assert!(reply(&status).starts_with("Module health: "));

    let help = h.run("help").await;
    assert!(reply(&help).starts_with("I can help with:"));

    let id = h.plan("mix these 3 stems", Mode::AudioEngineer).await;
    let audio = h.runner.run(id, opts()).await.unwrap();
    assert_eq!(audio.plan.steps[0].step_type, StepType::CallShub);
    assert_eq!(reply(&audio), "[shub stub] audio task done");
    assert_eq!(h.calls(Module::Shub).await, 1);
}

/// The runner needs no actix runtime: plans run on a multi-threaded Tokio
/// runtime, as in any Tokio service that embeds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_run_on_a_multi_threaded_tokio_runtime() {
    let h = Harness::new(Setup::default());
    let mut runs = Vec::new();
    for i in 0..8 {
        let id = h.plan(&format!("hello {i}"), Mode::Madre).await;
        runs.push(h.runner.start(id, opts()).unwrap());
    }
    for run in runs {
        assert_eq!(run.finished().await.unwrap().plan.status, Status::Done);
    }
    assert_eq!(h.calls(Module::Hermes).await, 8);
}

/// A backlog larger than every place (slots + queue) is resumed whole: what
/// finds no place waits for a slot instead of staying RUNNING until the
/// next restart.
#[tokio::test]
async fn a_backlog_larger_than_the_queue_is_resumed_whole() {
    let config = RunnerConfig {
        max_concurrent: 1,
        max_queued: 1,
        ..RunnerConfig::default()
    };
    let h = Harness::new(Setup {
        config,
        ..Default::default()
    });
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = h.plan(&format!("hello {i}"), Mode::Madre).await;
        // what a crash leaves: each plan RUNNING with Switch started
        let started = PlanEvent::new(Event::StepStarted { step: 0 }, Utc::now());
        h.db.apply_events(id, vec![started], None).await.unwrap();
        ids.push(id);
    }
    let runs = h.runner.resume_interrupted("resume").await.unwrap();
    assert_eq!(runs.len(), 2, "one runs, one waits in the queue");
    assert_eq!(h.runner.deferred(), 4, "the rest is deferred, not dropped");
    for run in runs {
        run.finished().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in ids {
        loop {
            let status = h.db.plan(id).unwrap().unwrap().plan.status;
            if status == Status::Done {
                break;
            }
            assert!(Instant::now() < deadline, "plan {id} is still {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(h.calls(Module::Hermes).await, 6);
}

/// A crash between queueing the daughter task and recording the step as
/// waiting leaves the step RUNNING; resuming must not queue a second task.
#[tokio::test]
async fn a_resumed_spawner_step_queues_its_task_once() {
    let h = Harness::new(Setup::default());
    let id = h
        .plan("transcribe the interviews in the background", Mode::Madre)
        .await;
    let step = h.db.plan(id).unwrap().unwrap().plan.steps[0].clone();
    assert_eq!(step.step_type, StepType::SpawnerRequest);
    // what the crashed process did: started the step, queued the task
    let started = PlanEvent::new(Event::StepStarted { step: 0 }, Utc::now());
    h.db.apply_events(id, vec![started], None).await.unwrap();
    let task = madre_db::NewDaughterTask {
        intent_id: None,
        source: "madre".into(),
        priority: 0,
        task_type: "task".into(),
        description: String::new(),
        max_retries: 2,
        metadata: json!({}),
        plan_json: None,
        plan_id: Some(id),
        step_id: Some(step.step_id),
    };
    let queued = h.db.enqueue_daughter_task(task, Utc::now()).await.unwrap();

    let runs = h.runner.resume_interrupted("resume").await.unwrap();
    assert_eq!(runs.len(), 1);
    let waiting = runs.into_iter().next().unwrap().finished().await.unwrap();
    assert_eq!(waiting.plan.status, Status::Waiting);
    assert_eq!(
        waiting.plan.steps[0].result.as_ref().unwrap()["daughter_task_id"],
        json!(queued)
    );
    let claimed =
        h.db.claim_next_daughter_task("w", Utc::now())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(claimed.id, queued);
    assert!(
        h.db.claim_next_daughter_task("w2", Utc::now())
            .await
            .unwrap()
            .is_none(),
        "no second task for the same step"
    );
}

/// A runner with one slot, and a Hermes that answers after 400 ms: a
/// second plan waits for the slot while the first one's call is in flight.
async fn one_slot_and_a_slow_hermes() -> Harness {
    one_slot_and_hermes_taking(400).await
}

/// One plan slot, and Hermes answering after `latency_ms`.
async fn one_slot_and_hermes_taking(latency_ms: u64) -> Harness {
    let h = Harness::new(Setup {
        config: RunnerConfig {
            max_concurrent: 1,
            ..RunnerConfig::default()
        },
        ..Default::default()
    });
    h.behave(
        Module::Hermes,
        Behaviour {
            latency_ms,
            ..Default::default()
        },
    )
    .await;
    h
}

/// A cancel that lands while a plan waits for a slot wins: the plan never
/// calls a module, and its journal ends with the cancel.
#[tokio::test]
async fn a_plan_cancelled_while_queued_never_calls_a_module() {
    let h = one_slot_and_a_slow_hermes().await;
    let first = h
        .runner
        .start(h.plan("one", Mode::Madre).await, opts())
        .unwrap();
    let queued = h.plan("two", Mode::Madre).await;
    let second = h.runner.start(queued, opts()).unwrap();
    h.runner
        .cancel(queued, EndReason::Cancelled, "tester")
        .await
        .unwrap();
    first.finished().await.unwrap();
    let cancelled = second.finished().await.unwrap();
    assert_eq!(cancelled.plan.status, Status::Cancelled);
    assert_eq!(h.calls(Module::Switch).await, 1);
    assert_eq!(h.calls(Module::Hermes).await, 1);
    let events = h.db.plan_events(queued).unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["plan_created", "plan_finished"]);
    assert_eq!(events[1].reason.as_deref(), Some("cancelled"));
    assert_eq!(events[1].principal.as_deref(), Some("tester"));
}

/// An opened plan stored as a chat stores it: the Switch step answered at
/// intake, the Hermes step started in the plan's creation commit.
async fn store_opened(h: &Harness, text: &str, engine: &str) -> madre_models::Plan {
    // The plan the harness stores only lends its shape.
    let shape = h.plan(text, Mode::Madre).await;
    let mut plan = h.db.plan(shape).unwrap().unwrap().plan;
    plan.plan_id = Uuid::now_v7();
    for step in &mut plan.steps {
        step.step_id = Uuid::now_v7();
        if step.step_type == StepType::CallSwitch {
            step.payload["engine"] = json!(engine);
            step.payload["answered_at_intake"] = json!(true);
        }
    }
    let record = NewPlanRecord {
        plan: plan.clone(),
        meta: PlanMeta {
            kind: PlanKind::Task,
            name: "task".into(),
            module: madre_models::Module::Hermes,
            action: "chat".into(),
            principal: "tester".into(),
        },
        intent: None,
        confirmation: None,
        actions: vec![],
        logged_message: None,
    };
    let opening = open(&mut plan, Utc::now());
    h.db.insert_plan_with(record, opening).await.unwrap();
    plan
}

/// Two opened plans handed to a one-slot runner: the first runs, the
/// second (its id given) waits for the slot.
async fn opened_and_one_queued(h: &Harness) -> (PlanRun, Uuid, PlanRun) {
    let first = store_opened(h, "one", "local").await;
    let first = h.runner.start_opened(first, opts(), None).unwrap();
    let queued = store_opened(h, "two", "local").await;
    let queued_id = queued.plan_id;
    let second = h.runner.start_opened(queued, opts(), None).unwrap();
    (first, queued_id, second)
}

/// The first plan ran to DONE, the queued one ended CANCELLED, and only
/// the first called Hermes.
async fn only_the_first_called_its_module(h: &Harness, first: PlanRun, second: PlanRun) {
    assert_eq!(first.finished().await.unwrap().plan.status, Status::Done);
    let cancelled = second.finished().await.unwrap();
    assert_eq!(cancelled.plan.status, Status::Cancelled);
    assert_eq!(
        h.calls(Module::Hermes).await,
        1,
        "only the first plan's call"
    );
}

/// An opened plan runs from the copy it was handed, with no read before
/// its first call; a cancel that lands while it waits for a slot still
/// wins: its module is never called.
#[tokio::test]
async fn an_opened_plan_cancelled_while_queued_never_calls_its_module() {
    let h = one_slot_and_a_slow_hermes().await;
    let (first, queued_id, second) = opened_and_one_queued(&h).await;
    h.runner
        .cancel(queued_id, EndReason::Cancelled, "tester")
        .await
        .unwrap();
    only_the_first_called_its_module(&h, first, second).await;
    assert_eq!(h.calls(Module::Switch).await, 0);
}

/// A queued opened plan keeps the copy it was handed only while its stored
/// status is unchanged: a cancel written to the journal by someone else
/// (another replica: no signal reaches this runner) while it waits for a
/// slot still wins, and its module is never called.
#[tokio::test]
async fn an_opened_plan_cancelled_elsewhere_while_queued_never_calls_its_module() {
    let h = one_slot_and_a_slow_hermes().await;
    let (first, queued_id, second) = opened_and_one_queued(&h).await;
    let cancel = PlanEvent::finished(Status::Cancelled, Some("cancelled"), Utc::now());
    h.db.apply_events(queued_id, vec![cancel], None)
        .await
        .unwrap();
    only_the_first_called_its_module(&h, first, second).await;
}

/// Every change of a LOW chat's plan is in its journal, in order.
#[tokio::test]
async fn the_journal_holds_every_change_in_order() {
    let h = Harness::new(Setup::default());
    let done = h.run("hello").await;
    let events = h.db.plan_events(done.plan.plan_id).unwrap();
    let summary: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e.event_type,
                e.status.map(|s| s.as_str()).unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "plan_created PENDING",
            "step_started RUNNING",
            "step_finished DONE",
            "step_started RUNNING",
            "step_finished DONE",
            "plan_finished DONE",
        ]
    );
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(events[1].step_type, Some(StepType::CallSwitch));
    assert_eq!(events[3].step_type, Some(StepType::CallHermes));
}

/// A plan an execution left RUNNING without ending it (storage refused a
/// write mid-plan) is run again by `resume_orphans`, with no restart; a
/// plan executing now is left alone.
#[tokio::test]
async fn a_plan_left_running_by_a_stopped_execution_is_resumed() {
    let h = Harness::new(Setup::default());
    let id = h.plan("hello", Mode::Madre).await;
    let started = PlanEvent::new(Event::StepStarted { step: 0 }, Utc::now());
    h.db.apply_events(id, vec![started], None).await.unwrap();
    assert_eq!(
        h.runner
            .resume_orphans(Utc::now() - chrono::Duration::hours(1))
            .await
            .unwrap(),
        0,
        "changed too recently: it may be starting right now"
    );
    assert_eq!(h.runner.resume_orphans(Utc::now()).await.unwrap(), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = h.db.plan(id).unwrap().unwrap().plan.status;
        if status == Status::Done {
            break;
        }
        assert!(Instant::now() < deadline, "still {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.calls(Module::Hermes).await, 1);
}

/// A resumed plan that waits for a slot is busy (issue 21): the orphan
/// pass, however often it runs, does not admit it again, so it takes one
/// queue place and runs once.
#[tokio::test]
async fn a_plan_waiting_for_a_slot_is_not_admitted_again_by_the_orphan_pass() {
    let h = one_slot_and_a_slow_hermes().await;
    let first = h
        .runner
        .start(h.plan("one", Mode::Madre).await, opts())
        .unwrap();
    // A plan a crash left RUNNING, resumed while the one slot is taken.
    let id = h.plan("two", Mode::Madre).await;
    let started = PlanEvent::new(Event::StepStarted { step: 0 }, Utc::now());
    h.db.apply_events(id, vec![started], None).await.unwrap();
    let resumed = RunOptions {
        resumed: true,
        ..opts()
    };
    let run = h
        .runner
        .admit(id, resumed)
        .unwrap()
        .expect("a place in the queue");
    assert_eq!(h.runner.queued(), 1);
    // Cleanup passes while it waits, each past its 30 s of stillness.
    for pass in 0..3 {
        let later = Utc::now() + chrono::Duration::hours(1);
        assert_eq!(
            h.runner.resume_orphans(later).await.unwrap(),
            0,
            "pass {pass}: the plan is waiting for a slot, not orphaned"
        );
    }
    assert_eq!(h.runner.queued(), 1, "one queue place, not one per pass");
    first.finished().await.unwrap();
    assert_eq!(run.finished().await.unwrap().plan.status, Status::Done);
    assert_eq!(h.calls(Module::Switch).await, 2, "each plan ran once");
}

/// With no queue (`MADRE_MAX_QUEUED_TASKS=0`), plans that must run
/// (confirmed or resumed) are deferred when the one slot is busy; each one
/// runs, even when it is deferred just as the slot frees (issue 21: one
/// deferred then stayed until some other plan ended, which here none does).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_queue_every_plan_that_must_run_runs() {
    let h = Harness::new(Setup {
        config: RunnerConfig {
            max_concurrent: 1,
            max_queued: 0,
            ..RunnerConfig::default()
        },
        ..Default::default()
    });
    let mut ids = Vec::new();
    for i in 0..200 {
        // `help` is answered in-process: plans end as fast as they can,
        // so slots free while others are being deferred.
        ids.push(h.plan(&format!("help {i}"), Mode::Madre).await);
    }
    let senders: Vec<_> = ids
        .chunks(50)
        .map(|chunk| {
            let runner = h.runner.clone();
            let chunk = chunk.to_vec();
            tokio::spawn(async move {
                for id in chunk {
                    runner.admit(id, opts()).unwrap();
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in ids {
        loop {
            let status = h.db.plan(id).unwrap().unwrap().plan.status;
            if status == Status::Done {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "plan {id} is still {status}; {} deferred, {} running",
                h.runner.deferred(),
                h.runner.running()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A plan with nothing left to call gives its slot to the next plan while
/// its end commits, up to as many plans ending as there are slots: with
/// the only slot's plan ending behind another process's lock on the
/// database, the plan queued next still calls its module, and the one
/// after it waits until an end commits.
#[tokio::test]
async fn a_plan_hands_its_slot_on_while_its_end_commits() {
    let h = one_slot_and_hermes_taking(300).await;
    let (first, _, second) = opened_and_one_queued(&h).await;
    let third = store_opened(&h, "three", "local").await;
    let third = h.runner.start_opened(third, opts(), None).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while h.calls(Module::Hermes).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never called");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first plan is in its call: its end will wait for this lock (up
    // to the database's 5 s busy timeout).
    let other = rusqlite::Connection::open(h.dir.path().join("madre.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    while h.calls(Module::Hermes).await < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued plan waited for the first one's end to commit"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The second plan's call ends (300 ms) and finds no place among the
    // plans ending: it keeps the slot, and the third is not called.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        h.calls(Module::Hermes).await,
        2,
        "more plans called than slots and places to end in"
    );
    other.execute_batch("ROLLBACK").unwrap();
    for run in [first, second, third] {
        assert_eq!(run.finished().await.unwrap().plan.status, Status::Done);
    }
    assert_eq!(h.calls(Module::Hermes).await, 3);
}
