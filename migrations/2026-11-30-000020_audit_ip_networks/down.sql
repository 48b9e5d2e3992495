DROP INDEX IF EXISTS audit.events_login_ip;
CREATE INDEX events_login_ip ON audit.events (subject, source_ip)
    WHERE event_type = 'auth.login' AND outcome = 'success';
DROP INDEX IF EXISTS audit.events_ip_time;
CREATE INDEX events_ip_time ON audit.events (source_ip, event_type, occurred_at DESC)
    WHERE source_ip <> '';
DROP FUNCTION IF EXISTS audit.ip_network(text);
