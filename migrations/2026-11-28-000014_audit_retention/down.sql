-- Back to before retention: the 000010 chain trigger and verifier (which know no
-- anchor) and the original refusal of every change. Reverting after a prune leaves
-- a chain that verify_chain reports broken at its first remaining event.
DROP FUNCTION IF EXISTS audit.prune(timestamptz);
DROP TABLE IF EXISTS audit.anchors;
CREATE OR REPLACE FUNCTION audit.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit.events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE OR REPLACE FUNCTION audit.chain_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    last bytea;
BEGIN
    -- One writer at a time extends the chain (released at commit or rollback).
    PERFORM pg_advisory_xact_lock(7305812649233167201);
    NEW.seq := nextval('audit.events_seq');
    SELECT hash INTO last FROM audit.events ORDER BY seq DESC LIMIT 1;
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
    SELECT hash INTO prev FROM audit.events WHERE seq < from_seq ORDER BY seq DESC LIMIT 1;
    prev := coalesce(prev, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    FOR r IN SELECT * FROM audit.events WHERE seq BETWEEN from_seq AND to_seq ORDER BY seq LOOP
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
