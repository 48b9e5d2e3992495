-- The W3C traceparent of the span that produced an event (empty if it was not
-- traced): an admin can go from an event to its trace. It is part of the event as
-- recorded, so the chain covers it: the digest appends it when it is not empty, which
-- leaves the digest of every earlier event (all empty) unchanged.
ALTER TABLE audit.events
    ADD COLUMN traceparent text NOT NULL DEFAULT ''
        CHECK (traceparent = '' OR traceparent ~ '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$');

CREATE OR REPLACE FUNCTION audit.event_digest(prev bytea, e audit.events) RETURNS bytea
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
         ] || CASE WHEN e.traceparent <> '' THEN ARRAY[e.traceparent] ELSE ARRAY[]::text[] END)
         WITH ORDINALITY AS t(f, n)),
        'UTF8'))
$$;
