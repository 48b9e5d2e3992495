-- Risk scores (0-100) with the names of the rules that gave them, set by the audit
-- service when it stores an event (see services/audit/src/risk.rs). They are derived
-- annotations: the hash chain covers the event as recorded, not its score.
ALTER TABLE audit.events
    ADD COLUMN risk_score smallint NOT NULL DEFAULT 0 CHECK (risk_score BETWEEN 0 AND 100),
    ADD COLUMN risk_reasons text[] NOT NULL DEFAULT '{}';

-- The detectors' and scorers' lookups: recent events of one account or one IP.
CREATE INDEX events_subject_time ON audit.events (subject, event_type, occurred_at DESC)
    WHERE subject <> '';
CREATE INDEX events_ip_time ON audit.events (source_ip, event_type, occurred_at DESC)
    WHERE source_ip <> '';
CREATE INDEX events_risk ON audit.events (risk_score, seq DESC) WHERE risk_score > 0;
