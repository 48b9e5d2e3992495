-- TOTP second factor (RFC 6238) and recovery codes.
--
-- The TOTP secret is sealed (AES-256-GCM under a key derived from ENCRYPTION_KEY,
-- associated data: the user id); `sealing_key_id` names the key that sealed it so
-- the key can be rotated. `last_step` is the highest time step a code was accepted
-- for: a code is accepted only for a later step, so a code works once.
CREATE TABLE auth.totp_credentials (
    user_id        uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    secret         bytea NOT NULL,
    sealing_key_id text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- NULL while enrolment waits for its first code.
    confirmed_at   timestamptz,
    last_step      bigint NOT NULL DEFAULT 0
);

-- Single-use recovery codes (80 random bits each), stored only as SHA-256.
CREATE TABLE auth.recovery_codes (
    code_hash  bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    user_id    uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    used_at    timestamptz
);
CREATE INDEX recovery_codes_user ON auth.recovery_codes (user_id);
