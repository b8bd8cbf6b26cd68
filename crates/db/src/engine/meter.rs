//! What the writer costs, counted rather than timed: the statements it
//! runs and the WAL frames (pages) its commits append, from SQLite's own
//! trace and WAL hooks on the writer connection, plus commits, batch sizes
//! and commit time. `/metrics` shows them, and a test fails when a chat's
//! counts grow past its budget (issue 22).
//!
//! SQLite's hooks take plain function pointers, so they count into
//! thread-local cells; the thread that commits a batch folds them into its
//! database's totals after the commit. Only the writer connection has the
//! hooks.

use rusqlite::Connection;
use rusqlite::hooks::Wal;
use rusqlite::trace::{TraceEvent, TraceEventCodes};
use std::cell::{Cell, RefCell};
use std::collections::BTreeSet;
use std::os::raw::c_int;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

thread_local! {
    /// Statements this thread ran on a metered connection since the last take.
    static STATEMENTS: Cell<u64> = const { Cell::new(0) };
    /// WAL frames appended by this thread's commits since the last take.
    static FRAMES: Cell<u64> = const { Cell::new(0) };
    /// The WAL's length after this thread's last commit.
    static WAL_LENGTH: Cell<u64> = const { Cell::new(0) };
    /// The text of each statement this thread ran, while its database
    /// records them (see [`Meter::record_statements`]).
    static SEEN: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
}

/// Installs the counting hooks on the writer connection. The WAL hook
/// replaces SQLite's automatic checkpoint, so it runs that check itself:
/// a PASSIVE checkpoint once the WAL holds `checkpoint_frames` frames.
pub(crate) fn install(conn: &Connection, checkpoint_frames: u32) {
    conn.trace_v2(TraceEventCodes::SQLITE_TRACE_STMT, Some(count_statement));
    AUTOCHECKPOINT.store(u64::from(checkpoint_frames), Ordering::Relaxed);
    conn.wal_hook(Some(count_frames));
}

/// The WAL length from which a commit checkpoints (one value per process:
/// every database opened uses the same constant).
static AUTOCHECKPOINT: AtomicU64 = AtomicU64::new(u64::MAX);

fn count_statement(event: TraceEvent<'_>) {
    // A trigger's body reports itself as `-- TRIGGER name`: it is part of
    // the statement that fired it, not one more the code ran.
    if let TraceEvent::Stmt(_, sql) = event
        && !sql.starts_with("--")
    {
        count_sql(sql);
    }
}

/// Counts one statement the writer ran (SQLite's trace hook, or the
/// PostgreSQL session of the writer as it sends each one).
pub(crate) fn count_sql(sql: &str) {
    if is_transaction_control(sql) {
        return;
    }
    STATEMENTS.with(|n| n.set(n.get() + 1));
    SEEN.with(|seen| {
        if let Some(seen) = seen.borrow_mut().as_mut()
            && !seen.contains(sql)
        {
            seen.insert(sql.to_owned());
        }
    });
}

/// `BEGIN`, `COMMIT`, savepoints and rollbacks frame the work; they are
/// not counted as statements of it.
fn is_transaction_control(sql: &str) -> bool {
    let word = sql.split_whitespace().next().unwrap_or("");
    ["BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

fn count_frames(wal: &Wal, pages: c_int) -> rusqlite::Result<()> {
    let length = u64::try_from(pages).unwrap_or(0);
    let before = WAL_LENGTH.with(|l| l.replace(length));
    // A shorter WAL than after the last commit was restarted from its
    // start by a checkpoint: all of it is this commit's.
    let appended = if length >= before {
        length - before
    } else {
        length
    };
    FRAMES.with(|n| n.set(n.get() + appended));
    if length >= AUTOCHECKPOINT.load(Ordering::Relaxed) {
        // As SQLite's own automatic checkpoint does, a checkpoint that
        // cannot run now (the checkpoint thread holds it) is not the
        // commit's failure: the next commit tries again.
        if let Err(e) = wal.checkpoint() {
            tracing::debug!(error = %e, "checkpoint after a commit did not run");
        }
    }
    Ok(())
}

/// Starts this thread's batch: forgets what it counted outside a batch,
/// and keeps its statements' texts when the database records them.
pub(crate) fn begin_batch(meter: &Meter) {
    STATEMENTS.with(|n| n.set(0));
    FRAMES.with(|n| n.set(0));
    keep_recording_as(meter);
}

/// Keeps this thread's statements' texts from now on when the database
/// records them, and stops when it no longer does: at each batch, also
/// those a turn of the writer sends one after the other.
pub(crate) fn keep_recording_as(meter: &Meter) {
    let recording = meter.recording.load(Ordering::Relaxed);
    SEEN.with(|seen| {
        let mut seen = seen.borrow_mut();
        match (recording, seen.is_some()) {
            (true, false) => *seen = Some(BTreeSet::new()),
            (false, true) => *seen = None,
            _ => {}
        }
    });
}

/// The writer's totals since the database was opened.
#[derive(Default)]
pub(crate) struct Meter {
    commits: AtomicU64,
    writes: AtomicU64,
    statements: AtomicU64,
    wal_frames: AtomicU64,
    commit_micros: AtomicU64,
    largest_batch: AtomicU64,
    /// Whether the texts of the statements run are kept.
    recording: AtomicBool,
    /// The distinct statements run while recording.
    recorded: Mutex<BTreeSet<String>>,
}

impl Meter {
    /// Adds one batch: `writes` jobs in `took`, with what this thread's
    /// hooks counted meanwhile; `committed` says whether it committed.
    pub(crate) fn record_batch(&self, writes: usize, took: Duration, committed: bool) {
        let statements = STATEMENTS.with(|n| n.replace(0));
        let frames = FRAMES.with(|n| n.replace(0));
        if let Some(seen) = SEEN.with(|seen| seen.borrow_mut().as_mut().map(std::mem::take))
            && !seen.is_empty()
        {
            self.recorded
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(seen);
        }
        let writes = writes as u64;
        self.statements.fetch_add(statements, Ordering::Relaxed);
        self.wal_frames.fetch_add(frames, Ordering::Relaxed);
        self.commit_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if committed {
            self.commits.fetch_add(1, Ordering::Relaxed);
            self.writes.fetch_add(writes, Ordering::Relaxed);
        }
        self.largest_batch.fetch_max(writes, Ordering::Relaxed);
    }

    /// Starts keeping the text of every distinct statement the writer runs
    /// (from its next batch on), forgetting what was kept before.
    pub(crate) fn record_statements(&self) {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Stops keeping statements and answers those kept, in text order.
    pub(crate) fn take_statements(&self) -> Vec<String> {
        self.recording.store(false, Ordering::Relaxed);
        std::mem::take(&mut *self.recorded.lock().unwrap_or_else(|e| e.into_inner()))
            .into_iter()
            .collect()
    }

    pub(crate) fn snapshot(&self, queue_depth: usize) -> WriterStats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WriterStats {
            commits: get(&self.commits),
            writes: get(&self.writes),
            statements: get(&self.statements),
            wal_frames: get(&self.wal_frames),
            commit_time: Duration::from_micros(get(&self.commit_micros)),
            largest_batch: get(&self.largest_batch),
            queue_depth: queue_depth as u64,
            // Counted by the database's sessions (see `Db::writer_stats`).
            round_trips: 0,
        }
    }
}

/// What the writer did since the database was opened: for `/metrics`, and
/// for tests and benchmarks that count what a request costs (take the
/// difference of two snapshots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: u64,
    /// Writes (jobs) those commits carried: `writes / commits` is the mean
    /// batch size.
    pub writes: u64,
    /// SQL statements the writer ran; transaction control (`BEGIN`,
    /// `COMMIT`, savepoints) and the bodies of triggers they fired are not
    /// counted.
    pub statements: u64,
    /// WAL frames (database pages) the commits appended.
    pub wal_frames: u64,
    /// Time spent running and committing batches.
    pub commit_time: Duration,
    /// The largest batch committed at once.
    pub largest_batch: u64,
    /// Writes waiting for the writer now.
    pub queue_depth: u64,
    /// Round trips to the PostgreSQL server, by every session of the
    /// database (the writer's and the readers'); 0 on SQLite, where there
    /// is no server to go to.
    pub round_trips: u64,
}

impl WriterStats {
    /// What happened between `earlier` and this snapshot (the queue depth
    /// is this snapshot's).
    pub fn since(&self, earlier: &WriterStats) -> WriterStats {
        WriterStats {
            commits: self.commits - earlier.commits,
            writes: self.writes - earlier.writes,
            statements: self.statements - earlier.statements,
            round_trips: self.round_trips - earlier.round_trips,
            wal_frames: self.wal_frames - earlier.wal_frames,
            commit_time: self.commit_time.saturating_sub(earlier.commit_time),
            largest_batch: self.largest_batch,
            queue_depth: self.queue_depth,
        }
    }
}
