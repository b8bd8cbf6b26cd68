//! Writes with group commit by flat combining: a writer queues its job and,
//! when the writer connection is free, takes the turn: it runs every queued
//! job (its own and any that arrived meanwhile) in one `BEGIN IMMEDIATE`
//! transaction, each in a savepoint, commits once, and hands the turn on.
//! A writer that finds the connection busy waits; when the turn ends it
//! either has its answer or takes the next turn with everything queued
//! since, so concurrent writes share commits. Alone, a write costs one
//! commit and no thread hand-off (which costs several commits' worth on
//! small virtual machines). Each turn commits one batch, so no caller is
//! kept committing others' writes under steady load.

use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

use crate::DbError;

trait Job: Send {
    /// Runs the write inside the open transaction; inside a savepoint of
    /// it when `savepoint` is set (other writes share the transaction).
    fn run(&mut self, conn: &Connection, savepoint: bool);
    /// Whether the write failed (so a lone write's transaction rolls back).
    fn failed(&self) -> bool;
    /// Sends the outcome, or the commit's failure, to the caller.
    fn finish(self: Box<Self>, commit: Result<(), String>);
}

struct WriteJob<T, F> {
    work: Option<F>,
    outcome: Option<Result<T, DbError>>,
    reply: oneshot::Sender<Result<T, DbError>>,
}

impl<T, F> Job for WriteJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, DbError> + Send,
{
    fn run(&mut self, conn: &Connection, savepoint: bool) {
        let Some(work) = self.work.take() else { return };
        let run = || {
            catch_unwind(AssertUnwindSafe(|| work(conn)))
                .unwrap_or_else(|_| Err(DbError::Internal("a database write panicked".into())))
        };
        self.outcome = Some(if savepoint {
            in_savepoint(conn, run)
        } else {
            run()
        });
    }

    fn failed(&self) -> bool {
        matches!(self.outcome, Some(Err(_)))
    }

    fn finish(self: Box<Self>, commit: Result<(), String>) {
        let this = *self;
        let outcome = match commit {
            Ok(()) => this
                .outcome
                .unwrap_or_else(|| Err(DbError::Internal("write never ran".into()))),
            Err(e) => Err(DbError::Internal(format!("commit failed: {e}"))),
        };
        // The caller may have given up waiting; that is not an error here.
        let _ = this.reply.send(outcome);
    }
}

/// The writer connection, the jobs waiting for it, and whose turn it is.
pub(crate) struct Writer {
    state: Mutex<State>,
    /// Signalled whenever a turn ends: answers may be ready, and the
    /// connection is free for the next combiner.
    turn_ended: Condvar,
    conn: Mutex<Connection>,
}

/// Jobs queued for the next commit, and whether someone holds the turn.
struct State {
    queue: Vec<Box<dyn Job>>,
    busy: bool,
}

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
                busy: false,
            }),
            turn_ended: Condvar::new(),
            conn: Mutex::new(conn),
        })
    }

    /// Prepares a write; nothing runs until it is waited for or awaited.
    pub(crate) fn submit<T, F>(self: &Arc<Self>, f: F) -> Write<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        Write {
            writer: Arc::clone(self),
            job: Some(Box::new(WriteJob {
                work: Some(f),
                outcome: None,
                reply,
            })),
            answer,
        }
    }

    /// Runs `f` on the writer connection between transactions (the
    /// checkpoint thread's short fold), holding the turn meanwhile.
    pub(crate) fn with_connection(&self, f: impl FnOnce(&Connection)) {
        let mut state = lock(&self.state);
        while state.busy {
            state = self
                .turn_ended
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        state.busy = true;
        drop(state);
        let _turn = Turn(self);
        f(&lock(&self.conn));
    }

    /// Hands the turn on and wakes every waiter: some have their answer,
    /// one of the others takes the turn.
    fn end_turn(&self) {
        lock(&self.state).busy = false;
        self.turn_ended.notify_all();
    }

    /// Queues `job` and returns once `answered` says its answer is ready.
    /// A waiter whose job is still queued when the connection is free takes
    /// the turn: it commits everything queued so far, in one transaction,
    /// then hands the turn on. Jobs that queue up during a commit go into
    /// the next one together (group commit); a lone writer commits its own
    /// job at once, with no thread hand-off; and no caller ever commits more
    /// than one batch for others, so none is held up under steady load.
    fn run(&self, job: Box<dyn Job>, mut answered: impl FnMut() -> bool) {
        let mut state = lock(&self.state);
        state.queue.push(job);
        loop {
            while state.busy {
                state = self
                    .turn_ended
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
                if answered() {
                    return;
                }
            }
            if answered() {
                return;
            }
            // The connection is free and this job (at least) is queued.
            state.busy = true;
            let batch = std::mem::take(&mut state.queue);
            drop(state);
            {
                let _turn = Turn(self);
                commit_batch(&lock(&self.conn), batch);
            }
            if answered() {
                return;
            }
            state = lock(&self.state);
        }
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

/// Runs `sql` (a transaction-control statement) through the statement cache.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs `work` inside a savepoint, rolling back to it when `work` fails.
fn in_savepoint<T>(
    conn: &Connection,
    work: impl FnOnce() -> Result<T, DbError>,
) -> Result<T, DbError> {
    control(conn, "SAVEPOINT job")?;
    let result = work();
    let end = if result.is_ok() {
        control(conn, "RELEASE job")
    } else {
        control(conn, "ROLLBACK TO job").and_then(|()| control(conn, "RELEASE job"))
    };
    end.map_err(DbError::from).and(result)
}

/// Runs `batch` in one transaction and answers every job once the commit is
/// known. Each job of a shared batch runs in its own savepoint, so a failure
/// undoes only itself; a lone job needs none: its failure rolls back the
/// whole transaction.
fn commit_batch(conn: &Connection, mut batch: Vec<Box<dyn Job>>) {
    let shared = batch.len() > 1;
    let commit = match control(conn, "BEGIN IMMEDIATE") {
        Err(e) => Err(e.to_string()),
        Ok(()) => {
            for job in &mut batch {
                job.run(conn, shared);
            }
            let end = if !shared && batch[0].failed() {
                "ROLLBACK"
            } else {
                "COMMIT"
            };
            control(conn, end).map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                e.to_string()
            })
        }
    };
    if let Err(e) = &commit {
        tracing::error!(error = %e, writes = batch.len(), "database commit failed");
    }
    for job in batch {
        job.finish(commit.clone());
    }
}

/// A prepared write. Call [`Write::wait`] from blocking code, or `.await`
/// it from async code (it then runs on Tokio's blocking pool, never on an
/// executor thread). Dropping it unrun writes nothing.
#[must_use = "a write does nothing until it is waited for or awaited"]
pub struct Write<T> {
    writer: Arc<Writer>,
    job: Option<Box<dyn Job>>,
    answer: oneshot::Receiver<Result<T, DbError>>,
}

impl<T: Send + 'static> Write<T> {
    /// Joins two writes into one that commits both or neither, in a single
    /// transaction: use it for writes that belong together (a plan's last
    /// step with the close of its intent) and to save commits. Both must be
    /// writes of the same database.
    pub fn and<U: Send + 'static>(self, other: Write<U>) -> Write<(T, U)> {
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

    /// Runs this write's work directly, inside a job that is already
    /// running, and answers its outcome.
    fn run_inline(mut self, conn: &Connection) -> Result<T, DbError> {
        let mut job = self
            .job
            .take()
            .ok_or_else(|| DbError::Internal("a write ran twice".into()))?;
        job.run(conn, false);
        // Hands the outcome to this write's own answer channel; the joined
        // write's commit decides whether it stands.
        job.finish(Ok(()));
        self.answer
            .try_recv()
            .map_err(|_| DbError::Internal("a joined write gave no answer".into()))?
    }
}

impl<T> Write<T> {
    /// Runs the write (with any others waiting) and answers its outcome
    /// once committed. Blocks the calling thread.
    pub fn wait(mut self) -> Result<T, DbError> {
        if let Some(job) = self.job.take() {
            let mut ready = None;
            let answer = &mut self.answer;
            self.writer.run(job, || {
                if ready.is_none() {
                    ready = answer.try_recv().ok();
                }
                ready.is_some()
            });
            if let Some(outcome) = ready {
                return outcome;
            }
        }
        Err(DbError::Internal("a queued write was dropped".into()))
    }
}

impl<T> std::future::IntoFuture for Write<T>
where
    T: Send + 'static,
{
    type Output = Result<T, DbError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        let span = tracing::Span::current();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || span.in_scope(|| self.wait()))
                .await
                .map_err(|e| DbError::Internal(format!("blocking write task failed: {e}")))?
        })
    }
}
