DROP TABLE IF EXISTS auth.api_keys;
