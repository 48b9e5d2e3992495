-- Hash chain: each stored event commits to the previous one, so that a row altered,
-- deleted or inserted out of turn after the fact is detected by audit.verify_chain.
--
-- hash = SHA-256(prev_hash || canonical encoding of the row), where the encoding is
-- every stored column (seq, id, times in microseconds, texts, and the jsonb details
-- in Postgres's canonical text form), each as "<byte length>:<value>;". The first
-- event's prev_hash is 32 zero bytes. Inserts are serialised by a transaction-level
-- advisory lock, so the chain has no forks.
ALTER TABLE audit.events ADD COLUMN prev_hash bytea, ADD COLUMN hash bytea;

CREATE FUNCTION audit.event_digest(prev bytea, e audit.events) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT sha256(prev || convert_to(
        (SELECT string_agg(length(convert_to(f, 'UTF8')) || ':' || f || ';', '' ORDER BY n)
         FROM unnest(ARRAY[
             e.seq::text,
             e.id::text,
             (extract(epoch FROM e.occurred_at) * 1000000)::bigint::text,
             (extract(epoch FROM e.recorded_at) * 1000000)::bigint::text,
             e.event_type, e.outcome, e.actor, e.subject, e.source_ip, e.user_agent,
             e.request_id, e.producer, e.details::text
         ]) WITH ORDINALITY AS t(f, n)),
        'UTF8'))
$$;

-- The sequence number is drawn under the chain's lock, not by a column default
-- (which runs before any trigger): so seq order is chain order, and commit order.
ALTER TABLE audit.events ALTER COLUMN seq DROP IDENTITY;
CREATE SEQUENCE audit.events_seq OWNED BY audit.events.seq;
SELECT setval('audit.events_seq', coalesce((SELECT max(seq) FROM audit.events), 0) + 1, false);

CREATE FUNCTION audit.chain_event() RETURNS trigger LANGUAGE plpgsql AS $$
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

-- Chain the rows stored before this migration, in order.
ALTER TABLE audit.events DISABLE TRIGGER events_append_only;
DO $$
DECLARE
    r audit.events;
    prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea;
BEGIN
    FOR r IN SELECT * FROM audit.events ORDER BY seq LOOP
        UPDATE audit.events SET prev_hash = prev, hash = audit.event_digest(prev, r)
            WHERE seq = r.seq RETURNING hash INTO prev;
    END LOOP;
END;
$$;
ALTER TABLE audit.events ENABLE TRIGGER events_append_only;

CREATE TRIGGER events_chain BEFORE INSERT ON audit.events
    FOR EACH ROW EXECUTE FUNCTION audit.chain_event();

-- Checks the chain over [from_seq, to_seq]: the first row whose link to the previous
-- row or whose own hash does not hold, and why; NULL broken_seq when all hold.
CREATE FUNCTION audit.verify_chain(from_seq bigint, to_seq bigint)
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
