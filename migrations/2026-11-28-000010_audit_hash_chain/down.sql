DROP FUNCTION IF EXISTS audit.verify_chain(bigint, bigint);
DROP TRIGGER IF EXISTS events_chain ON audit.events;
DROP FUNCTION IF EXISTS audit.chain_event();
DROP SEQUENCE IF EXISTS audit.events_seq;
ALTER TABLE audit.events ALTER COLUMN seq ADD GENERATED ALWAYS AS IDENTITY;
DROP FUNCTION IF EXISTS audit.event_digest(bytea, audit.events);
ALTER TABLE audit.events DROP COLUMN IF EXISTS hash, DROP COLUMN IF EXISTS prev_hash;
