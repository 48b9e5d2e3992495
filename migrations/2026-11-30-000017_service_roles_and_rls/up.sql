-- One database role per service, and row-level security on user-owned tables.
--
-- Roles: aia_auth, aia_session and aia_audit (NOLOGIN; cluster-wide, so created only
-- if missing). Each service switches to its role on every connection it opens
-- (SET ROLE), so its login user must be a member: `GRANT aia_auth TO <login user>`.
-- A role reaches only its own schema; aia_audit may read and append events but not
-- change or delete them (retention goes through audit.prune, which runs as the
-- schema's owner).
--
-- Row-level security keys on two per-transaction settings, set by the services with
-- set_config(..., true) at the start of each transaction (aia_db::scope):
--   aia.user_id = '<uuid>'  the rows of that user only (a user's own sessions, keys,
--                           second factors, security events);
--   aia.scope = 'service'   every row (lookups by token hash, admin views, cleanup).
-- A query without either sees nothing and can write nothing. The schemas' owner (the
-- migrating user, e.g. `aia migrate` and the admin CLI) is not subject to it.
-- (Databases migrated at the same time may race to create them: either wins.)
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['aia_auth', 'aia_session', 'aia_audit'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;
GRANT USAGE ON SCHEMA auth TO aia_auth;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA auth TO aia_auth;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA auth TO aia_auth;
ALTER DEFAULT PRIVILEGES IN SCHEMA auth GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO aia_auth;
ALTER DEFAULT PRIVILEGES IN SCHEMA auth GRANT USAGE, SELECT ON SEQUENCES TO aia_auth;

GRANT USAGE ON SCHEMA session TO aia_session;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA session TO aia_session;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA session TO aia_session;
ALTER DEFAULT PRIVILEGES IN SCHEMA session GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO aia_session;
ALTER DEFAULT PRIVILEGES IN SCHEMA session GRANT USAGE, SELECT ON SEQUENCES TO aia_session;

GRANT USAGE ON SCHEMA audit TO aia_audit;
GRANT SELECT, INSERT ON audit.events TO aia_audit;
GRANT SELECT ON audit.anchors TO aia_audit;
GRANT USAGE, SELECT ON SEQUENCE audit.events_seq TO aia_audit;
-- Retention deletes as the owner; the role has no DELETE of its own.
ALTER FUNCTION audit.prune(timestamptz) SECURITY DEFINER SET search_path = pg_catalog, audit;

-- Whether a row owned by `owner` is visible in this transaction.
CREATE FUNCTION public.aia_visible(owner text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('aia.scope', true), '') = 'service'
        OR (owner <> '' AND owner = coalesce(current_setting('aia.user_id', true), ''))
$$;

ALTER TABLE session.sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON session.sessions
    USING (public.aia_visible(user_id::text)) WITH CHECK (public.aia_visible(user_id::text));
-- A refresh token is visible with its session.
ALTER TABLE session.refresh_tokens ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON session.refresh_tokens
    USING (EXISTS (SELECT 1 FROM session.sessions s WHERE s.id = session_id))
    WITH CHECK (EXISTS (SELECT 1 FROM session.sessions s WHERE s.id = session_id));

ALTER TABLE auth.api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON auth.api_keys
    USING (public.aia_visible(user_id::text)) WITH CHECK (public.aia_visible(user_id::text));
ALTER TABLE auth.totp_credentials ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON auth.totp_credentials
    USING (public.aia_visible(user_id::text)) WITH CHECK (public.aia_visible(user_id::text));
ALTER TABLE auth.recovery_codes ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON auth.recovery_codes
    USING (public.aia_visible(user_id::text)) WITH CHECK (public.aia_visible(user_id::text));

-- Security events: a user sees those that are about them or by them; only the
-- service scope appends.
ALTER TABLE audit.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY read ON audit.events FOR SELECT
    USING (public.aia_visible(subject) OR public.aia_visible(actor));
CREATE POLICY append ON audit.events FOR INSERT
    WITH CHECK (coalesce(current_setting('aia.scope', true), '') = 'service');
