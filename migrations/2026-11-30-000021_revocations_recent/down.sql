DROP INDEX IF EXISTS session.revocations_revoked_at;
