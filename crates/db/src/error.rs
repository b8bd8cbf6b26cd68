//! The one error type of the storage layer.

use std::path::Path;

/// Why a database operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// SQLite refused the operation.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
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
}

impl From<serde_json::Error> for DbError {
    fn from(e: serde_json::Error) -> Self {
        DbError::InvalidData(e.to_string())
    }
}
