-- session.cleanup no longer deletes the refresh tokens of live sessions. A rotated
-- token is what reuse detection recognises: deleted, a replay of it would be an
-- unknown token (refused, but the session it was stolen from would stay alive).
-- A session's tokens now go only with the session itself (ON DELETE CASCADE), once
-- it ended more than `keep` ago. Their number is bounded by the session's absolute
-- lifetime divided by the refresh interval.
CREATE OR REPLACE FUNCTION session.cleanup(keep interval DEFAULT '30 days')
RETURNS TABLE (what text, removed bigint) LANGUAGE plpgsql AS $$
DECLARE n bigint;
BEGIN
    -- A blacklist entry stops mattering when the last access token it covers expires.
    DELETE FROM session.revocations WHERE expires_at < now();
    GET DIAGNOSTICS n = ROW_COUNT; what := 'revocations'; removed := n; RETURN NEXT;
    -- Sessions that ended (expired or revoked) more than `keep` ago, with all their
    -- refresh tokens, rotated ones included (ON DELETE CASCADE).
    DELETE FROM session.sessions
     WHERE expires_at < now() - keep OR revoked_at < now() - keep;
    GET DIAGNOSTICS n = ROW_COUNT; what := 'sessions'; removed := n; RETURN NEXT;
END;
$$;
