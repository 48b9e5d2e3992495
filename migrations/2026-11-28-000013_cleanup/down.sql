DROP FUNCTION IF EXISTS auth.cleanup(interval);
DROP FUNCTION IF EXISTS session.cleanup(interval);
