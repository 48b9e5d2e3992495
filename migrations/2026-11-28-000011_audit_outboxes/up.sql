-- Transactional outboxes: auth and session write each security event here, in the
-- same transaction as the change it describes (or on its own, before answering, for
-- events that describe no change, such as a failed login). A relay in each service
-- delivers the rows to audit.RecordBatch in seq order, at least once, and deletes
-- them once audit has acknowledged them; audit deduplicates by event id.
CREATE TABLE auth.audit_outbox (
    seq        bigserial PRIMARY KEY,
    -- The aia.audit.v1.Event, protobuf-encoded (its id is inside).
    event      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE session.audit_outbox (
    seq        bigserial PRIMARY KEY,
    event      bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
