-- The auth service's schema: users and their credentials.
CREATE SCHEMA IF NOT EXISTS auth;

CREATE TABLE auth.users (
    id              uuid PRIMARY KEY,
    -- Normalised (trimmed, lower-cased) address; unique across users.
    email           text NOT NULL UNIQUE CHECK (length(email) <= 254),
    -- PHC string: argon2id with its parameters (a bcrypt hash for imported users).
    password_hash   text NOT NULL,
    email_verified  boolean NOT NULL DEFAULT false,
    roles           text[] NOT NULL DEFAULT ARRAY['user']::text[],
    disabled_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
