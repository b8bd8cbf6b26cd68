//! Numbered migrations tracked by `PRAGMA user_version`, each applied in
//! its own transaction. A Madre database is recognised by its
//! `application_id`.

use rusqlite::{Connection, TransactionBehavior};
use std::path::Path;

use crate::DbError;

/// `PRAGMA application_id` of a Madre database ("MADR").
const APPLICATION_ID: i64 = 0x4D41_4452;

/// One migration: a script, or code where a script would repeat itself.
enum Migration {
    Sql(&'static str),
    Code(fn(&Connection) -> Result<(), DbError>),
}

/// The migrations, in order; migration `n` (1-based) brings the schema to version `n`.
const MIGRATIONS: &[Migration] = &[
    Migration::Sql(MIGRATION_1),
    Migration::Sql(MIGRATION_2),
    Migration::Sql(MIGRATION_3),
    Migration::Sql(MIGRATION_4),
    Migration::Sql(MIGRATION_5),
    Migration::Sql(MIGRATION_6),
    Migration::Sql(MIGRATION_7),
    Migration::Sql(MIGRATION_8),
    Migration::Sql(MIGRATION_9),
    Migration::Code(migration_10),
    Migration::Sql(MIGRATION_11),
    Migration::Sql(MIGRATION_12),
    Migration::Sql(MIGRATION_13),
    Migration::Sql(MIGRATION_14),
    Migration::Sql(MIGRATION_15),
    Migration::Sql(MIGRATION_16),
    Migration::Sql(MIGRATION_17),
    Migration::Sql(MIGRATION_18),
];

/// The schema version this code creates and understands.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], refusing foreign or newer files.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> Result<(), DbError> {
    migrate_to(conn, path, SCHEMA_VERSION)
}

/// Fails unless the file is empty or a Madre database of a known version.
pub(crate) fn check_owner(conn: &Connection, path: &Path) -> Result<i64, DbError> {
    let not_madre = || DbError::NotMadreDatabase {
        path: path.display().to_string(),
    };
    // A file that is not SQLite at all fails on the first read.
    let version: i64 = conn
        .query_row("PRAGMA user_version", (), |r| r.get(0))
        .map_err(|_| not_madre())?;
    let app_id: i64 = conn
        .query_row("PRAGMA application_id", (), |r| r.get(0))
        .map_err(|_| not_madre())?;
    if version == 0 {
        let objects: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )?;
        if objects > 0 || (app_id != 0 && app_id != APPLICATION_ID) {
            return Err(not_madre());
        }
    } else if app_id != APPLICATION_ID {
        return Err(not_madre());
    }
    if version > SCHEMA_VERSION {
        return Err(DbError::SchemaTooNew {
            path: path.display().to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(version)
}

/// Applies migrations up to `target` only; exposed for tests of upgrades.
#[doc(hidden)]
pub fn migrate_to(conn: &mut Connection, path: &Path, target: i64) -> Result<(), DbError> {
    let version = check_owner(conn, path)?;
    let mut migrated = false;
    for (index, sql) in MIGRATIONS.iter().enumerate().take(target as usize) {
        let number = index as i64 + 1;
        if number <= version {
            continue;
        }
        // A migration in code rebuilds tables that others refer to: as
        // SQLite's way to rebuild a table says, foreign keys are off while
        // it runs (a pragma a transaction cannot change) and checked whole
        // before it commits.
        let rebuilds = matches!(sql, Migration::Code(_));
        let enforced: bool = conn.query_row("PRAGMA foreign_keys", (), |r| r.get(0))?;
        if rebuilds {
            conn.execute_batch("PRAGMA foreign_keys = OFF")?;
        }
        let applied = apply(conn, sql, number);
        if rebuilds && enforced {
            conn.execute_batch("PRAGMA foreign_keys = ON")?;
        }
        applied?;
        tracing::info!(version = number, "database migrated");
        migrated = true;
    }
    if migrated {
        // Fold the migration into the file at once: pages it zeroed (old
        // rows that held secrets) replace their old versions on disk now.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", (), |_| Ok(()))?;
    }
    Ok(())
}

/// Applies migration `number` in one transaction, with the version.
fn apply(conn: &mut Connection, migration: &Migration, number: i64) -> Result<(), DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match migration {
        Migration::Sql(sql) => tx.execute_batch(sql)?,
        Migration::Code(migrate) => {
            // Only violations the migration made count: a file edited by
            // hand may hold older ones, which `madre check` is for.
            let broken = || -> Result<i64, DbError> {
                Ok(
                    tx.query_row("SELECT count(*) FROM pragma_foreign_key_check", (), |r| {
                        r.get(0)
                    })?,
                )
            };
            let before = broken()?;
            migrate(&tx)?;
            let after = broken()?;
            if after > before {
                return Err(DbError::InvalidData(format!(
                    "schema {number}: {} rows would refer to rows that are not there",
                    after - before
                )));
            }
        }
    }
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {number};"
    ))?;
    tx.commit()?;
    Ok(())
}

const MIGRATION_1: &str = r#"
CREATE TABLE intents_log (
    id                    TEXT PRIMARY KEY,
    source                TEXT NOT NULL,
    principal             TEXT NOT NULL,
    payload_json          TEXT NOT NULL,
    created_at            TEXT NOT NULL,
    processed_by_madre_at TEXT,
    result_status         TEXT,
    notes                 TEXT
);
CREATE TRIGGER intents_log_no_delete BEFORE DELETE ON intents_log
BEGIN SELECT RAISE(ABORT, 'intents_log is append-only: rows cannot be deleted'); END;
CREATE TRIGGER intents_log_close_once BEFORE UPDATE ON intents_log
WHEN OLD.processed_by_madre_at IS NOT NULL
  OR NEW.processed_by_madre_at IS NULL
  OR NEW.id IS NOT OLD.id
  OR NEW.source IS NOT OLD.source
  OR NEW.principal IS NOT OLD.principal
  OR NEW.payload_json IS NOT OLD.payload_json
  OR NEW.created_at IS NOT OLD.created_at
BEGIN SELECT RAISE(ABORT, 'intents_log is append-only: a row can only be closed, once'); END;

CREATE TABLE madre_actions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    module     TEXT NOT NULL,
    action     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    principal  TEXT NOT NULL,
    plan_id    TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX madre_actions_by_plan ON madre_actions (plan_id, id);
CREATE TRIGGER madre_actions_no_update BEFORE UPDATE ON madre_actions
BEGIN SELECT RAISE(ABORT, 'madre_actions is append-only: rows cannot be changed'); END;
CREATE TRIGGER madre_actions_no_delete BEFORE DELETE ON madre_actions
BEGIN SELECT RAISE(ABORT, 'madre_actions is append-only: rows cannot be deleted'); END;

CREATE TABLE tasks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    uuid          TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    module        TEXT NOT NULL,
    action        TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    result        TEXT,
    error         TEXT,
    kind          TEXT NOT NULL,
    intent_id     TEXT,
    session_id    TEXT,
    mode          TEXT NOT NULL,
    principal     TEXT NOT NULL,
    warnings_json TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX tasks_by_status ON tasks (status, id);
CREATE INDEX tasks_by_session ON tasks (session_id, id);
CREATE INDEX tasks_by_kind ON tasks (kind, id);

CREATE TABLE plan_steps (
    plan_id      TEXT NOT NULL REFERENCES tasks (uuid),
    idx          INTEGER NOT NULL,
    step_id      TEXT NOT NULL UNIQUE,
    type         TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    blocking     INTEGER NOT NULL,
    optional     INTEGER NOT NULL,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    result_json  TEXT,
    error        TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (plan_id, idx)
) WITHOUT ROWID;

CREATE TABLE context (
    task_id    TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX context_by_task ON context (task_id, key);

CREATE TABLE confirmations (
    plan_id         TEXT PRIMARY KEY REFERENCES tasks (uuid),
    token_sha256    TEXT NOT NULL,
    risk            TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    used_at         TEXT,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    principal       TEXT NOT NULL,
    confirmed_by    TEXT,
    outcome         TEXT
);
CREATE INDEX confirmations_open ON confirmations (expires_at) WHERE outcome IS NULL;

CREATE TABLE sessions (
    session_id       TEXT PRIMARY KEY,
    mode             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    last_activity_at TEXT NOT NULL,
    closed_at        TEXT
);
CREATE INDEX sessions_open ON sessions (last_activity_at) WHERE closed_at IS NULL;

CREATE TABLE madre_context (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    intent_id  TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX madre_context_by_session ON madre_context (session_id, id);

CREATE TABLE daughter_tasks (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    intent_id     TEXT,
    source        TEXT NOT NULL,
    priority      INTEGER NOT NULL DEFAULT 0,
    status        TEXT NOT NULL,
    task_type     TEXT NOT NULL,
    description   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    finished_at   TEXT,
    max_retries   INTEGER NOT NULL DEFAULT 0,
    current_retry INTEGER NOT NULL DEFAULT 0,
    metadata_json TEXT NOT NULL DEFAULT '{}',
    plan_json     TEXT,
    plan_id       TEXT,
    step_id       TEXT,
    claimed_by    TEXT,
    heartbeat_at  TEXT,
    result_json   TEXT,
    error         TEXT
);
CREATE INDEX daughter_tasks_queue ON daughter_tasks (status, priority DESC, id);

CREATE TABLE madre_spawns (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    daughter_task_id INTEGER NOT NULL REFERENCES daughter_tasks (id),
    pid              INTEGER,
    status           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    finished_at      TEXT
);
CREATE INDEX madre_spawns_finished ON madre_spawns (finished_at);

CREATE TABLE madre_policies (
    module             TEXT PRIMARY KEY,
    error_threshold    INTEGER NOT NULL,
    idle_seconds       INTEGER NOT NULL,
    enable_autosuspend INTEGER NOT NULL
);
"#;

const MIGRATION_2: &str = r#"
CREATE TABLE idempotency_keys (
    principal     TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status_code   INTEGER NOT NULL,
    response_json TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (principal, key)
) WITHOUT ROWID;
CREATE INDEX confirmations_by_token ON confirmations (token_sha256) WHERE outcome IS NULL;
"#;

/// The plan journal, counters for `/metrics`, idempotency reservations and
/// the indexes that keep cleanup from scanning history.
const MIGRATION_3: &str = r#"
CREATE TABLE plan_events (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id      INTEGER NOT NULL,
    plan_id      TEXT NOT NULL,
    session_id   TEXT,
    type         TEXT NOT NULL,
    step_id      TEXT,
    payload_json TEXT NOT NULL,
    principal    TEXT,
    replica      TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
CREATE INDEX plan_events_by_plan ON plan_events (task_id, seq);
CREATE TRIGGER plan_events_no_update BEFORE UPDATE ON plan_events
BEGIN SELECT RAISE(ABORT, 'plan_events is append-only: rows cannot be changed'); END;
CREATE TRIGGER plan_events_no_delete BEFORE DELETE ON plan_events
BEGIN SELECT RAISE(ABORT, 'plan_events is append-only: rows cannot be deleted'); END;

-- Plans made before the journal get a synthesized history: their creation
-- and, for finished ones, their end, marked as synthesized.
INSERT INTO plan_events (task_id, plan_id, session_id, type, payload_json, principal, replica, created_at)
SELECT id, uuid, session_id, 'plan_created', json_object('status', 'PENDING', 'synthesized', json('true')),
       principal, 'migration-3', created_at
FROM tasks ORDER BY id;
INSERT INTO plan_events (task_id, plan_id, session_id, type, payload_json, principal, replica, created_at)
SELECT id, uuid, session_id,
       CASE status WHEN 'WAITING' THEN 'plan_waiting' ELSE 'plan_finished' END,
       json_object('status', status, 'reason', error, 'synthesized', json('true')),
       NULL, 'migration-3', updated_at
FROM tasks WHERE status IN ('WAITING', 'DONE', 'ERROR', 'CANCELLED') ORDER BY id;

CREATE TABLE plan_status_counts (
    status TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO plan_status_counts (status, n) SELECT status, count(*) FROM tasks GROUP BY status;
CREATE TRIGGER tasks_count_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO plan_status_counts (status, n) VALUES (NEW.status, 1)
    ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_count_update AFTER UPDATE OF status ON tasks
WHEN NEW.status IS NOT OLD.status
BEGIN
    UPDATE plan_status_counts SET n = n - 1 WHERE status = OLD.status;
    INSERT INTO plan_status_counts (status, n) VALUES (NEW.status, 1)
    ON CONFLICT (status) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER tasks_count_delete AFTER DELETE ON tasks
BEGIN
    UPDATE plan_status_counts SET n = n - 1 WHERE status = OLD.status;
END;

-- A key is reserved before its work runs (no answer yet), and answers are
-- stored without confirmation tokens: the old rows lose theirs here.
CREATE TABLE idempotency_keys_v3 (
    principal     TEXT NOT NULL,
    key           TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status_code   INTEGER,
    response_json TEXT,
    plan_id       TEXT,
    created_at    TEXT NOT NULL,
    PRIMARY KEY (principal, key)
) WITHOUT ROWID;
PRAGMA secure_delete = ON;
INSERT INTO idempotency_keys_v3
SELECT principal, key, request_hash, status_code,
       json_remove(response_json, '$.confirm_token'),
       json_extract(response_json, '$.plan_id'), created_at
FROM idempotency_keys;
DROP TABLE idempotency_keys;
PRAGMA secure_delete = OFF;
ALTER TABLE idempotency_keys_v3 RENAME TO idempotency_keys;
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- A plan's risk, for listings (plans made before have none).
ALTER TABLE tasks ADD COLUMN risk TEXT;

CREATE INDEX intents_log_open ON intents_log (created_at) WHERE processed_by_madre_at IS NULL;
CREATE INDEX daughter_tasks_by_step ON daughter_tasks (step_id) WHERE step_id IS NOT NULL;
"#;

/// A chat's writes become appends: a plan's steps and context rows are
/// keyed by the plan's integer id (`tasks.id`) instead of its UUID text, so
/// the rows of plans created one after another land on the same last leaf
/// page, and the steps of one plan sit together on one page. The unique
/// index on `step_id` goes: a step is always found within its plan.
const MIGRATION_4: &str = r#"
CREATE TABLE plan_steps_v4 (
    task_id      INTEGER NOT NULL REFERENCES tasks (id),
    idx          INTEGER NOT NULL,
    step_id      TEXT NOT NULL,
    type         TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    blocking     INTEGER NOT NULL,
    optional     INTEGER NOT NULL,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    result_json  TEXT,
    error        TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    created_at   TEXT NOT NULL,
    updated_at   TEXT NOT NULL,
    PRIMARY KEY (task_id, idx)
) WITHOUT ROWID;
INSERT INTO plan_steps_v4
SELECT t.id, s.idx, s.step_id, s.type, s.payload_json, s.blocking, s.optional, s.status,
       s.attempts, s.result_json, s.error, s.started_at, s.finished_at, s.created_at, s.updated_at
FROM plan_steps s JOIN tasks t ON t.uuid = s.plan_id
ORDER BY t.id, s.idx;
DROP TABLE plan_steps;
ALTER TABLE plan_steps_v4 RENAME TO plan_steps;

CREATE TABLE context_v4 (
    id         INTEGER PRIMARY KEY,
    task_id    INTEGER NOT NULL REFERENCES tasks (id),
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    scope      TEXT NOT NULL,
    created_at TEXT NOT NULL
);
INSERT INTO context_v4 (task_id, key, value, scope, created_at)
SELECT t.id, c.key, c.value, c.scope, c.created_at
FROM context c JOIN tasks t ON t.uuid = c.task_id
ORDER BY t.id, c.rowid;
DROP TABLE context;
ALTER TABLE context_v4 RENAME TO context;
CREATE INDEX context_by_task ON context (task_id, key);
"#;

/// Every confirmation is found by its token, spent ones too: a token
/// re-posted after it was used, voided or expired is answered 409 or 410
/// for its own plan, not 403 as an unknown one.
const MIGRATION_5: &str = r#"
DROP INDEX confirmations_by_token;
CREATE INDEX confirmations_by_token ON confirmations (token_sha256);
"#;

/// Idempotency reservations get an owner (the attempt that made them), so
/// that only it may store the answer or release the key (issue 22).
/// Reservations of older processes have none; the start releases them.
const MIGRATION_6: &str = r#"
ALTER TABLE idempotency_keys ADD COLUMN owner TEXT;
"#;

/// Storage v2 (issue 22): the journal is the truth. A plan is one small
/// row in `plans` (what listings, filters and `/metrics` read) and its
/// journal in `plan_events`; step rows and context rows go. The
/// `plan_created` event carries the plan's body (its steps and intent);
/// every step's status, attempts, result and error are folded from the
/// events after it. A plan made before this version has its steps' state
/// as of the upgrade in that body, with `state_through` naming the last
/// event already counted in it. No table of a chat's path keeps
/// AUTOINCREMENT (a row id is the next integer; nothing deletes the newest
/// rows), counters are kept by the code in the commit that changes a
/// status, not by triggers, and tables keyed by text ids store their rows
/// in the key's b-tree (WITHOUT ROWID) instead of a table plus an index.
const MIGRATION_7: &str = r#"
PRAGMA defer_foreign_keys = ON;

CREATE TABLE plans (
    id            INTEGER PRIMARY KEY,
    uuid          TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    module        TEXT NOT NULL,
    action        TEXT NOT NULL,
    principal     TEXT NOT NULL,
    mode          TEXT NOT NULL,
    risk          TEXT,
    session_id    TEXT,
    intent_id     TEXT,
    status        TEXT NOT NULL,
    error         TEXT,
    result        TEXT,
    warnings_json TEXT NOT NULL DEFAULT '[]',
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
INSERT INTO plans (id, uuid, kind, name, module, action, principal, mode, risk, session_id,
                   intent_id, status, error, result, warnings_json, created_at, updated_at)
SELECT id, uuid, kind, name, module, action, principal, mode, risk, session_id,
       intent_id, status, error, result, warnings_json, created_at, updated_at
FROM tasks ORDER BY id;
CREATE INDEX plans_active ON plans (status, id) WHERE status IN ('PENDING', 'WAITING', 'RUNNING');
CREATE INDEX plans_by_session ON plans (session_id, id);

-- Every plan's body goes in its plan_created event; a plan stored
-- without one (outside the journal) gets one, synthesized.
INSERT INTO plan_events (task_id, plan_id, session_id, type, payload_json, principal, replica, created_at)
SELECT t.id, t.uuid, t.session_id, 'plan_created',
       json_object('status', 'PENDING', 'synthesized', json('true')),
       t.principal, 'migration-7', t.created_at
FROM tasks t
WHERE NOT EXISTS (SELECT 1 FROM plan_events e WHERE e.task_id = t.id AND e.type = 'plan_created')
ORDER BY t.id;

CREATE TABLE plan_events_v7 (
    seq          INTEGER PRIMARY KEY,
    plan         INTEGER NOT NULL,
    type         TEXT NOT NULL,
    step         INTEGER,
    payload_json TEXT NOT NULL,
    principal    TEXT,
    replica      TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
INSERT INTO plan_events_v7 (seq, plan, type, step, payload_json, principal, replica, created_at)
SELECT e.seq, e.task_id, e.type,
       (SELECT s.idx FROM plan_steps s WHERE s.task_id = e.task_id AND s.step_id = e.step_id),
       CASE WHEN e.type = 'plan_created' THEN json_set(e.payload_json,
           '$.steps', json(coalesce((
               SELECT json_group_array(json_object(
                   'step_id', s.step_id, 'type', s.type, 'payload', json(s.payload_json),
                   'blocking', json(CASE WHEN s.blocking THEN 'true' ELSE 'false' END),
                   'optional', json(CASE WHEN s.optional THEN 'true' ELSE 'false' END),
                   'status', s.status, 'attempts', s.attempts,
                   'result', json(s.result_json), 'error', s.error,
                   'created_at', s.created_at, 'updated_at', s.updated_at) ORDER BY s.idx)
               FROM plan_steps s WHERE s.task_id = e.task_id), '[]')),
           '$.intent', json((SELECT c.value FROM context c
                             WHERE c.task_id = e.task_id AND c.key = 'intent')),
           '$.state_through', (SELECT max(x.seq) FROM plan_events x WHERE x.task_id = e.task_id),
           '$.plan_status', (SELECT t.status FROM tasks t WHERE t.id = e.task_id))
       ELSE e.payload_json END,
       e.principal, e.replica, e.created_at
FROM plan_events e ORDER BY e.seq;
DROP TABLE plan_events;
ALTER TABLE plan_events_v7 RENAME TO plan_events;
CREATE INDEX plan_events_by_plan ON plan_events (plan, seq);
CREATE TRIGGER plan_events_no_update BEFORE UPDATE ON plan_events
BEGIN SELECT RAISE(ABORT, 'plan_events is append-only: rows cannot be changed'); END;
CREATE TRIGGER plan_events_no_delete BEFORE DELETE ON plan_events
BEGIN SELECT RAISE(ABORT, 'plan_events is append-only: rows cannot be deleted'); END;

CREATE TABLE confirmations_v7 (
    plan_id         TEXT PRIMARY KEY REFERENCES plans (uuid),
    token_sha256    TEXT NOT NULL,
    risk            TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    used_at         TEXT,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    principal       TEXT NOT NULL,
    confirmed_by    TEXT,
    outcome         TEXT
) WITHOUT ROWID;
INSERT INTO confirmations_v7 SELECT plan_id, token_sha256, risk, expires_at, used_at,
       failed_attempts, principal, confirmed_by, outcome FROM confirmations;
DROP TABLE confirmations;
ALTER TABLE confirmations_v7 RENAME TO confirmations;
CREATE INDEX confirmations_open ON confirmations (expires_at) WHERE outcome IS NULL;
CREATE INDEX confirmations_by_token ON confirmations (token_sha256);

DROP TABLE plan_steps;
DROP TABLE context;
DROP TRIGGER tasks_count_insert;
DROP TRIGGER tasks_count_update;
DROP TRIGGER tasks_count_delete;
DROP TABLE tasks;

-- Counters of finished plans only: plans still open are counted through
-- plans_active, which holds only them.
DELETE FROM plan_status_counts;
INSERT INTO plan_status_counts (status, n)
SELECT status, count(*) FROM plans WHERE status NOT IN ('PENDING', 'WAITING', 'RUNNING')
GROUP BY status;

CREATE TABLE intents_log_v7 (
    id                    TEXT PRIMARY KEY,
    source                TEXT NOT NULL,
    principal             TEXT NOT NULL,
    payload_json          TEXT NOT NULL,
    created_at            TEXT NOT NULL,
    processed_by_madre_at TEXT,
    result_status         TEXT,
    notes                 TEXT
) WITHOUT ROWID;
INSERT INTO intents_log_v7 SELECT id, source, principal, payload_json, created_at,
       processed_by_madre_at, result_status, notes FROM intents_log ORDER BY rowid;
DROP TABLE intents_log;
ALTER TABLE intents_log_v7 RENAME TO intents_log;
CREATE INDEX intents_log_open ON intents_log (created_at) WHERE processed_by_madre_at IS NULL;
CREATE TRIGGER intents_log_no_delete BEFORE DELETE ON intents_log
BEGIN SELECT RAISE(ABORT, 'intents_log is append-only: rows cannot be deleted'); END;
CREATE TRIGGER intents_log_close_once BEFORE UPDATE ON intents_log
WHEN OLD.processed_by_madre_at IS NOT NULL
  OR NEW.processed_by_madre_at IS NULL
  OR NEW.id IS NOT OLD.id
  OR NEW.source IS NOT OLD.source
  OR NEW.principal IS NOT OLD.principal
  OR NEW.payload_json IS NOT OLD.payload_json
  OR NEW.created_at IS NOT OLD.created_at
BEGIN SELECT RAISE(ABORT, 'intents_log is append-only: a row can only be closed, once'); END;

CREATE TABLE madre_actions_v7 (
    id         INTEGER PRIMARY KEY,
    module     TEXT NOT NULL,
    action     TEXT NOT NULL,
    reason     TEXT NOT NULL,
    principal  TEXT NOT NULL,
    plan_id    TEXT,
    created_at TEXT NOT NULL
);
INSERT INTO madre_actions_v7 SELECT id, module, action, reason, principal, plan_id, created_at
FROM madre_actions ORDER BY id;
DROP TABLE madre_actions;
ALTER TABLE madre_actions_v7 RENAME TO madre_actions;
CREATE INDEX madre_actions_by_plan ON madre_actions (plan_id, id);
CREATE TRIGGER madre_actions_no_update BEFORE UPDATE ON madre_actions
BEGIN SELECT RAISE(ABORT, 'madre_actions is append-only: rows cannot be changed'); END;
CREATE TRIGGER madre_actions_no_delete BEFORE DELETE ON madre_actions
BEGIN SELECT RAISE(ABORT, 'madre_actions is append-only: rows cannot be deleted'); END;

-- `turns` counts a session's turns, so its history is trimmed every few
-- turns rather than on each.
CREATE TABLE sessions_v7 (
    session_id       TEXT PRIMARY KEY,
    mode             TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    last_activity_at TEXT NOT NULL,
    closed_at        TEXT,
    turns            INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO sessions_v7 (session_id, mode, created_at, last_activity_at, closed_at)
SELECT session_id, mode, created_at, last_activity_at, closed_at FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_v7 RENAME TO sessions;
CREATE INDEX sessions_open ON sessions (last_activity_at) WHERE closed_at IS NULL;

CREATE TABLE madre_context_v7 (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    role       TEXT NOT NULL,
    content    TEXT NOT NULL,
    intent_id  TEXT,
    created_at TEXT NOT NULL
);
INSERT INTO madre_context_v7 SELECT id, session_id, role, content, intent_id, created_at
FROM madre_context ORDER BY id;
DROP TABLE madre_context;
ALTER TABLE madre_context_v7 RENAME TO madre_context;
CREATE INDEX madre_context_by_session ON madre_context (session_id, id);
"#;

/// Version 8: finished plans can move out of the database into archives
/// (issue 25). `archived_plans` says where each went (an archived plan's id
/// answers 410 naming its archive) and whether its archive line is known
/// written. `archive_gate` lists, only inside the archiver's transaction,
/// the plans whose rows it is deleting: the append-only tables refuse a
/// DELETE of any other row, and the archiver empties the list before it
/// commits, so no committed state ever opens the gate.
const MIGRATION_8: &str = r#"
CREATE TABLE archived_plans (
    uuid        TEXT PRIMARY KEY,
    archive     TEXT NOT NULL,
    archived_at TEXT NOT NULL,
    written     INTEGER NOT NULL DEFAULT 0,
    at_offset   INTEGER
) WITHOUT ROWID;
CREATE INDEX archived_plans_unwritten ON archived_plans (archive) WHERE written = 0;

CREATE TABLE archive_gate (
    plan_row  INTEGER PRIMARY KEY,
    plan_uuid TEXT NOT NULL,
    intent_id TEXT
);

DROP TRIGGER plan_events_no_delete;
CREATE TRIGGER plan_events_no_delete BEFORE DELETE ON plan_events
WHEN NOT EXISTS (SELECT 1 FROM archive_gate WHERE plan_row = OLD.plan)
BEGIN SELECT RAISE(ABORT, 'plan_events is append-only: rows cannot be deleted'); END;

DROP TRIGGER intents_log_no_delete;
CREATE TRIGGER intents_log_no_delete BEFORE DELETE ON intents_log
WHEN NOT EXISTS (SELECT 1 FROM archive_gate WHERE intent_id = OLD.id)
BEGIN SELECT RAISE(ABORT, 'intents_log is append-only: rows cannot be deleted'); END;

DROP TRIGGER madre_actions_no_delete;
CREATE TRIGGER madre_actions_no_delete BEFORE DELETE ON madre_actions
WHEN OLD.plan_id IS NULL OR NOT EXISTS (SELECT 1 FROM archive_gate WHERE plan_uuid = OLD.plan_id)
BEGIN SELECT RAISE(ABORT, 'madre_actions is append-only: rows cannot be deleted'); END;
"#;

/// Version 9: a conversation turn is one row of `turns` that keeps only
/// what Madre does not keep elsewhere (issue 25: each payload once). Bit 1
/// of `kept` says the user's message is the one the intent log holds for
/// the turn's intent, bit 2 that the reply is its plan's answer, read from
/// the plan's journal; a side with neither text nor bit is absent. The
/// intent is stored only when the plan's row does not already say it. Each
/// message of the old history becomes a turn of its own.
const MIGRATION_9: &str = r#"
CREATE TABLE turns (
    id         INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL,
    plan       INTEGER,
    intent_id  TEXT,
    asked      TEXT,
    answered   TEXT,
    kept       INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
INSERT INTO turns (session_id, intent_id, asked, answered, created_at)
SELECT session_id, intent_id,
       CASE WHEN role = 'assistant' THEN NULL ELSE content END,
       CASE WHEN role = 'assistant' THEN content END,
       created_at
FROM madre_context ORDER BY id;
DROP TABLE madre_context;
CREATE INDEX turns_by_session ON turns (session_id, id);
"#;

/// The time columns, by table, that version 10 stores as integers.
const TIME_COLUMNS: &[(&str, &[&str])] = &[
    ("plans", &["created_at", "updated_at"]),
    ("plan_events", &["created_at"]),
    ("confirmations", &["expires_at", "used_at"]),
    ("intents_log", &["created_at", "processed_by_madre_at"]),
    ("madre_actions", &["created_at"]),
    ("sessions", &["created_at", "last_activity_at", "closed_at"]),
    ("turns", &["created_at"]),
    ("idempotency_keys", &["created_at"]),
    (
        "daughter_tasks",
        &["created_at", "updated_at", "finished_at", "heartbeat_at"],
    ),
    ("madre_spawns", &["created_at", "finished_at"]),
    ("archived_plans", &["archived_at"]),
];

/// Version 10: every time is stored as an integer, microseconds since the
/// Unix epoch (8 bytes instead of 27 characters; issue 25), as PostgreSQL's
/// `timestamptz` is. Each table with a time column is rebuilt with the
/// column declared INTEGER and its rows copied, the times converted, then
/// its indexes and triggers made again as they were; AUTOINCREMENT
/// counters carry over.
fn migration_10(conn: &Connection) -> Result<(), DbError> {
    conn.create_scalar_function(
        "madre_micros",
        1,
        rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            use rusqlite::types::{Value, ValueRef};
            Ok(match ctx.get_raw(0) {
                ValueRef::Text(bytes) => {
                    let text = String::from_utf8_lossy(bytes);
                    // A time Madre never wrote (edited by hand) becomes
                    // the epoch: as text it would compare above every
                    // integer and never age.
                    Value::Integer(micros_of(&text).unwrap_or(0))
                }
                other => Value::from(other),
            })
        },
    )?;
    for (table, columns) in TIME_COLUMNS {
        let create: String = conn.query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        let mut retyped = create.replacen(&format!("\"{table}\""), &format!("{table}_v10"), 1);
        if retyped == create {
            retyped = create.replacen(&format!("TABLE {table}"), &format!("TABLE {table}_v10"), 1);
        }
        for column in *columns {
            retyped = retype(&retyped, column).ok_or_else(|| {
                DbError::InvalidData(format!("schema 10: no TEXT column {table}.{column}"))
            })?;
        }
        let kept: Vec<String> = conn
            .prepare(
                "SELECT sql FROM sqlite_master
                 WHERE tbl_name = ?1 AND type IN ('index', 'trigger') AND sql IS NOT NULL",
            )?
            .query_map([table], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let names: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?
            .query_map([table], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let select: Vec<String> = names
            .iter()
            .map(|n| match columns.contains(&n.as_str()) {
                true => format!("madre_micros({n})"),
                false => n.clone(),
            })
            .collect();
        let sequence: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = ?1",
                [table],
                |r| r.get(0),
            )
            .ok();
        conn.execute_batch(&format!(
            "{retyped};
             INSERT INTO {table}_v10 ({names}) SELECT {select} FROM {table};
             DROP TABLE {table};
             ALTER TABLE {table}_v10 RENAME TO {table};",
            names = names.join(", "),
            select = select.join(", "),
        ))?;
        for sql in kept {
            conn.execute_batch(&sql)?;
        }
        // The drop took the table's counter with it; an empty copy makes
        // none. The counter goes back as it was, never below a kept id.
        if let Some(seq) = sequence {
            conn.execute(
                "DELETE FROM sqlite_sequence WHERE name = ?1",
                rusqlite::params![table],
            )?;
            conn.execute(
                &format!(
                    "INSERT INTO sqlite_sequence (name, seq)
                     SELECT ?1, max(?2, coalesce((SELECT max(rowid) FROM {table}), 0))"
                ),
                rusqlite::params![table, seq],
            )?;
        }
    }
    Ok(())
}

/// Microseconds since the epoch of a stored time: RFC 3339, as Madre
/// writes, or SQLite's `YYYY-MM-DD HH:MM:SS[.fff]` in UTC.
fn micros_of(text: &str) -> Option<i64> {
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(at.timestamp_micros());
    }
    ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
        .iter()
        .find_map(|format| chrono::NaiveDateTime::parse_from_str(text, format).ok())
        .map(|at| at.and_utc().timestamp_micros())
}

/// `create` with column `column` declared INTEGER instead of TEXT.
fn retype(create: &str, column: &str) -> Option<String> {
    let start = create.match_indices(column).map(|(i, _)| i).find(|&i| {
        let before = create[..i].chars().next_back();
        let after = create[i + column.len()..].chars().next();
        matches!(before, Some(c) if c.is_whitespace() || c == '(' || c == ',')
            && matches!(after, Some(c) if c.is_whitespace())
    })?;
    let rest = &create[start + column.len()..];
    let gap = rest.len() - rest.trim_start().len();
    rest.trim_start().starts_with("TEXT").then(|| {
        format!(
            "{}{column}{}INTEGER{}",
            &create[..start],
            &rest[..gap],
            &rest[gap + "TEXT".len()..]
        )
    })
}

/// Version 11: a session's turns are keyed by the session and their number
/// in it (WITHOUT ROWID), so the table is its own index by session: one
/// b-tree a turn instead of two (issue 22), about 45 bytes fewer (issue 25).
const MIGRATION_11: &str = r#"
CREATE TABLE turns_v11 (
    session_id TEXT    NOT NULL,
    n          INTEGER NOT NULL,
    plan       INTEGER,
    intent_id  TEXT,
    asked      TEXT,
    answered   TEXT,
    kept       INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (session_id, n)
) WITHOUT ROWID;
INSERT INTO turns_v11 (session_id, n, plan, intent_id, asked, answered, kept, created_at)
SELECT session_id, row_number() OVER (PARTITION BY session_id ORDER BY id),
       plan, intent_id, asked, answered, kept, created_at
FROM turns;
DROP TABLE turns;
ALTER TABLE turns_v11 RENAME TO turns;
"#;

/// Version 12: a plan's creation is audited by its journal. The
/// `plan_created` event already holds who made the plan and when, and the
/// plan's row its module, action and risk, so no `madre_actions` row is
/// written for it any more (issue 22: two b-trees fewer a chat; issue 25:
/// 124 bytes). Plans created before keep their stored row; the journal's
/// sequence at the upgrade says which plans are which (a sequence number
/// is never handed out twice, unlike a plan's row id after archival). What
/// the entry reads from the plan's row is made unchangeable by trigger,
/// as the audit trail is.
const MIGRATION_12: &str = r#"
CREATE TABLE creation_audited_from (seq INTEGER NOT NULL);
INSERT INTO creation_audited_from (seq) SELECT coalesce(max(seq), 0) + 1 FROM plan_events;
-- What the creation entry reads from the plan's row is as fixed as an
-- audit row: the database refuses to change it.
CREATE TRIGGER plans_creation_is_fixed
BEFORE UPDATE OF module, action, risk, principal, created_at ON plans
BEGIN SELECT RAISE(ABORT, 'plans: who made a plan, its module, action, risk and time are its creation audit and never change'); END;
"#;

/// Version 13: a session has a row only while its sticky mode is not the
/// default (MADRE), which is all the row is for: a chat in the default
/// mode writes its turn and nothing else (issue 22: two b-trees fewer a
/// chat; issue 25: about 110 bytes). A session's turns number themselves
/// (`turns.n`), so the row no longer counts them.
const MIGRATION_13: &str = r#"
CREATE TABLE sessions_v13 (
    session_id       TEXT    PRIMARY KEY,
    mode             TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    last_activity_at INTEGER NOT NULL,
    closed_at        INTEGER
) WITHOUT ROWID;
INSERT INTO sessions_v13 (session_id, mode, created_at, last_activity_at, closed_at)
SELECT session_id, mode, created_at, last_activity_at, closed_at FROM sessions
WHERE mode <> 'MADRE';
DROP TABLE sessions;
ALTER TABLE sessions_v13 RENAME TO sessions;
CREATE INDEX sessions_open ON sessions (last_activity_at) WHERE closed_at IS NULL;
"#;

/// Version 14: the open-plan index's condition written as three equalities
/// instead of a three-value `IN` list. SQLite keeps the condition of a
/// partial index up to date on every insert and update of a plan, and it
/// evaluates an `IN` list of more than two values through a temporary
/// table built each time: three of them a chat (issue 22: writer CPU).
/// The queries that read the index say the same condition the same way.
const MIGRATION_14: &str = r#"
DROP INDEX plans_active;
CREATE INDEX plans_active ON plans (status, id)
    WHERE status = 'PENDING' OR status = 'WAITING' OR status = 'RUNNING';
"#;

/// Version 15: plan bodies stored once per shape (issue 25). A chat's
/// `plan_created` body is the same as the last chat's of its kind but for
/// its intent's time; that common part is stored once here, keyed by a
/// hash of its text, and the event names it (`crate::shapes`). A shape
/// never changes and is never deleted.
const MIGRATION_15: &str = r#"
CREATE TABLE plan_shapes (
    id   INTEGER PRIMARY KEY,
    body TEXT    NOT NULL
);
CREATE TRIGGER plan_shapes_no_update BEFORE UPDATE ON plan_shapes
BEGIN SELECT RAISE(ABORT, 'plan_shapes: a shape never changes (two bodies with one id)'); END;
CREATE TRIGGER plan_shapes_no_delete BEFORE DELETE ON plan_shapes
BEGIN SELECT RAISE(ABORT, 'plan_shapes: a shape is never deleted: plans refer to it'); END;
"#;

/// Version 16: a journal event's type and the replica that wrote it are
/// stored as small integers (issue 25: about 20 bytes an event). The types
/// keep the codes `journal::type_code` gives them; replicas are named once
/// in `replicas`. The journal is copied in its order, its `seq` kept.
pub(crate) const MIGRATION_16: &str = r#"
CREATE TABLE replicas (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
);
INSERT INTO replicas (name) SELECT DISTINCT replica FROM plan_events ORDER BY 1;
CREATE TABLE plan_events_v16 (
    seq          INTEGER PRIMARY KEY,
    plan         INTEGER NOT NULL,
    type         INTEGER NOT NULL,
    step         INTEGER,
    payload_json TEXT    NOT NULL,
    principal    TEXT,
    replica      INTEGER NOT NULL,
    created_at   INTEGER NOT NULL
);
INSERT INTO plan_events_v16 (seq, plan, type, step, payload_json, principal, replica, created_at)
SELECT e.seq, e.plan,
       CASE e.type
           WHEN 'plan_created' THEN 1 WHEN 'plan_waiting' THEN 2
           WHEN 'approval_recorded' THEN 3 WHEN 'plan_confirmed' THEN 4
           WHEN 'plan_rejected' THEN 5 WHEN 'plan_expired' THEN 6
           WHEN 'step_started' THEN 7 WHEN 'step_finished' THEN 8
           WHEN 'plan_finished' THEN 9 WHEN 'plan_taken_over' THEN 10
           -- A type no version wrote (a file edited by hand) stays as it
           -- is: reading its plan names the plan and the event.
           ELSE e.type
       END,
       e.step, e.payload_json, e.principal,
       (SELECT r.id FROM replicas r WHERE r.name = e.replica), e.created_at
FROM plan_events e ORDER BY e.seq;
DROP TABLE plan_events;
ALTER TABLE plan_events_v16 RENAME TO plan_events;
CREATE INDEX plan_events_by_plan ON plan_events (plan, seq);
CREATE TRIGGER plan_events_no_update BEFORE UPDATE ON plan_events
BEGIN SELECT RAISE(ABORT, 'plan_events is append-only: rows cannot be changed'); END;
CREATE TRIGGER plan_events_no_delete BEFORE DELETE ON plan_events
WHEN NOT EXISTS (SELECT 1 FROM archive_gate WHERE plan_row = OLD.plan)
BEGIN SELECT RAISE(ABORT, 'plan_events is append-only: rows cannot be deleted'); END;
CREATE TRIGGER replicas_no_update BEFORE UPDATE ON replicas
BEGIN SELECT RAISE(ABORT, 'replicas: a replica keeps its name: the journal refers to it'); END;
CREATE TRIGGER replicas_no_delete BEFORE DELETE ON replicas
BEGIN SELECT RAISE(ABORT, 'replicas: a replica is never deleted: the journal refers to it'); END;
"#;

/// Version 17: plan leases (SPEC §16, issue 24). A PENDING or RUNNING plan
/// names the replica executing it and until when (microseconds) it holds
/// it; the replica renews the lease while the plan runs, and another takes
/// the plan over once it lapses. Plans open before the upgrade have no
/// owner: the first replica to look takes them.
pub(crate) const MIGRATION_17: &str = r#"
ALTER TABLE plans ADD COLUMN owner INTEGER;
ALTER TABLE plans ADD COLUMN lease_expires_at INTEGER;
"#;

/// An intent's close is guarded by the columns an UPDATE names, as on
/// PostgreSQL, where comparing each row's payload cost the writer's session
/// two json texts a close: a row is closed once, and nothing else of it is
/// ever set, not even to the value it has. (PostgreSQL's schema 18 also
/// drops the foreign keys SQLite's journal never had.)
pub(crate) const MIGRATION_18: &str = r#"
DROP TRIGGER intents_log_close_once;
CREATE TRIGGER intents_log_close_once BEFORE UPDATE ON intents_log
WHEN OLD.processed_by_madre_at IS NOT NULL OR NEW.processed_by_madre_at IS NULL
BEGIN SELECT RAISE(ABORT, 'intents_log is append-only: a row can only be closed, once'); END;
CREATE TRIGGER intents_log_fixed
BEFORE UPDATE OF id, source, principal, payload_json, created_at ON intents_log
BEGIN SELECT RAISE(ABORT, 'intents_log is append-only: a row can only be closed, once'); END;
"#;
