CREATE TABLE madre_schema (
    application text   NOT NULL CHECK (application = 'madre'),
    version     bigint NOT NULL
);
INSERT INTO madre_schema VALUES ('madre', 18);

-- Refuses a change to an append-only table, naming it, unless the
-- transaction is the archive's (SET LOCAL madre.archiving = 'on', see
-- "Retention" below). TG_ARGV[0] is the message.
CREATE FUNCTION madre_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('madre.archiving', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation';
END $$;

-- Refuses a change always, archive or not: for the rows the journal
-- refers to and the archive keeps (shapes, replicas).
CREATE FUNCTION madre_refuse_always() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation';
END $$;

-- The plan projection: what the list, its filters, /metrics and the
-- cleanup read. Everything else about a plan is folded from plan_events.
CREATE TABLE plans (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uuid          uuid        NOT NULL UNIQUE,
    kind          text        NOT NULL,
    name          text        NOT NULL,
    module        text        NOT NULL,
    action        text        NOT NULL,
    principal     text        NOT NULL,
    mode          text        NOT NULL,
    risk          text,
    session_id    text,
    intent_id     uuid,
    status        text        NOT NULL,
    error         text,
    result        json,
    warnings_json json        NOT NULL DEFAULT '[]',
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    -- The replica executing the plan and until when it holds it (a lease,
    -- renewed while it runs; schema 17): set while the plan is PENDING or
    -- RUNNING, cleared when it waits or ends.
    owner         bigint,
    lease_expires_at   timestamptz
);
CREATE INDEX plans_active ON plans (status, id) WHERE status IN ('PENDING', 'WAITING', 'RUNNING');
CREATE INDEX plans_by_session ON plans (session_id, id);

-- The processes that write the journal, named once (schema 16).
CREATE TABLE replicas (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TRIGGER replicas_no_update BEFORE UPDATE ON replicas FOR EACH ROW
    EXECUTE FUNCTION madre_refuse_always('replicas: a replica keeps its name: the journal refers to it');
CREATE TRIGGER replicas_no_delete BEFORE DELETE ON replicas FOR EACH ROW
    EXECUTE FUNCTION madre_refuse_always('replicas: a replica is never deleted: the journal refers to it');

-- Plan bodies common to many plans, stored once (schema 15). A
-- `plan_created` payload {"shape": id, ...} is this body with the
-- payload's other members added.
CREATE TABLE plan_shapes (
    id   bigint PRIMARY KEY,
    body json   NOT NULL
);
CREATE TRIGGER plan_shapes_no_update BEFORE UPDATE ON plan_shapes FOR EACH ROW
    EXECUTE FUNCTION madre_refuse_always('plan_shapes: a shape never changes (two bodies with one id)');
CREATE TRIGGER plan_shapes_no_delete BEFORE DELETE ON plan_shapes FOR EACH ROW
    EXECUTE FUNCTION madre_refuse_always('plan_shapes: a shape is never deleted: plans refer to it');

-- The journal: the truth about every plan. `seq` orders all events.
-- `plan` and `replica` name rows of plans and replicas without a foreign
-- key, as in SQLite (schema 18): a replica's writer inserts a plan and its
-- replica before any event of theirs; a replica is never deleted, and a
-- plan only by the archive, after its events.
CREATE TABLE plan_events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    plan         bigint      NOT NULL,
    type         smallint    NOT NULL,
    step         integer,
    payload_json json        NOT NULL,
    principal    text,
    replica      bigint      NOT NULL,
    created_at   timestamptz NOT NULL
);
CREATE INDEX plan_events_by_plan ON plan_events (plan, seq);
CREATE TRIGGER plan_events_no_update BEFORE UPDATE ON plan_events FOR EACH ROW
    EXECUTE FUNCTION madre_refuse('plan_events is append-only: rows cannot be changed');
CREATE TRIGGER plan_events_no_delete BEFORE DELETE ON plan_events FOR EACH ROW
    EXECUTE FUNCTION madre_refuse('plan_events is append-only: rows cannot be deleted');

-- Counters of finished plans, kept by the commit that finishes one.
CREATE TABLE plan_status_counts (
    status text   PRIMARY KEY,
    n      bigint NOT NULL
);

CREATE TABLE confirmations (
    plan_id         uuid        PRIMARY KEY REFERENCES plans (uuid),
    token_sha256    text        NOT NULL,
    risk            text        NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    failed_attempts integer     NOT NULL DEFAULT 0,
    principal       text        NOT NULL,
    confirmed_by    text,
    outcome         text
);
CREATE INDEX confirmations_open ON confirmations (expires_at) WHERE outcome IS NULL;
CREATE INDEX confirmations_by_token ON confirmations (token_sha256);

CREATE TABLE intents_log (
    id                    uuid        PRIMARY KEY,
    source                text        NOT NULL,
    principal             text        NOT NULL,
    payload_json          json        NOT NULL,
    created_at            timestamptz NOT NULL,
    processed_by_madre_at timestamptz,
    result_status         text,
    notes                 text
);
CREATE INDEX intents_log_open ON intents_log (created_at) WHERE processed_by_madre_at IS NULL;
CREATE TRIGGER intents_log_no_delete BEFORE DELETE ON intents_log FOR EACH ROW
    EXECUTE FUNCTION madre_refuse('intents_log is append-only: rows cannot be deleted');
-- A row is closed once; nothing else of it is ever set, not even to the
-- value it has (schema 18: the columns an UPDATE names are known before
-- any row is read, where comparing the payload cost each close two json
-- texts).
CREATE TRIGGER intents_log_close_once BEFORE UPDATE ON intents_log FOR EACH ROW
    WHEN (OLD.processed_by_madre_at IS NOT NULL OR NEW.processed_by_madre_at IS NULL)
    EXECUTE FUNCTION madre_refuse('intents_log is append-only: a row can only be closed, once');
CREATE TRIGGER intents_log_fixed
    BEFORE UPDATE OF id, source, principal, payload_json, created_at ON intents_log FOR EACH ROW
    EXECUTE FUNCTION madre_refuse('intents_log is append-only: a row can only be closed, once');

CREATE TABLE madre_actions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    module     text        NOT NULL,
    action     text        NOT NULL,
    reason     text        NOT NULL,
    principal  text        NOT NULL,
    plan_id    uuid,
    created_at timestamptz NOT NULL
);
CREATE INDEX madre_actions_by_plan ON madre_actions (plan_id, id);
CREATE TRIGGER madre_actions_no_update BEFORE UPDATE ON madre_actions FOR EACH ROW
    EXECUTE FUNCTION madre_refuse('madre_actions is append-only: rows cannot be changed');
CREATE TRIGGER madre_actions_no_delete BEFORE DELETE ON madre_actions FOR EACH ROW
    EXECUTE FUNCTION madre_refuse('madre_actions is append-only: rows cannot be deleted');

-- A plan's creation is audited by its journal (its plan_created event and
-- the event after it), with no madre_actions row, for plans whose
-- plan_created has at least this seq; earlier plans have a stored row.
CREATE TABLE creation_audited_from (seq bigint NOT NULL);
INSERT INTO creation_audited_from (seq) VALUES (1);
-- What that entry reads from the plan's row never changes.
CREATE TRIGGER plans_creation_is_fixed
    BEFORE UPDATE OF module, action, risk, principal, created_at ON plans FOR EACH ROW
    EXECUTE FUNCTION madre_refuse('plans: who made a plan, its module, action, risk and time are its creation audit and never change');

-- Only a session whose sticky mode is not the default (MADRE) has a row;
-- a chat in the default mode writes none, and removes its session's row
-- if it had one. A session's turns number themselves (turns.n).
CREATE TABLE sessions (
    session_id       text        PRIMARY KEY,
    mode             text        NOT NULL,
    created_at       timestamptz NOT NULL,
    last_activity_at timestamptz NOT NULL,
    closed_at        timestamptz
);
CREATE INDEX sessions_open ON sessions (last_activity_at) WHERE closed_at IS NULL;

-- A conversation turn, one row: each side is its text, or (bit 1 / bit 2
-- of `kept`) the intent log's message / the plan's answer, not stored again.
CREATE TABLE turns (
    session_id text        NOT NULL,
    n          integer     NOT NULL,
    plan       bigint,
    intent_id  uuid,
    asked      text,
    answered   text,
    kept       smallint    NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, n)
);

CREATE TABLE idempotency_keys (
    principal     text        NOT NULL,
    key           text        NOT NULL,
    request_hash  text        NOT NULL,
    status_code   integer,
    response_json json,
    plan_id       uuid,
    created_at    timestamptz NOT NULL,
    owner         text,
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);

-- The spawner's queue (claimed with FOR UPDATE SKIP LOCKED on PostgreSQL).
CREATE TABLE daughter_tasks (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    intent_id     uuid,
    source        text        NOT NULL,
    priority      integer     NOT NULL DEFAULT 0,
    status        text        NOT NULL,
    task_type     text        NOT NULL,
    description   text        NOT NULL,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    max_retries   integer     NOT NULL DEFAULT 0,
    current_retry integer     NOT NULL DEFAULT 0,
    metadata_json json        NOT NULL DEFAULT '{}',
    plan_json     json,
    plan_id       uuid,
    step_id       uuid,
    claimed_by    text,
    heartbeat_at  timestamptz,
    result_json   json,
    error         text
);
CREATE INDEX daughter_tasks_queue ON daughter_tasks (status, priority DESC, id);
CREATE INDEX daughter_tasks_by_step ON daughter_tasks (step_id) WHERE step_id IS NOT NULL;

CREATE TABLE madre_spawns (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    daughter_task_id bigint      NOT NULL REFERENCES daughter_tasks (id),
    pid              integer,
    status           text        NOT NULL,
    created_at       timestamptz NOT NULL,
    finished_at      timestamptz
);
CREATE INDEX madre_spawns_finished ON madre_spawns (finished_at);

-- Where each archived plan went, and whether its archive line is known
-- written (retention; schema 8).
CREATE TABLE archived_plans (
    uuid        uuid        PRIMARY KEY,
    archive     text        NOT NULL,
    archived_at timestamptz NOT NULL,
    written     smallint    NOT NULL DEFAULT 0,
    at_offset   bigint
);
CREATE INDEX archived_plans_unwritten ON archived_plans (archive) WHERE written = 0;

CREATE TABLE madre_policies (
    module             text    PRIMARY KEY,
    error_threshold    integer NOT NULL,
    idle_seconds       integer NOT NULL,
    enable_autosuspend boolean NOT NULL
);
