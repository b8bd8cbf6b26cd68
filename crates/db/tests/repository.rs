//! madre-db against real temporary database files.

use chrono::{DateTime, Duration, TimeZone, Utc};
use madre_db::*;
use madre_models::{IntentOutcome, Mode, Plan, RiskLevel, SessionId, Status, Step, StepType};
use rusqlite::Connection;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use uuid::Uuid;

#[path = "support/backend.rs"]
mod backend;
use backend::{TestDb, is_postgres, open};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).unwrap()
}

fn plan_with(steps: &[(StepType, Status)], session: &str, at: DateTime<Utc>) -> Plan {
    Plan {
        plan_id: Uuid::new_v4(),
        intent_id: Uuid::new_v4(),
        session_id: SessionId::parse(session.into()).unwrap(),
        status: if steps.iter().any(|s| s.1 == Status::Waiting) {
            Status::Waiting
        } else {
            Status::Pending
        },
        mode: Mode::Madre,
        steps: steps
            .iter()
            .map(|(ty, status)| {
                let mut s = Step::new(Uuid::new_v4(), *ty, json!({"prompt": "hi"}), at);
                s.status = *status;
                s
            })
            .collect(),
        warnings: vec![],
        error: None,
        created_at: at,
        updated_at: at,
    }
}

fn record(plan: Plan) -> NewPlanRecord {
    NewPlanRecord {
        meta: PlanMeta {
            kind: PlanKind::Chat,
            name: "chat".into(),
            module: madre_models::Module::Hermes,
            action: "chat".into(),
            principal: "admin".into(),
        },
        plan,
        intent: None,
        confirmation: None,
        actions: vec![],
        logged_message: None,
    }
}

fn chat_plan(db: &Db, session: &str) -> Plan {
    let plan = plan_with(
        &[
            (StepType::CallSwitch, Status::Pending),
            (StepType::CallHermes, Status::Pending),
        ],
        session,
        t0(),
    );
    db.insert_plan(record(plan.clone())).wait().unwrap();
    plan
}

#[cfg(unix)]
#[test]
fn open_creates_private_files_with_the_documented_settings() {
    if is_postgres() {
        return; // about SQLite's file itself; PostgreSQL's rules: pg_schema.rs
    }
    use std::os::unix::fs::PermissionsExt;
    let t = open();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&t.path), 0o600);
    assert_eq!(mode(t.path.parent().unwrap()), 0o700);
    let conn = Connection::open(&t.path).unwrap();
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    t.db.integrity_check().unwrap();
    // reopening is idempotent
    drop(t.db);
    Db::open(&t.path).unwrap();
}

#[test]
fn foreign_and_newer_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();

    let garbage = dir.path().join("garbage.db");
    std::fs::write(
        &garbage,
        b"this is not sqlite at all, just some text padding it out.......",
    )
    .unwrap();
    let before = std::fs::read(&garbage).unwrap();
    assert!(matches!(
        Db::open(&garbage),
        Err(DbError::NotMadreDatabase { .. })
    ));
    assert_eq!(std::fs::read(&garbage).unwrap(), before);

    let other = dir.path().join("other.db");
    Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE customers (id INTEGER);")
        .unwrap();
    let err = Db::open(&other).unwrap_err();
    assert!(matches!(err, DbError::NotMadreDatabase { .. }), "{err}");
    assert!(err.to_string().contains("not a Madre database"));
    let conn = Connection::open(&other).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 0, "untouched");

    let newer = dir.path().join("newer.db");
    drop(Db::open(&newer).unwrap());
    Connection::open(&newer)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {};", SCHEMA_VERSION + 1))
        .unwrap();
    let err = Db::open(&newer).unwrap_err();
    assert!(
        matches!(err, DbError::SchemaTooNew { found, .. } if found == SCHEMA_VERSION + 1),
        "{err}"
    );
}

/// Schema 10 rebuilds the tables that hold times: an AUTOINCREMENT
/// counter carries over even when its table is empty, so no id is handed
/// out twice, and a time nobody could parse ages instead of staying text.
#[test]
fn the_upgrade_to_integer_times_keeps_counters_and_ages_odd_times() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v9.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 9).unwrap();
        conn.execute_batch(
            "INSERT INTO daughter_tasks (source, status, task_type, description, created_at, updated_at)
             VALUES ('madre', 'completed', 'render', 'd', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z');
             INSERT INTO daughter_tasks (source, status, task_type, description, created_at, updated_at)
             VALUES ('madre', 'completed', 'render', 'd', '2026-01-01T00:00:00.000000Z', '2026-01-01T00:00:00.000000Z');
             DELETE FROM daughter_tasks;
             INSERT INTO idempotency_keys (principal, key, request_hash, created_at)
             VALUES ('a', 'k', 'h', 'last tuesday');",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let id = db.enqueue_daughter_task(daughter(0), t0()).wait().unwrap();
    assert_eq!(id, 3, "ids 1 and 2 were handed out before the upgrade");
    let conn = Connection::open(&path).unwrap();
    let odd: (String, i64) = conn
        .query_row(
            "SELECT typeof(created_at), created_at FROM idempotency_keys",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(odd, ("integer".to_owned(), 0));
}

#[test]
fn a_database_made_by_migration_1_is_upgraded_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 1).unwrap();
        conn.execute(
            "INSERT INTO intents_log (id, source, principal, payload_json, created_at) VALUES ('x', 'chat', 'a', '{}', '2026')",
            [],
        )
        .unwrap();
        let has_idem: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'idempotency_keys'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(has_idem, 0);
    }
    let db = Db::open(&path).unwrap();
    let conn = Connection::open(&path).unwrap();
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    assert_eq!(db.count_intents().unwrap(), 1);
    db.store_idempotent_response(
        "a",
        "k",
        Uuid::new_v4(),
        StoredResponse {
            request_hash: "h".into(),
            status_code: 200,
            body: json!({}),
            plan_id: None,
        },
    )
    .wait()
    .unwrap();
}

/// Migration 3 gives plans made before the journal a synthesized history,
/// starts the status counters from the existing plans, and strips the
/// confirmation tokens stored answers held in clear.
#[test]
fn a_database_made_by_migration_2_gets_a_journal_and_loses_its_clear_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    let token = "clear-token-abcdefghijklmnopqrstuvwxyz";
    let (done, waiting) = (Uuid::new_v4(), Uuid::new_v4());
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 2).unwrap();
        for (id, status, error) in [(done, "DONE", None), (waiting, "WAITING", None::<&str>)] {
            conn.execute(
                "INSERT INTO tasks (uuid, name, module, action, status, created_at, updated_at, error,
                                    kind, session_id, mode, principal)
                 VALUES (?1, 'chat', 'madre', 'chat', ?2, '2026-11-01T00:00:00.000000Z',
                         '2026-11-01T00:00:01.000000Z', ?3, 'chat', 's', 'MADRE', 'alice')",
                rusqlite::params![id.to_string(), status, error],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO idempotency_keys VALUES ('alice', 'k', 'h', 200, ?1, '2026-11-01T00:00:00.000000Z')",
            [json!({"status": "WAITING", "plan_id": waiting, "confirm_token": token}).to_string()],
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let history = |id| -> Vec<(String, Option<Status>)> {
        db.plan_events(id)
            .unwrap()
            .into_iter()
            .map(|e| (e.event_type.as_str().to_owned(), e.status))
            .collect()
    };
    assert_eq!(
        history(done),
        [
            ("plan_created".to_owned(), Some(Status::Pending)),
            ("plan_finished".to_owned(), Some(Status::Done))
        ]
    );
    assert_eq!(
        history(waiting),
        [
            ("plan_created".to_owned(), Some(Status::Pending)),
            ("plan_waiting".to_owned(), Some(Status::Waiting))
        ]
    );
    assert_eq!(
        db.plan_counts().unwrap(),
        [(Status::Done, 1), (Status::Waiting, 1)]
    );
    let Reservation::Done(stored) = db.idempotency_key("alice", "k", "h").unwrap() else {
        panic!("the stored answer survives the migration");
    };
    assert_eq!(stored.body.get("confirm_token"), None);
    assert_eq!(stored.plan_id, Some(waiting));
    drop(db);
    let bytes = std::fs::read(&path).unwrap();
    let wal = std::fs::read(dir.path().join("v2.db-wal")).unwrap_or_default();
    for file in [&bytes, &wal] {
        assert!(
            !file.windows(token.len()).any(|w| w == token.as_bytes()),
            "the old token is gone from the file and its WAL"
        );
    }
}

/// Migration 4 re-keys steps and context rows by the plan's integer id:
/// a plan stored by the schema before reads back whole, and its journal
/// goes on where it stopped.
#[test]
fn a_plan_stored_by_migration_3_reads_back_whole_and_runs_on_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v3.db");
    let plan = plan_with(
        &[
            (StepType::CallSwitch, Status::Pending),
            (StepType::CallHermes, Status::Pending),
        ],
        "s1",
        t0(),
    );
    let plan_id = plan.plan_id;
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 3).unwrap();
        let id = plan_id.to_string();
        conn.execute(
            "INSERT INTO tasks (uuid, name, module, action, status, created_at, updated_at,
                                kind, session_id, mode, principal)
             VALUES (?1, 'chat', 'hermes', 'chat', 'RUNNING', '2026-11-22T12:00:00.000000Z',
                     '2026-11-22T12:00:00.000000Z', 'chat', 's1', 'MADRE', 'admin')",
            [&id],
        )
        .unwrap();
        for (idx, step) in plan.steps.iter().enumerate() {
            let status = if idx == 0 { "DONE" } else { "PENDING" };
            conn.execute(
                "INSERT INTO plan_steps (plan_id, idx, step_id, type, payload_json, blocking,
                                         optional, status, attempts, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, '{\"prompt\":\"hi\"}', 1, 0, ?5, ?6,
                         '2026-11-22T12:00:00.000000Z', '2026-11-22T12:00:00.000000Z')",
                rusqlite::params![
                    id,
                    idx as i64,
                    step.step_id.to_string(),
                    step.step_type.as_str(),
                    status,
                    i64::from(idx == 0)
                ],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO context (task_id, key, value, scope, created_at)
             VALUES (?1, 'mode', 'MADRE', 'plan', '2026-11-22T12:00:00.000000Z')",
            [&id],
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let stored = db
        .plan(plan_id)
        .unwrap()
        .expect("the plan survives the upgrade");
    let steps: Vec<_> = stored
        .plan
        .steps
        .iter()
        .map(|s| (s.step_id, s.step_type, s.status, s.attempts))
        .collect();
    assert_eq!(
        steps,
        [
            (plan.steps[0].step_id, StepType::CallSwitch, Status::Done, 1),
            (
                plan.steps[1].step_id,
                StepType::CallHermes,
                Status::Pending,
                0
            ),
        ]
    );
    let state = db
        .apply_events(
            plan_id,
            vec![
                started(1, t0()),
                finished(1, Status::Done, t0()),
                PlanEvent::finished(Status::Done, None, t0()),
            ],
            None,
        )
        .wait()
        .unwrap();
    assert_eq!(state.status, Status::Done);
    assert_eq!(
        db.plan(plan_id).unwrap().unwrap().plan.steps[1].status,
        Status::Done
    );
    db.integrity_check().unwrap();
}

/// Migration 5 indexes every confirmation's token, not only open ones: a
/// database of schema 4 keeps its confirmations, a spent token is still
/// told apart from an unknown one (409 "used", not 401), and the lookup
/// goes through the index instead of a scan of all confirmations.
#[test]
fn a_spent_token_of_schema_4_is_found_by_its_index_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    let (spent, open) = (Uuid::new_v4(), Uuid::new_v4());
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 4).unwrap();
        for (plan, token, outcome) in [(spent, "a1", Some("confirmed")), (open, "b2", None)] {
            conn.execute(
                "INSERT INTO tasks (uuid, name, module, action, status, created_at, updated_at,
                                    kind, session_id, mode, principal)
                 VALUES (?1, 'chat', 'hermes', 'delete', 'WAITING', '2026-11-22T12:00:00.000000Z',
                         '2026-11-22T12:00:00.000000Z', 'chat', 's1', 'MADRE', 'admin')",
                [plan.to_string()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO confirmations (plan_id, token_sha256, risk, expires_at, used_at,
                                            principal, outcome)
                 VALUES (?1, ?2, 'HIGH', '2026-11-22T12:05:00.000000Z', ?3, 'admin', ?4)",
                rusqlite::params![
                    plan.to_string(),
                    token,
                    outcome.map(|_| "2026-11-22T12:01:00.000000Z"),
                    outcome
                ],
            )
            .unwrap();
        }
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.plan_for_token("a1").unwrap(), Some(spent));
    assert_eq!(db.plan_for_pending_token("a1").unwrap(), None);
    assert_eq!(db.plan_for_pending_token("b2").unwrap(), Some(open));
    assert_eq!(db.plan_for_token("c3").unwrap(), None);
    drop(db);

    let conn = Connection::open(&path).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let plan: String = conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT plan_id FROM confirmations WHERE token_sha256 = 'a1'",
            [],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("confirmations_by_token"), "{plan}");
}

#[test]
fn intent_log_is_append_only_and_closes_once() {
    if is_postgres() {
        return; // about SQLite's file itself; PostgreSQL's rules: pg_schema.rs
    }
    let t = open();
    let id = Uuid::new_v4();
    t.db.log_intent(NewIntentLog {
        id,
        source: "chat".into(),
        principal: "alice".into(),
        payload: json!({"message": "hi"}),
        created_at: t0(),
    })
    .wait()
    .unwrap();
    let row = t.db.intent_log(id).unwrap().unwrap();
    assert_eq!(
        (row.principal.as_str(), row.processed_by_madre_at),
        ("alice", None)
    );

    t.db.close_intent(id, IntentOutcome::Plan(Status::Done), Some("ok"), t0())
        .wait()
        .unwrap();
    let row = t.db.intent_log(id).unwrap().unwrap();
    assert_eq!(row.result_status.as_deref(), Some("DONE"));
    assert!(matches!(
        t.db.close_intent(id, IntentOutcome::Plan(Status::Error), None, t0())
            .wait(),
        Err(DbError::Conflict(_))
    ));
    assert!(
        t.db.close_intent(
            Uuid::new_v4(),
            IntentOutcome::Plan(Status::Done),
            None,
            t0()
        )
        .wait()
        .unwrap_err()
        .is_not_found()
    );

    // A plain connection cannot delete or rewrite the trail either.
    let conn = Connection::open(&t.path).unwrap();
    let err = conn.execute("DELETE FROM intents_log", []).unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(
        conn.execute("UPDATE intents_log SET payload_json = '{}'", [])
            .is_err()
    );
    assert!(
        conn.execute(
            "UPDATE intents_log SET result_status = 'X', processed_by_madre_at = 'now'",
            []
        )
        .is_err()
    );

    let action_id =
        t.db.record_action(NewAction {
            module: "hermes".into(),
            action: "CALL_HERMES".into(),
            reason: "ok".into(),
            principal: "alice".into(),
            plan_id: None,
            created_at: t0(),
        })
        .wait()
        .unwrap();
    assert!(
        conn.execute("UPDATE madre_actions SET reason = 'forged'", [])
            .is_err()
    );
    assert!(
        conn.execute("DELETE FROM madre_actions WHERE id = ?1", [action_id])
            .is_err()
    );
    assert!(
        conn.execute("DROP TRIGGER madre_actions_no_delete", [])
            .is_ok(),
        "only a schema change could, which is not an API"
    );
    assert_eq!(t.db.count_intents().unwrap(), 1);
}

#[test]
fn plans_round_trip_with_context_confirmation_and_audit() {
    let t = open();
    let plan = plan_with(
        &[
            (StepType::AwaitConfirmation, Status::Waiting),
            (StepType::CallSwitch, Status::Pending),
        ],
        "s-1",
        t0(),
    );
    let mut rec = record(plan.clone());
    rec.confirmation = Some(NewConfirmation {
        token_sha256: "ab".repeat(32),
        risk: RiskLevel::High,
        expires_at: t0() + Duration::minutes(10),
        principal: "alice".into(),
    });
    rec.actions = vec![NewAction {
        module: "madre".into(),
        action: "plan_created".into(),
        reason: "waiting".into(),
        principal: "alice".into(),
        plan_id: Some(plan.plan_id),
        created_at: t0(),
    }];
    t.db.insert_plan(rec).wait().unwrap();

    let stored = t.db.plan(plan.plan_id).unwrap().unwrap();
    assert_eq!(stored.plan, plan);
    assert_eq!(stored.meta.principal, "admin");
    // The trail opens with the plan's creation, read from its journal
    // (id 0: no stored row), then the rows stored with it.
    let trail = t.db.actions_for_plan(plan.plan_id).unwrap();
    let entries: Vec<(i64, &str, &str)> = trail
        .iter()
        .map(|a| (a.id, a.principal.as_str(), a.reason.as_str()))
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0].0, 0);
    assert_eq!(entries[0].1, "admin");
    assert!(
        entries[0].2.starts_with("waiting for confirmation ("),
        "{entries:?}"
    );
    assert_eq!((entries[1].1, entries[1].2), ("alice", "waiting"));
    assert!(entries[1].0 > 0);
    let c = t.db.confirmation(plan.plan_id).unwrap().unwrap();
    assert_eq!(
        (c.risk, c.failed_attempts, c.used_at),
        (RiskLevel::High, 0, None)
    );
    assert!(t.db.plan(Uuid::new_v4()).unwrap().is_none());
}

/// Stores a plan of session `session` waiting at its gate (step 0) for a
/// confirmation whose token hashes to `hash`, with a Hermes call after it.
fn insert_waiting_plan(db: &Db, session: &str, hash: &str) -> Plan {
    let plan = plan_with(
        &[
            (StepType::AwaitConfirmation, Status::Waiting),
            (StepType::CallHermes, Status::Pending),
        ],
        session,
        t0(),
    );
    let mut rec = record(plan.clone());
    rec.confirmation = Some(NewConfirmation {
        token_sha256: hash.to_owned(),
        risk: RiskLevel::Med,
        expires_at: t0() + Duration::minutes(10),
        principal: "alice".into(),
    });
    db.insert_plan(rec).wait().unwrap();
    plan
}

fn started(step: usize, at: DateTime<Utc>) -> PlanEvent {
    PlanEvent::new(Event::StepStarted { step }, at)
}

fn finished(step: usize, status: Status, at: DateTime<Utc>) -> PlanEvent {
    PlanEvent::new(Event::StepFinished { step, status }, at)
}

/// The writer keeps the fold of a plan it appended to (issue 22: no replay
/// of the journal on the hot path), but trusts it only while the journal
/// still ends where the fold does: a step finished meanwhile by another
/// writer of the same file (another process, a replica) is seen by the
/// next append, which then refuses to finish that step a second time.
#[test]
fn a_kept_fold_gives_way_to_events_appended_by_another_writer() {
    let t = open();
    let plan = chat_plan(&t.db, "s");
    let at = t0() + Duration::seconds(1);
    t.db.apply_events(plan.plan_id, vec![started(0, at)], None)
        .wait()
        .unwrap();
    let other = t.reopen();
    // The other replica takes the plan, as it would once t.db's lease
    // lapsed, and finishes the step.
    other.take_plan(plan.plan_id, true).wait().unwrap();
    other
        .apply_events(plan.plan_id, vec![finished(0, Status::Done, at)], None)
        .wait()
        .unwrap();
    let again =
        t.db.apply_events(plan.plan_id, vec![finished(0, Status::Error, at)], None)
            .wait();
    assert!(matches!(again, Err(DbError::Conflict(_))), "{again:?}");
    t.db.take_plan(plan.plan_id, true).wait().unwrap();
    let state =
        t.db.apply_events(plan.plan_id, vec![started(1, at)], None)
            .wait()
            .unwrap();
    assert_eq!(state.steps[0].status, Status::Done);
    assert_eq!(state.steps[1].status, Status::Running);
    let stored = t.db.plan(plan.plan_id).unwrap().unwrap().plan;
    assert_eq!(stored.steps[0].status, Status::Done);
    assert_eq!(stored.steps[1].status, Status::Running);
}

/// A fold kept inside a transaction that was rolled back held events that
/// were undone: the next append reads the journal instead. (A step started
/// in the undone write is PENDING again, so finishing it is refused.)
#[test]
fn a_kept_fold_gives_way_after_its_transaction_was_rolled_back() {
    let t = open();
    let plan = chat_plan(&t.db, "s");
    let at = t0() + Duration::seconds(1);
    // One job: the step's start, then a write that fails, so the whole
    // transaction is rolled back.
    let undone =
        t.db.apply_events(plan.plan_id, vec![started(0, at)], None)
            .and(t.db.close_intent(Uuid::now_v7(), IntentOutcome::Failed, None, at))
            .wait();
    assert!(
        matches!(undone, Err(DbError::NotFound { .. })),
        "{undone:?}"
    );
    let stored = t.db.plan(plan.plan_id).unwrap().unwrap().plan;
    assert_eq!(stored.steps[0].status, Status::Pending);
    let finish =
        t.db.apply_events(plan.plan_id, vec![finished(0, Status::Done, at)], None)
            .wait();
    assert!(matches!(finish, Err(DbError::Conflict(_))), "{finish:?}");
    assert_eq!(t.db.plan_events(plan.plan_id).unwrap().len(), 1);
}

#[test]
fn step_transitions_count_attempts_and_finished_steps_are_final() {
    let t = open();
    let plan = chat_plan(&t.db, "s");
    let at = t0() + Duration::seconds(1);
    t.db.apply_events(plan.plan_id, vec![started(0, at)], None)
        .wait()
        .unwrap();
    t.db.apply_events(plan.plan_id, vec![started(0, at)], None)
        .wait()
        .unwrap(); // a retry
    t.db.apply_events(
        plan.plan_id,
        vec![finished(0, Status::Done, at).result(json!({"engine": "gpt"}))],
        None,
    )
    .wait()
    .unwrap();
    let err =
        t.db.apply_events(plan.plan_id, vec![started(0, at)], None)
            .wait()
            .unwrap_err();
    assert!(matches!(err, DbError::Conflict(_)), "{err}");
    assert!(matches!(
        t.db.apply_events(plan.plan_id, vec![started(9, at)], None)
            .wait(),
        Err(DbError::Conflict(_))
    ));
    assert!(
        t.db.apply_events(Uuid::new_v4(), vec![started(0, at)], None)
            .wait()
            .unwrap_err()
            .is_not_found()
    );

    let stored = t.db.plan(plan.plan_id).unwrap().unwrap().plan;
    assert_eq!(stored.status, Status::Running);
    assert_eq!(stored.steps[0].attempts, 2);
    assert_eq!(stored.steps[0].status, Status::Done);
    assert_eq!(stored.steps[0].result, Some(json!({"engine": "gpt"})));

    // finishing the plan cancels what did not run, and the plan is then final
    t.db.apply_events(
        plan.plan_id,
        vec![PlanEvent::finished(Status::Error, Some("timeout"), at)],
        None,
    )
    .wait()
    .unwrap();
    let stored = t.db.plan(plan.plan_id).unwrap().unwrap().plan;
    assert_eq!(
        (stored.status, stored.error.as_deref()),
        (Status::Error, Some("timeout"))
    );
    assert_eq!(stored.steps[1].status, Status::Cancelled);
    assert!(matches!(
        t.db.apply_events(
            plan.plan_id,
            vec![PlanEvent::finished(
                Status::Cancelled,
                Some("cancelled"),
                at
            )],
            None
        )
        .wait(),
        Err(DbError::Conflict(_))
    ));
    let types: Vec<String> =
        t.db.plan_events(plan.plan_id)
            .unwrap()
            .into_iter()
            .map(|e| e.event_type.as_str().to_owned())
            .collect();
    assert_eq!(
        types,
        [
            "plan_created",
            "step_started",
            "step_started",
            "step_finished",
            "plan_finished"
        ],
        "refused events leave no trace"
    );
}

/// A journal append that fails rolls its state changes back with it: the
/// second event of a batch is illegal, so the first one's change is gone.
#[test]
fn a_refused_event_rolls_back_the_whole_batch() {
    let t = open();
    let plan = chat_plan(&t.db, "s");
    let at = t0();
    let batch = vec![started(0, at), finished(1, Status::Done, at)];
    assert!(matches!(
        t.db.apply_events(plan.plan_id, batch, None).wait(),
        Err(DbError::Conflict(_))
    ));
    let stored = t.db.plan(plan.plan_id).unwrap().unwrap().plan;
    assert_eq!(stored.status, Status::Pending);
    assert_eq!(stored.steps[0].status, Status::Pending);
    assert_eq!(stored.steps[0].attempts, 0);
    assert_eq!(t.db.plan_events(plan.plan_id).unwrap().len(), 1);
}

/// The journal is append-only, like the audit trail: the database itself
/// refuses UPDATE and DELETE.
#[test]
fn the_journal_refuses_update_and_delete() {
    if is_postgres() {
        return; // about SQLite's file itself; PostgreSQL's rules: pg_schema.rs
    }
    let t = open();
    let plan = chat_plan(&t.db, "s");
    let conn = Connection::open(&t.path).unwrap();
    for sql in [
        "UPDATE plan_events SET type = 'plan_finished'",
        "DELETE FROM plan_events",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(t.db.plan_events(plan.plan_id).unwrap().len(), 1);
    // What a plan's creation audit entry reads from its row is as fixed.
    for sql in [
        "UPDATE plans SET principal = 'mallory'",
        "UPDATE plans SET module = 'shub', action = 'delete'",
        "UPDATE plans SET risk = 'LOW'",
        "UPDATE plans SET created_at = 0",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("creation audit"), "{sql}: {err}");
    }
    let trail = t.db.actions_for_plan(plan.plan_id).unwrap();
    assert_ne!(trail[0].principal, "mallory");
}

#[test]
fn confirmations_are_consumed_once_even_under_concurrency() {
    let t = open();
    let hash = "cd".repeat(32);
    let plan = insert_waiting_plan(&t.db, "s", &hash);

    assert_eq!(
        t.db.consume_confirmation(plan.plan_id, "ee".repeat(32), "bob".into(), None, t0())
            .wait()
            .unwrap(),
        ConsumeOutcome::NotPending
    );
    // Eight confirmations at once, through two replicas' writers.
    let replicas = [Arc::new(t.db.clone()), Arc::new(t.reopen())];
    let outcomes: Vec<ConsumeOutcome> = (0..8)
        .map(|i| {
            let (db, hash) = (replicas[i % 2].clone(), hash.clone());
            std::thread::spawn(move || {
                db.consume_confirmation(plan.plan_id, hash, "bob".into(), None, t0())
                    .wait()
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == ConsumeOutcome::Consumed)
            .count(),
        1
    );
    let stored = t.db.plan(plan.plan_id).unwrap().unwrap().plan;
    assert_eq!(
        (stored.status, stored.steps[0].status),
        (Status::Running, Status::Done)
    );
    let c = t.db.confirmation(plan.plan_id).unwrap().unwrap();
    assert_eq!(
        (c.confirmed_by.as_deref(), c.outcome.as_deref()),
        (Some("bob"), Some("confirmed"))
    );
}

#[test]
fn five_wrong_tries_void_the_confirmation_and_expiry_cancels() {
    let t = open();
    let mk = |t: &TestDb| {
        let plan = plan_with(&[(StepType::AwaitConfirmation, Status::Waiting)], "s", t0());
        let mut rec = record(plan.clone());
        rec.confirmation = Some(NewConfirmation {
            token_sha256: "ab".repeat(32),
            risk: RiskLevel::High,
            expires_at: t0() + Duration::minutes(10),
            principal: "a".into(),
        });
        t.db.insert_plan(rec).wait().unwrap();
        plan.plan_id
    };
    let id = mk(&t);
    for n in 1..=5 {
        assert_eq!(
            t.db.record_failed_confirmation(id, 5, t0()).wait().unwrap(),
            n
        );
    }
    let stored = t.db.plan(id).unwrap().unwrap().plan;
    assert_eq!(
        (stored.status, stored.error.as_deref()),
        (Status::Cancelled, Some("confirmation_void"))
    );
    assert!(t.db.record_failed_confirmation(id, 5, t0()).wait().is_err());
    assert_eq!(
        t.db.consume_confirmation(id, "ab".repeat(32), "x".into(), None, t0())
            .wait()
            .unwrap(),
        ConsumeOutcome::NotPending
    );

    let id = mk(&t);
    assert_eq!(
        t.db.consume_confirmation(
            id,
            "ab".repeat(32),
            "x".into(),
            None,
            t0() + Duration::minutes(11)
        )
        .wait()
        .unwrap(),
        ConsumeOutcome::NotPending,
        "expired tokens are not consumed"
    );
    t.db.expire_confirmation(id, t0() + Duration::minutes(11))
        .wait()
        .unwrap();
    let stored = t.db.plan(id).unwrap().unwrap().plan;
    assert_eq!(
        (stored.status, stored.error.as_deref()),
        (Status::Cancelled, Some("confirmation_expired"))
    );
    assert_eq!(
        t.db.confirmation(id).unwrap().unwrap().outcome.as_deref(),
        Some("confirmation_expired")
    );
}

/// A turn is one row with both sides; the cap counts messages and keeps
/// turns whole, and a side kept by reference without the row holding it
/// is refused (issue 25).
#[test]
fn a_turn_holds_both_sides_and_the_cap_keeps_whole_turns() {
    let t = open();
    for i in 0..40 {
        t.db.record_turn(NewTurn {
            answered: Said::Text(format!("a{i}")),
            ..said("pairs".into(), Mode::Madre, None, format!("q{i}"), 5, t0())
        })
        .wait()
        .unwrap();
    }
    // Trimmed at turn 40 to the turns holding the newest 5 messages: 3.
    let history = t.db.history("pairs", 100).unwrap();
    let messages: Vec<_> = history
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        messages,
        [
            ("user", "q37"),
            ("assistant", "a37"),
            ("user", "q38"),
            ("assistant", "a38"),
            ("user", "q39"),
            ("assistant", "a39")
        ]
    );
    assert_eq!(t.db.history("pairs", 3).unwrap()[0].content, "a38");

    for turn in [
        NewTurn {
            asked: Said::Kept,
            ..said("bad".into(), Mode::Madre, None, String::new(), 5, t0())
        },
        NewTurn {
            answered: Said::Kept,
            plan_id: Some(Uuid::now_v7()),
            ..said("bad".into(), Mode::Madre, None, "q".into(), 5, t0())
        },
    ] {
        assert!(t.db.record_turn(turn).wait().is_err());
    }
    assert!(t.db.history("bad", 10).unwrap().is_empty());
}

#[test]
fn sessions_keep_their_mode_and_a_capped_history() {
    let t = open();
    for i in 0..120 {
        t.db.record_turn(said(
            "s-1".into(),
            Mode::AudioEngineer,
            None,
            format!("m{i}"),
            100,
            t0() + Duration::seconds(i),
        ))
        .wait()
        .unwrap();
    }
    let s = t.db.session("s-1").unwrap().unwrap();
    assert_eq!(s.mode, Mode::AudioEngineer);
    assert_eq!(s.created_at, t0());
    let history = t.db.history("s-1", 1000).unwrap();
    assert_eq!(history.len(), 100);
    assert_eq!(
        (history[0].content.as_str(), history[99].content.as_str()),
        ("m20", "m119")
    );
    assert_eq!(
        t.db.history("s-1", 3)
            .unwrap()
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        vec!["m117", "m118", "m119"]
    );
    assert!(t.db.session("nope").unwrap().is_none());
    // Back in the default mode, the session needs no row; its history
    // goes on.
    t.db.record_turn(said(
        "s-1".into(),
        Mode::Madre,
        None,
        "back".into(),
        100,
        t0() + Duration::seconds(200),
    ))
    .wait()
    .unwrap();
    assert_eq!(t.db.session("s-1").unwrap(), None);
    assert_eq!(t.db.history("s-1", 1).unwrap()[0].content, "back");
}

#[test]
fn keyset_pagination_has_no_duplicates_or_gaps_while_rows_are_inserted() {
    let t = open();
    let mut expected: Vec<Uuid> = (0..250)
        .map(|i| chat_plan(&t.db, if i % 2 == 0 { "even" } else { "odd" }).plan_id)
        .collect();
    expected.reverse(); // newest first

    let mut seen = Vec::new();
    let mut cursor = None;
    let mut late = 0;
    loop {
        // new chats arrive between pages; they are newer and never shift a page
        chat_plan(&t.db, "late");
        late += 1;
        let (page, next) =
            t.db.list_plans(
                &PlanFilter {
                    session_id: None,
                    ..Default::default()
                },
                20,
                cursor,
            )
            .unwrap();
        seen.extend(page.iter().map(|p| p.plan_id));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let late_first = seen.iter().position(|id| expected.contains(id)).unwrap();
    assert_eq!(
        &seen[late_first..],
        &expected[..],
        "every original plan once, in order"
    );
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), seen.len());

    let (odd, next) =
        t.db.list_plans(
            &PlanFilter {
                session_id: Some("odd".into()),
                ..Default::default()
            },
            200,
            None,
        )
        .unwrap();
    assert_eq!((odd.len(), next), (125, None));
    let (done, _) =
        t.db.list_plans(
            &PlanFilter {
                status: Some(Status::Done),
                ..Default::default()
            },
            10,
            None,
        )
        .unwrap();
    assert!(done.is_empty());
    let counts = t.db.plan_counts().unwrap();
    assert_eq!(counts, vec![(Status::Pending, 250 + late)]);
}

fn daughter(priority: i64) -> NewDaughterTask {
    NewDaughterTask {
        source: "madre".into(),
        priority,
        task_type: "render".into(),
        description: "d".into(),
        metadata: json!({}),
        ..Default::default()
    }
}

#[test]
fn four_workers_of_two_replicas_claim_2000_tasks_each_exactly_once() {
    let t = open();
    // Two handles of one database, as two replicas have: two writers.
    let replicas = [Arc::new(t.db.clone()), Arc::new(t.reopen())];
    for i in 0..2000 {
        t.db.enqueue_daughter_task(daughter(i % 3), t0())
            .wait()
            .unwrap();
    }
    t.db.enqueue_daughter_task(daughter(-1), t0())
        .wait()
        .unwrap();
    let handles: Vec<_> = (0..4)
        .map(|w| {
            let db = replicas[w % 2].clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while let Some(task) = db
                    .claim_next_daughter_task(&format!("w{w}"), t0())
                    .wait()
                    .unwrap()
                {
                    assert_eq!(task.claimed_by.as_deref(), Some(format!("w{w}").as_str()));
                    mine.push((task.id, task.priority));
                }
                mine
            })
        })
        .collect();
    let mut all = Vec::new();
    for h in handles {
        let mine = h.join().unwrap();
        // each worker sees priorities in non-increasing order
        assert!(mine.windows(2).all(|w| w[0].1 >= w[1].1));
        all.extend(mine.into_iter().map(|(id, _)| id));
    }
    assert_eq!(all.len(), 2001);
    assert_eq!(
        all.iter().collect::<HashSet<_>>().len(),
        2001,
        "no task claimed twice"
    );
}

/// A plan whose spawner request waits, as the runner leaves it.
fn spawner_waiting(db: &Db) -> Plan {
    let plan = plan_with(&[(StepType::SpawnerRequest, Status::Pending)], "s", t0());
    db.insert_plan(record(plan.clone())).wait().unwrap();
    let events = vec![
        PlanEvent::new(Event::StepStarted { step: 0 }, t0()),
        PlanEvent::new(Event::PlanWaiting { step: 0 }, t0()),
    ];
    db.apply_events(plan.plan_id, events, None).wait().unwrap();
    plan
}

#[test]
fn completing_or_failing_a_task_settles_its_plan_step() {
    let t = open();
    let plan = spawner_waiting(&t.db);
    let mut task = daughter(0);
    task.plan_id = Some(plan.plan_id);
    task.step_id = Some(plan.steps[0].step_id);
    let id = t.db.enqueue_daughter_task(task, t0()).wait().unwrap();
    let claimed =
        t.db.claim_next_daughter_task("w1", t0())
            .wait()
            .unwrap()
            .unwrap();
    assert_eq!(claimed.id, id);
    assert!(t.db.heartbeat(id, "w1", t0()).wait().unwrap());
    assert!(!t.db.heartbeat(id, "w2", t0()).wait().unwrap());
    assert!(matches!(
        t.db.complete_daughter_task(id, "w2", json!({}), t0())
            .wait(),
        Err(DbError::Conflict(_))
    ));
    t.db.complete_daughter_task(id, "w1", json!({"rendered": true}), t0())
        .wait()
        .unwrap();
    let stored = t.db.plan(plan.plan_id).unwrap().unwrap();
    assert_eq!(
        (stored.plan.status, stored.plan.steps[0].status),
        (Status::Done, Status::Done)
    );
    assert_eq!(stored.plan.steps[0].result, Some(json!({"rendered": true})));
    assert_eq!(
        t.db.daughter_task(id).unwrap().unwrap().status,
        DaughterStatus::Completed
    );

    // fail: retried up to max_retries, then failed with the plan in ERROR
    let plan = spawner_waiting(&t.db);
    let mut task = daughter(0);
    task.max_retries = 1;
    task.plan_id = Some(plan.plan_id);
    task.step_id = Some(plan.steps[0].step_id);
    let id = t.db.enqueue_daughter_task(task, t0()).wait().unwrap();
    t.db.claim_next_daughter_task("w1", t0())
        .wait()
        .unwrap()
        .unwrap();
    assert_eq!(
        t.db.fail_daughter_task(id, "w1", "oom", t0())
            .wait()
            .unwrap(),
        DaughterStatus::Queued
    );
    let again =
        t.db.claim_next_daughter_task("w2", t0())
            .wait()
            .unwrap()
            .unwrap();
    assert_eq!((again.id, again.current_retry), (id, 1));
    assert_eq!(
        t.db.fail_daughter_task(id, "w2", "oom", t0())
            .wait()
            .unwrap(),
        DaughterStatus::Failed
    );
    let stored = t.db.plan(plan.plan_id).unwrap().unwrap().plan;
    assert_eq!(
        (stored.status, stored.steps[0].status),
        (Status::Error, Status::Error)
    );

    // stale claims go back to the queue
    let id =
        t.db.enqueue_daughter_task(daughter(0), t0())
            .wait()
            .unwrap();
    t.db.claim_next_daughter_task("w1", t0())
        .wait()
        .unwrap()
        .unwrap();
    assert_eq!(
        t.db.expire_stale_claims(t0() - Duration::seconds(1))
            .wait()
            .unwrap(),
        0
    );
    assert_eq!(
        t.db.expire_stale_claims(t0() + Duration::seconds(61))
            .wait()
            .unwrap(),
        1
    );
    assert_eq!(
        t.db.claim_next_daughter_task("w3", t0())
            .wait()
            .unwrap()
            .unwrap()
            .id,
        id
    );
}

#[test]
fn cleanup_applies_retention_and_never_touches_the_audit_trail() {
    let t = open();
    let policy = RetentionPolicy {
        session_idle: Duration::hours(1),
        history_max: 3,
        spawn_retention: Duration::hours(1),
        stale_claim_after: Duration::minutes(5),
        idempotency_ttl: Duration::hours(24),
        active_window: Duration::hours(3),
    };
    let old = t0() - Duration::hours(2);
    // Sessions in a sticky mode other than the default: closing one for
    // idleness gives it the default mode back.
    for i in 0..5 {
        t.db.record_turn(said(
            "idle".into(),
            Mode::AudioEngineer,
            None,
            format!("{i}"),
            100,
            old,
        ))
        .wait()
        .unwrap();
    }
    t.db.record_turn(said(
        "busy".into(),
        Mode::AudioEngineer,
        None,
        "x".into(),
        100,
        t0(),
    ))
    .wait()
    .unwrap();
    // A session in the default mode has nothing to close: no row.
    t.db.record_turn(said(
        "plain".into(),
        Mode::Madre,
        None,
        "y".into(),
        100,
        old,
    ))
    .wait()
    .unwrap();
    assert_eq!(t.db.session("plain").unwrap(), None);
    let task = t.db.enqueue_daughter_task(daughter(0), old).wait().unwrap();
    let spawn = t.db.record_spawn(task, Some(42), old).wait().unwrap();
    t.db.finish_spawn(spawn, DaughterStatus::Completed, old)
        .wait()
        .unwrap();
    t.db.log_intent(NewIntentLog {
        id: Uuid::new_v4(),
        source: "chat".into(),
        principal: "a".into(),
        payload: json!({}),
        created_at: old,
    })
    .wait()
    .unwrap();
    let waiting = plan_with(&[(StepType::AwaitConfirmation, Status::Waiting)], "s", old);
    let mut rec = record(waiting.clone());
    rec.confirmation = Some(NewConfirmation {
        token_sha256: "ab".repeat(32),
        risk: RiskLevel::High,
        expires_at: old + Duration::minutes(10),
        principal: "a".into(),
    });
    t.db.insert_plan(rec).wait().unwrap();

    let report = t.db.cleanup(policy, t0()).wait().unwrap();
    assert_eq!(report.sessions_closed, 1);
    assert_eq!(report.turns_trimmed, 2);
    assert_eq!(report.spawns_deleted, 1);
    assert_eq!(report.confirmations_expired, vec![waiting.plan_id]);
    assert!(t.db.session("idle").unwrap().unwrap().closed_at.is_some());
    assert!(t.db.session("busy").unwrap().unwrap().closed_at.is_none());
    assert_eq!(t.db.count_intents().unwrap(), 1);
    assert_eq!(
        t.db.plan(waiting.plan_id)
            .unwrap()
            .unwrap()
            .plan
            .error
            .as_deref(),
        Some("confirmation_expired")
    );
    // a second pass finds nothing more to do
    let again = t.db.cleanup(policy, t0()).wait().unwrap();
    assert_eq!(again, CleanupReport::default());
}

#[test]
fn hostile_strings_and_large_payloads_are_stored_verbatim() {
    let t = open();
    let nasty = [
        "'; DROP TABLE tasks; --",
        "\"quoted\" and 'single' and `back`",
        "nul\0inside",
        "Robert'); DELETE FROM intents_log;--",
        "back\\slash \\' and $$dollar$$ and E'\\x41'",
        "🎉 ñ 中文 \u{202e}rtl",
    ];
    for (i, text) in nasty.iter().enumerate() {
        let id = Uuid::new_v4();
        let logged =
            t.db.log_intent(NewIntentLog {
                id,
                source: text.to_string(),
                principal: text.to_string(),
                payload: json!({"m": text, "i": i}),
                created_at: t0(),
            })
            .wait();
        if is_postgres() && text.contains('\0') {
            // PostgreSQL's text cannot hold a NUL: refused as the caller's
            // input, and nothing of it stored.
            assert!(matches!(logged, Err(DbError::Unstorable(_))), "{logged:?}");
            assert!(t.db.intent_log(id).unwrap().is_none());
            continue;
        }
        logged.unwrap();
        let row = t.db.intent_log(id).unwrap().unwrap();
        assert_eq!(row.source, *text);
        assert_eq!(row.payload["m"], json!(text));
        t.db.record_turn(said(
            text.to_string(),
            Mode::Madre,
            None,
            text.to_string(),
            100,
            t0(),
        ))
        .wait()
        .unwrap();
        assert_eq!(t.db.history(text, 10).unwrap()[0].content, *text);
    }
    let big = "x".repeat(1 << 20);
    let id = Uuid::new_v4();
    t.db.log_intent(NewIntentLog {
        id,
        source: "chat".into(),
        principal: "a".into(),
        payload: json!({ "big": big }),
        created_at: t0(),
    })
    .wait()
    .unwrap();
    assert_eq!(
        t.db.intent_log(id).unwrap().unwrap().payload["big"]
            .as_str()
            .unwrap()
            .len(),
        1 << 20
    );
    // A failed write rolls back only itself: concurrent writes that share its
    // transaction still commit.
    let dup = Uuid::new_v4();
    let unique: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    let ids: Vec<Uuid> = unique
        .iter()
        .copied()
        .chain(std::iter::repeat_n(dup, 8))
        .collect();
    let barrier = std::sync::Barrier::new(ids.len());
    let outcomes: Vec<bool> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .map(|id| {
                let (db, barrier) = (&t.db, &barrier);
                s.spawn(move || {
                    let write = db.log_intent(NewIntentLog {
                        id: *id,
                        source: "race".into(),
                        principal: "a".into(),
                        payload: Value::Null,
                        created_at: t0(),
                    });
                    barrier.wait();
                    write.wait().is_ok()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        outcomes[..8].iter().all(|ok| *ok),
        "unique writes all commit"
    );
    assert_eq!(
        outcomes[8..].iter().filter(|ok| **ok).count(),
        1,
        "the duplicate id commits once"
    );
    for id in unique.iter().chain([&dup]) {
        assert!(t.db.intent_log(*id).unwrap().is_some());
    }
    t.db.integrity_check().unwrap();
}

#[test]
fn module_policies_and_idempotent_responses() {
    let t = open();
    t.db.set_module_policy(ModulePolicy {
        module: "shub".into(),
        error_threshold: 3,
        idle_seconds: 600,
        enable_autosuspend: true,
    })
    .wait()
    .unwrap();
    t.db.set_module_policy(ModulePolicy {
        module: "shub".into(),
        error_threshold: 5,
        idle_seconds: 60,
        enable_autosuspend: false,
    })
    .wait()
    .unwrap();
    assert_eq!(
        t.db.module_policies().unwrap(),
        vec![ModulePolicy {
            module: "shub".into(),
            error_threshold: 5,
            idle_seconds: 60,
            enable_autosuspend: false
        }]
    );

    // The first request reserves the key; a duplicate sees it in progress.
    let owner = Uuid::new_v4();
    let reserve = |who: &str, key: &str, hash: &str| {
        t.db.reserve_idempotency_key(
            who,
            key,
            hash,
            owner,
            t0(),
            TakeOver::MadeBefore(t0() - Duration::hours(1)),
        )
        .wait()
        .unwrap()
    };
    assert_eq!(reserve("alice", "k1", "h1"), Reservation::Reserved);
    assert_eq!(reserve("alice", "k1", "h1"), Reservation::InProgress);
    assert_eq!(reserve("alice", "k1", "h2"), Reservation::Mismatch);
    assert_eq!(
        reserve("bob", "k1", "h1"),
        Reservation::Reserved,
        "keys are per principal"
    );

    // Its answer is stored without the confirmation token, then replayed.
    let plan_id = Uuid::new_v4();
    let answer = StoredResponse {
        request_hash: "h1".into(),
        status_code: 200,
        body: json!({"status": "WAITING", "confirm_token": "secret-token-value", "plan_id": plan_id}),
        plan_id: Some(plan_id),
    };
    assert!(
        t.db.store_idempotent_response("alice", "k1", owner, answer.clone())
            .wait()
            .unwrap()
    );
    let Reservation::Done(replayed) = reserve("alice", "k1", "h1") else {
        panic!("the stored answer is replayed");
    };
    assert_eq!(
        replayed.body,
        json!({"status": "WAITING", "plan_id": plan_id})
    );
    assert_eq!(replayed.plan_id, Some(plan_id));
    assert!(
        !t.db
            .store_idempotent_response("alice", "k1", owner, answer)
            .wait()
            .unwrap(),
        "the first answer stays"
    );

    // A reservation whose request died is taken over once it is stale.
    let second = Uuid::new_v4();
    assert_eq!(
        t.db.reserve_idempotency_key(
            "bob",
            "k1",
            "h1",
            second,
            t0(),
            TakeOver::MadeBefore(t0() + Duration::seconds(1))
        )
        .wait()
        .unwrap(),
        Reservation::Reserved,
        "bob's stale reservation was taken over"
    );
    // The first owner, late, can neither free nor fill it any more: the
    // work is not run twice, and the second owner's answer stands.
    t.db.release_idempotency_key("bob", "k1", owner)
        .wait()
        .unwrap();
    assert_eq!(reserve("bob", "k1", "h1"), Reservation::InProgress);
    let late = StoredResponse {
        request_hash: "h1".into(),
        status_code: 200,
        body: json!({"from": "the first owner"}),
        plan_id: None,
    };
    assert!(
        !t.db
            .store_idempotent_response("bob", "k1", owner, late)
            .wait()
            .unwrap()
    );
    // Taken over by its owner's name (the owner's process judged it stale
    // by its monotonic clock): only that owner's reservation goes; with
    // nothing named, none does, however old.
    let third = Uuid::new_v4();
    let take = |take_over| {
        t.db.reserve_idempotency_key("bob", "k1", "h1", third, t0(), take_over)
            .wait()
            .unwrap()
    };
    assert_eq!(take(TakeOver::Owner(owner)), Reservation::InProgress);
    assert_eq!(take(TakeOver::Nothing), Reservation::InProgress);
    assert_eq!(take(TakeOver::Owner(second)), Reservation::Reserved);
    // A failed request frees its key; a restart frees every orphan.
    t.db.release_idempotency_key("bob", "k1", third)
        .wait()
        .unwrap();
    assert_eq!(reserve("bob", "k1", "h9"), Reservation::Reserved);
    assert_eq!(t.db.release_abandoned_idempotency_keys().wait().unwrap(), 1);
    assert_eq!(
        t.db.idempotency_key("alice", "k1", "h1").unwrap(),
        Reservation::Done(replayed)
    );
}

#[tokio::test]
async fn writes_can_be_awaited_and_reads_run_off_the_executor() {
    let t = open();
    let id = Uuid::new_v4();
    t.db.log_intent(NewIntentLog {
        id,
        source: "chat".into(),
        principal: "a".into(),
        payload: json!({}),
        created_at: t0(),
    })
    .await
    .unwrap();
    let row =
        t.db.run_blocking(move |db| db.intent_log(id))
            .await
            .unwrap();
    assert!(row.is_some());
}

/// Awaited writes (queued for a drainer) and blocking writes (which take
/// the turn themselves) share one writer: from a runtime with a single
/// blocking thread and from plain threads at once, every write commits
/// exactly once and every caller gets its answer.
#[test]
fn awaited_and_blocking_writes_all_commit_once_side_by_side() {
    let t = open();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let db = t.db.clone();
            std::thread::spawn(move || {
                for _ in 0..100 {
                    db.log_intent(intent_entry(t0())).wait().unwrap();
                }
            })
        })
        .collect();
    runtime.block_on(async {
        let writes: Vec<_> = (0..300)
            .map(|_| tokio::spawn(t.db.log_intent(intent_entry(t0())).into_future()))
            .collect();
        let all = async {
            for write in writes {
                write.await.unwrap().unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .expect("every awaited write answers");
    });
    threads.into_iter().for_each(|t| t.join().unwrap());
    assert_eq!(t.db.count_intents().unwrap(), 600);
}

const CRASH_CHILD_ENV: &str = "MADRE_DB_CRASH_CHILD";

/// Not a test on its own: the body of the child process of the crash test.
#[test]
fn crash_child_writer() {
    let Ok(path) = std::env::var(CRASH_CHILD_ENV) else {
        return;
    };
    use std::io::Write as _;
    let db = Db::open(Path::new(&path)).unwrap();
    let mut out = std::io::stdout().lock();
    for i in 0..1_000_000u64 {
        let id = Uuid::new_v4();
        db.log_intent(NewIntentLog {
            id,
            source: "crash".into(),
            principal: "child".into(),
            payload: json!({"i": i}),
            created_at: Utc::now(),
        })
        .wait()
        .unwrap();
        writeln!(out, "COMMITTED {id}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn sigkill_mid_write_loses_nothing_that_was_reported_committed() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.db");
    let mut committed = Vec::new();
    for _round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CRASH_CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut this_round = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            if let Some(id) = line.strip_prefix("COMMITTED ") {
                committed.push(Uuid::parse_str(id).unwrap());
                this_round += 1;
                if this_round == 300 {
                    child.kill().unwrap(); // SIGKILL, mid-loop
                    break;
                }
            }
        }
        child.wait().unwrap();
        assert_eq!(this_round, 300, "the child wrote before it was killed");
    }
    let db = Db::open(&path).unwrap();
    db.integrity_check().unwrap();
    for id in &committed {
        assert!(
            db.intent_log(*id).unwrap().is_some(),
            "committed intent {id} lost"
        );
    }
    assert!(db.count_intents().unwrap() >= committed.len() as u64);
}

fn intent_entry(at: DateTime<Utc>) -> NewIntentLog {
    NewIntentLog {
        id: Uuid::new_v4(),
        source: "chat".into(),
        principal: "admin".into(),
        payload: json!({"message": "hello"}),
        created_at: at,
    }
}

#[test]
fn joined_writes_commit_together_or_not_at_all() {
    let t = open();
    let entry = intent_entry(t0());
    let id = entry.id;
    let plan = plan_with(&[(StepType::CallHermes, Status::Pending)], "s1", t0());
    let plan_id = plan.plan_id;
    let ((), ()) =
        t.db.log_intent(entry)
            .and(t.db.insert_plan(record(plan)))
            .wait()
            .unwrap();
    assert!(t.db.intent_log(id).unwrap().is_some());
    assert!(t.db.plan(plan_id).unwrap().is_some());

    // The second half fails (the step is unknown): the first half is undone.
    let entry = intent_entry(t0());
    let undone = entry.id;
    let failed =
        t.db.log_intent(entry)
            .and(t.db.apply_events(plan_id, vec![finished(9, Status::Done, t0())], None))
            .wait();
    assert!(matches!(failed, Err(DbError::Conflict(_))), "{failed:?}");
    assert!(t.db.intent_log(undone).unwrap().is_none());
    assert_eq!(t.db.count_intents().unwrap(), 1);

    // Writes of two databases cannot be joined.
    let other = open();
    let mixed =
        t.db.log_intent(intent_entry(t0()))
            .and(other.db.log_intent(intent_entry(t0())))
            .wait();
    assert!(mixed.is_err());
    assert_eq!(other.db.count_intents().unwrap(), 0);
}

/// A write made at a plan's end commits with that end; when it fails, it
/// undoes only itself: the plan's end stands.
#[test]
fn a_write_made_at_a_plans_end_commits_with_it_or_undoes_only_itself() {
    let t = open();
    let run = |closing_twice: bool| {
        let plan = chat_plan(&t.db, "s1");
        let entry = intent_entry(t0());
        let intent = entry.id;
        t.db.log_intent(entry).wait().unwrap();
        if closing_twice {
            t.db.close_intent(intent, IntentOutcome::Plan(Status::Done), None, t0())
                .wait()
                .unwrap();
        }
        let db = t.db.clone();
        let at_end: AtEnd = Box::new(move |ended: &StoredPlan| {
            db.record_turn(said(
                "s1".into(),
                Mode::Madre,
                Some(intent),
                "hi".into(),
                100,
                t0(),
            ))
            .and(db.close_intent(intent, IntentOutcome::Plan(ended.plan.status), None, t0()))
            .discard()
        });
        let events = vec![
            started(0, t0()),
            finished(0, Status::Done, t0()),
            started(1, t0()),
            finished(1, Status::Done, t0()),
            PlanEvent::finished(Status::Done, None, t0()),
        ];
        let ended =
            t.db.apply_events_and_read(plan.plan_id, events, Some(at_end))
                .wait()
                .unwrap();
        assert_eq!(ended.plan.status, Status::Done);
        assert_eq!(
            t.db.plan(plan.plan_id).unwrap().unwrap().plan.status,
            Status::Done
        );
        (
            t.db.intent_log(intent).unwrap().unwrap(),
            t.db.history("s1", 100).unwrap().len(),
        )
    };
    let (intent, turns) = run(false);
    assert_eq!((intent.result_status.as_deref(), turns), (Some("DONE"), 1));
    // The close fails (the intent was closed already): the turn it was
    // joined with is undone too, and the plan still ended.
    let (intent, turns) = run(true);
    assert_eq!((intent.result_status.as_deref(), turns), (Some("DONE"), 1));
}

#[test]
fn the_wal_stays_bounded_under_a_steady_stream_of_writes() {
    let t = open();
    let db = Arc::new(t.db.clone());
    let wal = PathBuf::from(format!("{}-wal", t.path.display()));
    let payload = "x".repeat(2000);
    // Writers that never pause, one blocking and eight awaited (committed
    // by the writer thread, which must let the checkpoint in): without
    // checkpoints that can rewind the WAL, it only grows (past 500 MiB
    // here). Rewound, its file stays near the 64 MiB `journal_size_limit`
    // it is cut back to.
    let write_one = |db: &Db, payload: &str| {
        let mut entry = intent_entry(t0());
        entry.payload = json!({ "message": payload });
        db.log_intent(entry)
    };
    let started = std::time::Instant::now();
    let in_time = move || started.elapsed() < std::time::Duration::from_secs(60);
    let wal_size = move |wal: &Path| std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    let blocking = {
        let (db, payload, wal) = (db.clone(), payload.clone(), wal.clone());
        std::thread::spawn(move || {
            let mut peak = 0u64;
            for _ in 0..8_000 {
                write_one(&db, &payload).wait().unwrap();
                peak = peak.max(wal_size(&wal));
                if !in_time() {
                    break;
                }
            }
            peak
        })
    };
    let awaited = {
        let (db, payload, wal) = (db.clone(), payload.clone(), wal.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        let (db, payload, wal) = (db.clone(), payload.clone(), wal.clone());
                        tokio::spawn(async move {
                            let mut peak = 0u64;
                            for _ in 0..1_000 {
                                write_one(&db, &payload).await.unwrap();
                                peak = peak.max(wal_size(&wal));
                                if !in_time() {
                                    break;
                                }
                            }
                            peak
                        })
                    })
                    .collect();
                let mut peak = 0;
                for task in tasks {
                    peak = peak.max(task.await.unwrap());
                }
                peak
            })
        })
    };
    let writers = [blocking, awaited];
    let peak = writers
        .into_iter()
        .map(|w| w.join().unwrap())
        .max()
        .unwrap();
    let written = t.db.count_intents().unwrap();
    assert!(written >= 10_000, "only {written} writes in a minute");
    assert!(
        peak < 96 * 1024 * 1024,
        "the WAL reached {} MiB over {written} writes",
        peak >> 20
    );
    t.db.integrity_check().unwrap();
}

/// `SyncMode::Full` (`MADRE_SQLITE_SYNC=full`) reaches every connection:
/// the database reports FULL, and the default stays NORMAL.
#[test]
fn the_sync_mode_is_applied_to_the_connections() {
    let dir = tempfile::tempdir().unwrap();
    let full = Db::open_with(&dir.path().join("full.db"), SyncMode::Full).unwrap();
    assert_eq!(full.sync_mode().unwrap(), SyncMode::Full);
    let normal = Db::open(&dir.path().join("normal.db")).unwrap();
    assert_eq!(normal.sync_mode().unwrap(), SyncMode::Normal);
    assert_eq!("FULL".parse::<SyncMode>(), Ok(SyncMode::Full));
    assert!("fsync".parse::<SyncMode>().unwrap_err().contains("fsync"));
}

/// One commit path (issue 22): a blocking `wait()` queues its write for the
/// writer thread like an awaited one. Sixteen threads waiting at once all
/// commit; and a write prepared before its database was closed, waited
/// for after, still commits instead of hanging or panicking.
#[test]
fn blocking_writes_take_the_writer_thread_even_after_the_database_closed() {
    let t = open();
    let ids: Vec<Uuid> = (0..16).map(|_| Uuid::new_v4()).collect();
    std::thread::scope(|scope| {
        for &id in &ids {
            let db = t.db.clone();
            scope.spawn(move || {
                db.log_intent(NewIntentLog {
                    id,
                    source: "chat".into(),
                    principal: "alice".into(),
                    payload: json!({"message": "hi"}),
                    created_at: t0(),
                })
                .wait()
                .unwrap();
            });
        }
    });
    for id in &ids {
        assert!(t.db.intent_log(*id).unwrap().is_some());
    }

    let late = Uuid::new_v4();
    let write = t.db.log_intent(NewIntentLog {
        id: late,
        source: "chat".into(),
        principal: "alice".into(),
        payload: json!({"message": "late"}),
        created_at: t0(),
    });
    let reopen = t.opener();
    drop(t.db);
    write.wait().unwrap();
    let reopened = reopen();
    assert!(reopened.intent_log(late).unwrap().is_some());
}

/// Migration 6 gives idempotency reservations an owner: answers stored by
/// schema 5 still replay, and its unanswered reservations (no owner) are
/// freed by the start's sweep like any abandoned one.
#[test]
fn idempotency_keys_of_schema_5_replay_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v5.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 5).unwrap();
        conn.execute_batch(
            "INSERT INTO idempotency_keys (principal, key, request_hash, status_code, response_json, created_at)
             VALUES ('alice', 'done', 'h1', 200, '{\"status\":\"DONE\"}', '2026-11-22T12:00:00.000000Z');
             INSERT INTO idempotency_keys (principal, key, request_hash, created_at)
             VALUES ('alice', 'running', 'h2', '2026-11-22T12:00:00.000000Z');",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    let Reservation::Done(stored) = db.idempotency_key("alice", "done", "h1").unwrap() else {
        panic!("the answer of schema 5 replays");
    };
    assert_eq!(stored.body, json!({"status": "DONE"}));
    assert_eq!(
        db.idempotency_key("alice", "running", "h2").unwrap(),
        Reservation::InProgress
    );
    assert_eq!(db.release_abandoned_idempotency_keys().wait().unwrap(), 1);
    let owner = Uuid::new_v4();
    let again = db
        .reserve_idempotency_key(
            "alice",
            "running",
            "h2",
            owner,
            t0(),
            TakeOver::MadeBefore(t0() - Duration::hours(1)),
        )
        .wait()
        .unwrap();
    assert_eq!(again, Reservation::Reserved);
}

/// A write waited for inside another write's transaction (here, in the
/// closure that makes a plan's end write) fails at once instead of
/// deadlocking the writer; the plan's end still commits (issue 22).
#[test]
fn waiting_for_a_write_inside_a_write_fails_instead_of_deadlocking() {
    let t = open();
    let plan = chat_plan(&t.db, "s1");
    let db = t.db.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let at_end: AtEnd = Box::new(move |_: &StoredPlan| {
        let inner = db
            .log_intent(NewIntentLog {
                id: Uuid::new_v4(),
                source: "chat".into(),
                principal: "alice".into(),
                payload: json!({}),
                created_at: t0(),
            })
            .wait();
        tx.send(inner.map_err(|e| e.to_string())).unwrap();
        // Nor do the calls that take the writer's turn between writes.
        tx.send(db.check_storage().map_err(|e| e.to_string()))
            .unwrap();
        tx.send(db.set_max_size(None).map(drop).map_err(|e| e.to_string()))
            .unwrap();
        db.log_intent(NewIntentLog {
            id: Uuid::new_v4(),
            source: "chat".into(),
            principal: "alice".into(),
            payload: json!({}),
            created_at: t0(),
        })
    });
    let events = vec![PlanEvent::finished(
        Status::Cancelled,
        Some("cancelled"),
        t0(),
    )];
    let db = t.db.clone();
    let id = plan.plan_id;
    let ended =
        std::thread::spawn(move || db.apply_events_and_read(id, events, Some(at_end)).wait());
    for call in ["wait", "check_storage", "set_max_size"] {
        let inner = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("the inner {call} answered instead of hanging"));
        assert!(inner.unwrap_err().contains("Write::and"), "{call}");
    }
    assert_eq!(
        ended.join().unwrap().unwrap().plan.status,
        Status::Cancelled
    );
}

/// The writer queue is bounded (issue 22): while the writer is busy, writes
/// past the limit are refused at once as `Busy` (a 503 with Retry-After at
/// the HTTP face), the queued ones commit once it is free, and `/health`
/// does not call storage down for it.
#[test]
fn writes_past_the_queue_limit_are_refused_at_once() {
    let t = open();
    t.db.set_write_queue_limit(2);
    let held = HeldWriter::hold(&t, 20);
    let queued: Vec<_> = (1..=2)
        .map(|n| {
            let write = t.db.log_intent(intent_row(n));
            std::thread::spawn(move || write.wait())
        })
        .collect();
    wait_for_queued(&t.db, 2);
    let Err(DbError::Unavailable {
        reason: refused, ..
    }) = t.db.log_intent(intent_row(3)).wait()
    else {
        panic!("a third write was taken while two were queued");
    };
    assert_eq!(refused, StorageFault::Busy);
    assert_eq!(t.db.storage_fault(), None, "overload is not an outage");
    held.release();
    for write in queued {
        write.join().unwrap().unwrap();
    }
    assert!(t.db.intent_log(Uuid::from_u128(1)).unwrap().is_some());
    assert!(t.db.intent_log(Uuid::from_u128(3)).unwrap().is_none());
}

/// A shutdown drains the writer (issue 22): `drain_writes` returns once
/// every write queued so far has committed, or says it could not within
/// its deadline.
#[test]
fn drain_writes_waits_for_what_is_queued() {
    let t = open();
    let held = HeldWriter::hold(&t, 10);
    let write = t.db.log_intent(intent_row(11));
    let waiter = std::thread::spawn(move || write.wait());
    wait_for_queued(&t.db, 1);
    assert!(
        !t.db.drain_writes(std::time::Duration::from_millis(50)),
        "a held writer is not drained"
    );
    held.go.send(()).unwrap();
    assert!(t.db.drain_writes(std::time::Duration::from_secs(10)));
    assert!(t.db.intent_log(Uuid::from_u128(10)).unwrap().is_some());
    assert!(t.db.intent_log(Uuid::from_u128(11)).unwrap().is_some());
    held.holder.join().unwrap().unwrap();
    waiter.join().unwrap().unwrap();
}

/// A failed write in a shared commit (issue 22: no savepoint per job): its
/// rows are rolled back with the whole transaction, it answers its own
/// error, and the writes it shared the batch with run again without it and
/// commit once, neither lost nor doubled.
#[test]
fn a_failed_write_in_a_batch_is_retried_without_and_the_rest_commit_once() {
    let t = open();
    t.db.log_intent(intent_row(40)).wait().unwrap();
    let held = HeldWriter::hold(&t, 41);
    let before = t.db.writer_stats();
    let db = t.db.clone();
    let turn = std::thread::spawn(move || {
        db.record_turn(said(
            "batch".into(),
            Mode::Madre,
            None,
            "once; a ; in the text".into(),
            100,
            t0(),
        ))
        .wait()
    });
    // Writes intent 42, then fails on intent 40, which exists.
    let db = t.db.clone();
    let failing = std::thread::spawn(move || {
        db.log_intent(intent_row(42))
            .and(db.log_intent(intent_row(40)))
            .wait()
    });
    let db = t.db.clone();
    let plain = std::thread::spawn(move || db.log_intent(intent_row(43)).wait());
    wait_for_queued(&t.db, 3);
    held.release();
    turn.join().unwrap().unwrap();
    plain.join().unwrap().unwrap();
    assert!(failing.join().unwrap().is_err(), "the duplicate fails");
    let spent = t.db.writer_stats().since(&before);
    assert!(
        spent.largest_batch >= 3,
        "the three shared a batch: {spent:?}"
    );
    assert!(t.db.intent_log(Uuid::from_u128(43)).unwrap().is_some());
    assert!(
        t.db.intent_log(Uuid::from_u128(42)).unwrap().is_none(),
        "the failed write's first row was rolled back"
    );
    let history = t.db.history("batch", 100).unwrap();
    assert_eq!(history.len(), 1, "the turn ran again but stands once");
    t.db.integrity_check().unwrap();
}

/// PostgreSQL: the writer sends a transaction whole and the next one while
/// the server still runs it. When the first fails, the next, already sent,
/// must not commit before the first's other writes have run again: the
/// commits keep the order in which the batches were taken (each
/// transaction checks on the server that the one sent before committed).
#[test]
fn a_batch_sent_behind_a_failed_one_commits_after_it_runs_again() {
    if !is_postgres() {
        return; // SQLite commits one transaction at a time
    }
    let t = open();
    t.db.log_intent(intent_row(80)).wait().unwrap();
    let plans: Vec<Uuid> = ["p0", "p1", "p2", "p3"]
        .iter()
        .map(|s| chat_plan(&t.db, s).plan_id)
        .collect();
    let cancel = |db: &Db, plan: Uuid| {
        let db = db.clone();
        std::thread::spawn(move || {
            let events = vec![PlanEvent::finished(Status::Cancelled, Some("stop"), t0())];
            db.apply_events(plan, events, None).wait().map(drop)
        })
    };
    // Batch 0 waits on the server for the first lock, batch 1 for the
    // second; batch 2 (a failing write and a good one) is taken while the
    // writer waits for batch 0's answer, batch 3 while it waits for 1's.
    let first = t.lock_plan_row(plans[0]);
    let second = t.lock_plan_row(plans[3]);
    let batch0 = cancel(&t.db, plans[0]);
    t.wait_for_lock_waiters(1);
    let sent_before = t.db.writer_stats().round_trips;
    let batch1 = cancel(&t.db, plans[3]);
    wait_for_round_trips(&t.db, sent_before + 1);
    let db = t.db.clone();
    let failing = std::thread::spawn(move || db.log_intent(intent_row(80)).wait());
    let good = cancel(&t.db, plans[1]);
    wait_for_queued(&t.db, 2);
    first.release();
    wait_for_queued_below(&t.db, 1);
    let after = cancel(&t.db, plans[2]);
    wait_for_queued(&t.db, 1);
    second.release();
    for write in [batch0, batch1, good, after] {
        write.join().unwrap().unwrap();
    }
    assert!(failing.join().unwrap().is_err(), "the duplicate fails");
    let last_seq = |plan: Uuid| {
        t.scalar(&format!(
            "SELECT max(e.seq) FROM plan_events e JOIN plans p ON p.id = e.plan WHERE p.uuid = '{plan}'"
        ))
    };
    assert!(
        last_seq(plans[1]) < last_seq(plans[2]),
        "the batch sent after the failed one committed before that one's good write"
    );
    for plan in &plans {
        assert_eq!(t.db.plan_status(*plan).unwrap(), Some(Status::Cancelled));
    }
    t.db.integrity_check().unwrap();
}

/// Waits (bounded) until the database's sessions made `n` round trips in
/// all (a transaction the writer sent counts once it is sent).
fn wait_for_round_trips(db: &Db, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.writer_stats().round_trips < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never sent the batch"
        );
        std::thread::yield_now();
    }
}

/// Waits (bounded) until fewer than `n` writes are queued: the writer took
/// them.
fn wait_for_queued_below(db: &Db, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.write_queue_depth() >= n {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never took the writes"
        );
        std::thread::yield_now();
    }
}

/// A new intent-log row with a known id, for writes that only need to land.
fn intent_row(n: u128) -> NewIntentLog {
    NewIntentLog {
        id: Uuid::from_u128(n),
        source: "chat".into(),
        principal: "alice".into(),
        payload: json!({}),
        created_at: t0(),
    }
}

/// The writer, held: a plan's end write that blocks until `go` is sent
/// (or 10 s pass), then logs intent `end_intent`. Returns once the writer
/// is held.
struct HeldWriter {
    go: std::sync::mpsc::Sender<()>,
    holder: std::thread::JoinHandle<Result<StoredPlan, DbError>>,
}

impl HeldWriter {
    fn hold(t: &TestDb, end_intent: u128) -> Self {
        let plan = chat_plan(&t.db, "s1");
        let (started_tx, started) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        let db = t.db.clone();
        let at_end: AtEnd = Box::new(move |_: &StoredPlan| {
            started_tx.send(()).unwrap();
            let _ = go_rx.recv_timeout(std::time::Duration::from_secs(10));
            db.log_intent(intent_row(end_intent))
        });
        let events = vec![PlanEvent::finished(
            Status::Cancelled,
            Some("cancelled"),
            t0(),
        )];
        let (db, id) = (t.db.clone(), plan.plan_id);
        let holder =
            std::thread::spawn(move || db.apply_events_and_read(id, events, Some(at_end)).wait());
        started
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        Self { go, holder }
    }

    /// Lets the writer go on and waits for the held write's commit.
    fn release(self) {
        self.go.send(()).unwrap();
        self.holder.join().unwrap().unwrap();
    }
}

/// Waits (bounded) until `n` writes are queued for the writer.
fn wait_for_queued(db: &Db, n: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.write_queue_depth() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the writes never queued"
        );
        std::thread::yield_now();
    }
}

/// Issue 25: a plan's body keeps the request's text and the plan's ids
/// once (the intent's text, the row's ids), every step and the intent read
/// back exactly as they were made, and its journal reads as before.
#[test]
fn a_plan_body_stores_the_text_once_and_reads_back_whole() {
    if is_postgres() {
        return; // about SQLite's file itself; PostgreSQL's rules: pg_schema.rs
    }
    let t = open();
    let text = "tell me about the weather in Lisbon, in some detail please";
    let mut plan = plan_with(
        &[
            (StepType::CallSwitch, Status::Pending),
            (StepType::CallHermes, Status::Pending),
        ],
        "s-body",
        t0(),
    );
    let ids = json!({"session_id": "s-body", "intent_id": plan.intent_id});
    plan.steps[0].payload = json!({"prompt": text, "metadata": ids, "source": "madre"});
    plan.steps[1].payload = json!({"prompt": text, "metadata": ids, "list": [text]});
    plan.steps[1].optional = true;
    let parameters = json!({"original_message": text});
    let intent = low_chat_intent(&plan, text, parameters, t0());
    let mut rec = record(plan.clone());
    rec.intent = Some(intent.clone());
    t.db.insert_plan(rec).wait().unwrap();

    let stored = t.db.plan(plan.plan_id).unwrap().unwrap();
    assert_eq!(stored.plan.steps, plan.steps);
    assert_eq!(stored.intent, Some(intent));
    let journal = t.db.plan_events(plan.plan_id).unwrap();
    assert_eq!(journal.len(), 1);
    assert_eq!(journal[0].status, Some(Status::Pending));

    let conn = Connection::open(&t.path).unwrap();
    let body: String = conn
        .query_row("SELECT payload_json FROM plan_events", [], |r| r.get(0))
        .unwrap();
    // Once in the intent, once in the array (texts in arrays stay put).
    assert_eq!(body.matches(text).count(), 2, "{body}");
    assert!(!body.contains(&plan.intent_id.to_string()), "{body}");
    assert!(body.contains("0.3,"), "the confidence as written: {body}");
}

/// The LOW intent of a general chat saying `text` for `plan`, made at `at`.
fn low_chat_intent(
    plan: &Plan,
    text: &str,
    parameters: Value,
    at: DateTime<Utc>,
) -> madre_models::Intent {
    madre_models::Intent {
        intent_id: plan.intent_id,
        session_id: plan.session_id.clone(),
        mode: Mode::Madre,
        dsl: madre_models::Dsl {
            domain: "general".into(),
            action: "chat".into(),
            parameters: parameters.as_object().cloned().unwrap_or_default(),
            targets: vec![],
            confidence: 0.3,
            original_text: text.into(),
            warnings: vec![],
            source: Default::default(),
            effect: Default::default(),
        },
        risk: RiskLevel::Low,
        requires_confirmation: false,
        targets: vec![],
        created_at: at,
        alternatives: vec![],
    }
}

/// A new chat plan of `session`, with ids of its own: plans made by it
/// share their shape.
fn plan_alike(session: &str) -> Plan {
    let mut plan = plan_with(
        &[
            (StepType::CallSwitch, Status::Pending),
            (StepType::CallHermes, Status::Pending),
        ],
        session,
        t0(),
    );
    plan.plan_id = Uuid::now_v7();
    for (n, step) in plan.steps.iter_mut().enumerate() {
        step.step_id = Step::id_in_plan(plan.plan_id, n);
    }
    plan
}

/// Issue 25: plans made alike store their common body once, as a shape,
/// from the second such plan on; each reads back whole, its own intent
/// time included, and an archive line carries the body whole. The
/// database refuses to change or delete a shape.
#[test]
fn plans_made_alike_store_their_body_once_and_read_back_whole() {
    let t = open();
    let mut made = Vec::new();
    for i in 0..4 {
        let plan = plan_alike("s-shape");
        // Each intent made at its own moment, to the nanosecond.
        let made_at = t0() - Duration::nanoseconds(1_000_123 * (i + 1));
        let intent = low_chat_intent(&plan, "hello", json!({}), made_at);
        let mut rec = record(plan.clone());
        rec.intent = Some(intent.clone());
        t.db.insert_plan(rec).wait().unwrap();
        made.push((plan, intent));
    }
    let count = |sql: &str| t.scalar(sql);
    assert_eq!(count("SELECT count(*) FROM plan_shapes"), 1);
    assert_eq!(
        count(
            "SELECT count(*) FROM plan_events
             WHERE CAST(payload_json AS TEXT) LIKE '{\"intent_at\":%,\"shape\":%}'"
        ),
        3,
        "the first body whole, the next three by their shape"
    );
    for (plan, intent) in &made {
        let stored = t.db.plan(plan.plan_id).unwrap().unwrap();
        assert_eq!(stored.plan.steps, plan.steps);
        assert_eq!(stored.intent.as_ref(), Some(intent));
        let journal = t.db.plan_events(plan.plan_id).unwrap();
        assert_eq!(journal[0].event_type.as_str(), "plan_created");
    }
    assert!(t.execute("UPDATE plan_shapes SET body = '{}'").is_err());
    assert!(t.execute("DELETE FROM plan_shapes").is_err());
}

/// A shape is believed stored only once the write that stored it
/// committed: a plan whose commit was rolled back (it shared its write
/// with one that failed) leaves the next plan of its shape to store it
/// again, and every plan reads back whole.
#[test]
fn a_shape_whose_commit_was_rolled_back_is_stored_by_the_next_plan() {
    let t = open();
    let alike = || plan_alike("s-rolled");
    // Seen once: stored whole, no shape yet.
    let first = alike();
    t.db.insert_plan(record(first.clone())).wait().unwrap();
    t.db.log_intent(intent_row(70)).wait().unwrap();
    // The second stores the shape, in a write that fails as a whole.
    let rolled_back = alike();
    let failed =
        t.db.insert_plan(record(rolled_back.clone()))
            .and(t.db.log_intent(intent_row(70)))
            .wait();
    assert!(failed.is_err(), "intent 70 is logged already");
    assert!(t.db.plan(rolled_back.plan_id).unwrap().is_none());
    assert_eq!(t.scalar("SELECT count(*) FROM plan_shapes"), 0);
    // The next plans of the shape store it, and read back whole.
    for _ in 0..2 {
        let plan = alike();
        t.db.insert_plan(record(plan.clone())).wait().unwrap();
        let stored = t.db.plan(plan.plan_id).unwrap().expect("readable");
        assert_eq!(stored.plan.steps, plan.steps);
    }
    assert_eq!(t.scalar("SELECT count(*) FROM plan_shapes"), 1);
    let first = t.db.plan(first.plan_id).unwrap().unwrap();
    assert_eq!(first.plan.steps.len(), 2);
}

/// Issue 25: a started step's event stores nothing the journal already
/// says, and the journal still shows its step type and RUNNING.
#[test]
fn a_started_step_event_is_stored_empty_and_shown_whole() {
    if is_postgres() {
        return; // about SQLite's file itself; PostgreSQL's rules: pg_schema.rs
    }
    let t = open();
    let plan = chat_plan(&t.db, "s-started");
    t.db.apply_events(
        plan.plan_id,
        vec![PlanEvent::new(Event::StepStarted { step: 0 }, t0())],
        None,
    )
    .wait()
    .unwrap();
    let journal = t.db.plan_events(plan.plan_id).unwrap();
    let started = &journal[1];
    assert_eq!(started.step_type, Some(StepType::CallSwitch));
    assert_eq!(started.status, Some(Status::Running));
    assert_eq!(started.step_id, Some(plan.steps[0].step_id));
    let conn = Connection::open(&t.path).unwrap();
    let payload: String = conn
        .query_row(
            // Type 7 is step_started (schema 16 stores types as codes).
            "SELECT payload_json FROM plan_events WHERE type = 7",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(payload, "{}");
}

/// A turn in which the user said `asked` and nothing was answered yet.
fn said(
    session_id: String,
    mode: Mode,
    intent_id: Option<Uuid>,
    asked: String,
    keep: u32,
    at: DateTime<Utc>,
) -> NewTurn {
    NewTurn {
        session_id,
        mode,
        intent_id,
        plan_id: None,
        asked: Said::Text(asked),
        answered: Said::Nothing,
        keep,
        at,
    }
}

/// Plan leases (SPEC §16, issue 24): a running plan is its replica's while
/// the lease runs and is renewed; once its replica stops renewing, another
/// takes it over (event `plan_taken_over`), and on PostgreSQL the old
/// holder can no longer append its execution. A waiting plan is nobody's
/// until a confirmation makes it run where it was confirmed.
#[test]
fn a_plan_is_its_replicas_until_the_lease_lapses_then_another_takes_it_over() {
    let t = open();
    let (a, b) = (t.db.clone(), t.reopen());
    let plan = chat_plan(&a, "s-lease");
    a.apply_events(plan.plan_id, vec![started(0, t0())], None)
        .wait()
        .unwrap();
    let held_by_a = Taken::HeldElsewhere {
        by: a.replica().to_owned(),
    };
    assert_eq!(b.take_plan(plan.plan_id, false).wait().unwrap(), held_by_a);
    assert!(a.renew_plan_leases().wait().unwrap() >= 1);
    assert!(
        !b.plans_with_lapsed_leases()
            .unwrap()
            .contains(&plan.plan_id)
    );

    // a's last renewal gives it no time, as if it had stopped renewing a
    // lease ago: the lease lapses.
    a.set_plan_lease(std::time::Duration::ZERO);
    a.renew_plan_leases().wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !b
        .plans_with_lapsed_leases()
        .unwrap()
        .contains(&plan.plan_id)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never lapsed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        b.take_plan(plan.plan_id, false).wait().unwrap(),
        Taken::Taken {
            from: Some(a.replica().to_owned())
        }
    );
    let journal = b.plan_events(plan.plan_id).unwrap();
    let last = journal.last().unwrap();
    assert_eq!(last.event_type.as_str(), "plan_taken_over");
    assert_eq!(last.replica, b.replica());
    assert_eq!(
        a.take_plan(plan.plan_id, false).wait().unwrap(),
        Taken::HeldElsewhere {
            by: b.replica().to_owned()
        }
    );
    if is_postgres() {
        let fenced = a
            .apply_events(plan.plan_id, vec![finished(0, Status::Done, t0())], None)
            .wait();
        assert!(matches!(fenced, Err(DbError::Conflict(_))), "{fenced:?}");
    }
    b.apply_events(plan.plan_id, vec![finished(0, Status::Done, t0())], None)
        .wait()
        .unwrap();
    b.apply_events(
        plan.plan_id,
        vec![
            started(1, t0()),
            finished(1, Status::Done, t0()),
            PlanEvent::finished(Status::Done, None, t0()),
        ],
        None,
    )
    .wait()
    .unwrap();
    assert_eq!(
        b.take_plan(plan.plan_id, false).wait().unwrap(),
        Taken::NotOpen
    );

    // Waiting for a person, a plan is nobody's; confirmed on b, it is b's.
    let gated = plan_with(
        &[
            (StepType::AwaitConfirmation, Status::Waiting),
            (StepType::CallHermes, Status::Pending),
        ],
        "s-lease",
        t0(),
    );
    let mut rec = record(gated.clone());
    let hash = "ab".repeat(32);
    rec.confirmation = Some(NewConfirmation {
        token_sha256: hash.clone(),
        risk: RiskLevel::Med,
        expires_at: Utc::now() + Duration::minutes(10),
        principal: "alice".into(),
    });
    a.insert_plan(rec).wait().unwrap();
    assert_eq!(
        b.take_plan(gated.plan_id, false).wait().unwrap(),
        Taken::NotOpen
    );
    let consumed = b
        .consume_confirmation(gated.plan_id, hash, "bob".into(), None, Utc::now())
        .wait()
        .unwrap();
    assert_eq!(consumed, ConsumeOutcome::Consumed);
    assert_eq!(
        a.take_plan(gated.plan_id, false).wait().unwrap(),
        Taken::HeldElsewhere {
            by: b.replica().to_owned()
        }
    );
}

/// The cleanup runs on one replica at a time (SPEC §16): on PostgreSQL the
/// first replica to ask keeps the turn while it lives, and the next has it
/// once the first is gone; on SQLite, one process, the turn is always its.
#[test]
fn one_replica_at_a_time_holds_the_cleanup_turn() {
    let t = open();
    let (a, b) = (t.reopen(), t.reopen());
    assert!(a.hold_cleanup_turn().unwrap());
    assert!(a.hold_cleanup_turn().unwrap(), "its holder keeps it");
    assert_eq!(b.hold_cleanup_turn().unwrap(), !is_postgres());
    drop(a);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !b.hold_cleanup_turn().unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the turn never passed on"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// PostgreSQL ended every session of the database (a restart, a failover,
/// an operator): the next write and the next read reopen theirs and
/// succeed, with no failure in between, and nothing is written twice.
#[test]
fn sessions_the_server_ended_are_reopened_by_the_next_write_and_read() {
    if !is_postgres() {
        return; // SQLite has no server to end them
    }
    let t = open();
    t.db.log_intent(intent_row(60)).wait().unwrap();
    assert!(t.db.intent_log(Uuid::from_u128(60)).unwrap().is_some());
    // Waits (up to 10 s each) until every other session's process is gone.
    t.execute(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .unwrap();
    t.db.log_intent(intent_row(61)).wait().unwrap();
    assert!(t.db.intent_log(Uuid::from_u128(61)).unwrap().is_some());
    assert_eq!(t.scalar("SELECT count(*) FROM intents_log"), 2);
}

/// A replica's kept fold of a plan another replica has since changed is
/// never what decides an event: replica A made the plan waiting for a
/// confirmation, B took the confirmation and let the plan go; A's start of
/// the next step is then decided on the plan as it is (running), not as A
/// kept it (waiting), on both backends (on PostgreSQL the server checks
/// the fold when the append is sent, and the write runs again).
#[test]
fn an_outdated_kept_fold_does_not_decide_the_next_event() {
    let t = open();
    let (a, b) = (t.db.clone(), t.reopen());
    let hash = "ab".repeat(32);
    let plan = insert_waiting_plan(&a, "s-fold", &hash);
    assert_eq!(
        b.consume_confirmation(plan.plan_id, hash, "bob".into(), None, t0())
            .wait()
            .unwrap(),
        ConsumeOutcome::Consumed
    );
    b.release_plan(plan.plan_id).wait().unwrap();
    a.apply_events(plan.plan_id, vec![started(1, t0())], None)
        .wait()
        .unwrap();
    let stored = t.db.plan(plan.plan_id).unwrap().unwrap().plan;
    assert_eq!(
        (stored.status, stored.steps[1].status),
        (Status::Running, Status::Running)
    );
}
