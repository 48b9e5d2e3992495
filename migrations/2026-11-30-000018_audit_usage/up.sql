-- Usage per caller (a user or an API key) and route class, per hour, counted by the
-- gateways and added up here (audit.RecordUsage). Admins read it through
-- GET /v1/admin/usage. Derived counters, not evidence: not part of the hash chain.
CREATE TABLE audit.usage (
    hour        timestamptz NOT NULL CHECK (date_trunc('hour', hour) = hour),
    caller      text NOT NULL CHECK (caller ~ '^(user|key):[0-9a-f-]{32,36}$'),
    route_class text NOT NULL CHECK (length(route_class) BETWEEN 1 AND 32),
    requests    bigint NOT NULL CHECK (requests >= 0),
    errors      bigint NOT NULL CHECK (errors >= 0 AND errors <= requests),
    PRIMARY KEY (caller, hour, route_class)
);
CREATE INDEX usage_hour ON audit.usage (hour DESC);
-- Batches already added (a day's worth), so a batch sent again is not counted twice.
CREATE TABLE audit.usage_batches (
    id          uuid PRIMARY KEY,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX usage_batches_recorded_at ON audit.usage_batches (recorded_at);
GRANT SELECT, INSERT, DELETE ON audit.usage_batches TO aia_audit;
-- DELETE for retention (AUDIT_RETENTION_DAYS applies to usage too).
GRANT SELECT, INSERT, UPDATE, DELETE ON audit.usage TO aia_audit;
