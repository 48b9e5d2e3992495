//! `/v1/api-keys`: a user creates, lists and revokes their API keys. Only with a
//! bearer token: an API key cannot mint or manage keys.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use aia_proto::auth::v1::{
    ApiKeyInfo, CreateApiKeyRequest, ListApiKeysRequest, RevokeApiKeyRequest,
};
use serde::Deserialize;

use crate::authn::Authenticated;
use crate::client::Client;
use crate::problem::Problem;
use crate::state::State;

/// Body of key creation. The schema says what auth accepts (any other value is a
/// 422 from auth, which owns the rules).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// 1 to 100 characters, not only spaces, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    name: String,
    /// At least one.
    #[schema(value_type = Vec<Scope>, min_items = 1)]
    scopes: Vec<String>,
    /// 0 (never) to 3650.
    #[serde(default)]
    #[schema(maximum = 3650)]
    expires_in_days: u32,
    /// The account's password: a key outlives the access token and a password reset,
    /// so a stolen access token alone cannot mint one.
    password: String,
}

/// A scope an API key may have (the schema of [`NewKey`]'s items).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum Scope {
    /// `GET /v1/auth/me`.
    #[schema(rename = "profile:read")]
    ProfileRead,
    /// `POST /v1/oauth/introspect`.
    #[schema(rename = "tokens:introspect")]
    TokensIntrospect,
    /// The proxied `UPSTREAMS` routes.
    #[schema(rename = "api:access")]
    ApiAccess,
}

fn rfc3339(t: Option<prost_types::Timestamp>) -> Option<String> {
    chrono::DateTime::from_timestamp(t?.seconds, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

fn describe(key: ApiKeyInfo) -> serde_json::Value {
    serde_json::json!({
        "id": key.id,
        "name": key.name,
        "scopes": key.scopes,
        "created_at": rfc3339(key.created_at),
        "expires_at": rfc3339(key.expires_at),
        "last_used_at": rfc3339(key.last_used_at),
    })
}

/// `POST /v1/api-keys`: 201 with the key, shown this once.
pub async fn create(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    body: web::Json<NewKey>,
) -> Result<HttpResponse, Problem> {
    let NewKey {
        name,
        scopes,
        expires_in_days,
        password,
    } = body.into_inner();
    // A guess at the password, as for a password change.
    let account = crate::rate_limit::user_account_key(&auth.claims.sub);
    crate::rate_limit::spend_guess(&state, &account).await?;
    let created = state
        .auth
        .clone()
        .create_api_key(CreateApiKeyRequest {
            access_token: auth.token,
            name,
            scopes,
            expires_in_days,
            client: Some(client.to_proto()),
            password,
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    let mut body = created.key.map(describe).unwrap_or_default();
    body["api_key"] = serde_json::Value::String(created.api_key);
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}

/// `GET /v1/api-keys`: the caller's live keys (never a secret).
pub async fn list(state: web::Data<State>, auth: Authenticated) -> Result<HttpResponse, Problem> {
    let keys = state
        .auth
        .clone()
        .list_api_keys(ListApiKeysRequest {
            access_token: auth.token,
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner()
        .keys;
    Ok(HttpResponse::Ok().json(keys.into_iter().map(describe).collect::<Vec<_>>()))
}

/// `DELETE /v1/api-keys/{id}`: 204, or 404 if the caller has no such key.
pub async fn revoke(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    state
        .auth
        .clone()
        .revoke_api_key(RevokeApiKeyRequest {
            access_token: auth.token,
            key_id: id.into_inner(),
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?;
    Ok(HttpResponse::NoContent().finish())
}
