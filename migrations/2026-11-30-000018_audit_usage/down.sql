DROP TABLE audit.usage;
