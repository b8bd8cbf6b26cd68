//! WAL checkpoints off the write path: the writer connection never
//! checkpoints itself (`wal_autocheckpoint = 0`); this thread runs a PASSIVE
//! checkpoint (it never blocks writers or readers) every interval, on its
//! own connection. Durability is unchanged: commits are durable in the WAL
//! either way; checkpoints only copy them into the main file.

use rusqlite::Connection;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How often the WAL is folded back into the database file.
const INTERVAL: Duration = Duration::from_millis(250);

/// Stops the checkpoint thread when the last database handle is dropped.
pub(crate) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
}

impl Checkpointer {
    pub(crate) fn start(conn: Connection) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        std::thread::Builder::new()
            .name("madre-db-checkpoint".into())
            .spawn(move || run(conn, &signal))?;
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

fn checkpoint(conn: &Connection) {
    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
    }
}

fn run(conn: Connection, stop: &(Mutex<bool>, Condvar)) {
    let (lock, cvar) = stop;
    let mut stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
    while !*stopped {
        let (guard, _) = cvar
            .wait_timeout(stopped, INTERVAL)
            .unwrap_or_else(|p| p.into_inner());
        stopped = guard;
        if !*stopped {
            drop(stopped);
            checkpoint(&conn);
            stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
        }
    }
    drop(stopped);
    // A last fold on the way out keeps the WAL small for the next start.
    checkpoint(&conn);
}
