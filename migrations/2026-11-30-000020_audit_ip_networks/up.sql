-- The risk rules and detectors that look at "one IP" (ip_fails_across_accounts,
-- new_ip, alert.credential_stuffing, alert.many_ips) compare networks, as the
-- gateway's rate limiter does: an IPv4 address is itself, an IPv6 address counts as
-- its /64 (what one subscriber is usually given). Keyed per IPv6 address, the holder
-- of a /64 could rotate past every per-IP rule, and a user's privacy addresses would
-- look like a new IP at each login.
--
-- source_ip is text as producers sent it; anything that is not an address (or is
-- empty) is its own network, so no stored event can make the lookups fail.
--
-- Not PARALLEL SAFE: the cast is tried in a block with an exception handler (a
-- subtransaction, which Postgres before 17 refuses in parallel mode);
-- pg_input_is_valid would avoid it but needs Postgres 16.
CREATE FUNCTION audit.ip_network(ip text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
DECLARE
    address inet;
BEGIN
    IF position(':' IN ip) = 0 THEN
        RETURN ip;
    END IF;
    BEGIN
        address := ip::inet;
    EXCEPTION WHEN others THEN
        RETURN ip;
    END;
    IF masklen(address) <> 128 THEN
        RETURN ip;
    END IF;
    -- An IPv4 address written as IPv4-mapped IPv6 is the IPv4 address.
    IF address << inet '::ffff:0:0/96' THEN
        RETURN regexp_replace(host(address), '^::ffff:', '', 'i');
    END IF;
    RETURN network(set_masklen(address, 64))::text;
END
$$;

-- The same lookups, by network.
DROP INDEX audit.events_ip_time;
CREATE INDEX events_ip_time ON audit.events (audit.ip_network(source_ip), event_type, occurred_at DESC)
    WHERE source_ip <> '';
DROP INDEX audit.events_login_ip;
CREATE INDEX events_login_ip ON audit.events (subject, audit.ip_network(source_ip))
    WHERE event_type = 'auth.login' AND outcome = 'success';
