ALTER TABLE session.sessions DROP COLUMN IF EXISTS amr;
