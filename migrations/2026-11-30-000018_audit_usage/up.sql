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
-- DELETE for retention (AUDIT_RETENTION_DAYS applies to usage too).
GRANT SELECT, INSERT, UPDATE, DELETE ON audit.usage TO aia_audit;
