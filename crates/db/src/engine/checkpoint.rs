//! WAL checkpoints off the write path: this thread folds the WAL into the
//! database every interval, in two phases (the writer connection only
//! checkpoints itself when this thread falls far behind):
//!
//! 1. a PASSIVE checkpoint on its own connection, beside the writer: it
//!    copies most of the WAL into the database file without blocking anyone;
//! 2. a second PASSIVE checkpoint on the writer's connection, holding the
//!    writer for the moment it takes to copy the few frames appended since.
//!    With no write in between, the WAL is then fully copied, so the next
//!    write starts it again from the beginning instead of appending.
//!
//! Without phase 2 a steady stream of writes never lets the WAL rewind and
//! it grows without bound (gigabytes in seconds under a benchmark).
//! Durability is unchanged: commits are durable in the WAL either way;
//! checkpoints only copy them into the main file.

use rusqlite::Connection;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::engine::sql::Conn;
use crate::engine::writer::Writer;

/// How often the WAL is looked at while writes come in. A page rewritten
/// by many commits (the last leaf of a table every chat appends to) is
/// copied once per fold: 100 ms made a LOW chat's three commits 3–14 %
/// cheaper than 20 ms in `chat_tx`, and 250 ms was no better.
const BUSY_INTERVAL: Duration = Duration::from_millis(100);
/// How often it is looked at when the last look found it empty.
const IDLE_INTERVAL: Duration = Duration::from_millis(250);
/// WAL length (frames of 4 KiB) from which phase 2 runs, so that the next
/// write starts the WAL again; shorter WALs are only copied (phase 1),
/// which never holds the writer up.
const REWIND_FRAMES: i64 = 1024;

/// Stops the checkpoint thread when the last database handle is dropped.
pub(crate) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl Checkpointer {
    pub(crate) fn start(conn: Connection, writer: Arc<Writer>) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        std::thread::Builder::new()
            .name("madre-db-checkpoint".into())
            .spawn(move || run(conn, &writer, &signal))?;
        Ok(Self { stop })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cvar.notify_all();
    }
}

/// One PASSIVE checkpoint; answers how many frames the WAL holds.
fn checkpoint(conn: &Connection) -> i64 {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1));
    result.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
        0
    })
}

/// Both phases; see the module documentation. Answers the WAL's length in
/// frames before the fold.
fn fold(conn: &Connection, writer: &Writer) -> i64 {
    let frames = checkpoint(conn);
    if frames >= REWIND_FRAMES {
        // This thread is never inside a write, so the turn is always had.
        let _ = writer.with_connection(|writer_conn| {
            Ok(match writer_conn {
                Conn::Lite(writer_conn) => checkpoint(writer_conn),
                Conn::Pg(_) => 0,
            })
        });
    }
    frames
}

fn run(conn: Connection, writer: &Writer, stop: &(Mutex<bool>, Condvar)) {
    let (lock, cvar) = stop;
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    let mut pause = IDLE_INTERVAL;
    while !*stopped {
        let (guard, _) = cvar
            .wait_timeout(stopped, pause)
            .unwrap_or_else(|p| p.into_inner());
        stopped = guard;
        if !*stopped {
            drop(stopped);
            let frames = fold(&conn, writer);
            pause = if frames > 0 {
                BUSY_INTERVAL
            } else {
                IDLE_INTERVAL
            };
            stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
        }
    }
    drop(stopped);
    // A last fold on the way out keeps the WAL small for the next start.
    checkpoint(&conn);
    let _ = writer.with_connection(|writer_conn| {
        Ok(match writer_conn {
            Conn::Lite(writer_conn) => checkpoint(writer_conn),
            Conn::Pg(_) => 0,
        })
    });
}
