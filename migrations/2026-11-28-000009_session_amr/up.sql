-- How the session's user authenticated (RFC 8176 `amr` values: pwd, otp); carried
-- into every access token the session issues, refreshes included.
ALTER TABLE session.sessions ADD COLUMN amr text[] NOT NULL DEFAULT '{pwd}';
