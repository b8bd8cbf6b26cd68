//! The storage engine, apart from the repository: how writes reach SQLite
//! and what happens when SQLite refuses them. The repository modules
//! (`journal`, `plans`, `sessions`…) say *what* is written; this module
//! says *how*:
//!
//! - [`writer`]: the one writer connection and its thread; every write is
//!   queued, a batch is one transaction, the queue is bounded, a dead
//!   writer answers every waiter;
//! - [`checkpoint`]: the thread that folds the WAL back into the file;
//! - [`meter`]: what the writer costs, counted by SQLite's own hooks;
//! - [`error`]: the repository's errors, and which of SQLite's refusals
//!   are storage faults (full, read-only, locked, I/O) answered 503.

pub(crate) mod checkpoint;
pub(crate) mod error;
pub(crate) mod meter;
pub(crate) mod sql;
pub(crate) mod writer;
