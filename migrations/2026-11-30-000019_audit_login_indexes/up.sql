-- The risk rules ask, for every stored login, whether the account has logged in from
-- this IP or with this user agent before (new_ip, new_user_agent). Without these, an
-- address or agent the account never used meant scanning every login it ever made,
-- so an account with a long history made each new login slower to store.
CREATE INDEX events_login_ip ON audit.events (subject, source_ip)
    WHERE event_type = 'auth.login' AND outcome = 'success';
CREATE INDEX events_login_agent ON audit.events (subject, md5(user_agent))
    WHERE event_type = 'auth.login' AND outcome = 'success';
