//! Writes with group commit by flat combining: a writer queues its job and,
//! when the writer connection is free, becomes the combiner: it runs every
//! queued job (its own and any that arrived meanwhile) in one
//! `BEGIN IMMEDIATE` transaction, each in a savepoint, commits once, and
//! repeats while jobs keep arriving. A writer that finds the connection busy
//! waits for its answer instead of queueing on the lock, so concurrent
//! writes share commits. Alone, a write costs one commit and no thread
//! hand-off (which costs several commits' worth on small virtual machines).

use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard};
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

/// The writer connection and the jobs waiting for it.
pub(crate) struct Writer {
    queue: Mutex<Vec<Box<dyn Job>>>,
    conn: Mutex<Connection>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Jobs run under catch_unwind, so a poisoned lock only means a panic
    // between statements; the connection itself is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Writer {
    pub(crate) fn new(conn: Connection) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(Vec::new()),
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

    /// Runs `f` on the writer connection between transactions, then commits
    /// whatever queued up meanwhile (writers that found the connection busy
    /// left their jobs for the holder).
    pub(crate) fn with_connection(&self, f: impl FnOnce(&Connection)) {
        f(&lock(&self.conn));
        self.combine();
    }

    /// Commits queued jobs until none is left, if no other thread is doing
    /// so already. A thread that finds the connection busy leaves its job
    /// queued and returns: the combiner holding the connection drains the
    /// queue again before it lets go, and checks it once more after letting
    /// go, so no job is stranded. Jobs that queue up while a commit is in
    /// flight go into the next commit together (group commit).
    fn combine(&self) {
        loop {
            let conn = match self.conn.try_lock() {
                Ok(conn) => conn,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            loop {
                let batch = std::mem::take(&mut *lock(&self.queue));
                if batch.is_empty() {
                    break;
                }
                commit_batch(&conn, batch);
            }
            drop(conn);
            if lock(&self.queue).is_empty() {
                return;
            }
        }
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
            lock(&self.writer.queue).push(job);
        }
        self.writer.combine();
        // Either this thread committed the job, or the combiner that held
        // the connection will: wait for its answer.
        self.answer
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
        let span = tracing::Span::current();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || span.in_scope(|| self.wait()))
                .await
                .map_err(|e| DbError::Internal(format!("blocking write task failed: {e}")))?
        })
    }
}
