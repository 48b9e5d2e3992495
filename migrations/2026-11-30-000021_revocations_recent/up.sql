-- Each session replica reads the blacklist entries stored in the last few seconds,
-- by revoked_at, twice a second (new entries reach its watchers even when the Redis
-- pub/sub that normally carries them between replicas is down). An extended entry
-- gets a new revoked_at, so it is read again.
CREATE INDEX revocations_revoked_at ON session.revocations (revoked_at);
