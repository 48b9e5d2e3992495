-- Each detector asks "did this rule already alert for this key in its window?"
-- before raising one, inside the chain lock. Keyed by a subject, the partial index
-- events_subject_time serves it; the rate-limit surge alert has no subject, so that
-- check went through events_type_seq and read every surge alert kept, once per
-- rate-limited rejection stored. Alerts are few: an index of them alone, by type
-- and time, serves every such check (the query names the predicate literally).
CREATE INDEX events_alerts_time ON audit.events (event_type, occurred_at DESC)
    WHERE event_type LIKE 'alert.%';
