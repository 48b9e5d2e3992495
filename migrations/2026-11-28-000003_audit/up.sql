-- The audit service's schema: security events, append-only.
CREATE SCHEMA IF NOT EXISTS audit;

CREATE TABLE audit.events (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Producer-chosen id; redelivery of the same event is ignored.
    id           uuid NOT NULL UNIQUE,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    event_type   text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 128),
    outcome      text NOT NULL CHECK (outcome IN ('success', 'failure')),
    actor        text NOT NULL DEFAULT '',
    subject      text NOT NULL DEFAULT '',
    source_ip    text NOT NULL DEFAULT '',
    user_agent   text NOT NULL DEFAULT '',
    request_id   text NOT NULL DEFAULT '',
    producer     text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(details) = 'object')
);
CREATE INDEX events_type_seq ON audit.events (event_type, seq DESC);
CREATE INDEX events_subject_seq ON audit.events (subject, seq DESC);

-- Append-only, whatever role connects: updates and deletes are refused.
CREATE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON audit.events
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
