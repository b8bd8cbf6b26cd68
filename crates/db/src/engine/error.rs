//! The one error type of the storage layer, and the classification of
//! SQLite's failures into bugs and storage that is unavailable at the moment.

use rusqlite::ErrorCode;
use std::path::Path;

/// Why storage cannot take a write at the moment. Each cause is outside Madre
/// and goes away by itself or by an operator's hand (space freed, the lock
/// released, permissions fixed); nothing needs a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageFault {
    /// The disk or the database is full (`SQLITE_FULL`), including a
    /// database at its size cap ([`crate::Db::set_max_size`]).
    Full,
    /// The database file or its directory cannot be written
    /// (`SQLITE_READONLY`).
    ReadOnly,
    /// Another connection kept the database locked past the busy timeout
    /// (`SQLITE_BUSY`, `SQLITE_LOCKED`).
    Locked,
    /// The operating system failed a read or a write, or a file of the
    /// database could not be opened (`SQLITE_IOERR`, `SQLITE_CANTOPEN`).
    Io,
    /// The writer has more writes queued than it takes
    /// ([`crate::Db::set_write_queue_limit`]): Madre is overloaded, storage
    /// itself is fine, and `/health` does not call it down.
    Busy,
    /// The writer thread died (a panic outside any write): no write can
    /// commit until Madre restarts. `/health` calls storage down.
    Stopped,
    /// The PostgreSQL server cannot be reached, or is shutting down or
    /// starting (SQLSTATE classes 08 and 57P): the session is opened again
    /// at the next write or storage check.
    Unreachable,
}

impl StorageFault {
    /// The fault behind a SQLite failure, or `None` when the failure is
    /// not about storage being unavailable (a constraint, bad SQL, a bug).
    /// Decided by the primary code, so every extended code of a class
    /// (`SQLITE_IOERR_WRITE`, `SQLITE_BUSY_SNAPSHOT`, …) is included.
    pub fn of(e: &rusqlite::Error) -> Option<Self> {
        match e.sqlite_error_code()? {
            ErrorCode::DiskFull => Some(StorageFault::Full),
            ErrorCode::ReadOnly => Some(StorageFault::ReadOnly),
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => Some(StorageFault::Locked),
            ErrorCode::SystemIoFailure | ErrorCode::CannotOpen => Some(StorageFault::Io),
            _ => None,
        }
    }

    /// The fault behind a PostgreSQL failure, or `None` when it is not
    /// about the database being unavailable (a constraint, bad SQL, a bug).
    pub fn of_postgres(e: &postgres::Error) -> Option<Self> {
        let Some(db) = e.as_db_error() else {
            // No answer from the server: the session or the network failed
            // (the session closed, an I/O error, a timeout). Anything else
            // without a server code is this side's own (a value that does
            // not bind, a bad column): a bug, not an outage.
            let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
            let timeout = e.to_string().contains("timeout");
            return (e.is_closed() || io || timeout).then_some(StorageFault::Unreachable);
        };
        let code = db.code().code();
        match code {
            "53100" => Some(StorageFault::Full),
            "25006" => Some(StorageFault::ReadOnly),
            "55P03" | "40P01" => Some(StorageFault::Locked),
            "58030" => Some(StorageFault::Io),
            _ if code.starts_with("08") || code.starts_with("57P") => {
                Some(StorageFault::Unreachable)
            }
            _ => None,
        }
    }

    /// What the fault means, in words for people (an answer's `detail`).
    pub fn describe(self) -> &'static str {
        match self {
            StorageFault::Full => "the database or its disk is full",
            StorageFault::ReadOnly => "the database file cannot be written",
            StorageFault::Locked => "the database stayed locked past the busy timeout",
            StorageFault::Io => "the disk reported an I/O error",
            StorageFault::Busy => "the database writer has more writes queued than it takes",
            StorageFault::Stopped => "the database writer stopped; Madre must be restarted",
            StorageFault::Unreachable => "the database server cannot be reached",
        }
    }
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused the operation for a reason that is not storage
    /// being unavailable (see [`DbError::Unavailable`]).
    #[error("sqlite: {0}")]
    Sqlite(rusqlite::Error),
    /// Storage cannot take the operation at the moment (full, read-only, locked
    /// or failing); nothing of it was written, and the same operation may
    /// succeed once the cause is gone.
    #[error("storage unavailable ({reason}): {detail}")]
    Unavailable {
        /// The cause.
        reason: StorageFault,
        /// SQLite's own message, for the logs.
        detail: String,
    },
    /// No connection could be had from the pool.
    #[error("connection pool: {0}")]
    Pool(#[source] r2d2::Error),
    /// The database file (or its directory) could not be created or opened.
    #[error("cannot open database {path}: {detail}")]
    Open {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// The file exists but is not a Madre database; it was left untouched.
    #[error("{path} is not a Madre database (it holds other data); refusing to touch it")]
    NotMadreDatabase {
        /// The file.
        path: String,
    },
    /// The file was written by a newer Madre; it was left untouched.
    #[error(
        "{path} has schema version {found}, newer than the {supported} this Madre knows; upgrade Madre"
    )]
    SchemaTooNew {
        /// The file.
        path: String,
        /// Its `user_version`.
        found: i64,
        /// The newest version this code applies.
        supported: i64,
    },
    /// No row with that id.
    #[error("{what} {id} not found")]
    NotFound {
        /// The kind of row.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The row is not in a state that allows the change.
    #[error("{0}")]
    Conflict(String),
    /// A value could not be stored or read back (bad JSON, bad enum text).
    #[error("invalid data: {0}")]
    InvalidData(String),
    /// An archive of finished plans could not be written or read.
    #[error("archive {path}: {detail}")]
    Archive {
        /// The archive file (or its directory).
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// A value the database cannot hold: on PostgreSQL, a text with a NUL
    /// character (`\0`), which SQLite stores and PostgreSQL's text types
    /// refuse. Nothing was written; it is the caller's input to fix.
    #[error("{0}")]
    Unstorable(String),
    /// PostgreSQL refused the operation or could not be reached.
    #[error("postgresql: {0}")]
    Postgres(String),
    /// The PostgreSQL database holds tables that are not Madre's; it was
    /// left untouched.
    #[error(
        "the PostgreSQL database {database} holds other tables ({tables}) and no Madre schema; refusing to touch it"
    )]
    NotMadrePostgres {
        /// The database's name.
        database: String,
        /// Some of the tables found.
        tables: String,
    },
    /// `PRAGMA integrity_check` did not say ok.
    #[error("integrity check failed: {0}")]
    Corrupt(String),
    /// A bug or a lost thread; never expected.
    #[error("internal storage error: {0}")]
    Internal(String),
}

impl DbError {
    pub(crate) fn open(path: &Path, e: impl std::fmt::Display) -> Self {
        DbError::Open {
            path: path.display().to_string(),
            detail: e.to_string(),
        }
    }

    pub(crate) fn io(path: &Path, e: std::io::Error) -> Self {
        Self::open(path, e)
    }

    pub(crate) fn not_found(what: &'static str, id: impl ToString) -> Self {
        DbError::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// True for [`DbError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, DbError::NotFound { .. })
    }

    /// The storage fault behind this error, for [`DbError::Unavailable`].
    pub fn storage_fault(&self) -> Option<StorageFault> {
        match self {
            DbError::Unavailable { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// A copy of this error for each caller of a shared commit: the
    /// classification survives, anything else becomes
    /// [`DbError::Internal`] with the same message.
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            DbError::Unavailable { reason, detail } => DbError::Unavailable {
                reason: *reason,
                detail: detail.clone(),
            },
            other => DbError::Internal(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match StorageFault::of(&e) {
            Some(reason) => DbError::Unavailable {
                reason,
                detail: e.to_string(),
            },
            None => DbError::Sqlite(e),
        }
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        // The driver's own text is terse ("db error"): the server's
        // message and code, or the cause, say what happened.
        let detail = match (e.as_db_error(), std::error::Error::source(&e)) {
            (Some(db), _) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
            (None, Some(cause)) => format!("{e}: {cause}"),
            (None, None) => e.to_string(),
        };
        match StorageFault::of_postgres(&e) {
            Some(reason) => DbError::Unavailable { reason, detail },
            // character_not_in_repertoire, untranslatable_character: a NUL
            // A check the server made for a write (see `engine::sql::EXPECT`).
            None if e.code().map(|c| c.code()) == Some(crate::engine::sql::EXPECTED_CONFLICT) => {
                DbError::Conflict(e.as_db_error().map_or(detail, |db| db.message().to_owned()))
            }
            None if e.code().map(|c| c.code()) == Some(crate::engine::sql::EXPECTED_MISSING) => {
                let message = e.as_db_error().map_or(detail, |db| db.message().to_owned());
                let (what, id) = message.split_once(' ').unwrap_or(("row", &message));
                DbError::NotFound {
                    what: match what {
                        "intent" => "intent",
                        "plan" => "plan",
                        _ => "row",
                    },
                    id: id.to_owned(),
                }
            }
            None if matches!(e.code().map(|c| c.code()), Some("22021" | "22P05")) => {
                DbError::Unstorable(
                    "a text holds a NUL character (\\u0000), which PostgreSQL cannot store".into(),
                )
            }
            None => DbError::Postgres(detail),
        }
    }
}

impl From<serde_json::Error> for DbError {
    fn from(e: serde_json::Error) -> Self {
        DbError::InvalidData(e.to_string())
    }
}
