//! The `audit` schema (see `migrations/*_audit/up.sql`).

diesel::table! {
    audit.events (seq) {
        seq -> Int8,
        id -> Uuid,
        occurred_at -> Timestamptz,
        recorded_at -> Timestamptz,
        event_type -> Text,
        outcome -> Text,
        actor -> Text,
        subject -> Text,
        source_ip -> Text,
        user_agent -> Text,
        request_id -> Text,
        producer -> Text,
        details -> Jsonb,
        prev_hash -> Nullable<Bytea>,
        hash -> Nullable<Bytea>,
        risk_score -> Int2,
        risk_reasons -> Array<Text>,
        traceparent -> Text,
    }
}

diesel::table! {
    audit.usage (caller, hour, route_class) {
        hour -> Timestamptz,
        caller -> Text,
        route_class -> Text,
        requests -> Int8,
        errors -> Int8,
    }
}
