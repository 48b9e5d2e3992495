//! The `auth` schema (see `migrations/*_auth/up.sql`).

diesel::table! {
    auth.users (id) {
        id -> Uuid,
        email -> Text,
        password_hash -> Text,
        email_verified -> Bool,
        roles -> Array<Text>,
        disabled_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    auth.signing_keys (kid) {
        kid -> Text,
        public_x -> Text,
        private_key -> Bytea,
        sealing_key_id -> Text,
        created_at -> Timestamptz,
        activated_at -> Timestamptz,
        withdrawn_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    auth.password_history (id) {
        id -> Int8,
        user_id -> Uuid,
        password_hash -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    auth.api_keys (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        scopes -> Array<Text>,
        secret_hmac -> Bytea,
        created_at -> Timestamptz,
        expires_at -> Nullable<Timestamptz>,
        last_used_at -> Nullable<Timestamptz>,
        revoked_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    auth.email_tokens (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        purpose -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    auth.totp_credentials (user_id) {
        user_id -> Uuid,
        secret -> Bytea,
        sealing_key_id -> Text,
        created_at -> Timestamptz,
        confirmed_at -> Nullable<Timestamptz>,
        last_step -> Int8,
    }
}

diesel::table! {
    auth.recovery_codes (code_hash) {
        code_hash -> Bytea,
        user_id -> Uuid,
        created_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    auth.session_ends_due (id) {
        id -> Int8,
        user_id -> Uuid,
        keep_session_id -> Nullable<Uuid>,
        reason -> Text,
        requested_at -> Timestamptz,
        attempt_after -> Timestamptz,
    }
}
