//! Conversations: the session row (mode, activity) and its capped history.

use crate::engine::sql::{Conn, OptionalExtension};
use chrono::{DateTime, Utc};
use madre_models::Mode;
use rusqlite::params;
use uuid::Uuid;

use crate::time::{Ts, ts};
use crate::{Db, DbError, Write};

/// A session's stored state: only a session whose sticky mode is not the
/// default (MADRE) has one, from its first turn in that mode until a turn
/// in the default mode (a session closed for idleness gets the default
/// mode at its next turn); a session without one is in the default mode.
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

/// One side of a conversation turn, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// Nothing was said on this side.
    Nothing,
    /// This text.
    Text(String),
    /// What Madre already keeps, read from there rather than stored again
    /// (issue 25: each payload once): for the user's side, the message the
    /// intent log holds for the turn's intent; for the reply, the answer
    /// of the turn's plan.
    Kept,
}

/// A conversation turn to record: what the user asked and what Madre
/// answered, in one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTurn {
    /// The session.
    pub session_id: String,
    /// The session's sticky mode from now on.
    pub mode: Mode,
    /// The intent the turn belongs to; needed when `asked` is [`Said::Kept`].
    pub intent_id: Option<Uuid>,
    /// The plan that answered; needed when `answered` is [`Said::Kept`].
    pub plan_id: Option<Uuid>,
    /// The user's message.
    pub asked: Said,
    /// Madre's reply.
    pub answered: Said,
    /// Messages the session keeps (older turns are trimmed away).
    pub keep: u32,
    /// When.
    pub at: DateTime<Utc>,
}

/// Bit of `turns.kept`: the user's message is the intent log's.
const ASKED_KEPT: i64 = 1;
/// Bit of `turns.kept`: the reply is the plan's answer.
const ANSWERED_KEPT: i64 = 2;

impl Said {
    /// The text column and the `kept` bit of this side.
    fn stored(&self, bit: i64) -> (Option<&str>, i64) {
        match self {
            Said::Nothing => (None, 0),
            Said::Text(text) => (Some(text), 0),
            Said::Kept => (None, bit),
        }
    }
}

/// Turns between two trims of a session's history.
const TRIM_EVERY: i64 = 8;

/// Whether a session's history is trimmed after turn `turns`: every
/// [`TRIM_EVERY`] turns once it may hold more than `keep` messages (two a
/// turn at most). Until then it holds at most `TRIM_EVERY` turns more than
/// it keeps, which no reader sees: [`Db::history`] answers the newest
/// `limit` or fewer.
fn trim_due(turns: i64, keep: u32) -> bool {
    turns.saturating_mul(2) > i64::from(keep) && turns % TRIM_EVERY == 0
}

/// The turns of session `?1` older than those holding its newest `?2`
/// messages (see [`TRIM_SESSION`]), as a condition on `n`.
macro_rules! older_than_kept {
    () => {
        "n < (
            SELECT coalesce(min(CASE WHEN newer - here < ?2 THEN n END), max(n)) FROM (
                SELECT n, here, sum(here) OVER (ORDER BY n DESC) AS newer FROM (
                    SELECT n, CASE WHEN asked IS NOT NULL OR kept & 1 <> 0 THEN 1 ELSE 0 END
                            + CASE WHEN answered IS NOT NULL OR kept & 2 <> 0 THEN 1 ELSE 0 END AS here
                    FROM turns WHERE session_id = ?1) sides) running)"
    };
}

/// Drops the turns of session `?1` older than those holding its newest
/// `?2` messages: a turn is kept whole, so a read of `?2` messages always
/// finds them (one more may stay), and the newest turn always stays.
pub(crate) const TRIM_SESSION: &str = concat!(
    "DELETE FROM turns WHERE session_id = ?1 AND ",
    older_than_kept!()
);

/// [`TRIM_SESSION`] when [`trim_due`] says so of the session's newest
/// turn, decided by the statement itself (for a write that reads nothing
/// first, on PostgreSQL): the trim is the writer session's
/// `pg_temp.madre_trim` ([`TRIM_FUNCTION`]), called only when due, so the
/// turns that are not (seven of eight, and every first turn) cost the
/// server one look at the session's newest turn instead of starting the
/// trim's whole statement. Being a `SELECT`, it adds nothing to the
/// writer's counts of statements and changed rows, where SQLite's trim
/// counts as a statement and its deleted turns as changes; what a session
/// keeps is the same on both.
const TRIM_SESSION_WHEN_DUE: &str =
    "SELECT pg_temp.madre_trim(CAST(?1 AS text), CAST(?2 AS bigint))
     FROM (SELECT max(n) AS newest FROM turns WHERE session_id = ?1) AS last
     WHERE newest % ?3 = 0 AND newest * 2 > ?2";

/// The definition of `pg_temp.madre_trim(session, keep)`, [`TRIM_SESSION`]
/// as a function of the PostgreSQL writer's session (defined whenever the
/// session opens, with the rest of what it sets up: see
/// [`Db::open_postgres`]).
pub(crate) static TRIM_FUNCTION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "CREATE OR REPLACE FUNCTION pg_temp.madre_trim(text, bigint) RETURNS void
         LANGUAGE plpgsql AS $$ BEGIN {}; END $$",
        crate::engine::sql::postgres_parameters(TRIM_SESSION)
    )
});

/// Only a session whose mode is not the default has a row (it is what the
/// row is for): a turn in another mode stores or reopens it, and one back
/// in the default mode removes it, when the session may have one.
fn keep_session_row(conn: &Conn<'_>, turn: &NewTurn, may_have_row: bool) -> Result<(), DbError> {
    if turn.mode != Mode::Madre {
        conn.prepare_cached(
            "INSERT INTO sessions (session_id, mode, created_at, last_activity_at)
             VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (session_id) DO UPDATE SET
                mode = excluded.mode, last_activity_at = excluded.last_activity_at,
                closed_at = NULL",
        )?
        .run(params![turn.session_id, turn.mode.as_str(), ts(turn.at)])?;
    } else if may_have_row {
        conn.prepare_cached("DELETE FROM sessions WHERE session_id = ?1")?
            .run([&turn.session_id])?;
    }
    Ok(())
}

/// The turn insert of [`record_turn_unread`], written once.
static TURN_UNREAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    use crate::engine::sql::{EXPECT, EXPECTED_MISSING};
    format!("INSERT INTO turns (session_id, n, plan, intent_id, asked, answered, kept, created_at)
         SELECT CAST(?1 AS text), coalesce((SELECT max(n) FROM turns WHERE session_id = ?1), 0) + 1,
                p.id, CASE WHEN p.intent_id IS DISTINCT FROM CAST(?3 AS uuid) THEN CAST(?3 AS uuid) END,
                CAST(?4 AS text), CAST(?5 AS text), CAST(?6 AS smallint), CAST(?7 AS timestamptz)
         FROM (SELECT 1) AS one LEFT JOIN plans p ON p.uuid = CAST(?2 AS uuid)
         WHERE CASE WHEN CAST(?6 AS smallint) & 2 = 0 OR p.id IS NOT NULL THEN true
                    ELSE {EXPECT}(false, '{EXPECTED_MISSING}', 'plan ' || coalesce(CAST(?2 AS text), ''))
               END")
});

/// As [`TURN_UNREAD`], removing the session's row in the same statement
/// (a turn in the default mode, whose session keeps no row).
static TURN_UNREAD_NO_ROW: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH no_row AS (DELETE FROM sessions WHERE session_id = CAST(?1 AS text))\n{}",
        *TURN_UNREAD
    )
});

/// Records `turn` as [`Db::record_turn`] does, reading nothing first
/// (PostgreSQL, statements sent together): its statements look up what
/// SQLite's read gives (the session's last turn, the plan's row and
/// intent), a session in the default mode has its row removed whether or
/// not it has one, the trim decides by itself whether it is due, and the
/// server checks that a side kept by reference has its plan (see
/// [`crate::engine::sql::EXPECT`]).
fn record_turn_unread(
    conn: &Conn<'_>,
    turn: &NewTurn,
    asked: Option<&str>,
    answered: Option<&str>,
    kept: i64,
) -> Result<(), DbError> {
    let insert: &str = if turn.mode == Mode::Madre {
        &TURN_UNREAD_NO_ROW
    } else {
        keep_session_row(conn, turn, true)?;
        &TURN_UNREAD
    };
    conn.prepare_cached(insert)?.run(params![
        turn.session_id,
        turn.plan_id.map(|p| p.to_string()),
        turn.intent_id.map(|i| i.to_string()),
        asked,
        answered,
        kept,
        ts(turn.at),
    ])?;
    conn.prepare_cached(TRIM_SESSION_WHEN_DUE)?
        .run(params![turn.session_id, turn.keep, TRIM_EVERY])
}

pub(crate) fn trim_session(conn: &Conn<'_>, session_id: &str, keep: u32) -> Result<u64, DbError> {
    let n = conn
        .prepare_cached(TRIM_SESSION)?
        .execute(params![session_id, keep])?;
    Ok(n as u64)
}

/// The session `session_id`, read on `conn`.
pub(crate) fn session_in(conn: &Conn<'_>, session_id: &str) -> Result<Option<SessionRow>, DbError> {
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
    /// The stored state of session `session_id`, if it has one (see
    /// [`SessionRow`]).
    pub fn session(&self, session_id: &str) -> Result<Option<SessionRow>, DbError> {
        self.read(|conn| session_in(conn, session_id))
    }

    /// Records a conversation turn in one row: stores or reopens the
    /// session's mode when it is not the default, or removes the
    /// session's row when the turn is back in the default mode (see
    /// [`SessionRow`]), and every few turns trims the session
    /// to its newest `keep` messages (reads never see more than they ask
    /// for). A side said [`Said::Kept`] without the intent or plan to read
    /// it from is refused.
    pub fn record_turn(&self, turn: NewTurn) -> Write<()> {
        self.write(move |conn| {
            let (asked, asked_kept) = turn.asked.stored(ASKED_KEPT);
            let (answered, answered_kept) = turn.answered.stored(ANSWERED_KEPT);
            if (asked_kept != 0 && turn.intent_id.is_none())
                || (answered_kept != 0 && turn.plan_id.is_none())
            {
                return Err(DbError::InvalidData(
                    "a turn keeps a side by reference without the intent or plan holding it".into(),
                ));
            }
            if conn.sends_later() {
                return record_turn_unread(
                    conn,
                    &turn,
                    asked,
                    answered,
                    asked_kept | answered_kept,
                );
            }
            // What the turn's writes depend on, in one read: whether the
            // session has a row, its last turn's number, and the plan's
            // row and intent. (Plain inserts after it: an INSERT that
            // selects from its own table, or returns rows, builds a
            // temporary table each time.)
            let (had_row, last, plan_row, plan_intent): (bool, i64, Option<i64>, Option<String>) = conn
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM sessions WHERE session_id = ?1),
                            coalesce((SELECT max(n) FROM turns WHERE session_id = ?1), 0),
                            (SELECT id FROM plans WHERE uuid = ?2),
                            (SELECT intent_id FROM plans WHERE uuid = ?2)",
                )?
                .query_row(
                    params![turn.session_id, turn.plan_id.map(|p| p.to_string())],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )?;
            if answered_kept != 0 && plan_row.is_none() {
                return Err(DbError::not_found("plan", turn.plan_id.unwrap_or_default()));
            }
            keep_session_row(conn, &turn, had_row)?;
            // The intent is stored only when the plan's row does not say it.
            let intent = turn.intent_id.map(|i| i.to_string());
            let intent = intent.filter(|i| plan_intent.as_deref() != Some(i.as_str()));
            let turns = last + 1;
            conn.prepare_cached(
                "INSERT INTO turns (session_id, n, plan, intent_id, asked, answered, kept, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .run(params![
                turn.session_id,
                turns,
                plan_row,
                intent,
                asked,
                answered,
                asked_kept | answered_kept,
                ts(turn.at),
            ])?;
            if trim_due(turns, turn.keep) {
                trim_session(conn, &turn.session_id, turn.keep)?;
            }
            Ok(())
        })
    }

    /// The newest `limit` messages of a session, oldest first. A side kept
    /// by reference is read from the intent log or the plan's journal.
    pub fn history(&self, session_id: &str, limit: u32) -> Result<Vec<HistoryMessage>, DbError> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT t.asked, t.answered, t.kept, coalesce(t.intent_id, p.intent_id), p.id,
                        t.created_at, l.payload_json
                 FROM (SELECT * FROM turns WHERE session_id = ?1 ORDER BY n DESC LIMIT ?2) t
                 LEFT JOIN plans p ON p.id = t.plan
                 LEFT JOIN intents_log l
                        ON t.kept & 1 <> 0 AND l.id = coalesce(t.intent_id, p.intent_id)
                 ORDER BY t.n",
            )?;
            let rows = stmt.query_map(params![session_id, limit], |r| {
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Ts>(5)?,
                    r.get::<_, Option<String>>(6)?,
                ))
            })?;
            let mut messages = Vec::new();
            for row in rows {
                let (asked, answered, kept, intent, plan, created, logged) = row?;
                let intent_id = intent
                    .as_deref()
                    .map(Uuid::parse_str)
                    .transpose()
                    .map_err(|e| DbError::InvalidData(e.to_string()))?;
                let asked = match asked {
                    Some(text) => Some(text),
                    None if kept & ASKED_KEPT != 0 => Some(logged_message(logged, intent_id)?),
                    None => None,
                };
                let answered = match answered {
                    Some(text) => Some(text),
                    None if kept & ANSWERED_KEPT != 0 => Some(plan_reply(conn, plan)?),
                    None => None,
                };
                for (role, content) in [("user", asked), ("assistant", answered)] {
                    if let Some(content) = content {
                        messages.push(HistoryMessage {
                            role: role.to_owned(),
                            content,
                            intent_id,
                            created_at: created.0,
                        });
                    }
                }
            }
            let skip = messages.len().saturating_sub(limit as usize);
            messages.drain(..skip);
            Ok(messages)
        })
    }
}

/// The message of an intent-log payload, for a turn that keeps it there.
fn logged_message(payload: Option<String>, intent: Option<Uuid>) -> Result<String, DbError> {
    let missing = || {
        DbError::InvalidData(format!(
            "a turn of intent {} keeps its message in an intent log row that does not hold one",
            intent.map(|i| i.to_string()).unwrap_or_default()
        ))
    };
    let payload: serde_json::Value = serde_json::from_str(&payload.ok_or_else(missing)?)?;
    payload
        .get("message")
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned)
        .ok_or_else(missing)
}

/// The reply of plan row `plan_row`, for a turn that keeps it there: the
/// plan's row holds it, or its end refers to a step's answer.
fn plan_reply(conn: &Conn<'_>, plan_row: Option<i64>) -> Result<String, DbError> {
    let plan_row = plan_row.ok_or_else(|| {
        DbError::InvalidData("a turn keeps its reply in a plan that is not stored".into())
    })?;
    let from_row: Option<String> = conn
        .prepare_cached("SELECT result FROM plans WHERE id = ?1")?
        .query_row([plan_row], |r| r.get(0))?;
    let result = match from_row {
        Some(text) => Some(serde_json::from_str(&text)?),
        None => crate::journal::result_by_reference(conn, plan_row)?,
    };
    result
        .and_then(|r| {
            r.get("reply")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        })
        .ok_or_else(|| {
            DbError::InvalidData(format!("plan row {plan_row} has no reply for its turn"))
        })
}

/// The turns of plan row `?1`, found through their session's index, with
/// what their kept sides refer to.
pub(crate) const SETTLE_TURNS: &str =
    "SELECT t.session_id, t.n, t.kept, coalesce(t.intent_id, p.intent_id), l.payload_json
    FROM plans p JOIN turns t ON t.session_id = p.session_id AND t.plan = p.id
    LEFT JOIN intents_log l ON t.kept & 1 <> 0 AND l.id = coalesce(t.intent_id, p.intent_id)
    WHERE p.id = ?1";

/// Makes the turns of plan row `plan_row` stand alone before the plan
/// leaves the database for its archive: a side kept by reference to the
/// plan's intent or answer gets its text, and the plan's intent id is
/// written in the turn. The history reads as before; only then are those
/// texts stored in the turn.
pub(crate) fn settle_turns_of(conn: &Conn<'_>, plan_row: i64) -> Result<(), DbError> {
    type Settled = (String, i64, i64, Option<String>, Option<String>);
    let turns: Vec<Settled> = conn
        .prepare_cached(SETTLE_TURNS)?
        .query_map([plan_row], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    for (session, n, kept, intent, logged) in turns {
        let intent_id = intent
            .as_deref()
            .map(Uuid::parse_str)
            .transpose()
            .ok()
            .flatten();
        let asked = match kept & ASKED_KEPT {
            0 => None,
            _ => Some(logged_message(logged, intent_id)?),
        };
        let answered = match kept & ANSWERED_KEPT {
            0 => None,
            _ => Some(plan_reply(conn, Some(plan_row))?),
        };
        conn.prepare_cached(
            "UPDATE turns SET asked = coalesce(asked, ?2), answered = coalesce(answered, ?3),
                              intent_id = ?4, kept = 0, plan = NULL
             WHERE session_id = ?1 AND n = ?5",
        )?
        .execute(params![session, asked, answered, intent, n])?;
    }
    Ok(())
}
