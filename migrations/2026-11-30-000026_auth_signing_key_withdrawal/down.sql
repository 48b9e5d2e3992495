ALTER TABLE auth.signing_keys DROP COLUMN withdrawn_at;
