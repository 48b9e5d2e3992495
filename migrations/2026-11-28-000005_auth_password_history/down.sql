DROP TABLE IF EXISTS auth.password_history;
