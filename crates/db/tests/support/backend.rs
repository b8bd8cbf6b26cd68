//! The database a repository test runs against: a SQLite file in a temp
//! directory, or, when `MADRE_TEST_POSTGRES` holds a connection string to
//! a PostgreSQL server (`scripts/test.sh` starts a throw-away one and runs
//! the suite a second time with it), a fresh database of that server, made
//! for the test and dropped after it.

use madre_db::Db;
use std::path::PathBuf;

#[path = "pg_database.rs"]
mod pg_database;
/// True when the run is against PostgreSQL: tests about SQLite's file
/// itself (its modes, its pragmas, its upgrades) have nothing to test.
pub(crate) use pg_database::is_postgres;
use pg_database::{PgDatabase, off_runtime, postgres_admin};

/// A database for one test, and where it lives.
pub(crate) struct TestDb {
    /// The repository under test.
    pub(crate) db: Db,
    /// The SQLite file, or on PostgreSQL the path archives go beside.
    pub(crate) path: PathBuf,
    _place: Place,
}

enum Place {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(PgDatabase, #[allow(dead_code)] tempfile::TempDir),
}

impl TestDb {
    /// The same database opened again, as a second process (another
    /// replica, named `test-reopened`; the first is `test`) would.
    #[allow(dead_code)]
    pub(crate) fn reopen(&self) -> Db {
        self.opener()()
    }

    /// The one integer `sql` selects, read with the backend's own client
    /// (beside the repository, as an operator would).
    #[allow(dead_code)]
    pub(crate) fn scalar(&self, sql: &str) -> i64 {
        match &self._place {
            Place::Sqlite(_) => rusqlite::Connection::open(&self.path)
                .unwrap()
                .query_row(sql, [], |r| r.get(0))
                .unwrap(),
            Place::Postgres(pg, _) => off_runtime(|| {
                let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
                client.query_one(sql, &[]).unwrap().get(0)
            }),
        }
    }

    /// Runs `sql` with the backend's own client; its error as text.
    #[allow(dead_code)]
    pub(crate) fn execute(&self, sql: &str) -> Result<u64, String> {
        match &self._place {
            Place::Sqlite(_) => rusqlite::Connection::open(&self.path)
                .unwrap()
                .execute(sql, [])
                .map(|n| n as u64)
                .map_err(|e| e.to_string()),
            Place::Postgres(pg, _) => off_runtime(|| {
                let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
                client.execute(sql, &[]).map_err(|e| match e.as_db_error() {
                    Some(db) => db.message().to_owned(),
                    None => e.to_string(),
                })
            }),
        }
    }

    /// Runs statements separated by `;` with the backend's own client.
    #[allow(dead_code)]
    pub(crate) fn batch(&self, sql: &str) {
        match &self._place {
            Place::Sqlite(_) => rusqlite::Connection::open(&self.path)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Place::Postgres(pg, _) => off_runtime(|| {
                let mut client = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
                client.batch_execute(sql).unwrap()
            }),
        }
    }

    /// Locks the row of plan `plan_id` (`SELECT … FOR UPDATE`) from a
    /// PostgreSQL session of the test's own, as another replica's
    /// transaction would, until the returned lock is released or dropped:
    /// a write that changes that plan waits on the server meanwhile.
    #[allow(dead_code)]
    pub(crate) fn lock_plan_row(&self, plan_id: uuid::Uuid) -> RowLock {
        let Place::Postgres(pg, _) = &self._place else {
            panic!("row locks are PostgreSQL's");
        };
        let url = pg.url.clone();
        let (locked_tx, locked) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            let mut tx = client.transaction().unwrap();
            tx.execute(
                "SELECT 1 FROM plans WHERE uuid = CAST($1 AS text)::uuid FOR UPDATE",
                &[&plan_id.to_string()],
            )
            .unwrap();
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(std::time::Duration::from_secs(20));
            tx.commit().unwrap();
        });
        locked
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        RowLock {
            release: Some(release),
            holder: Some(holder),
        }
    }

    /// Waits (bounded) until `n` sessions of the test's database wait on
    /// a lock (PostgreSQL).
    #[allow(dead_code)]
    pub(crate) fn wait_for_lock_waiters(&self, n: i64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE wait_event_type = 'Lock' AND datname = current_database()",
        ) < n
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no write came to wait on the lock"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// What opens the same database again, kept apart from the test's
    /// handle so that handle can be dropped first.
    #[allow(dead_code)]
    pub(crate) fn opener(&self) -> impl Fn() -> Db + use<> {
        let path = self.path.clone();
        let url = match &self._place {
            Place::Sqlite(_) => None,
            Place::Postgres(pg, _) => Some(pg.url.clone()),
        };
        move || match &url {
            None => Db::open_as(&path, madre_db::SyncMode::Normal, "test-reopened").unwrap(),
            Some(url) => Db::open_postgres(url, &path, "test-reopened").unwrap(),
        }
    }
}

/// Opens a new, empty database of the run's backend.
pub(crate) fn open() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("vx11.db");
    match postgres_admin() {
        None => TestDb {
            db: Db::open_as(&path, madre_db::SyncMode::Normal, "test").unwrap(),
            path,
            _place: Place::Sqlite(dir),
        },
        Some(admin) => {
            let pg = PgDatabase::create(&admin, "madre_test");
            TestDb {
                db: Db::open_postgres(&pg.url, &path, "test").unwrap(),
                path,
                _place: Place::Postgres(pg, dir),
            }
        }
    }
}

/// A row locked by [`TestDb::lock_plan_row`]; released when dropped.
pub(crate) struct RowLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    holder: Option<std::thread::JoinHandle<()>>,
}

impl RowLock {
    /// Ends the locking transaction and waits until it did.
    #[allow(dead_code)]
    pub(crate) fn release(mut self) {
        self.end();
    }

    fn end(&mut self) {
        drop(self.release.take());
        if let Some(holder) = self.holder.take() {
            holder.join().unwrap();
        }
    }
}

impl Drop for RowLock {
    fn drop(&mut self) {
        self.end();
    }
}
