DROP TABLE IF EXISTS auth.email_tokens;
