-- An event's recorded_at is the database's clock, whatever the insert says: retention
-- (audit.prune) cuts by recorded_at, and an event dated back by its writer (the audit
-- role may insert) made prune_retained(now() - 31 days) cut past everything before
-- it, however young. Retention also cuts before the first event that is young
-- enough, not after the newest one that is old enough, so one odd date cannot move
-- the cut past younger events.
CREATE OR REPLACE FUNCTION audit.chain_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(7305812649233167201);
    NEW.seq := nextval('audit.events_seq');
    NEW.recorded_at := now();
    SELECT hash INTO last FROM audit.events ORDER BY seq DESC LIMIT 1;
    IF last IS NULL THEN
        SELECT hash INTO last FROM audit.anchors ORDER BY seq DESC LIMIT 1;
    END IF;
    NEW.prev_hash := coalesce(last, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    NEW.hash := audit.event_digest(NEW.prev_hash, NEW);
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION audit.prune(before timestamptz)
RETURNS TABLE (pruned bigint, anchor_seq bigint) LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7305812649233167201);
    -- The newest event before the first one recorded at or after `before` (and
    -- never the newest event of all, which the next one links to).
    SELECT max(e.seq) INTO last_seq FROM audit.events e
     WHERE e.seq < coalesce((SELECT min(y.seq) FROM audit.events y WHERE y.recorded_at >= before),
                            (SELECT max(m.seq) FROM audit.events m));
    IF last_seq IS NULL THEN
        RETURN QUERY SELECT 0::bigint, NULL::bigint;
        RETURN;
    END IF;
    SELECT e.hash INTO last_hash FROM audit.events e WHERE e.seq = last_seq;
    PERFORM set_config('audit.pruning', 'on', true);
    DELETE FROM audit.events e WHERE e.seq <= last_seq;
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('audit.pruning', 'off', true);
    INSERT INTO audit.anchors (seq, hash, pruned, before) VALUES (last_seq, last_hash, n, prune.before);
    INSERT INTO audit.events (id, occurred_at, event_type, outcome, actor, producer, details)
    VALUES (gen_random_uuid(), now(), 'audit.retention', 'success', 'audit', 'audit',
            jsonb_build_object('pruned', n, 'anchor_seq', last_seq,
                               'anchor_hash', encode(last_hash, 'hex'), 'before', prune.before));
    RETURN QUERY SELECT n, last_seq;
END;
$$;
REVOKE EXECUTE ON FUNCTION audit.prune(timestamptz) FROM PUBLIC;

-- The rate-limit surge detector counts recent gateway.rejected events on every one
-- it stores (inside the chain lock); a user's own event view filters by actor.
CREATE INDEX events_rejected_time ON audit.events (occurred_at DESC)
    WHERE event_type = 'gateway.rejected';
CREATE INDEX events_actor_seq ON audit.events (actor, seq DESC) WHERE actor <> '';
