-- Auth's Ed25519 signing keys. The newest key whose activated_at has passed signs;
-- a key with activated_at in the future is already published (so verifiers learn it
-- first); a key replaced by a newer one stays published until every token it signed
-- has expired.
CREATE TABLE auth.signing_keys (
    -- RFC 7638 thumbprint of the public key.
    kid             text PRIMARY KEY,
    -- The public key (base64url), never secret.
    public_x        text NOT NULL,
    -- PKCS#8 private key, AES-256-GCM sealed under ENCRYPTION_KEY, with the kid as
    -- associated data.
    private_key     bytea NOT NULL,
    -- Which ENCRYPTION_KEY sealed it (see aia_tokens::seal).
    sealing_key_id  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    activated_at    timestamptz NOT NULL
);
CREATE INDEX signing_keys_activated_at ON auth.signing_keys (activated_at);
