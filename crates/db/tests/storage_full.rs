//! Storage that cannot take writes (full, locked, failing) is answered as
//! `DbError::Unavailable`, never as a bug; nothing half-written stays
//! behind, and writes work again once the cause is gone, on the same `Db`.
//! A full database is made with its size cap (SQLite's `max_page_count`),
//! so no special filesystem is needed.

use chrono::Utc;
use madre_db::{Db, DbError, NewIntentLog, StorageFault};
use rusqlite::Connection;
use rusqlite::ffi;
use serde_json::json;
use std::path::PathBuf;
use uuid::Uuid;

/// Most writes a test makes before its database must be full.
const MAX_WRITES: usize = 5_000;

struct TestDb {
    _dir: tempfile::TempDir,
    path: PathBuf,
    db: Db,
}

fn open() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("vx11.db");
    let db = Db::open(&path).unwrap();
    TestDb {
        _dir: dir,
        path,
        db,
    }
}

/// An intent whose payload takes about `bytes` bytes.
fn intent(bytes: usize) -> NewIntentLog {
    NewIntentLog {
        id: Uuid::new_v4(),
        source: "chat".into(),
        principal: "olga".into(),
        payload: json!({ "message": "x".repeat(bytes) }),
        created_at: Utc::now(),
    }
}

fn count(db: &Db) -> u64 {
    db.count_intents().unwrap()
}

fn assert_full(result: Result<(), DbError>) {
    match result {
        Err(DbError::Unavailable {
            reason: StorageFault::Full,
            ..
        }) => {}
        other => panic!("expected storage unavailable (full), got {other:?}"),
    }
}

/// Caps the database at its current size and writes 2 KiB intents until
/// one is refused, then tiny ones until one is refused too (they take the
/// free pages a refused big write leaves); answers how many went in. Each
/// refused write must be `Unavailable(Full)`, and storage must then say so.
fn fill(db: &Db) -> usize {
    db.set_max_size(Some(0)).unwrap();
    let mut written = 0;
    for bytes in [2048, 10] {
        loop {
            assert!(
                written < MAX_WRITES,
                "{MAX_WRITES} writes went into a database capped at its size"
            );
            let before = count(db);
            match db.log_intent(intent(bytes)).wait() {
                Ok(()) => written += 1,
                Err(e) => {
                    assert_full(Err(e));
                    assert_eq!(count(db), before, "a refused write left a row behind");
                    break;
                }
            }
        }
    }
    written
}

#[test]
fn a_full_database_answers_unavailable_and_takes_writes_again_once_it_has_room() {
    let t = open();
    t.db.log_intent(intent(10)).wait().unwrap();
    assert_eq!(t.db.storage_fault(), None);

    fill(&t.db);
    assert_eq!(t.db.storage_fault(), Some(StorageFault::Full));
    // The periodic check sees it too, and keeps saying so.
    assert_full(t.db.check_storage());
    assert_eq!(t.db.storage_fault(), Some(StorageFault::Full));
    // Reads still work, and the file is sound.
    assert!(count(&t.db) >= 1);
    t.db.integrity_check().unwrap();

    // Raising the cap is all it takes: no reopening. While storage is
    // down, the check it runs proves the disk takes writes by committing
    // one (another connection's `data_version` moves when a commit lands).
    let other = Connection::open(&t.path).unwrap();
    let data_version = || -> i64 {
        other
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap()
    };
    let seen = data_version();
    let cap = t.db.set_max_size(Some(64 * 1024 * 1024)).unwrap();
    assert_eq!(cap, 64 * 1024 * 1024);
    assert_eq!(t.db.storage_fault(), None);
    assert_ne!(data_version(), seen, "the check committed nothing");
    t.db.check_storage().unwrap();
    let before = count(&t.db);
    t.db.log_intent(intent(2048)).wait().unwrap();
    assert_eq!(count(&t.db), before + 1);
    t.db.integrity_check().unwrap();
}

#[test]
fn raising_the_cap_clears_the_fault_without_waiting_for_the_probe() {
    let t = open();
    fill(&t.db);
    assert_eq!(t.db.storage_fault(), Some(StorageFault::Full));
    t.db.set_max_size(None).unwrap();
    t.db.log_intent(intent(2048)).wait().unwrap();
    assert_eq!(t.db.storage_fault(), None);
}

#[test]
fn writes_that_commit_together_fail_together_when_the_database_is_full() {
    let t = open();
    fill(&t.db);
    let before = count(&t.db);
    // A tiny write may still fit in a page; joined with one that cannot,
    // neither stays.
    let joined =
        t.db.log_intent(intent(1))
            .and(t.db.log_intent(intent(64 * 1024)));
    assert_full(joined.wait().map(drop));
    assert_eq!(count(&t.db), before);
    t.db.integrity_check().unwrap();
}

#[test]
fn concurrent_writes_into_a_full_database_are_each_stored_or_refused_as_full() {
    let t = open();
    fill(&t.db);
    // Leave room for a few more, so that some of the concurrent writes
    // share commits with writes that do not fit.
    let stored = count(&t.db);
    let size = t.db.set_max_size(Some(0)).unwrap();
    t.db.set_max_size(Some(size + 64 * 1024)).unwrap();

    let outcomes: Vec<Result<(), DbError>> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..40)
                        .map(|_| t.db.log_intent(intent(2048)).wait())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut ok = 0;
    for outcome in outcomes {
        match outcome {
            Ok(()) => ok += 1,
            refused => assert_full(refused),
        }
    }
    assert!(ok < 8 * 40, "the cap refused nothing");
    // Every write answered Ok is stored, and no refused one is.
    assert_eq!(count(&t.db), stored + ok);
    t.db.integrity_check().unwrap();

    t.db.set_max_size(None).unwrap();
    t.db.log_intent(intent(2048)).wait().unwrap();
    assert_eq!(t.db.storage_fault(), None);
    t.db.integrity_check().unwrap();
}

#[test]
fn a_lock_held_past_the_busy_timeout_is_unavailable_until_it_is_released() {
    let t = open();
    let other = Connection::open(&t.path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();

    let before = count(&t.db);
    match t.db.log_intent(intent(10)).wait() {
        Err(DbError::Unavailable {
            reason: StorageFault::Locked,
            ..
        }) => {}
        other => panic!("expected storage unavailable (locked), got {other:?}"),
    }
    assert_eq!(t.db.storage_fault(), Some(StorageFault::Locked));

    other.execute_batch("ROLLBACK").unwrap();
    t.db.check_storage().unwrap();
    assert_eq!(t.db.storage_fault(), None);
    t.db.log_intent(intent(10)).wait().unwrap();
    assert_eq!(count(&t.db), before + 1);
    t.db.integrity_check().unwrap();
}

#[test]
fn the_check_writes_nothing_while_storage_is_up() {
    let t = open();
    t.db.log_intent(intent(10)).wait().unwrap();
    let other = Connection::open(&t.path).unwrap();
    // `data_version` changes when another connection commits.
    let version = || -> i64 {
        other
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .unwrap()
    };
    let seen = version();
    for _ in 0..3 {
        t.db.check_storage().unwrap();
    }
    assert_eq!(version(), seen);
    assert_eq!(t.db.storage_fault(), None);
}

#[test]
fn sqlite_failures_are_classified_by_their_primary_code() {
    let check = |code: i32, expected: Option<StorageFault>| {
        let e = rusqlite::Error::SqliteFailure(ffi::Error::new(code), None);
        assert_eq!(StorageFault::of(&e), expected, "code {code}");
        let db_error = DbError::from(e);
        assert_eq!(db_error.storage_fault(), expected, "code {code}");
        if expected.is_none() {
            assert!(matches!(db_error, DbError::Sqlite(_)), "code {code}");
        }
    };
    check(ffi::SQLITE_FULL, Some(StorageFault::Full));
    check(ffi::SQLITE_READONLY, Some(StorageFault::ReadOnly));
    check(ffi::SQLITE_READONLY_DBMOVED, Some(StorageFault::ReadOnly));
    check(ffi::SQLITE_READONLY_DIRECTORY, Some(StorageFault::ReadOnly));
    check(ffi::SQLITE_BUSY, Some(StorageFault::Locked));
    check(ffi::SQLITE_BUSY_SNAPSHOT, Some(StorageFault::Locked));
    check(ffi::SQLITE_LOCKED, Some(StorageFault::Locked));
    check(ffi::SQLITE_IOERR, Some(StorageFault::Io));
    check(ffi::SQLITE_IOERR_WRITE, Some(StorageFault::Io));
    check(ffi::SQLITE_IOERR_FSYNC, Some(StorageFault::Io));
    check(ffi::SQLITE_CANTOPEN, Some(StorageFault::Io));
    check(ffi::SQLITE_CONSTRAINT_UNIQUE, None);
    check(ffi::SQLITE_CONSTRAINT_TRIGGER, None);
    check(ffi::SQLITE_CORRUPT, None);
    check(ffi::SQLITE_MISUSE, None);
    check(ffi::SQLITE_ERROR, None);
    // Not a SQLite failure at all.
    assert_eq!(
        StorageFault::of(&rusqlite::Error::QueryReturnedNoRows),
        None
    );
}

#[test]
fn a_fault_keeps_its_classification_and_says_what_it_is() {
    let e = DbError::from(rusqlite::Error::SqliteFailure(
        ffi::Error::new(ffi::SQLITE_FULL),
        Some("database or disk is full".into()),
    ));
    assert_eq!(
        e.to_string(),
        "storage unavailable (the database or its disk is full): database or disk is full"
    );
}
