DROP TABLE audit.usage_batches;
DROP TABLE audit.usage;
