//! Storage v2 (schema 7) upgrades a schema-4 file in place (through
//! migrations 5 and 6): plans in every state, written as schema 4 stored
//! them (a row in `tasks`, step rows in
//! `plan_steps`, context rows, the journal keyed by step id), read back
//! through the repository exactly as their rows said, and they go on: the
//! waiting plan is confirmed with its token, the running one finishes.
//! Sessions, history, idempotency keys and the spawner's queue survive. A
//! file newer than this code is refused.

use madre_db::*;
use madre_models::{EventType, IntentOutcome, Status, StepType};
use rusqlite::Connection;
use serde_json::json;
use uuid::Uuid;

#[path = "support/v4.rs"]
mod v4;
use v4::*;

#[test]
fn a_schema_4_file_upgrades_in_place_and_every_plan_answers_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v4.db");
    let gate = |status, attempts| step(StepType::AwaitConfirmation, status, attempts, None, None);
    let waiting = old_waiting_plan();
    let running = old_plan(
        "RUNNING",
        None,
        vec![
            step(
                StepType::CallSwitch,
                "DONE",
                1,
                Some(json!({"engine": "local"})),
                None,
            ),
            step(StepType::CallHermes, "RUNNING", 2, None, Some("http_503")),
        ],
        vec![
            ("plan_created", None, "PENDING"),
            ("step_started", Some(0), "RUNNING"),
            ("step_finished", Some(0), "DONE"),
            ("step_started", Some(1), "RUNNING"),
            ("step_started", Some(1), "RUNNING"),
        ],
    );
    let done = old_done_plan();
    let error = old_error_plan();
    let cancelled = old_plan(
        "CANCELLED",
        Some("cancelled"),
        vec![gate("CANCELLED", 0)],
        vec![
            ("plan_created", None, "PENDING"),
            ("plan_waiting", Some(0), "WAITING"),
            ("plan_finished", None, "CANCELLED"),
        ],
    );
    let plans = [&waiting, &running, &done, &error, &cancelled];
    let token = "a-live-confirmation-token";
    make_v4(&path, &plans, &format!("sha256 of {token}"));

    let db = Db::open(&path).unwrap();
    // Schema 10: every time is an integer of microseconds now.
    let conn = Connection::open(&path).unwrap();
    for (table, column) in [
        ("plans", "created_at"),
        ("plans", "updated_at"),
        ("plan_events", "created_at"),
        ("confirmations", "expires_at"),
        ("intents_log", "created_at"),
        ("sessions", "last_activity_at"),
        ("turns", "created_at"),
        ("idempotency_keys", "created_at"),
        ("daughter_tasks", "created_at"),
    ] {
        let (rows, integers): (i64, i64) = conn
            .query_row(
                &format!(
                    "SELECT count(*), count(*) FILTER (WHERE typeof({column}) = 'integer') FROM {table}"
                ),
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(rows > 0 || !["plans", "plan_events"].contains(&table));
        assert_eq!(integers, rows, "{table}.{column}");
    }
    for old in plans {
        let stored = db.plan(old.id).unwrap().expect("the plan survives");
        assert_eq!(stored.plan.status.as_str(), old.status, "{}", old.id);
        assert_eq!(stored.plan.error.as_deref(), old.error);
        assert_eq!(stored.plan.warnings, ["hermes_slow"]);
        assert_eq!(stored.meta.principal, "alice");
        let steps: Vec<_> = stored
            .plan
            .steps
            .iter()
            .map(|s| {
                (
                    s.step_id,
                    s.step_type,
                    s.status.as_str().to_owned(),
                    s.attempts,
                    s.result.clone(),
                    s.error.clone(),
                    s.payload.clone(),
                )
            })
            .collect();
        let expected: Vec<_> = old
            .steps
            .iter()
            .zip(&old.step_ids)
            .map(|(s, id)| {
                (
                    *id,
                    s.step_type,
                    s.status.to_owned(),
                    s.attempts,
                    s.result.clone(),
                    s.error.map(str::to_owned),
                    json!({"prompt": "hi"}),
                )
            })
            .collect();
        assert_eq!(steps, expected, "the steps of the {} plan", old.status);
        let journal: Vec<_> = db
            .plan_events(old.id)
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.event_type.as_str().to_owned(),
                    e.step_id,
                    e.status.map(|s| s.as_str().to_owned()),
                )
            })
            .collect();
        let expected: Vec<_> = old
            .events
            .iter()
            .map(|(t, i, s)| {
                (
                    (*t).to_owned(),
                    i.map(|i| old.step_ids[i]),
                    Some((*s).to_owned()),
                )
            })
            .collect();
        assert_eq!(journal, expected, "the journal of the {} plan", old.status);
    }
    let (listed, _) = db.list_plans(&PlanFilter::default(), 10, None).unwrap();
    let listed: Vec<_> = listed.iter().map(|p| (p.plan_id, p.status)).collect();
    let newest_first: Vec<_> = plans
        .iter()
        .rev()
        .map(|p| (p.id, p.status.parse::<Status>().unwrap()))
        .collect();
    assert_eq!(listed, newest_first);
    let counts = db.plan_counts().unwrap();
    let expected = vec![
        (Status::Cancelled, 1),
        (Status::Done, 1),
        (Status::Error, 1),
        (Status::Running, 1),
        (Status::Waiting, 1),
    ];
    assert_eq!(counts, expected);
    assert_eq!(
        db.plan_ids_with_status(Status::Running).unwrap(),
        [running.id]
    );

    // The session's history, the key and the queued job are there; the
    // session, in the default mode, needs no row of its own (schema 13).
    assert_eq!(db.session("s-old").unwrap(), None);
    let history: Vec<_> = db
        .history("s-old", 10)
        .unwrap()
        .into_iter()
        .map(|m| m.content)
        .collect();
    assert_eq!(history, ["hello", "hi there"]);
    assert!(matches!(
        db.idempotency_key("alice", "k1", "h1").unwrap(),
        Reservation::Done(_)
    ));
    let claimed = db
        .claim_next_daughter_task("worker-1", chrono::Utc::now())
        .wait()
        .unwrap()
        .expect("the queued job is claimed");
    assert_eq!(claimed.description, "a queued job");

    // The plans go on: the waiting one is confirmed with its live token,
    // the running one finishes.
    let consumed = db
        .consume_confirmation(
            waiting.id,
            format!("sha256 of {token}"),
            "bob".into(),
            None,
            chrono::Utc::now(),
        )
        .wait()
        .unwrap();
    assert_eq!(consumed, ConsumeOutcome::Consumed);
    let gate = db.plan(waiting.id).unwrap().unwrap().plan.steps[0].status;
    assert_eq!(gate, Status::Done);
    let state = db
        .apply_events(
            running.id,
            vec![
                PlanEvent::new(
                    Event::StepFinished {
                        step: 1,
                        status: Status::Done,
                    },
                    chrono::Utc::now(),
                )
                .result(json!({"reply": "late"})),
                PlanEvent::finished(Status::Done, None, chrono::Utc::now()),
            ],
            None,
        )
        .wait()
        .unwrap();
    assert_eq!(state.status, Status::Done);
    let ended = db.plan(running.id).unwrap().unwrap();
    assert_eq!(ended.plan.steps[1].attempts, 2);
    assert_eq!(ended.plan.steps[1].result, Some(json!({"reply": "late"})));
    assert_eq!(
        db.plan_events(running.id)
            .unwrap()
            .last()
            .unwrap()
            .event_type,
        EventType::PlanFinished
    );
    // Their audit trail is what was stored (nothing, here): a creation
    // entry read from the journal is only for plans made since schema 12,
    // so none shows twice.
    for id in [waiting.id, running.id, done.id, error.id] {
        assert_eq!(db.actions_for_plan(id).unwrap(), vec![], "plan {id}");
    }
    db.integrity_check().unwrap();
}

/// A file of a newer schema is refused with an error naming both
/// versions, and left as it was.
#[test]
fn a_newer_file_is_refused_not_downgraded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(Db::open(&path).unwrap());
    let newer = SCHEMA_VERSION + 1;
    Connection::open(&path)
        .unwrap()
        .execute_batch(&format!("PRAGMA user_version = {newer}"))
        .unwrap();
    let Err(refused) = Db::open(&path) else {
        panic!("a newer file is refused");
    };
    let message = refused.to_string();
    assert!(
        matches!(refused, DbError::SchemaTooNew { found, supported, .. } if found == newer && supported == SCHEMA_VERSION),
        "{message}"
    );
    assert!(message.contains(&newer.to_string()), "{message}");
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, newer, "the file is left as it was");
}

/// Every table of a chat, as one text per row, in order: what an upgrade
/// must leave exactly as it was.
fn rows_of(conn: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    for table in [
        "plans",
        "plan_events",
        "confirmations",
        "intents_log",
        "madre_actions",
        "sessions",
        "madre_context",
        "idempotency_keys",
        "daughter_tasks",
        "plan_status_counts",
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table} ORDER BY 1"))
            .unwrap();
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..columns)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(format!("{table}: {}", cells.join(" | ")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// Schema 8 (issue 25: the archives' table and the archival gate) upgrades
/// a schema-7 file in place: every row of every table stays as it was,
/// the append-only tables still refuse any delete, and the upgraded file's
/// finished plans can be archived while its waiting plan stays.
#[test]
fn a_schema_7_file_upgrades_to_8_keeping_every_row_and_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v7.db");
    let waiting = old_plan(
        "WAITING",
        None,
        vec![step(StepType::AwaitConfirmation, "WAITING", 0, None, None)],
        vec![
            ("plan_created", None, "PENDING"),
            ("plan_waiting", Some(0), "WAITING"),
        ],
    );
    let done = old_done_plan();
    make_v4(&path, &[&waiting, &done], "sha256 of tok");
    let before = {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 7).unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO intents_log (id, source, principal, payload_json, created_at)
             VALUES ('{}', 'chat', 'alice', '{{}}', '{T0}');
             INSERT INTO madre_actions (module, action, reason, principal, plan_id, created_at)
             VALUES ('hermes', 'chat', 'planned 1 step(s)', 'alice', '{}', '{T0}');",
            Uuid::now_v7(),
            done.id
        ))
        .unwrap();
        rows_of(&conn)
    };
    assert!(before.iter().any(|r| r.starts_with("plan_events:")));

    let mut conn = Connection::open(&path).unwrap();
    migrate_to(&mut conn, &path, 8).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, 8);
    assert_eq!(rows_of(&conn), before, "every row as it was");
    let db = Db::open(&path).unwrap();
    for sql in [
        "DELETE FROM plan_events",
        "DELETE FROM intents_log",
        "DELETE FROM madre_actions",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(db.plan(done.id).unwrap().unwrap().plan.status, Status::Done);

    // The waiting plan's approval is the journal's newest event: the plan
    // holding it is never archived, so the done plan is free to go.
    db.apply_events(
        waiting.id,
        vec![PlanEvent::new(Event::ApprovalRecorded, chrono::Utc::now()).by("bob")],
        None,
    )
    .wait()
    .unwrap();
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    let report = db
        .archive_finished_plans(
            &archive_dir(&path),
            later,
            10,
            std::time::Instant::now() + std::time::Duration::from_secs(60),
            chrono::Utc::now(),
        )
        .unwrap();
    assert_eq!(report.plans, 1);
    assert!(db.plan(done.id).unwrap().is_none());
    assert_eq!(
        db.plan(waiting.id).unwrap().unwrap().plan.status,
        Status::Waiting
    );
    db.integrity_check().unwrap();
}

/// Schema 16 stores event types as codes: the upgrade converts every name
/// a version wrote, and keeps a type no version wrote (a file edited by
/// hand) as it was, so that reading its plan names the plan and the event
/// instead of the upgrade failing or the row changing meaning.
#[test]
fn the_upgrade_to_16_converts_event_types_and_keeps_a_foreign_one_to_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vx11.db");
    let plan_id = Uuid::now_v7();
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 15).unwrap();
        pending_plan_row(&conn, plan_id);
        for (seq, event_type) in [(1, "plan_created"), (2, "plan_frobbed")] {
            conn.execute(
                "INSERT INTO plan_events (seq, plan, type, payload_json, replica, created_at)
                 VALUES (?1, 1, ?2, '{\"steps\":[]}', 'by-hand', 1)",
                rusqlite::params![seq, event_type],
            )
            .unwrap();
        }
    }
    let db = Db::open(&path).unwrap();
    let refused = db.plan(plan_id).unwrap_err().to_string();
    assert!(
        refused.contains(&plan_id.to_string())
            && refused.contains("journal event 2")
            && refused.contains("plan_frobbed"),
        "{refused}"
    );
    drop(db);
    let conn = Connection::open(&path).unwrap();
    let rows: Vec<(i64, String, String)> = conn
        .prepare(
            "SELECT e.seq, CAST(e.type AS TEXT), r.name
             FROM plan_events e JOIN replicas r ON r.id = e.replica ORDER BY e.seq",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        [
            (1, "1".to_owned(), "by-hand".to_owned()),
            (2, "plan_frobbed".to_owned(), "by-hand".to_owned())
        ]
    );
}

/// Schema 17 adds plan leases: a plan open at the upgrade has no holder,
/// so the first lease round of any replica takes it, and it then is that
/// replica's.
#[test]
fn a_plan_open_at_the_upgrade_to_17_is_nobodys_until_a_replica_takes_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vx11.db");
    let plan_id = Uuid::now_v7();
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 16).unwrap();
        pending_plan_row(&conn, plan_id);
        conn.execute_batch(
            "INSERT INTO replicas (name) VALUES ('before');
             INSERT INTO plan_events (plan, type, payload_json, replica, created_at)
             VALUES (1, 1, '{\"steps\":[]}', 1, 1);",
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.plans_with_lapsed_leases().unwrap(), [plan_id]);
    assert_eq!(
        db.take_plan(plan_id, false).wait().unwrap(),
        Taken::Taken { from: None }
    );
    assert!(db.plans_with_lapsed_leases().unwrap().is_empty());
    let other = Db::open_as(&path, SyncMode::Normal, "another").unwrap();
    assert_eq!(
        other.take_plan(plan_id, false).wait().unwrap(),
        Taken::HeldElsewhere {
            by: db.replica().to_owned()
        }
    );
}

/// A PENDING plan's row, written by hand as an older version would have.
fn pending_plan_row(conn: &Connection, plan_id: Uuid) {
    conn.execute(
        "INSERT INTO plans (uuid, kind, name, module, action, principal, mode, status,
                            warnings_json, created_at, updated_at)
         VALUES (?1, 'task', 'hand', 'hermes', 'run', 'admin', 'MADRE', 'PENDING', '[]', 1, 1)",
        [plan_id.to_string()],
    )
    .unwrap();
}

/// Schema 18 guards an intent's close by the columns an UPDATE names: an
/// intent open at the upgrade keeps its row and closes once; closing it
/// again, or rewriting what it asked, is refused.
#[test]
fn an_intent_open_at_the_upgrade_to_18_closes_once_and_keeps_what_it_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vx11.db");
    let intent = Uuid::now_v7();
    {
        let mut conn = Connection::open(&path).unwrap();
        migrate_to(&mut conn, &path, 17).unwrap();
        conn.execute(
            "INSERT INTO intents_log (id, source, principal, payload_json, created_at)
             VALUES (?1, 'chat', 'admin', '{\"message\":\"hello\"}', 1)",
            [intent.to_string()],
        )
        .unwrap();
    }
    let db = Db::open(&path).unwrap();
    assert_eq!(db.count_open_intents().unwrap(), 1);
    // A close that also sets what it asked, even to what it was: refused
    // from 18 on (17 compared the values and let it through).
    let conn = Connection::open(&path).unwrap();
    let err = conn
        .execute(
            "UPDATE intents_log SET processed_by_madre_at = 2, payload_json = payload_json",
            [],
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("a row can only be closed, once"), "{err}");
    let at = chrono::Utc::now();
    db.close_intent(intent, IntentOutcome::Plan(Status::Done), None, at)
        .wait()
        .unwrap();
    assert!(matches!(
        db.close_intent(intent, IntentOutcome::Plan(Status::Error), None, at)
            .wait(),
        Err(DbError::Conflict(_))
    ));
    let row = db.intent_log(intent).unwrap().unwrap();
    assert_eq!(row.result_status.as_deref(), Some("DONE"));
    for sql in [
        "UPDATE intents_log SET payload_json = '{\"message\":\"hello\"}'",
        "UPDATE intents_log SET principal = 'mallory'",
    ] {
        let err = conn.execute(sql, []).unwrap_err().to_string();
        assert!(
            err.contains("a row can only be closed, once"),
            "{sql}: {err}"
        );
    }
}
