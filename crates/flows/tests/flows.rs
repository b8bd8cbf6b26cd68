//! Madre embedded as a library: every flow driven from plain Tokio (no actix
//! runtime), against vx11-stubs over HTTP and a real SQLite file.

use madre_db::Db;
use madre_delegation::{Delegator, Registry};
use madre_flows::{Answer, Approval, FlowError, IdempotencyKey, Madre, MadreConfig, Parts};
use madre_models::{ChatCommand, ChatRequest, Module, Status};
use madre_policy::{Principal, Principals, RiskTables, Role};
use madre_runner::{Runner, RunnerConfig};
use secrecy::SecretString;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use vx11_stubs::{Behaviour, StubServer};

struct Harness {
    dir: tempfile::TempDir,
    stubs: StubServer,
    madre: Arc<Madre>,
}

fn admin() -> Principal {
    Principal {
        name: "ada".into(),
        role: Role::Admin,
    }
}

fn chat_command(message: &str) -> ChatCommand {
    ChatRequest {
        message: message.into(),
        session_id: None,
        context: None,
    }
    .validate()
    .unwrap()
}

/// One plan slot and four places in the queue.
fn one_slot_and_a_short_queue() -> Harness {
    one_slot_and_a_queue_of(4)
}

/// One plan slot and `max_queued` places in the queue.
fn one_slot_and_a_queue_of(max_queued: usize) -> Harness {
    harness(
        RunnerConfig {
            max_concurrent: 1,
            max_queued,
            ..RunnerConfig::default()
        },
        MadreConfig::default(),
    )
}

/// One plan slot and no queue: the second plan to run finds it full.
fn one_slot_no_queue() -> Harness {
    one_slot_and_a_queue_of(0)
}

fn harness(runner: RunnerConfig, config: MadreConfig) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("vx11.db")).unwrap();
    let stubs = StubServer::start("127.0.0.1", |_| 0).unwrap();
    let urls: BTreeMap<Module, String> =
        Module::REMOTE.iter().map(|&m| (m, stubs.url(m))).collect();
    let registry = Registry::new(urls, &[], SecretString::from("t"), Duration::from_secs(2));
    let delegator = Delegator::new(Arc::new(registry));
    let runner = Runner::new(db.clone(), delegator.clone(), runner);
    let madre = Madre::new(Parts {
        db,
        runner,
        delegator,
        tables: RiskTables::default(),
        principals: Principals::new(),
        config,
        reloader: None,
    })
    .unwrap();
    Harness { dir, stubs, madre }
}

fn default_harness() -> Harness {
    harness(RunnerConfig::default(), MadreConfig::default())
}

impl Harness {
    async fn chat(&self, message: &str) -> madre_models::ChatResponse {
        self.madre
            .chat(&admin(), chat_command(message), "chat", "test")
            .await
            .unwrap()
    }

    /// A chat through `once`, as the HTTP layer sends one with a key.
    async fn keyed_chat(&self, key: &str, message: &str) -> Result<Answer, FlowError> {
        let madre = self.madre.clone();
        let message = message.to_owned();
        let idem = IdempotencyKey {
            key: key.into(),
            request_hash: format!("hash of {message}"),
        };
        self.madre
            .once(&admin(), Some(idem), move || async move {
                let r = madre
                    .chat(&admin(), chat_command(&message), "chat", "test")
                    .await?;
                Ok(Answer {
                    status: 200,
                    plan_id: Some(r.plan_id),
                    body: serde_json::to_value(&r).unwrap(),
                })
            })
            .await
    }

    /// A chat sent while the only slot is taken and there is no queue:
    /// refused with `QueueFull` (503).
    async fn chat_refused_for_a_full_queue(&self) {
        let refused = self
            .madre
            .chat(&admin(), chat_command("hello too"), "chat", "t")
            .await;
        assert!(
            matches!(refused, Err(FlowError::QueueFull(_))),
            "{refused:?}"
        );
    }

    /// Starts a LOW chat whose Hermes call takes `hermes_ms`, and waits
    /// (bounded) until it holds a slot; answers its task.
    async fn occupy_the_only_slot(
        &self,
        hermes_ms: u64,
    ) -> tokio::task::JoinHandle<madre_models::ChatResponse> {
        let slow = Behaviour {
            latency_ms: hermes_ms,
            ..Behaviour::default()
        };
        self.stubs.behave(Module::Hermes, &slow).await.unwrap();
        let madre = self.madre.clone();
        let busy = tokio::spawn(async move {
            madre
                .chat(&admin(), chat_command("hello"), "chat", "t")
                .await
                .unwrap()
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // It holds the slot, and its plan (taken before it is written) is
        // stored RUNNING: nothing of it is left to commit but its end.
        let stored_running = || {
            !self
                .madre
                .db()
                .plan_ids_with_status(Status::Running)
                .unwrap()
                .is_empty()
        };
        while self.madre.runner().running() == 0 || !stored_running() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the first chat never ran"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        busy
    }

    /// A chat of `message` on a task of its own, answered DONE or not.
    fn spawn_chat(
        &self,
        message: &'static str,
    ) -> tokio::task::JoinHandle<madre_models::ChatResponse> {
        let madre = self.madre.clone();
        tokio::spawn(async move {
            madre
                .chat(&admin(), chat_command(message), "chat", "t")
                .await
                .unwrap()
        })
    }

    async fn calls(&self, module: Module) -> u64 {
        self.stubs.stats(module).await.unwrap().calls
    }
}

fn text(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_default().to_owned()
}

/// The cleanup pass moves finished plans past their retention to the
/// archive beside the database (issue 25); a plan still waiting for its
/// confirmation stays, whatever its age.
#[tokio::test]
async fn the_cleanup_archives_finished_plans_and_keeps_waiting_ones() {
    let h = harness(
        RunnerConfig::default(),
        MadreConfig {
            plan_retention: Some(Duration::ZERO),
            ..MadreConfig::default()
        },
    );
    let done = h.chat("hello there").await;
    assert_eq!(done.status, Status::Done);
    let waiting = h.chat("delete all data").await;
    assert_eq!(waiting.status, Status::Waiting);
    h.madre.cleanup_once().await.unwrap();
    let db = h.madre.db();
    assert!(db.plan(done.plan_id).unwrap().is_none());
    let archive = db.archived_plan(done.plan_id).unwrap().expect("archived");
    let lines = madre_db::read_archive(&h.dir.path().join("archive").join(&archive)).unwrap();
    assert_eq!(lines.len(), 1);
    assert_eq!(
        lines[0]["plan_id"],
        serde_json::json!(done.plan_id.to_string())
    );
    assert_eq!(lines[0]["plan"]["status"], serde_json::json!("DONE"));
    assert!(db.plan(waiting.plan_id).unwrap().is_some());
    assert!(db.archived_plan(waiting.plan_id).unwrap().is_none());
}

#[tokio::test]
async fn a_low_chat_runs_on_plain_tokio() {
    let h = default_harness();
    let r = h.chat("hello there").await;
    assert_eq!(r.status, Status::Done);
    assert_eq!(r.response, "[hermes stub via stub-engine] hello there");
    assert_eq!(h.calls(Module::Hermes).await, 1);
    let detail = h.madre.plan_detail(r.plan_id).await.unwrap();
    assert_eq!(
        detail.events.first().unwrap().event_type.as_str(),
        "plan_created"
    );
    assert_eq!(
        detail.events.last().unwrap().event_type.as_str(),
        "plan_finished"
    );
    // The Switch step answered at intake is created DONE with that answer:
    // it never starts, so it has no event of its own (issue 25).
    let switch = &detail.plan.steps[0];
    assert_eq!(switch.status, Status::Done);
    assert_eq!(switch.attempts, 1);
    assert_eq!(
        switch.result.as_ref().unwrap()["answered_at_intake"],
        serde_json::json!(true)
    );
    assert!(
        detail
            .events
            .iter()
            .all(|e| e.step_id != Some(switch.step_id)),
        "{:?}",
        detail.events
    );
    // The first call's step starts in the plan's own commit, and only once.
    assert_eq!(detail.events[1].event_type.as_str(), "step_started");
    assert_eq!(detail.events[1].at, detail.events[0].at);
    let first_call = detail.plan.steps[1].step_id;
    assert_eq!(detail.events[1].step_id, Some(first_call));
    let starts = detail
        .events
        .iter()
        .filter(|e| e.event_type.as_str() == "step_started" && e.step_id == Some(first_call))
        .count();
    assert_eq!((starts, detail.plan.steps[1].attempts), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_run_on_a_multi_threaded_runtime() {
    let h = default_harness();
    let mut chats = Vec::new();
    for i in 0..6 {
        let madre = h.madre.clone();
        chats.push(tokio::spawn(async move {
            madre
                .chat(&admin(), chat_command(&format!("hello {i}")), "chat", "t")
                .await
                .unwrap()
                .status
        }));
    }
    for chat in chats {
        assert_eq!(chat.await.unwrap(), Status::Done);
    }
    assert_eq!(h.calls(Module::Hermes).await, 6);
}

/// Eight concurrent requests with one key make exactly one intent and one
/// plan; every one of them gets that plan's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_key_execute_once() {
    let h = default_harness();
    h.stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                latency_ms: 200,
                ..Behaviour::default()
            },
        )
        .await
        .unwrap();
    let h = Arc::new(h);
    let mut requests = Vec::new();
    for _ in 0..8 {
        let h = h.clone();
        requests.push(tokio::spawn(async move {
            h.keyed_chat("same-key", "hello once").await.unwrap()
        }));
    }
    let mut plans = std::collections::HashSet::new();
    for request in requests {
        let answer = request.await.unwrap();
        assert_eq!(text(&answer.body, "status"), "DONE");
        plans.insert(answer.plan_id.unwrap());
    }
    assert_eq!(plans.len(), 1, "one plan for all eight");
    assert_eq!(h.madre.db().count_intents().unwrap(), 1, "one intent");
    assert_eq!(h.calls(Module::Hermes).await, 1);
}

/// A reservation this process holds goes stale by its monotonic clock, not
/// the wall clock (issue 22): here the row's time is set back by years, as
/// a wall clock stepped forward would make it look, while its request still
/// runs. A retry with the same key does not take it over and run the work
/// a second time: it answers "in progress", and the first answer stands.
#[tokio::test]
async fn a_wall_clock_jump_does_not_run_a_keyed_request_twice() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let h = default_harness();
    let runs = Arc::new(AtomicUsize::new(0));
    let key = IdempotencyKey {
        key: "jump".into(),
        request_hash: "h".into(),
    };
    let work = |runs: Arc<AtomicUsize>, release: Option<tokio::sync::oneshot::Receiver<()>>| {
        move || async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if let Some(release) = release {
                let _ = release.await;
            }
            Ok(Answer {
                status: 200,
                body: serde_json::json!({ "ran": true }),
                plan_id: None,
            })
        }
    };
    let (release, released) = tokio::sync::oneshot::channel();
    let madre = h.madre.clone();
    let first_key = key.clone();
    let first_work = work(runs.clone(), Some(released));
    let first =
        tokio::spawn(async move { madre.once(&admin(), Some(first_key), first_work).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runs.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first never ran"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let file = rusqlite::Connection::open(h.dir.path().join("vx11.db")).unwrap();
    let moved = file
        .execute(
            // 2001-01-01T00:00:00Z, in the stored microseconds.
            "UPDATE idempotency_keys SET created_at = 978307200000000",
            [],
        )
        .unwrap();
    assert_eq!(moved, 1);
    let retry = h
        .madre
        .once(&admin(), Some(key.clone()), work(runs.clone(), None))
        .await;
    assert!(
        matches!(retry, Err(FlowError::IdempotencyInProgress)),
        "{retry:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the work ran once");
    release.send(()).unwrap();
    first.await.unwrap().unwrap();
    let replay = h
        .madre
        .once(&admin(), Some(key), work(runs.clone(), None))
        .await
        .unwrap();
    assert_eq!(replay.body, serde_json::json!({ "ran": true }));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// What a LOW chat costs in the database, indexes included (issue 25):
/// the pages the file's used part grew by over N chats. Issue 25's target
/// is 1 KB; today's figure is about 1.7 KB (see docs/benchmarks.md), and
/// this bound keeps it from growing unseen.
#[tokio::test]
async fn a_low_chat_stays_within_its_byte_budget() {
    const CHATS: u64 = 300;
    let h = default_harness();
    assert_eq!(h.chat("hello").await.status, Status::Done);
    let used = || {
        let (size, free) = h.madre.db().size().unwrap();
        size - free
    };
    let before = used();
    for i in 0..CHATS {
        assert_eq!(
            h.chat(&format!("tell me about the weather in Lisbon {i}"))
                .await
                .status,
            Status::Done
        );
    }
    let per_chat = (used() - before) as f64 / CHATS as f64;
    println!("per LOW chat: {per_chat:.0} bytes in the database");
    assert!(per_chat > 0.0);
    // Issue 25's budget: 1 KB, indexes included. The compact plan body
    // brought 4,396 to 3,700, keeping each payload once and integer times
    // to 2,030, turns keyed by session to 1,980, the creation audited by
    // the journal to 1,830, no session row in the default mode to 1,690,
    // bodies stored once per shape to 1,240, the Switch step answered at
    // intake created DONE to 1,050, event types and replicas as integers
    // to 970 (docs/benchmarks.md).
    assert!(per_chat <= 1_000.0, "{per_chat:.0} bytes a chat");
}

/// Issue 25: a chat's request and its answer are each stored once. The
/// request's message is kept by the intent log only (not again in the
/// plan's intent, its steps or the history), and Hermes's answer by the
/// journal's event of that step only (not again in the plan's end, its row
/// or the history); every read still shows them where it did.
#[tokio::test]
async fn a_chat_stores_its_request_and_its_answer_once() {
    let h = default_harness();
    let prompt = format!(
        "tell me the whole story of the lighthouse keeper {} {}",
        Uuid::now_v7(),
        "and the storm that lasted nine days ".repeat(20)
    );
    let answer = h.chat(&prompt).await;
    assert_eq!(answer.status, Status::Done);
    // The stub answers with the prompt inside its reply.
    let reply = answer.response.clone();
    assert!(reply.contains(&prompt) && reply != prompt, "{reply}");

    let stored = |needle: &str| -> usize {
        let conn = rusqlite::Connection::open(h.dir.path().join("vx11.db")).unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut n = 0;
        for table in tables {
            let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
            let columns = stmt.column_count();
            let mut rows = stmt.query([]).unwrap();
            while let Some(row) = rows.next().unwrap() {
                for i in 0..columns {
                    if let rusqlite::types::ValueRef::Text(bytes) = row.get_ref(i).unwrap() {
                        n += String::from_utf8_lossy(bytes).matches(needle).count();
                    }
                }
            }
        }
        n
    };
    assert_eq!(stored(&reply), 1, "the answer is stored once");
    assert_eq!(
        stored(&prompt),
        2,
        "the request is stored once, and once more inside the answer"
    );

    // Every read shows them as before.
    let plan = h.madre.db().plan(answer.plan_id).unwrap().unwrap();
    assert_eq!(plan.intent.unwrap().dsl.original_text, prompt);
    assert_eq!(plan.result.unwrap()["reply"], reply.as_str());
    assert!(
        plan.plan
            .steps
            .iter()
            .any(|s| s.payload["prompt"] == prompt.as_str()),
        "{:?}",
        plan.plan.steps
    );
    let history = h
        .madre
        .db()
        .history(answer.session_id.as_str(), 10)
        .unwrap();
    let said: Vec<_> = history
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        said,
        [("user", prompt.as_str()), ("assistant", reply.as_str())]
    );
    assert!(
        history
            .iter()
            .all(|m| m.intent_id == Some(answer.intent_id))
    );
}

/// A WAITING answer stored for its key never holds the token; the replay of
/// a lost answer hands out a fresh token that confirms, and the old one no
/// longer works.
#[tokio::test]
async fn a_replayed_waiting_answer_carries_a_fresh_token_and_none_is_stored() {
    let h = default_harness();
    let first = h.keyed_chat("k-waiting", "delete all data").await.unwrap();
    assert_eq!(text(&first.body, "status"), "WAITING");
    let old_token = text(&first.body, "confirm_token");
    assert!(old_token.len() >= 22);
    let plan_id = first.plan_id.unwrap();

    // The token is nowhere in the database file or its WAL.
    for name in ["vx11.db", "vx11.db-wal"] {
        // The database must be there; its WAL may have been folded in.
        let path = h.dir.path().join(name);
        let bytes = if name == "vx11.db" {
            std::fs::read(&path).unwrap()
        } else {
            std::fs::read(&path).unwrap_or_default()
        };
        assert!(
            !bytes
                .windows(old_token.len())
                .any(|w| w == old_token.as_bytes()),
            "{name} holds the confirm token in clear"
        );
    }

    let replay = h.keyed_chat("k-waiting", "delete all data").await.unwrap();
    assert_eq!(replay.plan_id, Some(plan_id));
    let new_token = text(&replay.body, "confirm_token");
    assert!(new_token.len() >= 22 && new_token != old_token);

    let stale = h
        .madre
        .confirm(&admin(), plan_id, Approval::token(&old_token), "t")
        .await;
    assert!(
        matches!(stale, Err(FlowError::WrongConfirmToken { .. })),
        "{stale:?}"
    );
    let confirmed = h
        .madre
        .confirm(&admin(), plan_id, Approval::token(&new_token), "t")
        .await
        .unwrap();
    assert_eq!(confirmed.plan.plan.status, Status::Done);
}

/// Confirming while every slot and queue place is taken spends the token
/// and runs the plan as soon as a slot frees; it is not cancelled and the
/// answer is RUNNING, not "retry".
#[tokio::test]
async fn confirming_with_a_full_queue_runs_the_plan_later() {
    let h = one_slot_no_queue();
    let waiting = h.chat("delete all data").await;
    let token = waiting.confirm_token.clone().unwrap();
    let busy = h.occupy_the_only_slot(600).await;
    let confirmed = h
        .madre
        .confirm(&admin(), waiting.plan_id, Approval::token(&token), "t")
        .await
        .unwrap();
    assert_eq!(confirmed.plan.plan.status, Status::Running);
    assert_eq!(busy.await.unwrap().status, Status::Done);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let plan = h.madre.load_plan(waiting.plan_id).await.unwrap();
        if plan.plan.status == Status::Done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {}",
            plan.plan.status
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// After the cleanup loop expired a confirmation, confirming answers
/// "expired" (410), not "not waiting" (409).
#[tokio::test]
async fn a_confirmation_expired_by_cleanup_still_answers_expired() {
    let h = harness(
        RunnerConfig::default(),
        MadreConfig {
            confirm_ttl_s: 1,
            ..MadreConfig::default()
        },
    );
    let waiting = h.chat("delete all data").await;
    let token = waiting.confirm_token.clone().unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // the TTL is the thing under test
    let report = h.madre.cleanup_once().await.unwrap();
    assert_eq!(report.confirmations_expired, vec![waiting.plan_id]);
    let late = h
        .madre
        .confirm(&admin(), waiting.plan_id, Approval::token(&token), "t")
        .await;
    assert!(
        matches!(late, Err(FlowError::ConfirmationExpired)),
        "{late:?}"
    );
    let events = h.madre.db().plan_events(waiting.plan_id).unwrap();
    assert_eq!(events.last().unwrap().event_type.as_str(), "plan_expired");
}

/// A chat's history turn and its intent's close: committed with the plan's
/// end when the run ends the plan, written by the chat itself when it does
/// not (here the plan's deadline ends it); once either way.
#[tokio::test]
async fn every_chat_records_one_turn_and_closes_its_intent_with_the_plans_status() {
    let h = harness(
        RunnerConfig {
            task_timeout: Duration::from_secs(1),
            ..RunnerConfig::default()
        },
        MadreConfig {
            task_timeout_s: 1,
            ..MadreConfig::default()
        },
    );
    let db = h.madre.db().clone();
    let turn_of = |r: &madre_models::ChatResponse| {
        let intent = db.intent_log(r.intent_id).unwrap().unwrap();
        let history = db.history(r.session_id.as_str(), 100).unwrap();
        let turn: Vec<(String, String)> =
            history.into_iter().map(|m| (m.role, m.content)).collect();
        (intent.result_status, turn)
    };
    let done = h.chat("hello there").await;
    assert_eq!(done.status, Status::Done);
    assert_eq!(
        turn_of(&done),
        (
            Some("DONE".to_owned()),
            vec![
                ("user".to_owned(), "hello there".to_owned()),
                ("assistant".to_owned(), done.response.clone())
            ]
        )
    );
    h.stubs
        .behave(
            Module::Hermes,
            &Behaviour {
                latency_ms: 1_500,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let late = h.chat("hello again").await;
    assert_eq!(late.status, Status::Error);
    assert_eq!(
        turn_of(&late),
        (
            Some("ERROR".to_owned()),
            vec![
                ("user".to_owned(), "hello again".to_owned()),
                ("assistant".to_owned(), late.response.clone())
            ]
        )
    );
}

/// A chat that fails after its intent was logged closes the intent; and
/// start-up closes those a crashed process left open.
#[tokio::test]
async fn no_intent_is_left_open() {
    let h = one_slot_no_queue();
    let busy = h.occupy_the_only_slot(500).await;
    h.chat_refused_for_a_full_queue().await;
    busy.await.unwrap();
    assert_eq!(h.madre.db().count_open_intents().unwrap(), 0);

    // What a crash leaves: an intent logged, never closed.
    h.madre
        .db()
        .log_intent(madre_db::NewIntentLog {
            id: Uuid::new_v4(),
            source: "chat".into(),
            principal: "ada".into(),
            payload: serde_json::json!({}),
            created_at: chrono::Utc::now() - chrono::Duration::seconds(1),
        })
        .await
        .unwrap();
    assert_eq!(h.madre.db().count_open_intents().unwrap(), 1);
    let report = h.madre.start_up().await.unwrap();
    assert_eq!(report.intents_closed, 1);
    assert_eq!(h.madre.db().count_open_intents().unwrap(), 0);
}

/// Stored answers are deleted by the cleanup pass once past their lifetime.
#[tokio::test]
async fn idempotency_keys_expire() {
    let h = harness(
        RunnerConfig::default(),
        MadreConfig {
            idempotency_ttl_s: 1,
            ..MadreConfig::default()
        },
    );
    h.keyed_chat("k-old", "hello").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // the TTL is the thing under test
    let report = h.madre.cleanup_once().await.unwrap();
    assert_eq!(report.idempotency_keys_deleted, 1);
    let again = h.keyed_chat("k-old", "hello").await.unwrap();
    assert_eq!(
        h.madre.db().count_intents().unwrap(),
        2,
        "the key ran again"
    );
    assert_eq!(text(&again.body, "status"), "DONE");
}

/// Cancelling a finished plan is a conflict; cancelling a waiting one ends
/// it and its journal says who did.
#[tokio::test]
async fn cancel_is_journaled() {
    let h = default_harness();
    let waiting = h.chat("delete all data").await;
    assert_eq!(
        h.madre.cancel(&admin(), waiting.plan_id).await.unwrap(),
        Status::Cancelled
    );
    let again = h.madre.cancel(&admin(), waiting.plan_id).await;
    assert!(matches!(again, Err(FlowError::Conflict(_))), "{again:?}");
    let last = h
        .madre
        .db()
        .plan_events(waiting.plan_id)
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(
        (
            last.event_type.as_str(),
            last.principal.as_deref(),
            last.reason.as_deref()
        ),
        ("plan_finished", Some("ada"), Some("cancelled"))
    );
}

/// A chat refused for a full queue is refused before its plan is stored
/// (issue 21): nothing it leaves on disk is RUNNING, so no later pass (the
/// orphan pass, a restart) can run a plan whose client was told 503, even
/// if a write after the refusal fails.
#[tokio::test]
async fn a_chat_refused_for_a_full_queue_leaves_no_plan_to_run() {
    let h = one_slot_no_queue();
    // Long enough that the busy chat's own end does not land in the count
    // below on a loaded machine; short of the 2 s call timeout.
    let busy = h.occupy_the_only_slot(1500).await;
    let before = h.madre.db().writer_stats();
    h.chat_refused_for_a_full_queue().await;
    let db = h.madre.db();
    // Admitted before anything of the plan is written: the refused chat
    // cost its intent's log and its close, two writes (issue 22).
    let spent = db.writer_stats().since(&before);
    assert_eq!(spent.writes, 2, "{spent:?}");
    let stored: Vec<Uuid> = [Status::Running, Status::Pending, Status::Cancelled]
        .into_iter()
        .flat_map(|status| db.plan_ids_with_status(status).unwrap())
        .collect();
    assert_eq!(stored.len(), 1, "only the busy chat's plan: {stored:?}");
    busy.await.unwrap();
    assert!(db.plan_ids_with_status(Status::Running).unwrap().is_empty());
    assert_eq!(h.calls(Module::Hermes).await, 1);
}

/// Cancel safety (issue 21): a chat whose future is dropped mid-flight (an
/// HTTP server's shutdown timeout, an embedder on every client disconnect)
/// still finishes its bookkeeping: its intent is closed and its
/// `Idempotency-Key` holds the answer, so a retry replays it instead of
/// waiting minutes for a stale reservation.
#[tokio::test]
async fn a_chat_dropped_mid_flight_still_closes_its_intent_and_keeps_its_key() {
    let h = harness(RunnerConfig::default(), MadreConfig::default());
    let slow = Behaviour {
        latency_ms: 300,
        ..Behaviour::default()
    };
    // Dropped while Switch is asked for the intent (before the plan
    // exists), and while Hermes is answering (the plan runs).
    h.stubs.behave(Module::Switch, &slow).await.unwrap();
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), h.keyed_chat("k-intake", "hi")).await;
    assert!(dropped.is_err(), "the chat should still be asking Switch");
    h.stubs
        .behave(Module::Switch, &Behaviour::default())
        .await
        .unwrap();
    h.stubs.behave(Module::Hermes, &slow).await.unwrap();
    let dropped =
        tokio::time::timeout(Duration::from_millis(100), h.keyed_chat("k-drop", "hello")).await;
    assert!(dropped.is_err(), "the chat should still be running");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while h.madre.db().count_open_intents().unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped chat's intent is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay = h.keyed_chat("k-drop", "hello").await.unwrap();
    assert_eq!(replay.body["status"], "DONE", "{:?}", replay);
    let replay = h.keyed_chat("k-intake", "hi").await.unwrap();
    assert_eq!(replay.body["status"], "DONE", "{:?}", replay);
    assert_eq!(
        h.calls(Module::Hermes).await,
        2,
        "the retries replay, run nothing"
    );
}

/// The plans deferred to the next free slot are bounded (issue 21): past
/// `max_deferred`, a confirmation is refused with `QueueFull` (503) before
/// its token is consumed, so the same token works once there is room, and
/// every plan confirmed runs.
#[tokio::test]
async fn past_the_deferred_bound_a_confirmation_is_refused_and_its_token_kept() {
    let h = harness(
        RunnerConfig {
            max_concurrent: 1,
            max_queued: 0,
            max_deferred: 1,
            ..RunnerConfig::default()
        },
        MadreConfig::default(),
    );
    let first = h.chat("delete all data").await;
    let second = h.chat("delete all logs").await;
    let busy = h.occupy_the_only_slot(600).await;
    let deferred = h
        .madre
        .confirm(
            &admin(),
            first.plan_id,
            Approval::token(first.confirm_token.as_deref().unwrap()),
            "t",
        )
        .await
        .unwrap();
    assert_eq!(deferred.plan.plan.status, Status::Running);
    assert_eq!(h.madre.runner().deferred(), 1);
    let token = second.confirm_token.clone().unwrap();
    let refused = h
        .madre
        .confirm(&admin(), second.plan_id, Approval::token(&token), "t")
        .await;
    assert!(
        matches!(refused, Err(FlowError::QueueFull(_))),
        "{refused:?}"
    );
    assert_eq!(h.madre.runner().deferred(), 1, "the list did not grow");
    assert_eq!(
        h.madre.load_plan(second.plan_id).await.unwrap().plan.status,
        Status::Waiting,
        "refused before the confirmation was consumed"
    );
    busy.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let confirmed = loop {
        match h
            .madre
            .confirm(&admin(), second.plan_id, Approval::token(&token), "t")
            .await
        {
            Ok(confirmed) => break confirmed,
            Err(FlowError::QueueFull(_)) => {
                assert!(tokio::time::Instant::now() < deadline, "never room");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    for plan_id in [first.plan_id, confirmed.plan.plan.plan_id] {
        loop {
            let status = h.madre.load_plan(plan_id).await.unwrap().plan.status;
            if status == Status::Done {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "still {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `[effects]` of the policy file reaches the parser (SPEC §5): an
/// operator's own tool waits as `execute`; and a file that would make a
/// verb Madre knows as send, execute or destroy harmless is refused when
/// Madre is built, naming the verb.
#[tokio::test]
async fn policy_effects_reach_the_parser_and_cannot_make_danger_harmless() {
    let parts = |tables: RiskTables| {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("vx11.db")).unwrap();
        let registry = Registry::new(
            BTreeMap::new(),
            &[],
            SecretString::from("t"),
            Duration::from_secs(2),
        );
        let delegator = Delegator::new(Arc::new(registry));
        let runner = Runner::new(db.clone(), delegator.clone(), RunnerConfig::default());
        let parts = Parts {
            db,
            runner,
            delegator,
            tables,
            principals: Principals::new(),
            config: MadreConfig::default(),
            reloader: None,
        };
        (dir, parts)
    };
    let tables = RiskTables::from_toml_str("[effects.execute]\nverbs = [\"vxctl\"]\n").unwrap();
    let (_dir, good) = parts(tables);
    let madre = Madre::new(good).unwrap();
    let answer = madre
        .chat(&admin(), chat_command("vxctl rollout"), "chat", "t")
        .await
        .unwrap();
    assert_eq!(answer.status, Status::Waiting);
    assert_eq!(answer.risk, madre_models::RiskLevel::High);

    let tables = RiskTables::from_toml_str("[effects.read]\nverbs = [\"send\"]\n").unwrap();
    let (_dir, bad) = parts(tables);
    let Err(refused) = Madre::new(bad) else {
        panic!("a send verb cannot be made LOW")
    };
    assert!(refused.to_string().contains("\"send\""), "{refused}");
}

/// A chat whose plan is still queued when the chat stops waiting answers
/// RUNNING or PENDING, but its intent is closed with the plan's final
/// status when the plan ends, and the history turn holds the final reply
/// (issue 22: it used to be closed as RUNNING for ever).
#[tokio::test]
async fn a_plan_that_outlives_the_chat_closes_its_intent_when_it_ends() {
    let h = harness(
        RunnerConfig {
            max_concurrent: 1,
            max_queued: 16,
            ..RunnerConfig::default()
        },
        MadreConfig {
            task_timeout_s: 1,
            ..MadreConfig::default()
        },
    );
    // Each plan holds the only slot for its 1 s deadline (Hermes takes
    // longer), so the eighth waits in the queue past the chat's 6 s wait.
    let slow = Behaviour {
        latency_ms: 1_500,
        ..Behaviour::default()
    };
    h.stubs.behave(Module::Hermes, &slow).await.unwrap();
    let chats: Vec<_> = (0..8)
        .map(|i| {
            let madre = h.madre.clone();
            tokio::spawn(async move {
                madre
                    .chat(&admin(), chat_command(&format!("hello {i}")), "chat", "t")
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut answers = Vec::new();
    for chat in chats {
        answers.push(chat.await.unwrap());
    }
    let outlived: Vec<_> = answers.iter().filter(|a| !a.status.is_terminal()).collect();
    assert!(!outlived.is_empty(), "some plan outlived its chat's wait");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for answer in outlived {
        loop {
            let log = h.madre.db().intent_log(answer.intent_id).unwrap().unwrap();
            if let Some(outcome) = log.result_status {
                assert!(
                    matches!(outcome.as_str(), "DONE" | "ERROR"),
                    "closed with the final status, not {outcome}"
                );
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the intent was never closed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let plan = h.madre.load_plan(answer.plan_id).await.unwrap();
        assert!(plan.plan.status.is_terminal());
    }
}

/// What one LOW chat costs the writer, counted by SQLite's own hooks over
/// sequential chats (so no batch shares a commit): statements, WAL frames
/// and commits. Fails when a chat's writes grow past the budget of issue
/// 22, so the gain cannot erode unseen; the figures are printed for
/// docs/benchmarks.md (`cargo test -p madre-flows --test flows
/// a_low_chat_stays_within -- --nocapture`).
#[tokio::test]
async fn a_low_chat_stays_within_its_write_budget() {
    const CHATS: u64 = 20;
    let h = default_harness();
    // A LOW warm-up: a waiting plan would publish on the event bus and
    // write its audit row in the background, inside the measurement.
    assert_eq!(h.chat("hello").await.status, Status::Done);
    let before = h.madre.db().writer_stats();
    h.madre.db().record_statements();
    for i in 0..CHATS {
        assert_eq!(h.chat(&format!("hello {i}")).await.status, Status::Done);
    }
    let spent = h.madre.db().writer_stats().since(&before);
    let trees = btrees_written(
        &h.dir.path().join("vx11.db"),
        &h.madre.db().take_statements(),
    );
    let per_chat = |n: u64| n as f64 / CHATS as f64;
    println!(
        "per LOW chat: {:.1} statements, {:.1} WAL frames, {:.1} commits, {:.1} writes, {} b-trees: {trees:?}",
        per_chat(spent.statements),
        per_chat(spent.wal_frames),
        per_chat(spent.commits),
        per_chat(spent.writes),
        trees.len(),
    );
    assert_eq!(spent.commits, 3 * CHATS, "three commits a chat: {spent:?}");
    assert!(spent.statements > 0 && spent.wal_frames > 0, "{spent:?}");
    // Issue 22's budget is 12 statements (41 before storage v2); the
    // writer's kept folds brought it to 11 (no replay of the journal), the
    // creation audited by the journal to 10.
    assert!(per_chat(spent.statements) <= 10.0, "{spent:?}");
    // Issue 22 asks for 12 WAL frames; storage v2 brought 33.9 to 23.4,
    // smaller rows to 20.9, the creation audited by the journal to 18.9,
    // no session row in the default mode to 16.9 (see docs/benchmarks.md).
    // This bound keeps that gain from eroding.
    assert!(per_chat(spent.wal_frames) <= 18.0, "{spent:?}");
    // Issue 22 asks for 8 b-trees; these are the 10 a LOW chat writes (see
    // docs/benchmarks.md for what needs each). No AUTOINCREMENT counter
    // (`sqlite_sequence`) is among them, nor the audit trail's table, nor
    // a session row (a session in the default mode has none).
    for never in ["sqlite_sequence", "madre_actions", "sessions"] {
        assert!(!trees.contains(never), "{never}: {trees:?}");
    }
    assert!(trees.len() <= 10, "{} b-trees: {trees:?}", trees.len());
}

/// The tables and indexes `statements` may write in the database at
/// `path`: every b-tree their compiled programs open for writing
/// (SQLite's `OpenWrite`), by name.
fn btrees_written(
    path: &std::path::Path,
    statements: &[String],
) -> std::collections::BTreeSet<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut trees = std::collections::BTreeSet::new();
    for sql in statements {
        // Compiled, not run: its parameters stay unbound.
        let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let mut program = explain.raw_query();
        let mut roots = Vec::new();
        while let Some(op) = program.next().unwrap() {
            let opcode: String = op.get(1).unwrap();
            if opcode == "OpenWrite" && op.get::<_, i64>(4).unwrap() == 0 {
                roots.push(op.get::<_, i64>(3).unwrap());
            }
        }
        for root in roots {
            let name: String = conn
                .query_row(
                    "SELECT name FROM sqlite_schema WHERE rootpage = ?1",
                    [root],
                    |r| r.get(0),
                )
                .unwrap_or_else(|e| panic!("no b-tree at page {root} ({e}): {sql}"));
            trees.insert(name);
        }
    }
    trees
}

/// SPEC §14: a reader that stops reading is let go once its buffer stays
/// full for the slow-reader time; chats go on at full speed meanwhile, and
/// a reader that goes away ends its follower.
#[tokio::test]
async fn a_reader_that_stops_reading_is_let_go_and_chats_go_on() {
    use madre_flows::{FeedItem, FollowEnd, FollowPace, JournalFilter};
    let h = default_harness();
    for i in 0..3 {
        h.chat(&format!("hello {i}")).await;
    }
    let pace = FollowPace {
        keep_alive: Duration::from_secs(60),
        poll: Duration::from_millis(50),
        slow_reader: Duration::from_millis(300),
    };
    // A buffer of two, never read: 18 events cannot fit.
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let follower = {
        let madre = h.madre.clone();
        tokio::spawn(async move {
            madre
                .follow_journal(JournalFilter::default(), 0, tx, pace)
                .await
        })
    };
    // Chats are not held up by the stuck reader.
    let chat = tokio::time::timeout(Duration::from_secs(20), h.chat("while stuck"))
        .await
        .expect("a chat finished while a reader was stuck");
    assert_eq!(chat.status, Status::Done);
    let end = tokio::time::timeout(Duration::from_secs(20), follower)
        .await
        .expect("the follower ended")
        .unwrap()
        .unwrap();
    assert_eq!(end, FollowEnd::TooSlow);
    // What it did hand over is the start of the journal, in order.
    let Some(FeedItem::Event(first)) = rx.recv().await else {
        panic!("the buffered events are readable")
    };
    assert_eq!(first.event.seq, 1);

    // A reader that goes away ends its follower without waiting.
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let madre = h.madre.clone();
    let follower = tokio::spawn(async move {
        madre
            .follow_journal(JournalFilter::default(), i64::MAX - 1, tx, pace)
            .await
    });
    drop(rx);
    let end = tokio::time::timeout(Duration::from_secs(20), follower)
        .await
        .expect("the follower ended")
        .unwrap()
        .unwrap();
    assert_eq!(end, FollowEnd::ReaderGone);
}

/// SPEC §14: a follower learns of a commit from the writer, not from its
/// poll: with a poll of a minute, a chat's events still arrive at once.
#[tokio::test]
async fn a_follower_is_woken_by_each_commit_to_the_journal() {
    use madre_flows::{FeedItem, FollowPace, JournalFilter};
    let h = default_harness();
    h.chat("before").await;
    let pace = FollowPace {
        keep_alive: Duration::from_secs(600),
        poll: Duration::from_secs(600),
        slow_reader: Duration::from_secs(60),
    };
    let head = h.madre.journal_head().await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let madre = h.madre.clone();
    tokio::spawn(async move {
        madre
            .follow_journal(JournalFilter::default(), head, tx, pace)
            .await
    });
    let chat = h.chat("after").await;
    let mut types = Vec::new();
    // plan_created, the Hermes step's start and end, plan_finished.
    while types.len() < 4 {
        let item = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("woken by the commit, not the poll")
            .unwrap();
        let FeedItem::Event(event) = item else {
            panic!("no keep-alive within ten minutes")
        };
        assert_eq!(event.event.plan_id, chat.plan_id);
        assert!(event.event.seq > head);
        types.push(event.event.event_type.as_str());
    }
    assert_eq!(types.last(), Some(&"plan_finished"));
}

/// A chat that finds every slot busy waits for one before its plan is
/// stored, so it starts as stored; a wait past a second stores it (its
/// first step started, as any chat's) in the queue, listed like any plan,
/// and it runs when its slot comes.
#[tokio::test]
async fn a_chat_waiting_for_a_slot_is_stored_once_it_has_one_or_after_a_second() {
    let h = one_slot_and_a_short_queue();
    let busy = h.occupy_the_only_slot(1_800).await;
    let waiting = h.spawn_chat("hello too");
    let stored = || h.madre.db().plan_ids_with_status(Status::Running).unwrap();
    let asked = tokio::time::Instant::now();
    let deadline = asked + Duration::from_secs(10);
    while h.madre.runner().queued() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never queued");
        tokio::task::yield_now().await;
    }
    // Absence takes a while to show: a plan stored at once would be after
    // this, and the second is far off.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let so_far = stored().len();
    if asked.elapsed() < Duration::from_millis(900) {
        assert_eq!(so_far, 1, "only the busy chat's plan is stored");
    }
    while stored().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never stored while the slot stayed busy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.madre.runner().queued(),
        1,
        "stored, it waits in the queue"
    );
    let second = waiting.await.unwrap();
    assert_eq!(second.status, Status::Done);
    assert_eq!(busy.await.unwrap().status, Status::Done);
    assert_eq!(h.calls(Module::Hermes).await, 2);
}

/// A chat stored after waiting a second for its slot keeps its turn: a
/// chat that came after it, while it waited, runs after it.
#[tokio::test]
async fn a_chat_stored_after_its_wait_keeps_its_turn_for_a_slot() {
    let h = one_slot_and_a_short_queue();
    let busy = h.occupy_the_only_slot(1_300).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let earlier = h.spawn_chat("hello early");
    while h.madre.runner().queued() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "never queued");
        tokio::task::yield_now().await;
    }
    let later = h.spawn_chat("hello late");
    while h.madre.runner().queued() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never queued");
        tokio::task::yield_now().await;
    }
    assert_eq!(busy.await.unwrap().status, Status::Done);
    assert_eq!(earlier.await.unwrap().status, Status::Done);
    assert!(
        !later.is_finished(),
        "the later chat ran first: the earlier one lost its turn when it was stored"
    );
    assert_eq!(later.await.unwrap().status, Status::Done);
}
