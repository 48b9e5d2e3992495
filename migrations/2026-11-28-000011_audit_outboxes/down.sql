DROP TABLE IF EXISTS session.audit_outbox;
DROP TABLE IF EXISTS auth.audit_outbox;
