DROP FUNCTION IF EXISTS audit.prune(timestamptz);
DROP TABLE IF EXISTS audit.anchors;
