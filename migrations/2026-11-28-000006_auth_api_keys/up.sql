-- API keys: shown once as aia_<id>_<secret>; only HMAC-SHA256(API_KEY_SECRET, secret)
-- is stored, and compared in constant time.
CREATE TABLE auth.api_keys (
    id            uuid PRIMARY KEY,
    user_id       uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scopes        text[] NOT NULL,
    secret_hmac   bytea NOT NULL CHECK (length(secret_hmac) = 32),
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz
);
CREATE INDEX api_keys_user ON auth.api_keys (user_id, created_at DESC);
