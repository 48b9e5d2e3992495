-- Sessions a password change or reset must end. The row is written in the
-- password's own transaction and deleted once the session service has ended them:
-- when that call fails (session unreachable, a timeout), the row stays and auth
-- retries it until it succeeds, so a password that changed never leaves the old
-- sessions (a thief's among them) able to refresh.
CREATE TABLE auth.session_ends_due (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    -- The session to keep (a change keeps the caller's own); NULL: end them all.
    keep_session_id uuid,
    reason text NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now(),
    -- Not retried before this: the request that wrote the row is still calling
    -- session, or a retry holds it (a lease, so that a replica that dies holding it
    -- delays the row, never loses it).
    attempt_after timestamptz NOT NULL DEFAULT now() + interval '15 seconds'
);
GRANT SELECT, INSERT, UPDATE, DELETE ON auth.session_ends_due TO aia_auth;
GRANT USAGE, SELECT ON SEQUENCE auth.session_ends_due_id_seq TO aia_auth;
