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
-- Each service's init container checks that migrations are applied (`aia migrate
-- --check`, which only reads diesel's table) with the service's own login, before
-- any SET ROLE: the applied versions are readable by every login (they are no secret).
GRANT SELECT ON public.__diesel_schema_migrations TO PUBLIC;

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
-- Retention deletes as the owner; the role has no DELETE of its own. What the role may
-- call is audit.prune_retained, which refuses to remove anything younger than 30 days
-- (so a compromised audit service cannot empty the trail); audit.prune itself, with
-- no floor, is the owner's alone.
REVOKE EXECUTE ON FUNCTION audit.prune(timestamptz) FROM PUBLIC;
CREATE FUNCTION audit.prune_retained(before timestamptz)
RETURNS TABLE (pruned bigint, anchor_seq bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, audit, pg_temp AS $$
BEGIN
    IF before > now() - interval '30 days' THEN
        RAISE EXCEPTION 'audit retention shorter than 30 days is refused'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN QUERY SELECT p.pruned, p.anchor_seq FROM audit.prune(before) p;
END;
$$;
REVOKE EXECUTE ON FUNCTION audit.prune_retained(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit.prune_retained(timestamptz) TO aia_audit;

-- Whether a row owned by `owner` is visible in this transaction. In a schema of its
-- own (the migrating user may not create objects in `public` on Postgres 15+).
CREATE SCHEMA aia_rls;
GRANT USAGE ON SCHEMA aia_rls TO aia_auth, aia_session, aia_audit;
CREATE FUNCTION aia_rls.visible(owner text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce(current_setting('aia.scope', true), '') = 'service'
        OR (owner <> '' AND owner = coalesce(current_setting('aia.user_id', true), ''))
$$;

ALTER TABLE session.sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON session.sessions
    USING (aia_rls.visible(user_id::text)) WITH CHECK (aia_rls.visible(user_id::text));
-- A refresh token is visible with its session.
ALTER TABLE session.refresh_tokens ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON session.refresh_tokens
    USING (EXISTS (SELECT 1 FROM session.sessions s WHERE s.id = session_id))
    WITH CHECK (EXISTS (SELECT 1 FROM session.sessions s WHERE s.id = session_id));

ALTER TABLE auth.api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON auth.api_keys
    USING (aia_rls.visible(user_id::text)) WITH CHECK (aia_rls.visible(user_id::text));
ALTER TABLE auth.totp_credentials ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON auth.totp_credentials
    USING (aia_rls.visible(user_id::text)) WITH CHECK (aia_rls.visible(user_id::text));
ALTER TABLE auth.recovery_codes ENABLE ROW LEVEL SECURITY;
CREATE POLICY owner ON auth.recovery_codes
    USING (aia_rls.visible(user_id::text)) WITH CHECK (aia_rls.visible(user_id::text));

-- Security events: a user sees those that are about them or by them; only the
-- service scope appends.
ALTER TABLE audit.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY read ON audit.events FOR SELECT
    USING (aia_rls.visible(subject) OR aia_rls.visible(actor));
CREATE POLICY append ON audit.events FOR INSERT
    WITH CHECK (coalesce(current_setting('aia.scope', true), '') = 'service');
