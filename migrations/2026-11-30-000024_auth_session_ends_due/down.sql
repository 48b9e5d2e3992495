DROP TABLE auth.session_ends_due;
