//! Madre's durable state, in one SQLite file ([`Db::open`], the default)
//! or a PostgreSQL database several replicas share ([`Db::open_postgres`],
//! SPEC §16): the append-only intent log and audit trail, plans and their
//! steps, confirmations, sessions and their history, module policies, and
//! the daughter-task queue a spawner claims work from. The two backends run
//! the same code and the same statements (`engine::sql`).
//!
//! Callers use typed methods only; all SQL stays inside this crate.
//!
//! # Writes and reads
//! Every write goes through one dedicated writer connection, owned by the
//! writer thread. A write is queued (the queue is bounded: past its limit a
//! write is refused at once as overloaded); the thread takes everything
//! queued, runs it in one `BEGIN IMMEDIATE` transaction (on PostgreSQL,
//! `BEGIN` with an advisory lock every replica's writer takes) with no savepoint
//! per write, commits once, and only then answers each caller (group
//! commit): concurrent writers share a commit instead of queueing on
//! SQLite's lock. A write that fails rolls the batch back and the others
//! run again without it, so a failed write leaves nothing behind. Reads use
//! a pool of connections (WAL lets them run beside the writer).
//!
//! # Blocking
//! Reads are blocking. From async code, use
//! [`Db::run_blocking`], which moves the work to Tokio's blocking pool and
//! carries the current tracing span along. Every write method returns a
//! [`Write`]: call `.wait()` from blocking code, or `.await` it from async
//! code, which queues it for the writer thread and holds no thread while
//! it waits.
//!
//! # Storage failures
//! A disk or database that is full, a file that cannot be written, a lock
//! held past the busy timeout and an I/O error are not bugs: they answer
//! [`DbError::Unavailable`] with the [`StorageFault`], nothing of the
//! failed write stays behind, and the same write succeeds once the cause
//! is gone, with no reopening. [`Db::storage_fault`] says whether storage
//! took the last write; [`Db::check_storage`] refreshes it without writing
//! a row.

mod archive;
mod audit;
mod body;
mod confirmations;
mod engine;
mod event_codes;
mod idempotency;
mod intents;
mod journal;
mod leases;
mod pg;
mod plans;
mod queue;
mod records;
mod retention;
mod schema;
mod sessions;
mod shapes;

mod time;

pub use archive::{ArchiveReport, archive_dir, archive_name, read_archive};
pub use audit::NewAction;
pub use confirmations::{ApprovalOutcome, ConfirmationRow, ConsumeOutcome};
pub use engine::error::{DbError, StorageFault};
pub use engine::meter::WriterStats;
pub use engine::writer::Write;
pub use idempotency::{ModulePolicy, Reservation, StoredResponse, TakeOver};
pub use intents::{IntentLogRow, NewIntentLog};
pub use journal::{JournalFilter, PlanEvent, PlanProblem};
pub use leases::Taken;
pub use madre_lifecycle::{Conflict, Event, PlanState, StepState};
pub use pg::{POSTGRES_SCHEMA_VERSION, check_postgres_url, migrate_postgres};
pub use plans::{AtEnd, PlanFilter};
pub use queue::{DaughterStatus, DaughterTask, NewDaughterTask};
pub use records::{NewConfirmation, NewPlanRecord, PlanKind, PlanMeta, StoredPlan};
pub use retention::{CleanupReport, RetentionPolicy};
pub use schema::{SCHEMA_VERSION, migrate_to};
pub use sessions::{HistoryMessage, NewTurn, Said, SessionRow};

use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::Connection;
use rusqlite::config::DbConfig;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use engine::sql;

thread_local! {
    /// Set on the threads [`Db::run_blocking`] runs work on: Tokio's
    /// blocking pool, where a PostgreSQL read may block (see `Db::read`).
    static BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page cache of the writer connection, in KiB (readers keep 256 KiB each:
/// they read a few index pages per query, and the OS caches the file).
const WRITER_CACHE_KIB: u32 = 2 * 1024;
/// WAL length (frames of 4 KiB) at which the writer checkpoints itself.
const WRITER_CHECKPOINT_FRAMES: u32 = 8192;
/// Read connections in the pool.
const READ_POOL_SIZE: u32 = 8;

/// Handle to Madre's database; cheap to clone and share between threads.
#[derive(Clone)]
pub struct Db {
    readers: Readers,
    writer: Arc<engine::writer::Writer>,
    /// SQLite's WAL checkpoints (none on PostgreSQL).
    _checkpointer: Option<Arc<engine::checkpoint::Checkpointer>>,
    /// Commits awaited writes; stops with the last handle.
    _writer_thread: Arc<engine::writer::WriterThread>,
    path: PathBuf,
    /// Written in the journal's `replica` column (SPEC §16).
    replica: Arc<journal::Replica>,
    /// What this process knows of the plan shapes stored (issue 25).
    shapes: Arc<shapes::Shapes>,
    /// The PostgreSQL server's settings (`None` on SQLite).
    postgres: Option<Arc<sql::PgServer>>,
    /// The session holding the cleanup's turn ([`Db::hold_cleanup_turn`]).
    cleanup_session: Arc<std::sync::Mutex<Option<sql::PgConn>>>,
    /// The PostgreSQL database's size as last measured ([`Db::size`]).
    postgres_size: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The pool of read connections, of the backend the database is on.
#[derive(Clone)]
enum Readers {
    Lite(Pool<SqliteConnectionManager>),
    Pg(Pool<pg::PgManager>),
}

/// How hard a commit presses its data to the disk (`PRAGMA synchronous`
/// in WAL mode). Both survive a crash of the process; they differ on a
/// power loss or an operating-system crash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `NORMAL`: the WAL is synced at each checkpoint, not at each commit.
    /// A process crash (kill -9, panic, OOM) loses nothing committed; a
    /// power loss may roll back the last commits (never corrupting the
    /// file). The default: about the cost of no sync at all.
    #[default]
    Normal,
    /// `FULL`: each commit syncs the WAL before it returns, so an
    /// acknowledged write survives a power loss too, at the cost of one
    /// `fsync` per commit.
    Full,
}

impl SyncMode {
    /// The name used by `MADRE_SQLITE_SYNC`: `normal` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            SyncMode::Normal => "normal",
            SyncMode::Full => "full",
        }
    }

    fn pragma(self) -> &'static str {
        match self {
            SyncMode::Normal => "NORMAL",
            SyncMode::Full => "FULL",
        }
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(SyncMode::Normal),
            "full" => Ok(SyncMode::Full),
            other => Err(format!("{other:?} is not \"normal\" or \"full\"")),
        }
    }
}

/// Applies the per-connection settings of SPEC §8.
fn configure(conn: &Connection, sync: SyncMode) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = {};
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA cache_size = -256;",
        sync.pragma()
    ))?;
    conn.set_prepared_statement_cache_capacity(64);
    // Query-planner stability: without it, a statement whose plan could
    // depend on a bound value (any `LIMIT ?`) is compiled again every time
    // it is bound, which cost 22 % of madre's CPU when listing plans.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    Ok(())
}

impl Db {
    /// Opens (creating if needed) the database at `path`, creates its
    /// directory with mode 0700 and the file with mode 0600, and applies any
    /// pending migration. Refuses a file that is not a Madre database or
    /// whose schema is newer than this code. Commits sync as
    /// [`SyncMode::Normal`].
    pub fn open(path: &Path) -> Result<Self, DbError> {
        Self::open_with(path, SyncMode::default())
    }

    /// [`Db::open`], with commits synced as `sync` says.
    pub fn open_with(path: &Path, sync: SyncMode) -> Result<Self, DbError> {
        Self::open_as(path, sync, &default_replica())
    }

    /// [`Db::open_with`], naming this process `replica` in the journal
    /// (SPEC §16; the default is `<hostname>-<pid>`): the name is written
    /// into `replicas` once, and each event this process appends refers
    /// to it.
    pub fn open_as(path: &Path, sync: SyncMode, replica: &str) -> Result<Self, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let mut conn = open_new_private(path)?;
        // Refuse foreign files before any setting could write to them.
        schema::check_owner(&conn, path)?;
        set_private_mode(path)?;
        configure(&conn, sync).map_err(|e| DbError::open(path, e))?;
        schema::migrate(&mut conn, path)?;
        let replica = journal::Replica::register(&sql::Conn::Lite(&conn), replica)?;

        let manager = SqliteConnectionManager::file(path)
            .with_init(move |c: &mut Connection| configure(c, sync));
        let readers = Pool::builder()
            .max_size(READ_POOL_SIZE)
            .min_idle(Some(1))
            // A local SQLite connection does not go stale: no probe query
            // before each read.
            .test_on_check_out(false)
            .build(manager)
            .map_err(DbError::Pool)?;
        // A background thread checkpoints; the writer only does when that
        // thread falls behind and the WAL passes WRITER_CHECKPOINT_FRAMES,
        // which throttles writers instead of letting the WAL grow. The
        // writer keeps a larger page cache than readers: every write walks
        // the indexes.
        conn.execute_batch(&format!("PRAGMA cache_size = -{WRITER_CACHE_KIB};"))?;
        engine::meter::install(&conn, WRITER_CHECKPOINT_FRAMES);
        let checkpoint_conn = Connection::open(path).map_err(|e| DbError::open(path, e))?;
        configure(&checkpoint_conn, sync).map_err(|e| DbError::open(path, e))?;
        let writer = engine::writer::Writer::new(sql::Connection::Lite(conn));
        let writer_thread = writer
            .start_thread()
            .map_err(|e| DbError::Internal(format!("cannot start the writer thread: {e}")))?;
        let checkpointer = engine::checkpoint::Checkpointer::start(checkpoint_conn, writer.clone())
            .map_err(|e| DbError::Internal(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Self {
            readers: Readers::Lite(readers),
            writer,
            _checkpointer: Some(Arc::new(checkpointer)),
            _writer_thread: Arc::new(writer_thread),
            path: path.to_owned(),
            replica: Arc::new(replica),
            shapes: Arc::default(),
            postgres: None,
            cleanup_session: Arc::default(),
            postgres_size: Arc::default(),
        })
    }

    /// Opens Madre's database on the PostgreSQL server at `url` (a
    /// `postgres://` URL or a `key=value` string, SPEC §16) and brings it
    /// to this code's schema, refusing a database with other tables or a
    /// newer schema. Writes go through one session on the writer thread,
    /// reads through a pool. `path` stands for the database's place on
    /// this host: archives go beside it ([`archive_dir`]). `replica` names
    /// this process in the journal, as in [`Db::open_as`].
    pub fn open_postgres(url: &str, path: &Path, replica: &str) -> Result<Self, DbError> {
        // The driver blocks on a runtime of its own, which Tokio refuses
        // on an async task's thread: the opening runs on a thread of its own.
        std::thread::scope(|scope| {
            scope
                .spawn(|| Self::open_postgres_here(url, path, replica))
                .join()
                .unwrap_or_else(|_| Err(DbError::Internal("opening PostgreSQL panicked".into())))
        })
    }

    fn open_postgres_here(url: &str, path: &Path, replica: &str) -> Result<Self, DbError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            create_private_dir(dir)?;
        }
        let config = pg::config(url)?;
        let server = sql::PgServer::new(config.clone());
        let session = sql::PgConn::connect(&server)?;
        let mut migrating = postgres::Config::from(config).connect(postgres::NoTls)?;
        pg::migrate_client(&mut migrating)?;
        drop(migrating);
        let replica = journal::Replica::register(&sql::Conn::Pg(&session), replica)?;
        let readers = Pool::builder()
            .max_size(READ_POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(pg::CONNECT_TIMEOUT)
            .test_on_check_out(false)
            .build(pg::PgManager(Arc::clone(&server)))
            .map_err(pg::pool_error)?;
        session.meter(sessions::TRIM_FUNCTION.as_str())?;
        let writer = engine::writer::Writer::new(sql::Connection::Pg(Box::new(session)));
        let writer_thread = writer
            .start_thread()
            .map_err(|e| DbError::Internal(format!("cannot start the writer thread: {e}")))?;
        let db = Self {
            readers: Readers::Pg(readers),
            writer,
            _checkpointer: None,
            _writer_thread: Arc::new(writer_thread),
            path: path.to_owned(),
            replica: Arc::new(replica),
            shapes: Arc::default(),
            postgres: Some(server),
            cleanup_session: Arc::default(),
            postgres_size: Arc::default(),
        };
        db.measure_postgres()?;
        Ok(db)
    }

    /// Sets how many writes may wait for the writer thread (default
    /// 10,000). Past it a write is refused at once with
    /// [`StorageFault::Busy`] (a 503 with `Retry-After` at the HTTP face)
    /// rather than wait in a queue that grows without end.
    pub fn set_write_queue_limit(&self, limit: usize) {
        self.writer.set_queue_limit(limit);
    }

    /// Waits (at most `deadline`) until every write queued so far has
    /// committed: for a shutdown that drains before it exits. Answers
    /// whether the writer is idle.
    pub fn drain_writes(&self, deadline: Duration) -> bool {
        self.writer.drain(deadline)
    }

    /// How many writes wait for the writer thread now (for `/metrics`).
    pub fn write_queue_depth(&self) -> usize {
        self.writer.queue_depth()
    }

    /// What the writer did since the database was opened: commits, writes,
    /// statements, WAL frames, commit time (for `/metrics`, and to count
    /// what a request costs).
    pub fn writer_stats(&self) -> WriterStats {
        let mut stats = self.writer.stats();
        if let Some(server) = &self.postgres {
            stats.round_trips = server
                .round_trips
                .load(std::sync::atomic::Ordering::Relaxed);
        }
        stats
    }

    /// Starts keeping the text of each distinct statement the writer runs,
    /// from its next commit on: with [`Db::take_statements`], what a test
    /// or a profile uses to see which tables and indexes a request writes
    /// (issue 22 counts them).
    pub fn record_statements(&self) {
        self.writer.record_statements();
    }

    /// Stops keeping statements and answers those kept since
    /// [`Db::record_statements`], each once, in text order.
    pub fn take_statements(&self) -> Vec<String> {
        self.writer.take_statements()
    }

    /// How commits are synced, as the database connection reports it
    /// (on PostgreSQL, `synchronous_commit`: `off` syncs no commit, any
    /// other value each one).
    pub fn sync_mode(&self) -> Result<SyncMode, DbError> {
        self.read(|conn| {
            let full = if conn.is_postgres() {
                let setting: String =
                    conn.query_row("SELECT current_setting('synchronous_commit')", (), |r| {
                        r.get(0)
                    })?;
                setting != "off"
            } else {
                // 1 = NORMAL, 2 = FULL, 3 = EXTRA (at least as hard as FULL)
                let level: i64 = conn.query_row("PRAGMA synchronous", (), |r| r.get(0))?;
                level >= 2
            };
            Ok(if full {
                SyncMode::Full
            } else {
                SyncMode::Normal
            })
        })
    }

    /// The database file; on PostgreSQL, the path given to
    /// [`Db::open_postgres`], whose directory holds the archives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the database is a PostgreSQL server's.
    pub fn is_postgres(&self) -> bool {
        matches!(self.readers, Readers::Pg(_))
    }

    /// The database's size in bytes, and how much of it is free pages
    /// that new rows reuse (three header values; no scan).
    /// On PostgreSQL the size is the one [`Db::check_storage`] last read
    /// (0 before the first check), so a health endpoint asking for it never
    /// waits on the network.
    pub fn size(&self) -> Result<(u64, u64), DbError> {
        if self.is_postgres() {
            return Ok((
                self.postgres_size
                    .load(std::sync::atomic::Ordering::Relaxed),
                0,
            ));
        }
        self.read(|conn| {
            let pragma = |name: &str| -> Result<i64, DbError> {
                conn.query_row(&format!("PRAGMA {name}"), (), |r| r.get(0))
            };
            let page = pragma("page_size")?.max(0) as u64;
            Ok((
                pragma("page_count")?.max(0) as u64 * page,
                pragma("freelist_count")?.max(0) as u64 * page,
            ))
        })
    }

    /// Free and total bytes of the file system the database is on (on
    /// PostgreSQL, the one its archives go to: the server's disk is the
    /// server's to watch), or `None` when it cannot be asked.
    pub fn disk_space(&self) -> Option<(u64, u64)> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let fs = rustix::fs::statvfs(dir).ok()?;
        let block = fs.f_frsize.max(1);
        Some((fs.f_bavail * block, fs.f_blocks * block))
    }

    /// Runs `f` on a read connection. On PostgreSQL, a read asked for on
    /// an async task's thread runs on a thread of its own: the driver
    /// blocks on a runtime of its own, which Tokio refuses there (reads
    /// belong in [`Db::run_blocking`]; this keeps one that is not from
    /// stopping the process).
    pub(crate) fn read<T: Send>(
        &self,
        f: impl Fn(&sql::Conn<'_>) -> Result<T, DbError> + Send + Sync,
    ) -> Result<T, DbError> {
        let result = match &self.readers {
            Readers::Lite(pool) => {
                let conn = pool.get().map_err(DbError::Pool)?;
                f(&sql::Conn::Lite(&conn))
            }
            Readers::Pg(pool) => {
                let read = || {
                    let session = pool.get().map_err(pg::pool_error)?;
                    match f(&sql::Conn::Pg(&session)) {
                        // The server ended the session since it was pooled
                        // (a restart, a failover): it is reopened and the
                        // read made again (a read changes nothing).
                        Err(_) if session.is_closed() => {
                            session.revive()?;
                            f(&sql::Conn::Pg(&session))
                        }
                        read => read,
                    }
                };
                if tokio::runtime::Handle::try_current().is_ok() && !BLOCKING.with(Cell::get) {
                    std::thread::scope(|scope| {
                        scope.spawn(read).join().unwrap_or_else(|_| {
                            Err(DbError::Internal("a database read panicked".into()))
                        })
                    })
                } else {
                    read()
                }
            }
        };
        // A read that fails for storage reasons (an I/O error) says as much
        // about storage as a write; a read that works says nothing of writes.
        if let Some(fault) = result.as_ref().err().and_then(DbError::storage_fault) {
            self.writer.health().record_fault(fault);
        }
        result
    }

    /// Queues `f` to run inside the writer's transaction; it runs again,
    /// in a new transaction, when a write of its batch failed, so it must
    /// write as a function of what it finds.
    pub(crate) fn write<T: Send + 'static>(
        &self,
        f: impl FnMut(&sql::Conn<'_>) -> Result<T, DbError> + Send + 'static,
    ) -> Write<T> {
        self.writer.submit(f)
    }

    /// Runs blocking database work on Tokio's blocking pool, inside the
    /// caller's tracing span. Use it for reads and for batches of calls from
    /// async code.
    pub async fn run_blocking<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, DbError> + Send + 'static,
    {
        let db = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            BLOCKING.with(|b| b.set(true));
            span.in_scope(|| f(&db))
        })
        .await
        .map_err(|e| DbError::Internal(format!("blocking task failed: {e}")))?
    }

    /// `PRAGMA integrity_check`: `Ok(())` when SQLite reports `ok`. A
    /// PostgreSQL server keeps its own pages whole: there, `Ok(())` when
    /// it answers.
    pub fn integrity_check(&self) -> Result<(), DbError> {
        self.read(|conn| {
            if conn.is_postgres() {
                return conn.execute_batch("SELECT 1");
            }
            let verdict: String = conn.query_row("PRAGMA integrity_check", (), |r| r.get(0))?;
            if verdict == "ok" {
                Ok(())
            } else {
                Err(DbError::Corrupt(verdict))
            }
        })
    }

    /// The fault that kept storage from taking the last write, or `None`
    /// when it took it. Kept current by every write and by
    /// [`Db::check_storage`]; reading it costs no I/O, so a health endpoint
    /// can answer at once.
    pub fn storage_fault(&self) -> Option<StorageFault> {
        self.writer.health().fault()
    }

    /// Checks that storage would take a write, without writing a row, and
    /// records the verdict for [`Db::storage_fault`]; run it periodically
    /// (Madre does, every probe interval) so the state stays current when
    /// no request writes. It takes the write lock briefly, between writes,
    /// and waits at most the busy timeout for it. While storage is down it
    /// commits one page (the schema version, rewritten with its own value)
    /// to prove writes reach the disk again. Blocking.
    pub fn check_storage(&self) -> Result<(), DbError> {
        self.writer.check()?;
        if self.is_postgres() {
            self.measure_postgres()?;
        }
        Ok(())
    }

    /// Reads the PostgreSQL database's size for [`Db::size`].
    fn measure_postgres(&self) -> Result<(), DbError> {
        let bytes: i64 = self.read(|conn| {
            conn.query_row("SELECT pg_database_size(current_database())", (), |r| {
                r.get(0)
            })
        })?;
        self.postgres_size
            .store(bytes.max(0) as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Caps the database at `max_bytes` (rounded down to whole pages, and
    /// never below its current size), or lifts the cap with `None`. A
    /// write that needs more room then fails as [`StorageFault::Full`],
    /// exactly as on a full disk; raising or lifting the cap lets the next
    /// write through. For a service that embeds Madre's storage and must
    /// keep it from filling a disk it shares. Answers the cap in force, in
    /// bytes. Blocking: it waits for the writer between two writes.
    pub fn set_max_size(&self, max_bytes: Option<u64>) -> Result<u64, DbError> {
        self.writer
            .with_connection(|conn| {
                if conn.is_postgres() {
                    return Err(DbError::Conflict(
                        "a size cap is SQLite's: a PostgreSQL database is capped by its server"
                            .into(),
                    ));
                }
                let page_size: i64 = conn.query_row("PRAGMA page_size", (), |r| r.get(0))?;
                let pages = match max_bytes {
                    // SQLite's own ceiling (2^32 - 2 pages) when there is no cap.
                    None => 0xFFFF_FFFE,
                    // 0 would leave the cap unchanged; 1 means "as small as it is".
                    Some(bytes) => i64::try_from(bytes / page_size.max(1).unsigned_abs())
                        .unwrap_or(i64::MAX)
                        .max(1),
                };
                let pages: i64 =
                    conn.query_row(&format!("PRAGMA max_page_count = {pages}"), (), |r| {
                        r.get(0)
                    })?;
                Ok(u64::try_from(pages.saturating_mul(page_size)).unwrap_or(u64::MAX))
            })
            .inspect(|_| {
                // A new cap may give room back: measure at once rather than at
                // the next probe (a full database stays down until measured).
                if self.storage_fault() == Some(StorageFault::Full) {
                    let _ = self.check_storage();
                }
            })
    }

    /// Size of the database file plus its WAL, in bytes (0 on
    /// PostgreSQL, whose files are the server's: see [`Db::size`]).
    pub fn size_bytes(&self) -> u64 {
        if self.is_postgres() {
            return 0;
        }
        let wal = PathBuf::from(format!("{}-wal", self.path.display()));
        [&self.path, &wal]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// `<hostname>-<pid>`, the default name of this process in the journal.
pub fn default_replica() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| DbError::io(dir, e))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| DbError::io(dir, e))
}

/// Opens the file, creating it with mode 0600 when it does not exist.
fn open_new_private(path: &Path) -> Result<Connection, DbError> {
    #[cfg(unix)]
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| DbError::io(path, e))?;
    }
    Connection::open(path).map_err(|e| DbError::open(path, e))
}

#[cfg(unix)]
fn set_private_mode(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| DbError::io(path, e))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> Result<(), DbError> {
    std::fs::create_dir_all(dir).map_err(|e| DbError::io(dir, e))
}

#[cfg(not(unix))]
fn set_private_mode(_path: &Path) -> Result<(), DbError> {
    Ok(())
}
