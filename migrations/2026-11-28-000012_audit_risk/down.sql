DROP INDEX IF EXISTS audit.events_risk;
DROP INDEX IF EXISTS audit.events_ip_time;
DROP INDEX IF EXISTS audit.events_subject_time;
ALTER TABLE audit.events DROP COLUMN IF EXISTS risk_reasons, DROP COLUMN IF EXISTS risk_score;
