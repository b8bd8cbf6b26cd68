//! The single writer thread and its group commit.

use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use tokio::sync::oneshot;

use crate::DbError;

/// Most writes folded into one commit.
const MAX_BATCH: usize = 512;

trait Job: Send {
    /// Runs the write inside a savepoint; false when it rolled back.
    fn run(&mut self, conn: &Connection);
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
    fn run(&mut self, conn: &Connection) {
        let Some(work) = self.work.take() else { return };
        let outcome = match conn.execute_batch("SAVEPOINT job") {
            Err(e) => Err(DbError::from(e)),
            Ok(()) => {
                let result = catch_unwind(AssertUnwindSafe(|| work(conn)))
                    .unwrap_or_else(|_| Err(DbError::Internal("a database write panicked".into())));
                let end = if result.is_ok() {
                    conn.execute_batch("RELEASE job")
                } else {
                    conn.execute_batch("ROLLBACK TO job; RELEASE job")
                };
                match end {
                    Ok(()) => result,
                    Err(e) => Err(DbError::from(e)),
                }
            }
        };
        self.outcome = Some(outcome);
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

/// Sends writes to the writer thread. The thread ends when the last handle
/// is dropped.
#[derive(Clone)]
pub(crate) struct WriterHandle {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl WriterHandle {
    pub(crate) fn start(conn: Connection) -> Result<Self, DbError> {
        let (jobs, inbox) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("madre-db-writer".into())
            .spawn(move || writer_loop(conn, inbox))
            .map_err(|e| DbError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Self { jobs })
    }

    pub(crate) fn submit<T, F>(&self, f: F) -> Write<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, DbError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = WriteJob {
            work: Some(f),
            outcome: None,
            reply,
        };
        let sent = self
            .jobs
            .send(Box::new(job))
            .map(|()| answer)
            .map_err(|_| DbError::Internal("the writer thread has stopped".into()));
        Write(sent)
    }
}

/// A write handed to the writer thread. It is already queued: `.await` it
/// from async code, or call [`Write::wait`] from blocking code, to learn
/// whether it committed and get its result.
#[must_use = "a write's outcome must be awaited or waited for"]
pub struct Write<T>(Result<oneshot::Receiver<Result<T, DbError>>, DbError>);

impl<T> Write<T> {
    /// Blocks until the write committed (or failed). Must not be called
    /// from inside an async task: `.await` the write there instead.
    pub fn wait(self) -> Result<T, DbError> {
        self.0?
            .blocking_recv()
            .map_err(|_| DbError::Internal("the writer thread dropped a write".into()))?
    }
}

impl<T> std::future::IntoFuture for Write<T>
where
    T: Send + 'static,
{
    type Output = Result<T, DbError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.0?
                .await
                .map_err(|_| DbError::Internal("the writer thread dropped a write".into()))?
        })
    }
}

fn writer_loop(conn: Connection, inbox: mpsc::Receiver<Box<dyn Job>>) {
    while let Ok(first) = inbox.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match inbox.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let commit = match conn.execute_batch("BEGIN IMMEDIATE") {
            Err(e) => Err(e.to_string()),
            Ok(()) => {
                for job in &mut batch {
                    job.run(&conn);
                }
                conn.execute_batch("COMMIT").map_err(|e| {
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
}
