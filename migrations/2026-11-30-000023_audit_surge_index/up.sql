-- The rate-limit surge detector sums the rate-limited rejections of its window on
-- each one stored, inside the chain lock that serialises all ingestion. Its index
-- covered every gateway.rejected event, so each row's reason was read from the
-- table: a flood of other rejections (host, CORS, validation: keyed per address, so
-- one IPv6 host can make thousands a minute) lengthened every such scan. Index only
-- the rate-limited ones; the detector also asks first whether it already alerted.
DROP INDEX audit.events_rejected_time;
CREATE INDEX events_rate_limited_time ON audit.events (occurred_at DESC)
    WHERE event_type = 'gateway.rejected' AND details->>'reason' = 'rate_limit';
