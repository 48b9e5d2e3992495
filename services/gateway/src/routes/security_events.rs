//! The audit trail through the gateway: admins search it and see the monitoring
//! summary; each user sees the recent security activity of their own account. Every
//! read goes through auth, which verifies the caller's token (and an admin's role in
//! the database): audit answers reads to auth alone.

use actix_web::{HttpResponse, web};
use aia_proto::audit::v1::{Outcome, QueryRequest, QueryResponse, StoredEvent, SummaryRequest};
use aia_proto::auth::v1::{
    AdminQueryEventsRequest, AdminQueryUsageRequest, AdminStreamEventsRequest,
    AdminSummarizeEventsRequest, QueryOwnEventsRequest,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::authn::Authenticated;
use crate::problem::Problem;
use crate::routes::account::require_admin;
use crate::state::State;

/// Filters of `GET /v1/admin/security-events`; every one optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventFilters {
    /// An exact event type (`auth.login`).
    #[serde(default, rename = "type")]
    event_type: String,
    /// Event types starting with this (`auth.`, `session.`).
    #[serde(default)]
    type_prefix: String,
    /// `success` or `failure`.
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    actor: String,
    #[serde(default)]
    subject: String,
    /// The client IP.
    #[serde(default)]
    ip: String,
    /// RFC 3339 times: events at or after `since`, before `until`.
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
    /// Only events scored at least this risk, 0..=100.
    #[serde(default)]
    min_risk: u32,
    /// Page size, 1..=500 (default 100).
    #[serde(default)]
    limit: u32,
    /// `next_cursor` of the previous page.
    #[serde(default)]
    cursor: String,
    /// The stream only: start after this `seq` (as `Last-Event-ID` does).
    #[serde(default)]
    after: i64,
}

impl EventFilters {
    fn into_query(self) -> Result<QueryRequest, Problem> {
        Ok(QueryRequest {
            outcome: outcome(&self.outcome)?.into(),
            since: timestamp("since", &self.since)?,
            until: timestamp("until", &self.until)?,
            event_type: self.event_type,
            type_prefixes: if self.type_prefix.is_empty() {
                Vec::new()
            } else {
                vec![self.type_prefix]
            },
            actor: self.actor,
            subject: self.subject,
            source_ip: self.ip,
            min_risk: self.min_risk,
            limit: self.limit,
            cursor: self.cursor,
            involving: String::new(),
        })
    }
}

fn timestamp(name: &str, value: &str) -> Result<Option<prost_types::Timestamp>, Problem> {
    if value.is_empty() {
        return Ok(None);
    }
    let t = chrono::DateTime::parse_from_rfc3339(value)
        .map_err(|_| Problem::validation(format!("{name} must be an RFC 3339 time")))?;
    Ok(Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }))
}

fn outcome(value: &str) -> Result<Outcome, Problem> {
    match value {
        "" => Ok(Outcome::Unspecified),
        "success" => Ok(Outcome::Success),
        "failure" => Ok(Outcome::Failure),
        _ => Err(Problem::validation(
            "outcome must be `success` or `failure`",
        )),
    }
}

/// A protobuf time as RFC 3339 in whole seconds (the summary's and usage's times).
fn whole_seconds(t: Option<prost_types::Timestamp>) -> Option<String> {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, 0))
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// One stored event as JSON.
fn event_json(stored: StoredEvent) -> Value {
    let (risk, reasons) = (stored.risk_score, stored.risk_reasons);
    let Some(e) = stored.event else {
        return json!({"seq": stored.seq});
    };
    let occurred_at = e
        .occurred_at
        .and_then(|t| {
            chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        })
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let outcome = match Outcome::try_from(e.outcome) {
        Ok(Outcome::Success) => "success",
        _ => "failure",
    };
    let details: Value = serde_json::from_str(&e.details_json).unwrap_or_else(|_| json!({}));
    let text = |s: String| (!s.is_empty()).then_some(s);
    json!({
        "seq": stored.seq,
        "id": e.id,
        "occurred_at": occurred_at,
        "type": e.event_type,
        "outcome": outcome,
        "actor": text(e.actor),
        "subject": text(e.subject),
        "source_ip": text(e.source_ip),
        "user_agent": text(e.user_agent),
        "request_id": text(e.request_id),
        "trace_id": aia_telemetry::otel::trace_id_of(&e.traceparent),
        "producer": e.producer,
        "details": details,
        "risk": {"score": risk, "reasons": reasons},
    })
}

fn page(page: QueryResponse, shape: impl Fn(Value) -> Value) -> HttpResponse {
    let events: Vec<Value> = page
        .events
        .into_iter()
        .map(|e| shape(event_json(e)))
        .collect();
    let next = (!page.next_cursor.is_empty()).then_some(page.next_cursor);
    HttpResponse::Ok().json(json!({"events": events, "next_cursor": next}))
}

/// `GET /v1/admin/security-events`: the audit trail, newest first, filtered,
/// keyset-paginated.
pub async fn search(
    state: web::Data<State>,
    auth: Authenticated,
    filters: web::Query<EventFilters>,
) -> Result<HttpResponse, Problem> {
    require_admin(&auth)?;
    let f = filters.into_inner();
    if f.after != 0 {
        return Err(Problem::validation(
            "`after` is for the stream; pages use `cursor`",
        ));
    }
    let query = f.into_query()?;
    let answer = state
        .auth_reads
        .clone()
        .admin_query_events(AdminQueryEventsRequest {
            access_token: auth.token,
            query: Some(query),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    Ok(page(answer, |e| e))
}

/// Query of the summary view.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryQuery {
    /// Seconds, 60..=2592000 (default 3600).
    #[serde(default)]
    window: u32,
    /// How many top IPs and subjects, 1..=100 (default 10).
    #[serde(default)]
    top: u32,
}

/// `GET /v1/admin/security-events/summary`: counts per type and outcome over the
/// window, and the IPs and subjects with the most failures.
pub async fn summary(
    state: web::Data<State>,
    auth: Authenticated,
    query: web::Query<SummaryQuery>,
) -> Result<HttpResponse, Problem> {
    require_admin(&auth)?;
    let q = query.into_inner();
    let s = state
        .auth_reads
        .clone()
        .admin_summarize_events(AdminSummarizeEventsRequest {
            access_token: auth.token,
            summary: Some(SummaryRequest {
                window_seconds: q.window,
                top: q.top,
            }),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    let since = whole_seconds(s.since);
    let counts: Vec<Value> = s
        .counts
        .into_iter()
        .map(|c| {
            let outcome = if c.outcome == i32::from(Outcome::Success) {
                "success"
            } else {
                "failure"
            };
            json!({"type": c.event_type, "outcome": outcome, "count": c.count})
        })
        .collect();
    let keyed = |name: &str, rows: Vec<aia_proto::audit::v1::KeyCount>| -> Vec<Value> {
        rows.into_iter()
            .map(|k| json!({name: k.key, "failures": k.count}))
            .collect()
    };
    Ok(HttpResponse::Ok().json(json!({
        "since": since,
        "counts": counts,
        "top_failing_ips": keyed("ip", s.top_failing_ips),
        "top_failing_subjects": keyed("subject", s.top_failing_subjects),
    })))
}

/// Query of the user's own view.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    cursor: String,
}

/// `GET /v1/auth/me/security-events`: the caller's own security activity, newest
/// first (auth picks the events: its logins, sessions, credential and MFA changes,
/// and what admins did to the account).
pub async fn mine(
    state: web::Data<State>,
    auth: Authenticated,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Problem> {
    let q = query.into_inner();
    let answer = state
        .auth_reads
        .clone()
        .query_own_events(QueryOwnEventsRequest {
            access_token: auth.token,
            limit: q.limit,
            cursor: q.cursor,
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    let me = auth.claims.sub;
    Ok(page(answer, |e| about_me(e, &me)))
}

/// An event as the account's owner sees it: when someone else acted on the account
/// (an administrator), who they are and where they were stay with the admins' view.
/// Events the owner did, or that were done against them (failed logins from an
/// address), keep their address: that is what the owner needs to see.
fn about_me(mut event: Value, me: &str) -> Value {
    let by_other = event["actor"].as_str().is_some_and(|actor| actor != me);
    if by_other {
        for hidden in ["actor", "source_ip", "user_agent", "request_id", "trace_id"] {
            event[hidden] = Value::Null;
        }
        event["by_administrator"] = Value::Bool(true);
    }
    event
}

/// How often an open stream re-checks that its token is still unrevoked, and sends a
/// keep-alive comment (proxies close silent streams).
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// `GET /v1/admin/security-events/stream`: new events and alerts as Server-Sent
/// Events (`id`: seq, `event`: type, `data`: the event as in the search), filtered
/// like the search. A client that reconnects with `Last-Event-ID` (or `after`) misses
/// nothing. The stream lasts no longer than its access token: it ends when the
/// token expires, and within [`RECHECK`] of the token or its session being revoked
/// (logout, admin disable, refresh-token reuse).
pub async fn stream(
    state: web::Data<State>,
    auth: Authenticated,
    request: actix_web::HttpRequest,
    filters: web::Query<EventFilters>,
) -> Result<HttpResponse, Problem> {
    use futures::StreamExt;

    require_admin(&auth)?;
    let slot = state.streams.take(&auth.claims.sub).ok_or_else(|| {
        Problem::too_many_requests(actix_web::http::header::HeaderValue::from_static("5"))
            .detail("too many open event streams: close one first")
    })?;
    let auth_exp = auth.claims.exp;
    let f = filters.into_inner();
    let after = match request
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()))
    {
        None => f.after,
        Some(Some(seq)) => seq,
        Some(None) => {
            return Err(Problem::validation(
                "Last-Event-ID must be a sequence number",
            ));
        }
    };
    let filter = f.into_query()?;
    let events = state
        .auth_reads
        .clone()
        .admin_stream_events(AdminStreamEventsRequest {
            access_token: auth.token.clone(),
            stream: Some(aia_proto::audit::v1::StreamRequest {
                filter: Some(filter),
                after_seq: after.max(0),
            }),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    let events = events.map(|item| match item {
        Ok(stored) => {
            let (seq, kind) = (
                stored.seq,
                stored
                    .event
                    .as_ref()
                    .map(|e| e.event_type.clone())
                    .unwrap_or_default(),
            );
            let data = event_json(stored).to_string();
            Ok::<_, actix_web::Error>(web::Bytes::from(format!(
                "id: {seq}\nevent: {kind}\ndata: {data}\n\n"
            )))
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), "security-event stream ended");
            Err(actix_web::error::ErrorServiceUnavailable("stream ended"))
        }
    });
    let (claims, checker) = (auth.claims, state.clone());
    let rechecks = tokio_stream::wrappers::IntervalStream::new(tokio::time::interval_at(
        tokio::time::Instant::now() + RECHECK,
        RECHECK,
    ))
    .then(move |_| {
        let (state, claims) = (checker.clone(), claims.clone());
        async move {
            match crate::authn::revoked(&state, &claims).await {
                Ok(false) => Some(Ok(web::Bytes::from_static(b": keep-alive\n\n"))),
                // Revoked, or revocation unknowable: the stream ends.
                Ok(true) | Err(_) => None,
            }
        }
    });
    let expires_in = u64::try_from(auth_exp - chrono::Utc::now().timestamp()).unwrap_or(0);
    let shutdown = state.shutdown.clone();
    let over = async move {
        tokio::select! {
            () = shutdown.cancelled_owned() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(expires_in)) => {}
        }
    };
    // Ends when the event stream ends (its `None` marker) or a re-check fails.
    let end = futures::stream::once(futures::future::ready(None));
    let body = futures::stream::select(events.map(Some).chain(end), rechecks)
        .take_while(|item| futures::future::ready(item.is_some()))
        .filter_map(futures::future::ready)
        // At the token's expiry, or when the gateway stops (instead of waiting out its
        // grace period).
        .take_until(over)
        // The stream's place, given back when the body is dropped.
        .map(move |item| {
            let _open = &slot;
            item
        });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        // nginx (and ingress-nginx) would otherwise buffer the stream.
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}

/// Query of the usage view.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// `user:<id>` or `key:<id>`; none: every caller.
    #[serde(default)]
    caller: String,
    /// RFC 3339; default 24 hours ago.
    #[serde(default)]
    since: String,
    /// 1..=1000 (default 100).
    #[serde(default)]
    limit: u32,
}

/// `GET /v1/admin/usage`: requests per caller (user or API key), route class and
/// hour, newest hour first, as the gateways counted them.
pub async fn usage(
    state: web::Data<State>,
    auth: Authenticated,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, Problem> {
    require_admin(&auth)?;
    let q = query.into_inner();
    let answer = state
        .auth_reads
        .clone()
        .admin_query_usage(AdminQueryUsageRequest {
            access_token: auth.token,
            query: Some(aia_proto::audit::v1::QueryUsageRequest {
                caller: q.caller,
                since: timestamp("since", &q.since)?,
                limit: q.limit,
            }),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    let rows: Vec<Value> = answer
        .counts
        .into_iter()
        .map(|c| {
            json!({
                "hour": whole_seconds(c.hour),
                "caller": c.caller,
                "route_class": c.route_class,
                "requests": c.requests,
                "errors": c.errors,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({ "usage": rows })))
}
