-- Schema 17 to 18: the journal's rows and history turns name their plan and
-- replica without a foreign key, as in SQLite; an intent's close is
-- guarded by the columns an UPDATE names instead of comparing each row's
-- payload. Same rules, a seventh less work for the writer's session.
ALTER TABLE plan_events DROP CONSTRAINT plan_events_plan_fkey;
ALTER TABLE plan_events DROP CONSTRAINT plan_events_replica_fkey;
ALTER TABLE turns DROP CONSTRAINT turns_plan_fkey;
DROP TRIGGER intents_log_close_once ON intents_log;
CREATE TRIGGER intents_log_close_once BEFORE UPDATE ON intents_log FOR EACH ROW
    WHEN (OLD.processed_by_madre_at IS NOT NULL OR NEW.processed_by_madre_at IS NULL)
    EXECUTE FUNCTION madre_refuse('intents_log is append-only: a row can only be closed, once');
CREATE TRIGGER intents_log_fixed
    BEFORE UPDATE OF id, source, principal, payload_json, created_at ON intents_log FOR EACH ROW
    EXECUTE FUNCTION madre_refuse('intents_log is append-only: a row can only be closed, once');
