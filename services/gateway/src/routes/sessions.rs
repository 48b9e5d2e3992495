//! `/v1/auth/sessions` and `/v1/auth/logout-all`: a user sees and ends their own
//! sessions. The user is always the one the bearer token names, and auth reads it
//! from the token itself (session answers these for auth alone); a session id of
//! someone else is answered like an unknown one (404).

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use aia_proto::auth::v1::{EndOwnSessionRequest, EndOwnSessionsRequest, ListOwnSessionsRequest};

use crate::authn::Authenticated;
use crate::client::Client;
use crate::problem::Problem;
use crate::state::State;

fn rfc3339(t: Option<prost_types::Timestamp>) -> Option<String> {
    let t = t?;
    chrono::DateTime::from_timestamp(t.seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// `GET /v1/auth/sessions`: live sessions, newest first, the caller's marked current.
pub async fn list(state: web::Data<State>, auth: Authenticated) -> Result<HttpResponse, Problem> {
    let sessions = state
        .auth
        .clone()
        .list_own_sessions(ListOwnSessionsRequest {
            access_token: auth.token.clone(),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner()
        .sessions;
    let body: Vec<serde_json::Value> = sessions
        .into_iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "current": s.id == auth.claims.sid,
                "created_at": rfc3339(s.created_at),
                "last_used_at": rfc3339(s.last_used_at),
                "expires_at": rfc3339(s.expires_at),
                "ip": s.ip,
                "user_agent": s.user_agent,
            })
        })
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

/// `DELETE /v1/auth/sessions/{id}`: ends one of the caller's sessions; 204.
pub async fn revoke_one(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let id = uuid::Uuid::parse_str(&id).map_err(|_| Problem::not_found())?;
    state
        .auth
        .clone()
        .end_own_session(EndOwnSessionRequest {
            access_token: auth.token,
            session_id: id.to_string(),
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?;
    // Auth answered (it refuses a session that is not the caller's): refused here
    // from the next request on, the caller's own or another (see logout). Its tokens
    // all expire within the access-token lifetime from now.
    let ttl = i64::try_from(state.access_ttl.as_secs()).unwrap_or(i64::MAX);
    state.revocations.session_ended(
        &id.to_string(),
        chrono::Utc::now().timestamp().saturating_add(ttl),
    );
    Ok(HttpResponse::NoContent().finish())
}

async fn revoke_all(
    state: &State,
    client: &Client,
    auth: &Authenticated,
    keep_current: bool,
) -> Result<u32, Problem> {
    Ok(state
        .auth
        .clone()
        .end_own_sessions(EndOwnSessionsRequest {
            access_token: auth.token.clone(),
            keep_current,
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner()
        .revoked)
}

/// `DELETE /v1/auth/sessions`: ends every session but the caller's; 200 with the count.
pub async fn revoke_others(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
) -> Result<HttpResponse, Problem> {
    let revoked = revoke_all(&state, &client, &auth, true).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"revoked": revoked})))
}

/// `POST /v1/auth/logout-all`: ends every session of the caller, this one included; 204.
pub async fn logout_all(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
) -> Result<HttpResponse, Problem> {
    revoke_all(&state, &client, &auth, false).await?;
    // The caller's own session: refused here from the next request on (see logout).
    state
        .revocations
        .session_ended(&auth.claims.sid, auth.claims.exp);
    Ok(HttpResponse::NoContent()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("Clear-Site-Data", "\"cookies\", \"storage\""))
        .finish())
}
