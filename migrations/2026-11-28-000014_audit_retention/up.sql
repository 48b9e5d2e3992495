-- Retention that keeps the chain verifiable. audit.prune(before) removes the events
-- recorded before `before` (oldest first, a whole prefix of the chain) and keeps an
-- anchor: the seq and hash of the last removed event, which the first kept event's
-- prev_hash must equal. Verification starts from the newest anchor below its range.
-- The pruning itself is recorded as an `audit.retention` event, on the chain.
--
-- A database owner can still rewrite everything (a forged anchor included): to
-- defend against one, copy anchors or `aia verify-audit-chain` results elsewhere.

CREATE TABLE audit.anchors (
    -- The last event removed.
    seq        bigint PRIMARY KEY,
    -- Its hash: the first kept event's prev_hash.
    hash       bytea NOT NULL CHECK (length(hash) = 32),
    -- How many events this pruning removed.
    pruned     bigint NOT NULL,
    -- Events recorded before this time were removed.
    before     timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER anchors_append_only
    BEFORE UPDATE OR DELETE ON audit.anchors
    FOR EACH ROW EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER anchors_no_truncate
    BEFORE TRUNCATE ON audit.anchors
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();

-- Deletes of events are refused except inside audit.prune, which sets a
-- transaction-local flag around its own DELETE.
CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND TG_TABLE_NAME = 'events'
       AND current_setting('audit.pruning', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit.% is append-only (% refused)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- The chain continues from the newest anchor when every event was pruned.
CREATE OR REPLACE FUNCTION audit.chain_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(7305812649233167201);
    NEW.seq := nextval('audit.events_seq');
    SELECT hash INTO last FROM audit.events ORDER BY seq DESC LIMIT 1;
    IF last IS NULL THEN
        SELECT hash INTO last FROM audit.anchors ORDER BY seq DESC LIMIT 1;
    END IF;
    NEW.prev_hash := coalesce(last, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    NEW.hash := audit.event_digest(NEW.prev_hash, NEW);
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION audit.verify_chain(from_seq bigint, to_seq bigint)
RETURNS TABLE (checked bigint, broken_seq bigint, reason text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r audit.events;
    prev bytea;
    n bigint := 0;
BEGIN
    -- The link into the range: the event before it, or else the anchor before it.
    SELECT e.hash INTO prev FROM audit.events e WHERE e.seq < from_seq ORDER BY e.seq DESC LIMIT 1;
    IF prev IS NULL THEN
        SELECT a.hash INTO prev FROM audit.anchors a
         WHERE a.seq < (SELECT min(e.seq) FROM audit.events e WHERE e.seq >= from_seq)
         ORDER BY a.seq DESC LIMIT 1;
    END IF;
    prev := coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    FOR r IN SELECT * FROM audit.events e WHERE e.seq BETWEEN from_seq AND to_seq ORDER BY e.seq LOOP
        n := n + 1;
        IF r.prev_hash IS DISTINCT FROM prev THEN
            RETURN QUERY SELECT n, r.seq, 'the link to the previous event is broken (an event before it was removed or altered)';
            RETURN;
        END IF;
        IF r.hash IS DISTINCT FROM audit.event_digest(prev, r) THEN
            RETURN QUERY SELECT n, r.seq, 'the event was altered after it was stored';
            RETURN;
        END IF;
        prev := r.hash;
    END LOOP;
    RETURN QUERY SELECT n, NULL::bigint, NULL::text;
END;
$$;

-- Removes the events recorded before `before` (never the newest one, so the chain
-- keeps a tail), keeps an anchor, and records an `audit.retention` event.
CREATE FUNCTION audit.prune(before timestamptz)
RETURNS TABLE (pruned bigint, anchor_seq bigint) LANGUAGE plpgsql AS $$
DECLARE
    last_seq bigint;
    last_hash bytea;
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(7305812649233167201);
    SELECT max(e.seq) INTO last_seq FROM audit.events e
     WHERE e.recorded_at < before AND e.seq < (SELECT max(seq) FROM audit.events);
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
