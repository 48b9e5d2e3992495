-- Cleanup of rows that no longer matter, one function per owning schema. The
-- services call them on a schedule (CLEANUP_INTERVAL_SECONDS, one replica at a time);
-- an operator can call them by hand: SELECT * FROM session.cleanup('30 days');
-- `keep` is how long ended rows stay for investigation after they stopped counting.
-- Outboxes are not cleaned: a row leaves its outbox only when audit has it.

CREATE FUNCTION session.cleanup(keep interval DEFAULT '30 days')
RETURNS TABLE (what text, removed bigint) LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    -- A blacklist entry stops mattering when the last access token it covers expires.
    DELETE FROM session.revocations WHERE expires_at < now();
    GET DIAGNOSTICS n = ROW_COUNT; what := 'revocations'; removed := n; RETURN NEXT;
    -- Sessions that ended (expired or revoked) more than `keep` ago, with their
    -- refresh tokens (ON DELETE CASCADE).
    DELETE FROM session.sessions
     WHERE expires_at < now() - keep OR revoked_at < now() - keep;
    GET DIAGNOSTICS n = ROW_COUNT; what := 'sessions'; removed := n; RETURN NEXT;
    -- Refresh tokens of live sessions that idled out more than `keep` ago (refused
    -- anyway; rotated tokens that could still be replayed are kept until then).
    DELETE FROM session.refresh_tokens WHERE expires_at < now() - keep;
    GET DIAGNOSTICS n = ROW_COUNT; what := 'refresh_tokens'; removed := n; RETURN NEXT;
END;
$$;

CREATE FUNCTION auth.cleanup(keep interval DEFAULT '30 days')
RETURNS TABLE (what text, removed bigint) LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    -- Verification and reset tokens, used or expired.
    DELETE FROM auth.email_tokens WHERE expires_at < now() - keep OR used_at < now() - keep;
    GET DIAGNOSTICS n = ROW_COUNT; what := 'email_tokens'; removed := n; RETURN NEXT;
    -- API keys revoked or expired.
    DELETE FROM auth.api_keys WHERE revoked_at < now() - keep OR expires_at < now() - keep;
    GET DIAGNOSTICS n = ROW_COUNT; what := 'api_keys'; removed := n; RETURN NEXT;
    -- Recovery codes already spent.
    DELETE FROM auth.recovery_codes WHERE used_at < now() - keep;
    GET DIAGNOSTICS n = ROW_COUNT; what := 'recovery_codes'; removed := n; RETURN NEXT;
END;
$$;
