-- The session service's schema: refresh-token sessions and the blacklist.
CREATE SCHEMA IF NOT EXISTS session;

-- A session is one login; its refresh tokens form a rotation chain (the family).
CREATE TABLE session.sessions (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz NOT NULL,
    -- Absolute end of the session; no refresh extends it.
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    revoke_reason text,
    ip            text NOT NULL DEFAULT '',
    user_agent    text NOT NULL DEFAULT ''
);
CREATE INDEX sessions_user_id ON session.sessions (user_id);

-- Refresh tokens are stored only as SHA-256 hashes.
CREATE TABLE session.refresh_tokens (
    token_hash     bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    session_id     uuid NOT NULL REFERENCES session.sessions (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL,
    -- Idle expiry: created_at + idle TTL, capped by the session's absolute end.
    expires_at     timestamptz NOT NULL,
    -- Set once, by the one rotation that wins; a rotated token is refused.
    rotated_at     timestamptz,
    successor_hash bytea
);
CREATE INDEX refresh_tokens_session_id ON session.refresh_tokens (session_id);

-- The durable blacklist. Redis holds a copy with TTLs; this is the truth.
-- kind 'jti': one access token; kind 'sid': every access token of a session.
CREATE TABLE session.revocations (
    kind        text NOT NULL CHECK (kind IN ('jti', 'sid')),
    id          uuid NOT NULL,
    -- When the entry stops mattering (the last affected access token has expired).
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id)
);
CREATE INDEX revocations_expires_at ON session.revocations (expires_at);
