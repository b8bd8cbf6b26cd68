//! kill -9 during archival loses nothing (issue 25): the real binary,
//! started on a file of old finished plans with a day's retention, is
//! killed at several moments of its first archival pass, restarted each
//! time, and finally left to finish. Every plan is then in exactly one
//! archive line and no longer in the database, every archive reads whole,
//! and the file is sound.

use chrono::{Duration as Days, Utc};
use madre_db::Db;
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

mod common;

use common::{BIN, done_events, free_port, hermes_plan, wait_listening};

/// Enough plans that the first pass takes several batches.
const PLANS: usize = 1_500;

/// Stores `PLANS` one-step plans finished two days ago, then one made now,
/// which holds the journal's newest event (and so is never archived).
fn seed(db: &Db) -> Vec<Uuid> {
    let at = Utc::now() - Days::days(2);
    let old = (0..PLANS)
        .map(|_| {
            let record = hermes_plan(at);
            let id = record.plan.plan_id;
            db.insert_plan_with(record, done_events(at)).wait().unwrap();
            id
        })
        .collect();
    let now = Utc::now();
    db.insert_plan_with(hermes_plan(now), done_events(now))
        .wait()
        .unwrap();
    old
}

fn start(data: &Path, port: u16) -> Child {
    Command::new(BIN)
        .arg("serve")
        .env("MADRE_DATA_DIR", data)
        .env("MADRE_BIND", format!("127.0.0.1:{port}"))
        .env("VX11_TOKEN", "archive-crash-token")
        .env("MADRE_PLAN_RETENTION_DAYS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn query(path: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(path)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// Old plans still in the database (the one made now stays).
fn plans_left(path: &Path) -> i64 {
    query(path, "SELECT count(*) FROM plans") - 1
}

/// Plans marked for the archive so far, written or not.
fn marked(path: &Path) -> i64 {
    query(path, "SELECT count(*) FROM archived_plans")
}

#[actix_rt::test]
async fn kill_9_during_archival_archives_every_plan_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let path = data.join("vx11.db");
    // Blocking writes, off the test's runtime.
    let seeded = {
        let path = path.clone();
        std::thread::spawn(move || seed(&Db::open(&path).unwrap()))
            .join()
            .unwrap()
    };

    // Killed three times the moment a batch is seen marked (between its
    // mark and its delete: before, during or after its append), each time
    // further into the pass.
    let mut kills_mid_batch = 0;
    for _ in 0..3 {
        let marked_before = marked(&path);
        let port = free_port();
        let mut madre = start(&data, port);
        wait_listening(port).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while marked(&path) == marked_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        madre.kill().unwrap();
        madre.wait().unwrap();
        let unwritten: i64 = query(
            &path,
            "SELECT count(*) FROM archived_plans WHERE written = 0",
        );
        kills_mid_batch += usize::from(unwritten > 0);
    }
    assert!(kills_mid_batch > 0, "no kill landed inside a batch");
    // Then left to finish.
    let port = free_port();
    let mut madre = start(&data, port);
    wait_listening(port).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while plans_left(&path) > 0 {
        assert!(Instant::now() < deadline, "archival never finished");
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    madre.kill().unwrap();
    madre.wait().unwrap();

    let mut lines_of: HashMap<String, usize> = HashMap::new();
    for entry in std::fs::read_dir(data.join("archive")).unwrap() {
        let lines = madre_db::read_archive(&entry.unwrap().path()).unwrap();
        for line in lines {
            *lines_of
                .entry(line["plan_id"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    for id in &seeded {
        assert_eq!(lines_of.get(&id.to_string()), Some(&1), "plan {id}");
    }
    assert_eq!(lines_of.len(), PLANS);
    let db = Db::open(&path).unwrap();
    db.integrity_check().unwrap();
    for id in seeded.iter().take(20) {
        assert!(db.plan(*id).unwrap().is_none());
        assert!(db.archived_plan(*id).unwrap().is_some());
    }
}
