//! Conversations: the session row (mode, activity) and its capped history.

use chrono::{DateTime, Utc};
use madre_models::Mode;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Its id.
    pub session_id: String,
    /// The sticky mode.
    pub mode: Mode,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// Last message.
    pub last_activity_at: DateTime<Utc>,
    /// When it was closed for idleness, if it was.
    pub closed_at: Option<DateTime<Utc>>,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
    /// The intent it belongs to.
    pub intent_id: Option<Uuid>,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Messages per INSERT statement (a turn has two).
const MESSAGES_PER_INSERT: usize = 8;

/// Turns between two trims of a session's history.
const TRIM_EVERY: i64 = 8;

/// Whether a session's history is trimmed after turn `turns`: every
/// [`TRIM_EVERY`] turns once it may hold more than `keep` messages. Until
/// then it holds at most `TRIM_EVERY` turns' messages more than `keep`,
/// which no reader sees: [`Db::history`] answers the newest `keep` or fewer.
fn trim_due(turns: i64, per_turn: usize, keep: u32) -> bool {
    let most = turns.saturating_mul(per_turn.max(1) as i64);
    most > i64::from(keep) && turns % TRIM_EVERY == 0
}

/// Drops all but the newest `?2` messages of session `?1`.
pub(crate) const TRIM_SESSION: &str = "DELETE FROM madre_context WHERE session_id = ?1 AND id NOT IN (SELECT id FROM madre_context WHERE session_id = ?1 ORDER BY id DESC LIMIT ?2)";

pub(crate) fn trim_session(conn: &Connection, session_id: &str, keep: u32) -> Result<u64, DbError> {
    let n = conn
        .prepare_cached(TRIM_SESSION)?
        .execute(params![session_id, keep])?;
    Ok(n as u64)
}

/// The session `session_id`, read on `conn`.
pub(crate) fn session_in(
    conn: &Connection,
    session_id: &str,
) -> Result<Option<SessionRow>, DbError> {
    let row = conn
        .prepare_cached(
            "SELECT mode, created_at, last_activity_at, closed_at FROM sessions WHERE session_id = ?1",
        )?
        .query_row([session_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Ts>(1)?, r.get::<_, Ts>(2)?, r.get::<_, Option<Ts>>(3)?))
        })
        .optional()?;
    row.map(|(mode, created, last, closed)| {
        Ok(SessionRow {
            session_id: session_id.to_owned(),
            mode: mode
                .parse()
                .map_err(|_| DbError::InvalidData(format!("unknown mode {mode:?}")))?,
            created_at: created.0,
            last_activity_at: last.0,
            closed_at: closed.map(|t| t.0),
        })
    })
    .transpose()
}

impl Db {
    /// The session `session_id`, if it exists.
    pub fn session(&self, session_id: &str) -> Result<Option<SessionRow>, DbError> {
        self.read(|conn| session_in(conn, session_id))
    }

    /// Records a conversation turn: creates or reopens the session with
    /// `mode`, appends `messages` as (role, content), and every few turns
    /// trims the session to its newest `keep` messages (reads never see
    /// more than they ask for).
    pub fn record_turn(
        &self,
        session_id: String,
        mode: Mode,
        intent_id: Option<Uuid>,
        messages: Vec<(String, String)>,
        keep: u32,
        at: DateTime<Utc>,
    ) -> Write<()> {
        self.write(move |conn| {
            let turns: i64 = conn
                .prepare_cached(
                    "INSERT INTO sessions (session_id, mode, created_at, last_activity_at, turns)
                     VALUES (?1, ?2, ?3, ?3, 1)
                     ON CONFLICT (session_id) DO UPDATE SET
                        mode = excluded.mode, last_activity_at = excluded.last_activity_at,
                        closed_at = NULL, turns = turns + 1
                     RETURNING turns",
                )?
                .query_row(params![session_id, mode.as_str(), ts(at)], |r| r.get(0))?;
            let intent = intent_id.map(|i| i.to_string());
            let at = ts(at);
            for chunk in messages.chunks(MESSAGES_PER_INSERT) {
                let mut sql = String::from(
                    "INSERT INTO madre_context (session_id, role, content, intent_id, created_at) VALUES ",
                );
                let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(chunk.len() * 5);
                for (i, (role, content)) in chunk.iter().enumerate() {
                    sql.push_str(if i == 0 { "(?, ?, ?, ?, ?)" } else { ", (?, ?, ?, ?, ?)" });
                    args.extend([&session_id as &dyn rusqlite::ToSql, role, content, &intent, &at]);
                }
                conn.prepare_cached(&sql)?.execute(args.as_slice())?;
            }
            if trim_due(turns, messages.len(), keep) {
                trim_session(conn, &session_id, keep)?;
            }
            Ok(())
        })
    }

    /// The newest `limit` messages of a session, oldest first.
    pub fn history(&self, session_id: &str, limit: u32) -> Result<Vec<HistoryMessage>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT role, content, intent_id, created_at FROM
                   (SELECT id, role, content, intent_id, created_at FROM madre_context
                    WHERE session_id = ?1 ORDER BY id DESC LIMIT ?2)
                 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![session_id, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Ts>(3)?,
                ))
            })?;
            rows.map(|row| {
                let (role, content, intent, created) = row?;
                Ok(HistoryMessage {
                    role,
                    content,
                    intent_id: intent
                        .as_deref()
                        .map(Uuid::parse_str)
                        .transpose()
                        .map_err(|e| DbError::InvalidData(e.to_string()))?,
                    created_at: created.0,
                })
            })
            .collect()
        })
    }
}
