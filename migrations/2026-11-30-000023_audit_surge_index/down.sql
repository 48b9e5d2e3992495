DROP INDEX audit.events_rate_limited_time;
CREATE INDEX events_rejected_time ON audit.events (occurred_at DESC)
    WHERE event_type = 'gateway.rejected';
