-- Previous password hashes, so that a change cannot go back to a recent password.
CREATE TABLE auth.password_history (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id        uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    password_hash  text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX password_history_user ON auth.password_history (user_id, id DESC);
