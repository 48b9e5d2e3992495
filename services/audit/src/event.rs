//! Wire events to rows and back. A row that exists is valid: every field was checked
//! here, at the edge.

use aia_proto::audit::v1::{Event, Outcome, StoredEvent};
use chrono::{DateTime, Utc};
use diesel::prelude::*;

use crate::schema::events;

/// Longest text field accepted (user agents are the long ones).
const MAX_FIELD: usize = 1024;
/// Largest details document accepted.
const MAX_DETAILS: usize = 16 * 1024;

/// Why an event was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid event: {0}")]
pub struct InvalidEvent(pub &'static str);

/// A validated event, ready to insert.
#[derive(Debug, Insertable)]
#[diesel(table_name = events)]
pub struct NewEvent {
    pub(crate) id: uuid::Uuid,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) event_type: String,
    pub(crate) outcome: String,
    pub(crate) actor: String,
    pub(crate) subject: String,
    pub(crate) source_ip: String,
    pub(crate) user_agent: String,
    pub(crate) request_id: String,
    pub(crate) producer: String,
    pub(crate) details: serde_json::Value,
    /// Set by `risk::annotate` before the row is stored.
    pub(crate) risk_score: i16,
    pub(crate) risk_reasons: Vec<String>,
    /// W3C traceparent of the producing span; empty if none (or not well-formed:
    /// trace metadata never costs an event its place in the trail).
    pub(crate) traceparent: String,
}

impl TryFrom<Event> for NewEvent {
    type Error = InvalidEvent;

    fn try_from(e: Event) -> Result<Self, Self::Error> {
        let id = uuid::Uuid::parse_str(&e.id).map_err(|_| InvalidEvent("id must be a UUID"))?;
        // Years 1 to 9999: chrono reaches further than Postgres stores.
        let occurred_at = e
            .occurred_at
            .and_then(|t| DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?))
            .filter(|t| (1..=9999).contains(&chrono::Datelike::year(t)))
            .ok_or(InvalidEvent("occurred_at is missing or out of range"))?;
        let valid_type = !e.event_type.is_empty()
            && e.event_type.len() <= 128
            && e.event_type
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !valid_type {
            return Err(InvalidEvent(
                "event_type must be 1-128 characters of [A-Za-z0-9._-]",
            ));
        }
        let outcome = match Outcome::try_from(e.outcome) {
            Ok(Outcome::Success) => "success",
            Ok(Outcome::Failure) => "failure",
            _ => return Err(InvalidEvent("outcome must be SUCCESS or FAILURE")),
        };
        if e.producer.is_empty() {
            return Err(InvalidEvent("producer is required"));
        }
        for field in [
            &e.actor,
            &e.subject,
            &e.source_ip,
            &e.user_agent,
            &e.request_id,
            &e.producer,
        ] {
            if field.len() > MAX_FIELD {
                return Err(InvalidEvent("a text field is longer than 1024 bytes"));
            }
            // Postgres text holds no NUL.
            if field.contains('\0') {
                return Err(InvalidEvent("a text field contains a NUL character"));
            }
        }
        if e.details_json.len() > MAX_DETAILS {
            return Err(InvalidEvent("details_json is larger than 16 KiB"));
        }
        let details = if e.details_json.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str::<serde_json::Value>(&e.details_json)
                .ok()
                .filter(serde_json::Value::is_object)
                .ok_or(InvalidEvent("details_json must be a JSON object"))?
        };
        // jsonb holds no NUL either (a `\u0000` in a string or a key).
        if holds_nul(&details) {
            return Err(InvalidEvent("details_json contains a NUL character"));
        }
        Ok(Self {
            id,
            occurred_at,
            event_type: e.event_type,
            outcome: outcome.to_owned(),
            actor: e.actor,
            subject: e.subject,
            source_ip: e.source_ip,
            user_agent: e.user_agent,
            request_id: e.request_id,
            producer: e.producer,
            details,
            risk_score: 0,
            risk_reasons: Vec::new(),
            traceparent: well_formed(e.traceparent),
        })
    }
}

/// Whether a string or key anywhere in `value` contains NUL.
fn holds_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(holds_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || holds_nul(v)),
        _ => false,
    }
}

/// `traceparent` if it is a lower-case W3C `version-traceid-parentid-flags`, else
/// empty.
fn well_formed(traceparent: String) -> String {
    let parts: Vec<&str> = traceparent.split('-').collect();
    let ok = matches!(parts.as_slice(), [v, t, p, f]
        if v.len() == 2 && t.len() == 32 && p.len() == 16 && f.len() == 2
            && parts.iter().all(|s| s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
    if ok { traceparent } else { String::new() }
}

/// A stored event, as read back.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = events)]
pub struct EventRow {
    seq: i64,
    id: uuid::Uuid,
    occurred_at: DateTime<Utc>,
    event_type: String,
    outcome: String,
    actor: String,
    subject: String,
    source_ip: String,
    user_agent: String,
    request_id: String,
    producer: String,
    details: serde_json::Value,
    risk_score: i16,
    risk_reasons: Vec<String>,
    traceparent: String,
}

impl EventRow {
    /// The server-assigned sequence number.
    pub fn seq(&self) -> i64 {
        self.seq
    }
}

impl From<EventRow> for StoredEvent {
    fn from(r: EventRow) -> Self {
        let outcome = if r.outcome == "success" {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        Self {
            seq: r.seq,
            event: Some(Event {
                id: r.id.to_string(),
                occurred_at: Some(prost_types::Timestamp {
                    seconds: r.occurred_at.timestamp(),
                    nanos: i32::try_from(r.occurred_at.timestamp_subsec_nanos()).unwrap_or(0),
                }),
                event_type: r.event_type,
                outcome: outcome.into(),
                actor: r.actor,
                subject: r.subject,
                source_ip: r.source_ip,
                user_agent: r.user_agent,
                request_id: r.request_id,
                producer: r.producer,
                details_json: r.details.to_string(),
                traceparent: r.traceparent,
            }),
            risk_score: i32::from(r.risk_score),
            risk_reasons: r.risk_reasons,
        }
    }
}
