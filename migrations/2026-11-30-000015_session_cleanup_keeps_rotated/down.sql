-- Back to the 000013 version.
CREATE OR REPLACE FUNCTION session.cleanup(keep interval DEFAULT '30 days')
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
