-- Refused while any event carries a traceparent: dropping the column would make every
-- such event fail verification (its digest covers the traceparent).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit.events WHERE traceparent <> '') THEN
        RAISE EXCEPTION 'events carry traceparents: reverting would break the audit chain';
    END IF;
END
$$;
-- Back to the 000010 digest, without the column.
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
         ]) WITH ORDINALITY AS t(f, n)),
        'UTF8'))
$$;
ALTER TABLE audit.events DROP COLUMN traceparent;
