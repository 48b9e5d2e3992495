//! The `session` schema (see `migrations/*_session/up.sql`).

diesel::table! {
    session.sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoke_reason -> Nullable<Text>,
        ip -> Text,
        user_agent -> Text,
        amr -> Array<Text>,
    }
}

diesel::table! {
    session.refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        rotated_at -> Nullable<Timestamptz>,
        successor_hash -> Nullable<Bytea>,
    }
}

diesel::table! {
    session.revocations (kind, id) {
        kind -> Text,
        id -> Uuid,
        expires_at -> Timestamptz,
        revoked_at -> Timestamptz,
    }
}

diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::allow_tables_to_appear_in_same_query!(sessions, refresh_tokens, revocations);
