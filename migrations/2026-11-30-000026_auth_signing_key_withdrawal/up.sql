-- A signing key withdrawn (`aia withdraw-signing-key`, after a compromise): it
-- neither signs nor is published again, so tokens it signed stop verifying as soon
-- as each verifier reloads the key set, instead of at their expiry.
ALTER TABLE auth.signing_keys ADD COLUMN withdrawn_at timestamptz;
