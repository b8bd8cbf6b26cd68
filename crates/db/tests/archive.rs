//! Retention with archives (issue 25): finished plans past the cutoff move
//! into compressed daily archives, every row of them, exactly once across
//! failures; nothing open is archived, and the append-only tables still
//! refuse deletes from anywhere else.

use chrono::{DateTime, TimeZone, Utc};
use madre_db::*;
use madre_models::{IntentOutcome, Mode, Plan, RiskLevel, SessionId, Status, Step, StepType};
use serde_json::json;
use std::path::{Path, PathBuf};
use uuid::Uuid;

#[path = "support/backend.rs"]
mod backend;
use backend::{TestDb, is_postgres};

fn day(month: u32, d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, month, d, 12, 0, 0).unwrap()
}

/// A UUID v7 made at `at`, as Madre's ids are.
fn id_at(at: DateTime<Utc>) -> Uuid {
    Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        0,
    ))
}

struct Fixture {
    db: Db,
    archives: PathBuf,
    t: TestDb,
}

impl Fixture {
    /// One archival pass, as the cleanup runs it, after a newer plan came:
    /// the plan holding the journal's newest event is never archived (its
    /// `seq` would be handed out again), so each pass here has one.
    fn archive(
        &self,
        cutoff: DateTime<Utc>,
        batch: usize,
        until: std::time::Instant,
        now: DateTime<Utc>,
    ) -> Result<ArchiveReport, DbError> {
        plan(&self.db, day(12, 1), None);
        self.db
            .archive_finished_plans(&self.archives, cutoff, batch, until, now)
    }
}

fn open() -> Fixture {
    let t = backend::open();
    Fixture {
        db: t.db.clone(),
        archives: archive_dir(&t.path),
        t,
    }
}

/// A one-step plan made at `at` with its intent logged and an audit row;
/// `end` finishes it then (or leaves it waiting for a confirmation).
fn plan(db: &Db, at: DateTime<Utc>, end: Option<Status>) -> Uuid {
    let plan_id = id_at(at);
    let intent_id = id_at(at);
    db.log_intent(NewIntentLog {
        id: intent_id,
        source: "chat".into(),
        principal: "alice".into(),
        payload: json!({ "message": "hello" }),
        created_at: at,
    })
    .wait()
    .unwrap();
    let waits = end.is_none();
    let ty = if waits {
        StepType::AwaitConfirmation
    } else {
        StepType::CallHermes
    };
    let mut step = Step::new(id_at(at), ty, json!({ "prompt": "hello" }), at);
    if waits {
        step.status = Status::Waiting;
    }
    let plan = Plan {
        plan_id,
        intent_id,
        session_id: SessionId::parse("s1".into()).unwrap(),
        status: if waits {
            Status::Waiting
        } else {
            Status::Pending
        },
        mode: Mode::Madre,
        steps: vec![step],
        warnings: vec![],
        error: None,
        created_at: at,
        updated_at: at,
    };
    db.insert_plan(NewPlanRecord {
        meta: PlanMeta {
            kind: PlanKind::Chat,
            name: "chat".into(),
            module: madre_models::Module::Hermes,
            action: "chat".into(),
            principal: "alice".into(),
        },
        plan,
        intent: None,
        confirmation: waits.then(|| NewConfirmation {
            token_sha256: "ab".repeat(32),
            risk: RiskLevel::High,
            expires_at: at + chrono::Duration::days(365),
            principal: "alice".into(),
        }),
        actions: vec![NewAction {
            module: "hermes".into(),
            action: "chat".into(),
            reason: "planned 1 step(s)".into(),
            principal: "alice".into(),
            plan_id: Some(plan_id),
            created_at: at,
        }],
        logged_message: None,
    })
    .wait()
    .unwrap();
    if let Some(status) = end {
        let events = vec![
            PlanEvent::new(Event::StepStarted { step: 0 }, at),
            PlanEvent::new(Event::StepFinished { step: 0, status }, at),
            PlanEvent::finished(status, None, at),
        ];
        db.apply_events(plan_id, events, None).wait().unwrap();
        db.close_intent(intent_id, IntentOutcome::Plan(status), None, at)
            .wait()
            .unwrap();
    }
    // The chat's turn: the message is the intent log's.
    db.record_turn(NewTurn {
        session_id: "s1".into(),
        mode: Mode::Madre,
        intent_id: Some(intent_id),
        plan_id: Some(plan_id),
        asked: Said::Kept,
        answered: Said::Text("hi".into()),
        keep: 100,
        at,
    })
    .wait()
    .unwrap();
    plan_id
}

fn archived_ids(path: &Path) -> Vec<String> {
    read_archive(path)
        .unwrap()
        .iter()
        .map(|l| l["plan_id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn finished_plans_past_the_cutoff_move_to_the_archive_and_nothing_else_does() {
    let f = open();
    let done = plan(&f.db, day(1, 10), Some(Status::Done));
    let failed = plan(&f.db, day(1, 11), Some(Status::Error));
    let waiting = plan(&f.db, day(1, 12), None);
    let recent = plan(&f.db, day(9, 1), Some(Status::Done));
    let now = day(9, 2);

    let report = f.archive(day(6, 1), 1, soon(), now).unwrap();
    assert_eq!(report.plans, 2, "{report:?}");
    assert!(report.bytes > 0);

    // The archive holds every row of both, in batches of one.
    let file = f.archives.join(archive_name(now));
    assert_eq!(file.file_name().unwrap(), "plans-2026-09-02.jsonl.gz");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "an archive is private");
    }
    let lines = read_archive(&file).unwrap();
    assert_eq!(lines.len(), 2);
    let first = &lines[0];
    assert_eq!(first["plan_id"], json!(done.to_string()));
    assert_eq!(first["plan"]["status"], json!("DONE"));
    let types: Vec<&str> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "plan_created",
            "step_started",
            "step_finished",
            "plan_finished"
        ]
    );
    assert!(first["events"][0]["payload_json"]["steps"].is_array());
    assert_eq!(first["intent"]["result_status"], json!("DONE"));
    assert_eq!(first["intent"]["payload_json"]["message"], json!("hello"));
    // The audit trail as the plan detail showed it: the creation, read
    // from the journal (id 0), then the rows stored with the plan.
    assert_eq!(first["actions"][0]["id"], json!(0));
    assert_eq!(first["actions"][0]["reason"], json!("planned 1 step(s)"));
    assert!(first["actions"][0]["created_at"].is_string());
    assert_eq!(first["actions"][1]["reason"], json!("planned 1 step(s)"));
    assert!(first["actions"][1]["id"].as_i64().unwrap() > 0);
    assert_eq!(lines[1]["plan_id"], json!(failed.to_string()));

    // Their rows are gone; the waiting and the recent plan stay whole.
    for id in [done, failed] {
        assert!(f.db.plan(id).unwrap().is_none());
        assert_eq!(
            f.db.archived_plan(id).unwrap().as_deref(),
            Some("plans-2026-09-02.jsonl.gz")
        );
    }
    for id in [waiting, recent] {
        assert!(f.db.plan(id).unwrap().is_some());
        assert_eq!(f.db.archived_plan(id).unwrap(), None);
    }
    // Theirs, and those of the newer plan `archive` adds.
    assert_eq!(f.t.scalar("SELECT count(*) FROM intents_log"), 3);
    assert_eq!(f.t.scalar("SELECT count(*) FROM madre_actions"), 3);
    if !is_postgres() {
        assert_eq!(f.t.scalar("SELECT count(*) FROM archive_gate"), 0);
    }
    // The history stays: the archived plans' turns now hold the message
    // they read from the archived intent, and say their intent.
    assert_eq!(f.t.scalar("SELECT count(*) FROM turns"), 5);
    assert_eq!(
        f.t.scalar("SELECT count(*) FROM turns WHERE plan IS NULL AND asked = 'hello'"),
        2
    );
    let history = f.db.history("s1", 100).unwrap();
    let said: Vec<&str> = history.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(said, ["hello", "hi"].repeat(5));
    assert!(history.iter().all(|m| m.intent_id.is_some()));
    assert!(f.db.confirmation(waiting).unwrap().is_some());
    // The counters agree with the rows left, and nothing is amiss.
    let counts = f.db.plan_counts().unwrap();
    assert!(counts.contains(&(Status::Done, 1)), "{counts:?}");
    assert!(
        !counts.iter().any(|(s, _)| *s == Status::Error),
        "{counts:?}"
    );
    assert!(f.db.check_plans().unwrap().is_empty());
    f.db.integrity_check().unwrap();

    // A second pass finds nothing more.
    let again = f.archive(day(6, 1), 10, soon(), now).unwrap();
    assert_eq!(again, ArchiveReport::default());
}

/// The append-only tables refuse a DELETE from any other path, and the
/// archive gate opens only for the plans it lists.
#[test]
fn the_append_only_tables_still_refuse_deletes_outside_the_archive() {
    let f = open();
    let kept = plan(&f.db, day(1, 10), Some(Status::Done));
    let other = plan(&f.db, day(1, 11), Some(Status::Done));
    for sql in [
        "DELETE FROM plan_events",
        "DELETE FROM intents_log",
        "DELETE FROM madre_actions",
    ] {
        let err = f.t.execute(sql).unwrap_err();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }
    if !is_postgres() {
        // A gate naming one plan does not let another plan's rows go.
        let conn = rusqlite::Connection::open(&f.t.path).unwrap();
        let row: i64 = conn
            .query_row(
                "SELECT id FROM plans WHERE uuid = ?1",
                [other.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        conn.execute(
            "INSERT INTO archive_gate (plan_row, plan_uuid) VALUES (?1, ?2)",
            rusqlite::params![row, other.to_string()],
        )
        .unwrap();
        let err = conn
            .execute(
                "DELETE FROM madre_actions WHERE plan_id = ?1",
                [kept.to_string()],
            )
            .unwrap_err();
        assert!(err.to_string().contains("append-only"));
    }
    assert_eq!(f.t.scalar("SELECT count(*) FROM madre_actions"), 2);
}

/// A pass that fails after marking its plans (the archive cannot be
/// written: here its directory is a file, as a full or broken disk would
/// refuse it) keeps every row; once the archive can be written, the next
/// pass archives them, once.
#[test]
fn a_failed_archive_write_keeps_the_rows_and_a_later_pass_archives_them_once() {
    let f = open();
    let done = plan(&f.db, day(1, 10), Some(Status::Done));
    std::fs::write(&f.archives, b"not a directory").unwrap();
    let failed = f.archive(day(6, 1), 10, soon(), day(9, 2));
    assert!(matches!(failed, Err(DbError::Archive { .. })), "{failed:?}");
    assert!(f.db.plan(done).unwrap().is_some(), "the rows stay");
    assert_eq!(f.db.archived_plan(done).unwrap(), None);

    std::fs::remove_file(&f.archives).unwrap();
    let report = f.archive(day(6, 1), 10, soon(), day(9, 3)).unwrap();
    assert_eq!(report.plans, 1);
    // It goes to the archive of its first pass, the only one holding it.
    let file = f.archives.join(archive_name(day(9, 2)));
    assert_eq!(archived_ids(&file), [done.to_string()]);
    assert!(!f.archives.join(archive_name(day(9, 3))).exists());
    assert!(f.db.plan(done).unwrap().is_none());
}

/// A crash between the archive's sync and the delete (here the delete is
/// refused by a trigger added for the test) leaves the plan both in the
/// archive and in the database; the next pass deletes it without writing
/// it again: archived exactly once.
#[test]
fn a_delete_that_did_not_happen_is_finished_without_a_second_line() {
    let f = open();
    let done = plan(&f.db, day(1, 10), Some(Status::Done));
    let now = day(9, 2);
    pass_interrupted_before_its_delete(&f, now);
    let file = f.archives.join(archive_name(now));
    assert_eq!(archived_ids(&file), [done.to_string()]);
    assert!(f.db.plan(done).unwrap().is_some(), "still in the database");

    let report = f.archive(day(6, 1), 10, soon(), now).unwrap();
    assert_eq!(report.plans, 1);
    assert_eq!(report.bytes, 0, "nothing written twice");
    assert_eq!(archived_ids(&file), [done.to_string()]);
    assert!(f.db.plan(done).unwrap().is_none());
    assert_eq!(
        f.db.archived_plan(done).unwrap().as_deref(),
        Some("plans-2026-09-02.jsonl.gz")
    );
}

/// A crash in the middle of an append leaves half a gzip member at the end
/// of the archive (here: the batch's member cut in two). The next pass cuts
/// the archive back to where that batch began, writes the batch whole, and
/// deletes its rows: every line reads, each plan once.
#[test]
fn a_torn_append_is_cut_back_and_written_whole() {
    let f = open();
    let now = day(9, 2);
    let first = plan(&f.db, day(1, 9), Some(Status::Done));
    f.archive(day(1, 10), 10, soon(), now).unwrap();
    let file = f.archives.join(archive_name(now));
    let whole = std::fs::metadata(&file).unwrap().len();
    let torn = plan(&f.db, day(1, 10), Some(Status::Done));
    pass_interrupted_before_its_delete(&f, now);
    let appended = std::fs::metadata(&file).unwrap().len();
    assert!(appended > whole);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(whole + (appended - whole) / 2)
        .unwrap();
    assert!(
        read_archive(&file).is_err(),
        "the torn member does not read"
    );

    let report = f.archive(day(6, 1), 10, soon(), now).unwrap();
    assert_eq!(report.plans, 1);
    assert_eq!(archived_ids(&file), [first.to_string(), torn.to_string()]);
    assert!(f.db.plan(torn).unwrap().is_none());
}

/// A batch whose archive cannot be read (here the file is a directory)
/// stays unsettled with its rows, and nothing new is appended to that
/// archive behind it until it can be settled; then both go, once each.
#[test]
fn nothing_is_appended_behind_an_unsettled_batch() {
    let f = open();
    let now = day(9, 2);
    let first = plan(&f.db, day(1, 9), Some(Status::Done));
    pass_interrupted_before_its_delete(&f, now);
    let second = plan(&f.db, day(1, 10), Some(Status::Done));
    let file = f.archives.join(archive_name(now));
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let report = f.archive(day(6, 1), 10, soon(), now).unwrap();
    assert_eq!(report.plans, 0);
    assert!(f.db.plan(first).unwrap().is_some());
    assert!(f.db.plan(second).unwrap().is_some());
    assert_eq!(f.db.archived_plan(second).unwrap(), None);

    std::fs::remove_dir(&file).unwrap();
    let report = f.archive(day(6, 1), 10, soon(), now).unwrap();
    assert_eq!(report.plans, 2);
    assert_eq!(archived_ids(&file), [first.to_string(), second.to_string()]);
}

/// An archive that cannot be read is reported by name, by the reader and
/// so by `madre archive`; it does not stop later passes, which write to
/// their own day's archive and never read the old one.
#[test]
fn a_corrupt_archive_is_named_and_later_passes_go_on() {
    let f = open();
    let old = plan(&f.db, day(1, 10), Some(Status::Done));
    f.archive(day(6, 1), 10, soon(), day(9, 2)).unwrap();
    let file = f.archives.join(archive_name(day(9, 2)));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    bytes.truncate(bytes.len() - 4);
    std::fs::write(&file, &bytes).unwrap();
    let Err(DbError::Archive { path, .. }) = read_archive(&file) else {
        panic!("a corrupt archive reads as an error");
    };
    assert!(path.ends_with("plans-2026-09-02.jsonl.gz"), "{path}");
    assert_eq!(
        f.db.archived_plan(old).unwrap().as_deref(),
        Some("plans-2026-09-02.jsonl.gz")
    );

    let later = plan(&f.db, day(2, 10), Some(Status::Done));
    let report = f.archive(day(6, 1), 10, soon(), day(9, 3)).unwrap();
    assert_eq!(report.plans, 1);
    assert_eq!(
        archived_ids(&f.archives.join(archive_name(day(9, 3)))),
        [later.to_string()]
    );
}

/// A deadline far enough for any archival pass of a test.
fn soon() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(60)
}

/// A pass that marks its batch and writes its archive but whose delete is
/// refused (a trigger added for the moment), as a kill between the two
/// would leave it.
fn pass_interrupted_before_its_delete(f: &Fixture, now: DateTime<Utc>) {
    let (refuse, allow) = if is_postgres() {
        (
            "CREATE FUNCTION test_crash() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN RAISE EXCEPTION 'crash'; END $$;
             CREATE TRIGGER test_crash BEFORE DELETE ON plans
                 FOR EACH ROW EXECUTE FUNCTION test_crash();",
            "DROP TRIGGER test_crash ON plans; DROP FUNCTION test_crash();",
        )
    } else {
        (
            "CREATE TRIGGER test_crash BEFORE DELETE ON plans BEGIN SELECT RAISE(ABORT, 'crash'); END;",
            "DROP TRIGGER test_crash;",
        )
    };
    f.t.batch(refuse);
    let interrupted = f.archive(day(6, 1), 10, soon(), now);
    f.t.batch(allow);
    assert!(interrupted.is_err());
}

/// The plan holding the journal's newest event is not archived, however
/// old: deleting its events would let their `seq` be handed out again to
/// new events, which readers of the event stream would take for ones they
/// had seen. It goes once a newer event exists.
#[test]
fn the_plan_with_the_newest_event_waits_for_a_newer_one() {
    let f = open();
    let old = plan(&f.db, day(1, 10), Some(Status::Done));
    let newest = plan(&f.db, day(1, 11), Some(Status::Done));
    let now = day(9, 2);
    let report =
        f.db.archive_finished_plans(&f.archives, day(6, 1), 10, soon(), now)
            .unwrap();
    assert_eq!(report.plans, 1, "{report:?}");
    assert!(f.db.plan(old).unwrap().is_none());
    assert!(f.db.plan(newest).unwrap().is_some(), "holds the newest seq");
    let report = f.archive(day(6, 1), 10, soon(), now).unwrap();
    assert_eq!(report.plans, 1, "{report:?}");
    assert!(f.db.plan(newest).unwrap().is_none());
}
