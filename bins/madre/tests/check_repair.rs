//! The file is never silently trusted: `madre check` finds a plan row
//! edited by hand (it disagrees with the plan's journal) and a counter
//! that disagrees with the rows; `madre repair` rebuilds them from the
//! journal; and an open plan whose journal holds an event the state
//! machine refuses stops `madre serve` with an error naming the plan and
//! the event, before anything is written.

use chrono::Utc;
use madre_db::Db;
use madre_models::Status;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};
use uuid::Uuid;

mod common;

use common::{BIN, done_events, hermes_plan};

fn madre(data: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("MADRE_DATA_DIR", data)
        .env("VX11_TOKEN", "check-token")
        .env("MADRE_BIND", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A one-step Hermes plan, stored PENDING.
fn store_plan(db: &Db) -> Uuid {
    let record = hermes_plan(Utc::now());
    let plan_id = record.plan.plan_id;
    db.insert_plan(record).wait().unwrap();
    plan_id
}

fn run_to_done(db: &Db, plan_id: Uuid) {
    db.apply_events(plan_id, done_events(Utc::now()), None)
        .wait()
        .unwrap();
}

#[test]
fn check_finds_a_hand_edited_row_and_repair_rebuilds_it_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = data.join("vx11.db");
    let done = {
        let db = Db::open(&path).unwrap();
        let done = store_plan(&db);
        run_to_done(&db, done);
        done
    };
    let clean = madre(&data, &["check"]);
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(text(&clean).contains("ok"), "{}", text(&clean));

    // A copy of the file edited by hand: the row says RUNNING, and the
    // counter of DONE plans says 7.
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE plans SET status = 'RUNNING' WHERE uuid = ?1",
        [done.to_string()],
    )
    .unwrap();
    conn.execute(
        "UPDATE plan_status_counts SET n = 7 WHERE status = 'DONE'",
        [],
    )
    .unwrap();
    drop(conn);

    let found = madre(&data, &["check"]);
    let report = text(&found);
    assert_eq!(found.status.code(), Some(1), "{report}");
    assert!(report.contains(&done.to_string()), "{report}");
    assert!(
        report.contains("its row says RUNNING, its journal says DONE"),
        "{report}"
    );
    assert!(report.contains("counter of DONE plans says 7"), "{report}");

    let repaired = madre(&data, &["repair"]);
    assert_eq!(repaired.status.code(), Some(0), "{}", text(&repaired));
    assert!(text(&repaired).contains(&format!("repaired {done}")));
    let again = madre(&data, &["check"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    let db = Db::open(&path).unwrap();
    assert_eq!(db.plan(done).unwrap().unwrap().plan.status, Status::Done);
    assert_eq!(db.plan_counts().unwrap(), [(Status::Done, 1)]);
}

#[test]
fn an_open_plan_with_a_refused_event_stops_the_start_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = data.join("vx11.db");
    let open = {
        let db = Db::open(&path).unwrap();
        store_plan(&db)
    };
    // A journal no state machine accepts: a step of a PENDING plan
    // finishes without having started (type 8, step_finished).
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO plan_events (plan, type, step, payload_json, principal, replica, created_at)
         SELECT id, 8, 0, '{\"status\":\"DONE\"}', NULL, (SELECT min(id) FROM replicas), created_at
         FROM plans WHERE uuid = ?1",
        [open.to_string()],
    )
    .unwrap();
    let seq: i64 = conn
        .query_row("SELECT max(seq) FROM plan_events", [], |r| r.get(0))
        .unwrap();
    let events_before: i64 = conn
        .query_row("SELECT count(*) FROM plan_events", [], |r| r.get(0))
        .unwrap();
    drop(conn);

    let out = madre(&data, &["serve"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains(&open.to_string()), "{said}");
    assert!(said.contains(&format!("journal event {seq}")), "{said}");

    let check = madre(&data, &["check"]);
    assert_eq!(check.status.code(), Some(1));
    assert!(text(&check).contains("cannot be read"), "{}", text(&check));
    // `repair` never guesses at a journal it cannot fold.
    let repair = madre(&data, &["repair"]);
    assert_eq!(repair.status.code(), Some(1), "{}", text(&repair));
    assert!(text(&repair).contains(&format!("NOT repaired {open}")));

    let conn = rusqlite::Connection::open(&path).unwrap();
    let events_after: i64 = conn
        .query_row("SELECT count(*) FROM plan_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(events_after, events_before, "nothing was written");
    let status: String = conn
        .query_row(
            "SELECT status FROM plans WHERE uuid = ?1",
            [open.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(status, "PENDING");
}

/// `madre archive list` and `madre archive show` read the archives with
/// no server (issue 25): a plan moved to its archive is shown with every
/// row it had; a corrupt archive is named and skipped, the others still
/// listed, and the command exits 1.
#[test]
fn archive_list_and_show_read_the_archives_and_name_a_corrupt_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = data.join("vx11.db");
    let done = {
        let db = Db::open(&path).unwrap();
        let done = store_plan(&db);
        run_to_done(&db, done);
        // A newer plan holds the journal's newest event, which stays.
        store_plan(&db);
        let later = Utc::now() + chrono::Duration::seconds(1);
        let report = db
            .archive_finished_plans(&madre_db::archive_dir(&path), later, 10, soon(), Utc::now())
            .unwrap();
        assert_eq!(report.plans, 1);
        done
    };
    let list = madre(&data, &["archive", "list"]);
    assert_eq!(list.status.code(), Some(0), "{}", text(&list));
    assert!(text(&list).contains("1 plan(s)"), "{}", text(&list));

    let show = madre(&data, &["archive", "show", &done.to_string()]);
    let shown = text(&show);
    assert_eq!(show.status.code(), Some(0), "{shown}");
    let line: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(line["plan_id"], json!(done.to_string()));
    assert_eq!(line["plan"]["status"], json!("DONE"));
    assert_eq!(line["events"].as_array().unwrap().len(), 4, "{shown}");

    let unknown = madre(&data, &["archive", "show", &Uuid::now_v7().to_string()]);
    assert_eq!(unknown.status.code(), Some(1), "{}", text(&unknown));
    assert!(text(&unknown).contains("in no archive"));

    std::fs::write(
        data.join("archive").join("plans-2000-01-01.jsonl.gz"),
        b"not gzip at all",
    )
    .unwrap();
    let list = madre(&data, &["archive", "list"]);
    let listed = text(&list);
    assert_eq!(list.status.code(), Some(1), "{listed}");
    assert!(
        listed.contains("plans-2000-01-01.jsonl.gz\tunreadable"),
        "{listed}"
    );
    assert!(listed.contains("1 plan(s)"), "{listed}");
    let show = madre(&data, &["archive", "show", &done.to_string()]);
    assert_eq!(show.status.code(), Some(0), "{}", text(&show));
}

/// A deadline far enough for any archival pass of a test.
fn soon() -> std::time::Instant {
    std::time::Instant::now() + std::time::Duration::from_secs(60)
}
