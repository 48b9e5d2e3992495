DROP INDEX IF EXISTS audit.events_login_agent;
DROP INDEX IF EXISTS audit.events_login_ip;
