DROP TABLE IF EXISTS auth.recovery_codes;
DROP TABLE IF EXISTS auth.totp_credentials;
