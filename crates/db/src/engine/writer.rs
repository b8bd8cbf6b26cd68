//! Writes with group commit on one writer thread: a write is queued (in a
//! bounded queue), and the thread takes everything queued, runs it in one
//! `BEGIN IMMEDIATE` transaction, commits once, and answers each caller.
//! Jobs run with no savepoint of their own: should one fail, the
//! transaction is rolled back and the batch runs again without it (a job
//! is a function that can run again), so a failed job's rows never commit
//! and nobody pays for a savepoint when nothing fails. Each batch is what
//! was queued when the last commit ended (on PostgreSQL, when the last
//! transaction was sent: see [`Writer::pipeline`]), so concurrent writes
//! share commits under load and a lone write costs one commit.
//!
//! An awaited write parks no thread: its task sleeps until the answer
//! comes; a blocking caller (`Write::wait`) queues the same way and waits
//! on a channel. So a server's concurrent requests share commits however
//! few blocking threads it has. The writer thread gives way to the
//! checkpoint and the storage check, so a stream of writes never starves
//! them. Should the thread die, every waiting and later write is answered
//! with an error instead of hanging.
//!
//! A failure of storage itself (full, read-only, locked, I/O error) is
//! answered to every caller it touched as [`DbError::Unavailable`], and
//! recorded: the writer knows whether storage took its last write, which
//! is what `/health` reports as the database's state. After a failure the
//! connection is left outside any transaction, so the next turn starts
//! clean once the cause is gone.

use crate::engine::sql::{Conn, Connection, QueuedFailure, SavepointId};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::oneshot;

use crate::engine::meter::{self, Meter, WriterStats};
use crate::{DbError, StorageFault};

trait Job: Send {
    /// Runs the write inside the open transaction. It may run again, in a
    /// new transaction, when another write of its batch failed.
    fn run(&mut self, conn: &Conn<'_>);
    /// The write's own failure, once it ran (so a lone write's transaction
    /// rolls back, and a storage fault is recorded).
    fn error(&self) -> Option<&DbError>;
    /// Records the write's failure, found after it ran: a statement it
    /// left to be sent later (see [`crate::engine::sql::PgConn`]) failed.
    fn fail(&mut self, error: DbError);
    /// Records that the work of the write's savepoint `name` failed with
    /// `error` once it was sent: when the write runs again, that work is
    /// not done, and answers `error` (see [`in_named_savepoint`]).
    fn fail_savepoint(&mut self, savepoint: SavepointId, error: DbError);
    /// Sends the outcome, or the transaction's failure, to the caller.
    fn finish(self: Box<Self>, commit: Result<(), &DbError>);
}

/// A write's work: a function of the writer connection that may run more
/// than once (see [`Writer::submit`]).
type Work<T> = Box<dyn FnMut(&Conn<'_>) -> Result<T, DbError> + Send>;

/// Where a queued write's answer comes.
type Answer<T> = oneshot::Receiver<Result<T, DbError>>;

/// A queued write: its work, and where its answer goes once the batch it
/// ran in is committed or lost.
struct WriteJob<T> {
    work: Work<T>,
    /// The span the write was prepared in: what it logs carries the
    /// request's fields, whichever thread commits it.
    span: tracing::Span,
    outcome: Option<Result<T, DbError>>,
    reply: oneshot::Sender<Result<T, DbError>>,
    /// Savepoints whose work failed when sent, with the failure.
    failed_savepoints: Vec<(SavepointId, DbError)>,
}

thread_local! {
    /// The savepoints of the write running now whose work failed in an
    /// earlier run of its batch (see [`Job::fail_savepoint`]).
    static FAILED_SAVEPOINTS: std::cell::RefCell<Vec<(SavepointId, DbError)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Savepoints the write running now has made so far.
    static SAVEPOINTS_MADE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

impl<T: Send> Job for WriteJob<T> {
    fn run(&mut self, conn: &Conn<'_>) {
        let _in_span = self.span.enter();
        let work = &mut self.work;
        FAILED_SAVEPOINTS.with(|f| {
            *f.borrow_mut() = (self.failed_savepoints.iter())
                .map(|(id, e)| (*id, e.duplicate()))
                .collect();
        });
        SAVEPOINTS_MADE.with(|n| n.set(0));
        self.outcome = Some(
            catch_unwind(AssertUnwindSafe(|| work(conn)))
                .unwrap_or_else(|_| Err(DbError::Internal("a database write panicked".into()))),
        );
        FAILED_SAVEPOINTS.with(|f| f.borrow_mut().clear());
    }

    fn fail_savepoint(&mut self, savepoint: SavepointId, error: DbError) {
        self.failed_savepoints.push((savepoint, error));
    }

    fn error(&self) -> Option<&DbError> {
        match &self.outcome {
            Some(Err(e)) => Some(e),
            _ => None,
        }
    }

    fn fail(&mut self, error: DbError) {
        self.outcome = Some(Err(error));
    }

    fn finish(self: Box<Self>, commit: Result<(), &DbError>) {
        let this = *self;
        let outcome = match commit {
            Ok(()) => this
                .outcome
                .unwrap_or_else(|| Err(DbError::Internal("write never ran".into()))),
            Err(e) => Err(e.duplicate()),
        };
        // The caller may have given up waiting; that is not an error here.
        let _ = this.reply.send(outcome);
    }
}

thread_local! {
    /// Set while this thread runs writes inside a transaction: a write
    /// waited for from there could never run (the transaction holds the
    /// writer), so it fails instead of hanging.
    static IN_TRANSACTION: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks the current thread as inside a write transaction until dropped.
struct InTransaction;

impl InTransaction {
    fn enter() -> Self {
        IN_TRANSACTION.with(|flag| flag.set(true));
        InTransaction
    }
}

impl Drop for InTransaction {
    fn drop(&mut self) {
        IN_TRANSACTION.with(|flag| flag.set(false));
    }
}

/// The writer connection, the jobs waiting for it, whose turn it is, and
/// whether storage took the last write.
pub(crate) struct Writer {
    state: Mutex<State>,
    /// Signalled whenever a turn ends: answers may be ready, and the
    /// connection is free for the next combiner.
    turn_ended: Condvar,
    /// Wakes the writer thread: an awaited write was queued, or a turn
    /// ended with writes still queued.
    work_ready: Condvar,
    conn: Mutex<Connection>,
    health: StorageHealth,
    meter: Meter,
    /// Counts commits that appended to the plan journal, for readers that
    /// follow it (SPEC §14): they wait for a change, then read what is new.
    journal_commits: tokio::sync::watch::Sender<u64>,
    /// Told of each write queued: the writer thread, waiting for the
    /// answers of a transaction in flight, sends the next one meanwhile
    /// (see [`Writer::pipeline`]).
    queued_note: tokio::sync::Notify,
}

thread_local! {
    /// What the writes of this thread's batch do once it committed (see
    /// [`after_commit`]).
    static AFTER_COMMIT: std::cell::RefCell<Vec<Box<dyn FnOnce()>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Called inside a write: runs `f` once the write's batch committed, never
/// when it did not (a run of the batch that is rolled back forgets it; the
/// write makes it again should it run again). For what a write may only
/// believe once its rows are committed.
pub(crate) fn after_commit(f: impl FnOnce() + 'static) {
    AFTER_COMMIT.with(|after| after.borrow_mut().push(Box::new(f)));
}

thread_local! {
    /// A write of this thread's batch asked for the commit to be announced
    /// (see [`announce_commit`]).
    static ANNOUNCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Called inside a write: the commit of its batch is announced to the
/// receivers of [`Writer::journal_commits`]. The journal calls it when it
/// appends events, so the engine never needs to know what a journal is.
pub(crate) fn announce_commit() {
    ANNOUNCE.with(|a| a.set(true));
}

/// The storage fault seen last, or none since a write (or a check) went
/// through. Lock-free, so `/health` reads it without waiting on a write.
pub(crate) struct StorageHealth(AtomicU8);

const UP: u8 = 0;

impl StorageHealth {
    fn new() -> Self {
        Self(AtomicU8::new(UP))
    }

    /// The fault in force, if any.
    pub(crate) fn fault(&self) -> Option<StorageFault> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(StorageFault::Full),
            2 => Some(StorageFault::ReadOnly),
            3 => Some(StorageFault::Locked),
            4 => Some(StorageFault::Io),
            5 => Some(StorageFault::Stopped),
            6 => Some(StorageFault::Unreachable),
            _ => None,
        }
    }

    /// Storage failed with `fault`; logged when the state changes.
    pub(crate) fn record_fault(&self, fault: StorageFault) {
        let code = match fault {
            StorageFault::Full => 1,
            StorageFault::ReadOnly => 2,
            StorageFault::Locked => 3,
            StorageFault::Io => 4,
            StorageFault::Stopped => 5,
            StorageFault::Unreachable => 6,
            // overload is not an outage: storage still takes writes
            StorageFault::Busy => return,
        };
        if self.0.swap(code, Ordering::AcqRel) != code {
            tracing::warn!(reason = %fault, "storage unavailable: writes answer 503 until it recovers");
        }
    }

    /// A commit wrote rows: storage takes writes, unless it was full (a
    /// small write that fits in a page already there proves no room for
    /// the next insert; only the storage check, which measures room, lifts
    /// that one).
    pub(crate) fn record_written(&self) {
        if self.fault() != Some(StorageFault::Full) {
            self.record_ok();
        }
    }

    /// Storage takes writes; logged when it had been failing. A stopped
    /// writer stays stopped: nothing commits until a restart.
    pub(crate) fn record_ok(&self) {
        if self.fault() == Some(StorageFault::Stopped) {
            return;
        }
        let before = self.0.swap(UP, Ordering::AcqRel);
        if before != UP {
            tracing::info!("storage available again");
        }
    }
}

/// Jobs queued for the next commit, whether someone holds the turn, and
/// what the writer thread needs to know to take the next one.
struct State {
    queue: Vec<Box<dyn Job>>,
    busy: bool,
    /// The writer thread sleeps until there is work for it.
    thread_idle: bool,
    /// Callers of [`Writer::with_connection`] waiting for a turn: the writer
    /// thread lets them have the next one, so a stream of awaited writes
    /// never starves the checkpoint or the storage check.
    outsiders: usize,
    /// The database was closed: the writer thread commits what is queued
    /// and ends.
    stopped: bool,
    /// Writes that may wait in `queue`; past it a write is refused at once
    /// with [`StorageFault::Busy`].
    limit: usize,
    /// The writer thread died: every write is refused at once.
    dead: bool,
}

/// How many writes may wait for the writer by default: far more than a
/// healthy Madre queues (its plan slots and queue bound the chats in
/// flight), few enough that an overload answers 503 instead of growing
/// memory and latency without end.
pub(crate) const DEFAULT_WRITE_QUEUE_LIMIT: usize = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Jobs run under catch_unwind, so a poisoned lock only means a panic
    // between statements; the connection itself is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Writer {
    pub(crate) fn new(conn: Connection) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: Vec::new(),
                limit: DEFAULT_WRITE_QUEUE_LIMIT,
                dead: false,
                busy: false,
                thread_idle: false,
                outsiders: 0,
                stopped: false,
            }),
            turn_ended: Condvar::new(),
            work_ready: Condvar::new(),
            conn: Mutex::new(conn),
            health: StorageHealth::new(),
            meter: Meter::default(),
            journal_commits: tokio::sync::watch::Sender::new(0),
            queued_note: tokio::sync::Notify::new(),
        })
    }

    /// Starts the writer thread, which commits awaited writes until the
    /// returned handle is dropped.
    pub(crate) fn start_thread(self: &Arc<Self>) -> std::io::Result<WriterThread> {
        let writer = Arc::clone(self);
        std::thread::Builder::new()
            .name("madre-db-writer".into())
            .spawn(move || {
                let _watch = Supervised(Arc::clone(&writer));
                writer.serve();
            })?;
        Ok(WriterThread(Arc::clone(self)))
    }

    /// Waits until every queued write has committed and no turn is held,
    /// or `deadline` passed; answers whether the writer is idle.
    pub(crate) fn drain(&self, deadline: std::time::Duration) -> bool {
        let until = std::time::Instant::now() + deadline;
        let mut state = lock(&self.state);
        loop {
            if state.queue.is_empty() && !state.busy {
                return true;
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || state.dead {
                return false;
            }
            state = self
                .turn_ended
                .wait_timeout(state, left.min(std::time::Duration::from_millis(50)))
                .map(|(guard, _)| guard)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// A receiver that sees a change after each commit that appended to
    /// the plan journal.
    pub(crate) fn journal_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.journal_commits.subscribe()
    }

    /// How many writes wait for the writer now.
    pub(crate) fn queue_depth(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// Sets how many writes may wait for the writer (at least 1).
    pub(crate) fn set_queue_limit(&self, limit: usize) {
        lock(&self.state).limit = limit.max(1);
    }

    /// What the writer did since it started (see [`WriterStats`]).
    pub(crate) fn stats(&self) -> WriterStats {
        self.meter.snapshot(self.queue_depth())
    }

    /// Starts keeping the distinct statements the writer runs.
    pub(crate) fn record_statements(&self) {
        self.meter.record_statements();
    }

    /// Stops keeping statements and answers those kept.
    pub(crate) fn take_statements(&self) -> Vec<String> {
        self.meter.take_statements()
    }

    /// Whether storage took the last write (see [`StorageHealth`]).
    pub(crate) fn health(&self) -> &StorageHealth {
        &self.health
    }

    /// Prepares a write; nothing runs until it is waited for or awaited.
    /// `f` may run more than once, each time in a new transaction (the
    /// ones before were rolled back): it must write the same rows each
    /// time it runs, as a function of the database it finds.
    pub(crate) fn submit<T, F>(self: &Arc<Self>, f: F) -> Write<T>
    where
        T: Send + 'static,
        F: FnMut(&Conn<'_>) -> Result<T, DbError> + Send + 'static,
    {
        Write {
            writer: Arc::clone(self),
            work: Box::new(f),
            span: tracing::Span::current(),
        }
    }

    /// Runs `f` on the writer connection between transactions (the
    /// storage check, the size cap), holding the turn meanwhile. Called
    /// inside a write, it fails at once instead of waiting for ever for
    /// the turn that write holds.
    pub(crate) fn with_connection<T>(
        &self,
        f: impl FnOnce(&Conn<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        if IN_TRANSACTION.with(std::cell::Cell::get) {
            return Err(inside_a_write());
        }
        let mut state = lock(&self.state);
        state.outsiders += 1;
        while state.busy {
            state = self
                .turn_ended
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        state.outsiders -= 1;
        state.busy = true;
        drop(state);
        let _turn = Turn(self);
        f(&lock(&self.conn).conn())
    }

    /// Checks, between transactions, that storage would take a write, and
    /// records the verdict. While storage is up, a write transaction is
    /// begun (the lock can be had, the file can be written), the size cap
    /// is looked at (a page is left to grow into), and the transaction is
    /// rolled back: nothing is written. While it is down, the same check
    /// ends by rewriting the schema version with its own value and
    /// committing, so the disk proves it takes writes again before
    /// `/health` says so (a full disk shows only when written to).
    pub(crate) fn check(&self) -> Result<(), DbError> {
        let was_down = self.health.fault().is_some();
        let verdict = self.with_connection(|conn| {
            leave_transaction(conn);
            if let Conn::Pg(session) = conn {
                // A PostgreSQL server proves itself by answering: the
                // session is opened again when it was lost.
                session.revive()?;
                return conn.execute_batch("SELECT 1");
            }
            conn.begin()?;
            let probe = room_to_grow(conn).and_then(|()| {
                if was_down {
                    let version: i64 = conn.query_row("PRAGMA user_version", (), |r| r.get(0))?;
                    conn.execute_batch(&format!("PRAGMA user_version = {version}"))?;
                    conn.end(true)?;
                }
                Ok(())
            });
            leave_transaction(conn);
            probe
        });
        match &verdict {
            Ok(()) => self.health.record_ok(),
            Err(e) => {
                if let Some(fault) = e.storage_fault() {
                    self.health.record_fault(fault);
                }
            }
        }
        verdict
    }

    /// Hands the turn on and wakes every waiter: some have their answer,
    /// one of the others takes the turn.
    fn end_turn(&self) {
        let mut state = lock(&self.state);
        state.busy = false;
        let wake_thread = state.thread_idle && !state.queue.is_empty();
        drop(state);
        self.turn_ended.notify_all();
        if wake_thread {
            self.work_ready.notify_one();
        }
    }

    /// Queues an awaited write and returns at once: its caller awaits the
    /// answer instead of parking a thread. The writer thread commits it,
    /// with whatever else is queued by then.
    fn enqueue(self: &Arc<Self>, job: Box<dyn Job>) {
        let mut state = lock(&self.state);
        if state.dead {
            drop(state);
            job.finish(Err(&stopped()));
            return;
        }
        if state.queue.len() >= state.limit {
            let queued = state.queue.len();
            drop(state);
            job.finish(Err(&DbError::Unavailable {
                reason: StorageFault::Busy,
                detail: format!("{queued} writes are queued"),
            }));
            return;
        }
        state.queue.push(job);
        if state.stopped {
            // The database was closed while this write was prepared: a
            // thread of its own commits it rather than leave it unanswered,
            // watched as the writer thread is (should it die, every write
            // waiting is answered).
            drop(state);
            let writer = Arc::clone(self);
            std::thread::spawn(move || {
                let _watch = Supervised(Arc::clone(&writer));
                writer.serve();
            });
            return;
        }
        let wake = state.thread_idle;
        drop(state);
        if wake {
            self.work_ready.notify_one();
        } else {
            self.queued_note.notify_one();
        }
    }

    /// The writer thread's loop (and the last resort of a write queued after
    /// the database was closed): whenever writes are queued, the connection
    /// is free and no outsider waits for it, takes the turn and commits
    /// them all in one transaction; returns once stopped with nothing
    /// queued.
    fn serve(&self) {
        let mut state = lock(&self.state);
        loop {
            let ready = !state.queue.is_empty() && !state.busy && state.outsiders == 0;
            if !ready {
                if state.stopped && state.queue.is_empty() {
                    return;
                }
                state.thread_idle = true;
                state = self
                    .work_ready
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
                state.thread_idle = false;
                continue;
            }
            state.busy = true;
            let batch = std::mem::take(&mut state.queue);
            drop(state);
            {
                let _turn = Turn(self);
                // Jobs run under catch_unwind already; should the commit
                // itself panic, its callers are answered (their channels
                // close) and this thread lives on for the next writes.
                let commit = AssertUnwindSafe(|| {
                    let conn = lock(&self.conn);
                    self.commit(&conn.conn(), batch);
                });
                if catch_unwind(commit).is_err() {
                    tracing::error!(
                        "a database commit panicked; its writes were answered with an error"
                    );
                }
            }
            state = lock(&self.state);
        }
    }
}

/// The error of a call that needs the writer's turn from inside a write,
/// which holds that turn until it ends.
fn inside_a_write() -> DbError {
    DbError::Internal(
        "the writer was asked for inside another write's transaction, which would never end: join writes with Write::and".into(),
    )
}

/// The error of every write once the writer thread died.
fn stopped() -> DbError {
    DbError::Unavailable {
        reason: StorageFault::Stopped,
        detail: "the database writer thread stopped".into(),
    }
}

/// Watches the writer thread: should it ever unwind (a panic outside the
/// writes, which run under `catch_unwind`), every queued write is answered
/// with an error instead of waiting for ever, later writes are refused at
/// once, and `/health` calls storage down.
struct Supervised(Arc<Writer>);

impl Drop for Supervised {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut state = lock(&self.0.state);
        state.dead = true;
        state.busy = false;
        let orphans = std::mem::take(&mut state.queue);
        drop(state);
        self.0.health.record_fault(StorageFault::Stopped);
        let error = stopped();
        for job in orphans {
            job.finish(Err(&error));
        }
        self.0.turn_ended.notify_all();
    }
}

/// Stops the writer thread when dropped (the last database handle went),
/// once what is queued is committed.
pub(crate) struct WriterThread(Arc<Writer>);

impl Drop for WriterThread {
    fn drop(&mut self) {
        lock(&self.0.state).stopped = true;
        self.0.work_ready.notify_one();
    }
}

/// A held turn; ends it when dropped, even by a panic, so the writer is
/// never left busy with nobody holding it.
struct Turn<'a>(&'a Writer);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.end_turn();
    }
}

/// The statements of one savepoint, by name.
pub(crate) struct Savepoint {
    begin: &'static str,
    release: &'static str,
    rollback: &'static str,
}

/// A write made at a plan's end, inside that plan's job.
pub(crate) const AT_END: Savepoint = Savepoint {
    begin: "SAVEPOINT at_end",
    release: "RELEASE at_end",
    rollback: "ROLLBACK TO at_end",
};

/// Runs `work` inside a savepoint, rolling back to it when `work` fails:
/// for a write nested in a job that must stand without it.
pub(crate) fn in_named_savepoint<T>(
    conn: &Conn<'_>,
    savepoint: &Savepoint,
    work: impl FnOnce() -> Result<T, DbError>,
) -> Result<T, DbError> {
    let id: SavepointId = (
        savepoint.begin,
        SAVEPOINTS_MADE.with(|n| n.replace(n.get() + 1)),
    );
    let failed_before = FAILED_SAVEPOINTS.with(|f| {
        (f.borrow().iter())
            .find(|(failed, _)| *failed == id)
            .map(|(_, e)| e.duplicate())
    });
    if let Some(e) = failed_before {
        // Its work failed once sent, in an earlier run of this batch: the
        // write runs again without it, as SQLite's savepoint would undo it.
        return Err(e);
    }
    let mark = conn.queue_mark();
    conn.execute_later(savepoint.begin)?;
    // What the work leaves to be sent later (PostgreSQL) goes with the
    // commit; should it fail there, the batch runs again without the work
    // (see `attempt`).
    let outer = conn.set_savepoint(Some(id));
    let hooks = AFTER_COMMIT.with(|after| after.borrow().len());
    let result = work();
    conn.set_savepoint(outer);
    if result.is_err() {
        // The work is undone: what it meant to do after the commit too.
        AFTER_COMMIT.with(|after| after.borrow_mut().truncate(hooks));
    }
    if result.is_err() && conn.is_autocommit() {
        // SQLite rolled the whole transaction back (it may on a full disk,
        // an I/O error or a lock): the savepoint is gone with it.
        return result;
    }
    let end = if result.is_ok() {
        if conn.unqueue_unsent_at(mark) {
            // Nothing of the work was sent yet (PostgreSQL): its statements
            // go with the commit without the savepoint, whose only use is
            // undoing work sent mid-way. Should one fail there, the batch
            // runs again without the work (see `attempt`).
            Ok(())
        } else {
            conn.execute_later(savepoint.release)
        }
    } else if conn.drop_unsent_since(mark) {
        // Nothing of the savepoint reached the server: nothing to undo.
        Ok(())
    } else {
        match conn.peek_failed_write() {
            // A kept fold's check failed: the batch runs again whole, the
            // work with it (see `attempt`).
            Some(failed) if failed.moved => {
                leave_transaction(conn);
                return result;
            }
            _ => conn.execute_batch(savepoint.rollback).and_then(|()| {
                // The failure is undone: it no longer fails the write it is in.
                let _undone = conn.take_failed_write();
                conn.execute_later(savepoint.release)
            }),
        }
    };
    if let Err(e) = end {
        // The savepoint could not be ended: what the work wrote cannot be
        // told apart from the rest any more, so the whole transaction is
        // lost (its batch answers the failure) rather than committed with
        // a failed write's rows in it.
        leave_transaction(conn);
        // The work's own failure says more than the savepoint's (which may
        // never have been made, when a statement before it failed).
        return Err(match result {
            Err(work) => work,
            Ok(_) => transaction_error("ending a savepoint", e),
        });
    }
    result
}

/// Rolls back a transaction a failure left open (SQLite leaves some open
/// after a failed `COMMIT`), so the connection starts the next one clean.
fn leave_transaction(conn: &Conn<'_>) {
    if !conn.is_autocommit()
        && let Err(e) = conn.end(false)
    {
        tracing::warn!(error = %e, "rollback after a failed transaction failed");
    }
}

/// Free pages a capped database needs to count as having room: a chat's
/// commits touch about this many b-trees, so fewer free pages than this
/// fail the next chat however many single rows still fit.
const ROOM_PAGES: i64 = 16;

/// Fails with [`StorageFault::Full`] when the database has reached its
/// size cap ([`crate::Db::set_max_size`]) with fewer than [`ROOM_PAGES`]
/// free pages left. Reads three header values only.
fn room_to_grow(conn: &Conn<'_>) -> Result<(), DbError> {
    let pragma = |name: &str| -> Result<i64, DbError> {
        conn.query_row(&format!("PRAGMA {name}"), (), |r| r.get(0))
    };
    let pages = pragma("page_count")?;
    let free = pragma("freelist_count")?;
    let max = pragma("max_page_count")?;
    if free < ROOM_PAGES && pages >= max {
        return Err(DbError::Unavailable {
            reason: StorageFault::Full,
            detail: format!("the database reached its cap of {max} pages ({free} free)"),
        });
    }
    Ok(())
}

/// A failed transaction-control statement, as every caller sees it: a
/// storage fault keeps its classification.
fn transaction_error(what: &str, e: DbError) -> DbError {
    match e {
        DbError::Sqlite(e) => DbError::Internal(format!("{what} failed: {e}")),
        DbError::Postgres(e) => DbError::Internal(format!("{what} failed: {e}")),
        classified => classified,
    }
}

/// How one run of a batch ended.
enum Attempt {
    /// Every job ran and the transaction committed.
    Committed,
    /// The job at this index failed; the transaction is still open.
    JobFailed(usize),
    /// The transaction is gone (SQLite gave it up, or it could not begin
    /// or commit): every job of the batch answers this.
    Lost(DbError),
    /// The transaction was rolled back for a reason that is no write's
    /// failure, and the batch runs again: a kept fold a write assumed was
    /// no longer the journal's (the server checked it, see
    /// `engine::sql::EXPECT`; the write reads the journal then), or the
    /// work of a write's savepoint failed once sent (the write runs again
    /// without it), or the transaction sent before this one failed.
    Again,
    /// Every job ran and the transaction went whole, its `COMMIT`
    /// included, numbered so (see [`Conn::send_commit`]); its answers are
    /// read later.
    Sent(u64),
}

/// How a run of a batch ends once its jobs ran.
#[derive(Clone, Copy)]
enum Ending {
    /// It commits and waits for the answer.
    Wait,
    /// It is sent whole without waiting (see [`Conn::send_commit`]),
    /// checking first that the transaction numbered so committed, when
    /// one is still in flight.
    Send { after: Option<u64> },
}

/// Runs every job of `batch` in one transaction and commits it (or sends
/// it whole, as `ending` says), or stops at the first job that fails.
fn attempt(conn: &Conn<'_>, batch: &mut [Box<dyn Job>], ending: Ending) -> Attempt {
    Effects::forget();
    let begun = match ending {
        Ending::Wait => conn.begin(),
        Ending::Send { after } => conn.begin_numbered(after),
    };
    if let Err(e) = begun {
        return Attempt::Lost(transaction_error("begin", e));
    }
    for index in 0..batch.len() {
        conn.set_write(index);
        let job = &mut batch[index];
        job.run(conn);
        if let Some(failed) = conn.take_failed_write() {
            // A statement a write queued failed when this one's were sent:
            // that write failed, whichever call saw it.
            let e = job.error().map_or_else(
                || DbError::Internal("a queued statement failed".into()),
                DbError::duplicate,
            );
            return queued_failure(conn, batch, failed, e);
        }
        let job = &mut batch[index];
        if conn.is_autocommit() {
            return Attempt::Lost(match job.error() {
                Some(e) => e.duplicate(),
                None => DbError::Internal("a write ended the transaction".into()),
            });
        }
        match job.error() {
            // Storage refused: the jobs after it would be refused too.
            Some(e) if e.storage_fault().is_some() => {
                leave_transaction(conn);
                return Attempt::Lost(e.duplicate());
            }
            Some(_) => return Attempt::JobFailed(index),
            None => {}
        }
    }
    match ending {
        Ending::Wait => {
            let ended = conn.end(true);
            committed(conn, batch, ended)
        }
        Ending::Send { .. } => match conn.send_commit() {
            Ok(number) => Attempt::Sent(number),
            Err(e) => committed(conn, batch, Err(e)),
        },
    }
}

/// How a batch's run ended, from its commit's answer.
fn committed(conn: &Conn<'_>, batch: &mut [Box<dyn Job>], answer: Result<(), DbError>) -> Attempt {
    match answer {
        Ok(()) => Attempt::Committed,
        Err(e) => match conn.take_failed_write() {
            Some(failed) => queued_failure(conn, batch, failed, e),
            None => {
                leave_transaction(conn);
                Attempt::Lost(transaction_error("commit", e))
            }
        },
    }
}

/// A statement the write at `failed` queued failed with `e` when sent
/// (PostgreSQL): that write failed, and the server aborted the
/// transaction. A storage fault loses the whole batch, as it would have
/// had the statement been sent at once.
fn queued_failure(
    conn: &Conn<'_>,
    batch: &mut [Box<dyn Job>],
    failed: QueuedFailure,
    e: DbError,
) -> Attempt {
    leave_transaction(conn);
    let write = failed.write;
    if e.storage_fault().is_some() {
        return Attempt::Lost(e);
    }
    if failed.moved {
        // A kept fold's check, or the check that the transaction sent
        // before committed: nothing is wrong with the write.
        return Attempt::Again;
    }
    if write >= batch.len() {
        return Attempt::Lost(e);
    }
    if let Some(savepoint) = failed.savepoint {
        // The work of a savepoint: the write stands without it.
        batch[write].fail_savepoint(savepoint, e);
        return Attempt::Again;
    }
    batch[write].fail(e);
    Attempt::JobFailed(write)
}

/// What the writes of a batch asked to be done once it committed (see
/// [`after_commit`] and [`announce_commit`]), taken from the thread that
/// ran them.
struct Effects {
    after: Vec<Box<dyn FnOnce()>>,
    announce: bool,
}

impl Effects {
    /// Takes what the last run of the batch asked for.
    fn take() -> Self {
        Effects {
            after: AFTER_COMMIT.with(|after| std::mem::take(&mut *after.borrow_mut())),
            announce: ANNOUNCE.with(|a| a.replace(false)),
        }
    }

    /// Forgets what a run rolled back asked for.
    fn forget() {
        drop(Self::take());
    }
}

/// A batch sent whole (see [`Ending::Send`]) whose answers are not read
/// yet.
struct SentBatch {
    batch: Vec<Box<dyn Job>>,
    effects: Effects,
    number: u64,
    /// The writer's time on it so far: its run, up to its sending.
    spent: std::time::Duration,
}

impl Writer {
    /// Runs `batch` in one transaction and answers every job once the
    /// commit is known. On PostgreSQL the writer then keeps the turn while
    /// writes are queued: it sends each transaction whole and prepares
    /// the next while the server runs it, so the server never waits for
    /// this thread between two transactions (see [`Writer::pipeline`]).
    fn commit(&self, conn: &Conn<'_>, batch: Vec<Box<dyn Job>>) {
        let _inside = InTransaction::enter();
        leave_transaction(conn);
        if let Conn::Pg(session) = conn
            && let Err(e) = session.revive()
        {
            // The server is unreachable: every write of the batch says so.
            self.health
                .record_fault(e.storage_fault().unwrap_or(StorageFault::Unreachable));
            for job in batch {
                job.finish(Err(&e));
            }
            return;
        }
        meter::begin_batch(&self.meter);
        if conn.pipelines() {
            self.pipeline(conn, batch);
        } else {
            self.commit_now(conn, batch);
        }
    }

    /// Commits `batch` and waits for the answer (see [`Writer::conclude`]).
    fn commit_now(&self, conn: &Conn<'_>, mut batch: Vec<Box<dyn Job>>) {
        let started = Instant::now();
        let changes_before = conn.total_changes();
        let first = attempt(conn, &mut batch, Ending::Wait);
        let effects = Effects::take();
        self.conclude(
            conn,
            batch,
            first,
            effects,
            started.elapsed(),
            changes_before,
        );
    }

    /// PostgreSQL: sends `batch`'s transaction whole, then, while its
    /// answers are on their way, the next batch queued meanwhile, checking
    /// on the server that the one before committed; reads each batch's
    /// answers once the next one is sent, or once they came while nothing
    /// more was queued. A batch that failed runs again, before the one
    /// sent after it, which failed its check and runs again too: the
    /// commits keep the order of the batches. Stops when nothing is queued
    /// or in flight, someone else waits for the connection, or the
    /// session closed.
    fn pipeline(&self, conn: &Conn<'_>, batch: Vec<Box<dyn Job>>) {
        let mut in_flight: Option<SentBatch> = None;
        let mut next = Some(batch);
        loop {
            if let Some(batch) = next.take() {
                in_flight = self.send(conn, batch, in_flight);
            }
            next = self.more_to_send(conn);
            if next.is_some() {
                continue;
            }
            let Some(sent) = in_flight.take() else { break };
            // Its answers, or a write queued meanwhile to send first.
            if conn.answers_or(self.queued_note.notified()) {
                let _ = self.settle(conn, sent);
            } else {
                in_flight = Some(sent);
            }
        }
    }

    /// Sends `batch` whole, checking first that the batch `in_flight`
    /// committed, then reads `in_flight`'s answers while the server runs
    /// `batch`; answers what is in flight now. A batch that cannot go
    /// whole (a write failed, or needed an answer while the one in flight
    /// failed) is committed once `in_flight` was answered, waiting for
    /// its own answer. So is one sent behind a batch that failed (it
    /// failed its check): the next batch then goes unchecked, instead of
    /// behind a transaction known to have failed.
    fn send(
        &self,
        conn: &Conn<'_>,
        mut batch: Vec<Box<dyn Job>>,
        in_flight: Option<SentBatch>,
    ) -> Option<SentBatch> {
        meter::keep_recording_as(&self.meter);
        let started = Instant::now();
        let changes_before = conn.total_changes();
        let after = in_flight.as_ref().map(|sent| sent.number);
        let first = attempt(conn, &mut batch, Ending::Send { after });
        let effects = Effects::take();
        let sent = match first {
            Attempt::Sent(number) => SentBatch {
                batch,
                effects,
                number,
                spent: started.elapsed(),
            },
            first => {
                leave_transaction(conn);
                let spent = started.elapsed();
                if let Some(earlier) = in_flight {
                    self.settle(conn, earlier);
                }
                self.conclude(conn, batch, first, effects, spent, changes_before);
                return None;
            }
        };
        let behind_a_failure = in_flight.is_some_and(|earlier| !self.settle(conn, earlier));
        if behind_a_failure {
            let _ = self.settle(conn, sent);
            return None;
        }
        Some(sent)
    }

    /// The writes queued since the batch in hand was taken, while the
    /// writer may keep its turn: none when nobody queued, someone else
    /// waits for the connection, or the session closed (the next turn
    /// opens it again).
    fn more_to_send(&self, conn: &Conn<'_>) -> Option<Vec<Box<dyn Job>>> {
        if let Conn::Pg(session) = conn
            && session.is_closed()
        {
            return None;
        }
        let mut state = lock(&self.state);
        if state.queue.is_empty() || state.outsiders > 0 {
            return None;
        }
        Some(std::mem::take(&mut state.queue))
    }

    /// Reads the answers of a batch sent whole and answers its jobs, or
    /// runs it again as a failure says (see [`Writer::conclude`]); answers
    /// whether it committed as sent.
    fn settle(&self, conn: &Conn<'_>, sent: SentBatch) -> bool {
        let SentBatch {
            mut batch,
            effects,
            spent,
            ..
        } = sent;
        let started = Instant::now();
        let changes_before = conn.total_changes();
        let answer = conn.settle_commit();
        let first = committed(conn, &mut batch, answer);
        let as_sent = matches!(first, Attempt::Committed);
        let spent = spent + started.elapsed();
        self.conclude(conn, batch, first, effects, spent, changes_before);
        as_sent
    }

    /// Takes `batch` from its first run's end (`first`, with what that run
    /// asked for once committed) to its commit: when a job fails, the
    /// transaction is rolled back, that job answers its own failure (none
    /// of its rows stay), and the others run again, in a new transaction,
    /// without it. When the transaction itself is lost (storage refused,
    /// SQLite gave it up), every job of the batch answers that failure.
    /// Records in `health` whether storage took the batch, and answers
    /// every job. `spent` is the writer's time on the batch before (its
    /// first run, and for a batch sent whole its reading; not the time it
    /// was in flight, which overlaps the next batch's).
    fn conclude(
        &self,
        conn: &Conn<'_>,
        mut batch: Vec<Box<dyn Job>>,
        first: Attempt,
        first_effects: Effects,
        spent: std::time::Duration,
        changes_before: u64,
    ) {
        let started = Instant::now();
        let size = batch.len();
        let mut failed: Vec<Box<dyn Job>> = Vec::new();
        // Each failed run removes one job, and each run again drops the
        // kept folds it checked, so this ends within `2 * size + 1` runs.
        let mut again = 0;
        let mut effects = Some(first_effects);
        let mut outcome = first;
        let commit = loop {
            match outcome {
                Attempt::Committed => break Ok(!batch.is_empty()),
                Attempt::Lost(e) => break Err(e),
                Attempt::Again if again > 2 * size => {
                    break Err(DbError::Internal(
                        "a batch's kept folds kept failing their checks".into(),
                    ));
                }
                Attempt::Again => again += 1,
                Attempt::JobFailed(index) => {
                    leave_transaction(conn);
                    failed.push(batch.remove(index));
                    if batch.is_empty() {
                        break Ok(false);
                    }
                }
                Attempt::Sent(_) => {
                    break Err(DbError::Internal(
                        "a batch run again was sent unanswered".into(),
                    ));
                }
            }
            outcome = attempt(conn, &mut batch, Ending::Wait);
            effects = None;
        };
        let effects = effects.unwrap_or_else(Effects::take);
        // `Ok(false)`: every write failed, nothing committed.
        if matches!(commit, Ok(true)) {
            for f in effects.after {
                f();
            }
        }
        if effects.announce {
            self.journal_commits.send_modify(|n| *n += 1);
        }
        self.meter
            .record_batch(size, spent + started.elapsed(), matches!(commit, Ok(true)));
        let fault = match &commit {
            Err(e) => e.storage_fault(),
            Ok(_) => failed
                .iter()
                .find_map(|job| job.error().and_then(DbError::storage_fault)),
        };
        match (fault, &commit) {
            (Some(fault), _) => self.health.record_fault(fault),
            // Rows reached the WAL: storage takes writes. A commit that
            // changed nothing wrote nothing, and proves nothing.
            (None, Ok(true)) if conn.total_changes() > changes_before => {
                self.health.record_written();
            }
            _ => {}
        }
        match &commit {
            Err(e) if fault.is_some() => {
                tracing::warn!(error = %e, writes = size, "database write refused by storage");
            }
            Err(e) => tracing::error!(error = %e, writes = size, "database commit failed"),
            Ok(_) => {}
        }
        // A failed job answers its own error, whatever became of the others.
        for job in failed {
            job.finish(Ok(()));
        }
        for job in batch {
            job.finish(commit.as_ref().map(drop));
        }
    }
}

/// A prepared write. Call [`Write::wait`] from blocking code, or `.await`
/// it from async code: it is then queued, committed by the writer thread
/// (never on an executor thread) with whatever else is queued, and the
/// caller's task sleeps until the commit answers, holding no thread.
/// Dropping it unrun writes nothing.
#[must_use = "a write does nothing until it is waited for or awaited"]
pub struct Write<T> {
    writer: Arc<Writer>,
    work: Work<T>,
    /// The span it was prepared in (see [`WriteJob::span`]).
    span: tracing::Span,
}

impl<T: Send + 'static> Write<T> {
    /// Joins two writes into one that commits both or neither, in a single
    /// transaction: use it for writes that belong together (a plan's last
    /// step with the close of its intent) and to save commits. Both must be
    /// writes of the same database.
    pub fn and<U: Send + 'static>(mut self, mut other: Write<U>) -> Write<(T, U)> {
        let writer = Arc::clone(&self.writer);
        let same = Arc::ptr_eq(&self.writer, &other.writer);
        writer.submit(move |conn| {
            if !same {
                return Err(DbError::Internal(
                    "writes of two databases cannot share a transaction".into(),
                ));
            }
            let first = self.run_inline(conn)?;
            let second = other.run_inline(conn)?;
            Ok((first, second))
        })
    }

    /// The same write, answering `f` of its answer; `f` runs in the
    /// transaction, once the write succeeded in it, and again should the
    /// write run again (see [`Write`]): what it does outside the database
    /// must bear that.
    pub fn map<U: Send + 'static>(
        mut self,
        mut f: impl FnMut(T) -> U + Send + 'static,
    ) -> Write<U> {
        let writer = Arc::clone(&self.writer);
        writer.submit(move |conn| self.run_inline(conn).map(&mut f))
    }

    /// The same write, answering nothing: for callers that only need to
    /// know it committed (a write made at a plan's end, say).
    pub fn discard(self) -> Write<()> {
        self.map(drop)
    }

    /// Runs this write's work directly, inside a job that is already
    /// running, and answers its outcome; it can run again in a later
    /// transaction, as its job can.
    pub(crate) fn run_inline(&mut self, conn: &Conn<'_>) -> Result<T, DbError> {
        let _in_span = self.span.enter();
        (self.work)(conn)
    }

    /// The write as a queued job, and where its answer will come.
    fn into_job(self) -> (Arc<Writer>, Box<dyn Job>, Answer<T>) {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(WriteJob {
            work: self.work,
            span: self.span,
            outcome: None,
            reply,
            failed_savepoints: Vec::new(),
        });
        (self.writer, job, answer)
    }

    /// Runs the write (with any others waiting) and answers its outcome
    /// once committed. Blocks the calling thread, which must not be an
    /// async executor's (use `.await` there): the write goes to the writer
    /// thread like an awaited one, so there is one commit path.
    ///
    /// Called inside another write (an [`crate::AtEnd`] closure or a
    /// [`Write::map`] function), it fails at once instead of waiting for
    /// ever: that write's transaction holds the writer. Join writes with
    /// [`Write::and`] instead.
    pub fn wait(self) -> Result<T, DbError> {
        if IN_TRANSACTION.with(std::cell::Cell::get) {
            return Err(inside_a_write());
        }
        let (writer, job, answer) = self.into_job();
        writer.enqueue(job);
        answer
            .blocking_recv()
            .map_err(|_| DbError::Internal("a queued write was dropped".into()))?
    }
}

impl<T> std::future::IntoFuture for Write<T>
where
    T: Send + 'static,
{
    type Output = Result<T, DbError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let (writer, job, answer) = self.into_job();
        Box::pin(async move {
            writer.enqueue(job);
            answer
                .await
                .map_err(|_| DbError::Internal("a queued write was dropped".into()))?
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Should the writer thread die, queued writes are answered with an
    /// error instead of hanging, later ones are refused at once, and
    /// storage reads as down (issue 22, supervision).
    #[test]
    fn a_dead_writer_thread_answers_every_write() {
        let writer = Writer::new(Connection::Lite(
            rusqlite::Connection::open_in_memory().unwrap(),
        ));
        let (_, job, answer) = writer.submit(|_| Ok(1)).into_job();
        lock(&writer.state).queue.push(job);
        let dying = Arc::clone(&writer);
        let died = std::thread::spawn(move || {
            let _watch = Supervised(dying);
            panic!("the writer thread dies");
        })
        .join();
        assert!(died.is_err());
        let answered = answer.blocking_recv().unwrap();
        assert!(matches!(
            answered,
            Err(DbError::Unavailable {
                reason: StorageFault::Stopped,
                ..
            })
        ));
        let later = writer.submit(|_| Ok(2)).wait();
        assert!(matches!(
            later,
            Err(DbError::Unavailable {
                reason: StorageFault::Stopped,
                ..
            })
        ));
        assert_eq!(writer.health().fault(), Some(StorageFault::Stopped));
        writer.health().record_ok();
        assert_eq!(writer.health().fault(), Some(StorageFault::Stopped));
    }

    /// The one savepoint left (a write made at a plan's end) loses the
    /// whole transaction when its end fails: the failed write's rows are
    /// not committed with the others (issue 22).
    #[test]
    fn a_failed_savepoint_end_loses_the_transaction() {
        let lite = rusqlite::Connection::open_in_memory().unwrap();
        let conn = Conn::Lite(&lite);
        conn.execute_batch("CREATE TABLE t (x INTEGER); BEGIN IMMEDIATE;")
            .unwrap();
        conn.execute_batch("INSERT INTO t VALUES (1)").unwrap();
        let outcome = in_named_savepoint(&conn, &AT_END, || {
            conn.execute_batch("INSERT INTO t VALUES (2)")?;
            // the work ends the savepoint itself, so ROLLBACK TO fails
            conn.execute_batch("RELEASE at_end")?;
            Err::<(), _>(DbError::Internal("the write failed".into()))
        });
        assert!(outcome.is_err());
        assert!(conn.is_autocommit(), "the transaction is gone");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM t", (), |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0, "neither write was committed");
    }
}
