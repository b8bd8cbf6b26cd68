//! The append-only intent log: a row is written before anything is decided
//! and closed once with the outcome.

use crate::engine::sql::{Conn, OptionalExtension};
use chrono::{DateTime, Utc};
use madre_models::IntentOutcome;
use rusqlite::params;
use serde_json::Value;
use uuid::Uuid;

use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};

/// A request as Madre received it. The payload must never hold a token.
#[derive(Debug, Clone, PartialEq)]
pub struct NewIntentLog {
    /// The intent id.
    pub id: Uuid,
    /// Where it came from (`chat`, `chat_v6`, `control`, `task`).
    pub source: String,
    /// Who sent it.
    pub principal: String,
    /// The request body, with secrets removed.
    pub payload: Value,
    /// When it arrived.
    pub created_at: DateTime<Utc>,
}

/// A stored intent-log row.
#[derive(Debug, Clone, PartialEq)]
pub struct IntentLogRow {
    /// The intent id.
    pub id: Uuid,
    /// Where it came from.
    pub source: String,
    /// Who sent it.
    pub principal: String,
    /// The request body.
    pub payload: Value,
    /// When it arrived.
    pub created_at: DateTime<Utc>,
    /// When Madre finished with it; `None` while open.
    pub processed_by_madre_at: Option<DateTime<Utc>>,
    /// The outcome (`DONE`, `WAITING`, `denied`…).
    pub result_status: Option<String>,
    /// Free remarks.
    pub notes: Option<String>,
}

fn insert_intent(conn: &Conn<'_>, entry: &NewIntentLog) -> Result<(), DbError> {
    conn.prepare_cached(
        "INSERT INTO intents_log (id, source, principal, payload_json, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .run(params![
        entry.id.to_string(),
        entry.source,
        entry.principal,
        serde_json::to_string(&entry.payload)?,
        ts(entry.created_at),
    ])?;
    Ok(())
}

/// The statement of [`close_checked_by_the_server`], written once.
static CLOSE_CHECKED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use crate::engine::sql::{EXPECT, EXPECTED_CONFLICT, EXPECTED_MISSING};
    // The row is found by its key: said `IS NULL`, the condition lets
    // PostgreSQL's planner take the index of open intents instead, and
    // step through every open intent, and every closed one vacuum has not
    // cleared from it yet, to find this one.
    format!("WITH closed AS (
             UPDATE intents_log SET processed_by_madre_at = ?2, result_status = ?3, notes = ?4
             WHERE id = ?1 AND num_nulls(processed_by_madre_at) = 1 RETURNING 1)
         SELECT CASE
             WHEN EXISTS (SELECT 1 FROM closed) THEN true
             WHEN EXISTS (SELECT 1 FROM intents_log WHERE id = ?1)
                 THEN {EXPECT}(false, '{EXPECTED_CONFLICT}', 'intent ' || ?1 || ' is already closed')
             ELSE {EXPECT}(false, '{EXPECTED_MISSING}', 'intent ' || ?1)
         END")
});

/// Closes intent `id` as [`Db::close_intent`] does, in one statement
/// that needs no answer (PostgreSQL, statements sent together): the server
/// checks that it closed the row, and fails the transaction with the
/// conflict or the row not found otherwise (see
/// [`crate::engine::sql::EXPECT`]).
fn close_checked_by_the_server(
    conn: &Conn<'_>,
    id: Uuid,
    at: DateTime<Utc>,
    result_status: &str,
    notes: Option<&str>,
) -> Result<(), DbError> {
    conn.prepare_cached(&CLOSE_CHECKED)?
        .run(params![id.to_string(), ts(at), result_status, notes])
}

impl Db {
    /// Appends a row to the intent log.
    pub fn log_intent(&self, entry: NewIntentLog) -> Write<()> {
        self.write(move |conn| insert_intent(conn, &entry))
    }

    /// Closes an open intent-log row with its outcome. A row closes once:
    /// closing it again is a conflict.
    pub fn close_intent(
        &self,
        id: Uuid,
        outcome: IntentOutcome,
        notes: Option<&str>,
        at: DateTime<Utc>,
    ) -> Write<()> {
        let result_status = outcome.as_str();
        let notes = notes.map(str::to_owned);
        self.write(move |conn| {
            if conn.sends_later() {
                return close_checked_by_the_server(conn, id, at, result_status, notes.as_deref());
            }
            let changed = conn
                .prepare_cached(
                    "UPDATE intents_log SET processed_by_madre_at = ?2, result_status = ?3, notes = ?4
                     WHERE id = ?1 AND processed_by_madre_at IS NULL",
                )?
                .execute(params![id.to_string(), ts(at), result_status, notes])?;
            if changed == 1 {
                return Ok(());
            }
            let exists: bool = conn
                .prepare_cached("SELECT 1 FROM intents_log WHERE id = ?1")?
                .exists([id.to_string()])?;
            if exists {
                Err(DbError::Conflict(format!("intent {id} is already closed")))
            } else {
                Err(DbError::not_found("intent", id))
            }
        })
    }

    /// Closes every intent-log row still open that was opened before
    /// `before`, with `outcome` (e.g. [`IntentOutcome::Interrupted`]): at start-up, the
    /// requests of a process that crashed will never close their own.
    /// Answers how many.
    pub fn close_abandoned_intents(
        &self,
        before: DateTime<Utc>,
        outcome: IntentOutcome,
        at: DateTime<Utc>,
    ) -> Write<u64> {
        let result_status = outcome.as_str();
        self.write(move |conn| {
            let n = conn
                .prepare_cached(
                    "UPDATE intents_log SET processed_by_madre_at = ?2, result_status = ?3
                     WHERE processed_by_madre_at IS NULL AND created_at < ?1",
                )?
                .execute(params![ts(before), ts(at), result_status])?;
            Ok(n as u64)
        })
    }

    /// How many intent-log rows are still open.
    pub fn count_open_intents(&self) -> Result<u64, DbError> {
        self.read(|conn| {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT count(*) FROM intents_log WHERE processed_by_madre_at IS NULL",
                )?
                .query_row((), |r| r.get(0))?;
            Ok(n as u64)
        })
    }

    /// The intent-log row of `id`.
    pub fn intent_log(&self, id: Uuid) -> Result<Option<IntentLogRow>, DbError> {
        self.read(|conn| {
            let row = conn
                .prepare_cached(
                    "SELECT source, principal, payload_json, created_at, processed_by_madre_at,
                            result_status, notes
                     FROM intents_log WHERE id = ?1",
                )?
                .query_row([id.to_string()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Ts>(3)?,
                        r.get::<_, Option<Ts>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                })
                .optional()?;
            row.map(
                |(source, principal, payload, created, processed, result_status, notes)| {
                    Ok(IntentLogRow {
                        id,
                        source,
                        principal,
                        payload: serde_json::from_str(&payload)?,
                        created_at: created.0,
                        processed_by_madre_at: processed.map(|t| t.0),
                        result_status,
                        notes,
                    })
                },
            )
            .transpose()
        })
    }

    /// How many intents were ever logged.
    pub fn count_intents(&self) -> Result<u64, DbError> {
        self.read(|conn| {
            let n: i64 = conn.query_row("SELECT count(*) FROM intents_log", (), |r| r.get(0))?;
            Ok(n as u64)
        })
    }
}
