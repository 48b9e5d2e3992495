-- Email verification and password-reset tokens: 256 random bits, stored only as
-- SHA-256, single use, expiring; issuing a new one voids the older ones.
CREATE TABLE auth.email_tokens (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id     uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    purpose     text NOT NULL CHECK (purpose IN ('verify_email', 'reset_password')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX email_tokens_user ON auth.email_tokens (user_id, purpose);
