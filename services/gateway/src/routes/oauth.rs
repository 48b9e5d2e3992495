//! `/v1/oauth/*`: token revocation (RFC 7009) and introspection (RFC 7662), for
//! clients and resource servers that speak OAuth rather than gRPC.
//!
//! Both take `application/x-www-form-urlencoded` bodies, as the RFCs require.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use aia_proto::auth::v1::{RevokeTokenRequest, ValidateTokenRequest};
use serde::Deserialize;

use crate::authn::Caller;
use crate::client::Client;
use crate::problem::Problem;
use crate::state::State;

/// The scope an API key needs to introspect tokens.
pub const INTROSPECTION_SCOPE: &str = "tokens:introspect";

/// The role a user needs to introspect other tokens with their own access token.
pub const INTROSPECTION_ROLE: &str = "admin";

/// `token` and the optional `token_type_hint`.
#[derive(Deserialize, utoipa::ToSchema)]
pub struct TokenForm {
    token: String,
    #[serde(default)]
    #[schema(nullable = false)]
    token_type_hint: Option<TokenTypeHint>,
}

/// The kinds of token a hint may name (RFC 7009 §2.1); any other value is refused
/// (`unsupported_token_type`, §2.2.1).
#[derive(Deserialize, utoipa::ToSchema, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub enum TokenTypeHint {
    /// An access token.
    AccessToken,
    /// A refresh token.
    RefreshToken,
}

fn hint(value: Option<TokenTypeHint>) -> String {
    match value {
        None => String::new(),
        Some(TokenTypeHint::AccessToken) => "access_token".to_owned(),
        Some(TokenTypeHint::RefreshToken) => "refresh_token".to_owned(),
    }
}

/// `POST /v1/oauth/revoke` (RFC 7009): 200 whether or not the token was valid, so the
/// endpoint cannot be used to test tokens. Revoking an access token blacklists it;
/// revoking a refresh token ends its whole session.
pub async fn revoke(
    state: web::Data<State>,
    client: Client,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, Problem> {
    let TokenForm {
        token,
        token_type_hint,
    } = form.into_inner();
    let token_type_hint = hint(token_type_hint);
    state
        .auth
        .clone()
        .revoke_token(RevokeTokenRequest {
            token,
            token_type_hint,
            client: Some(client.to_proto()),
        })
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// `POST /v1/oauth/introspect` (RFC 7662). The caller authenticates with an API key
/// that has the `tokens:introspect` scope (how resource servers should call it), or
/// with the access token of a user with the `admin` role (introspection tells who a
/// token belongs to). An invalid, expired (past `exp`, with no leeway) or revoked
/// token is only `{"active": false}`.
pub async fn introspect(
    state: web::Data<State>,
    caller: Caller,
    form: web::Form<TokenForm>,
) -> Result<HttpResponse, Problem> {
    let allowed = match &caller {
        Caller::User(auth) => auth.claims.roles.iter().any(|r| r == INTROSPECTION_ROLE),
        Caller::ApiKey { .. } => caller.may(INTROSPECTION_SCOPE),
    };
    if !allowed {
        return Err(Problem::forbidden(
            "introspection needs the admin role or an API key with tokens:introspect",
        ));
    }
    let answer = state
        .auth
        .clone()
        .validate_token(ValidateTokenRequest {
            access_token: form.into_inner().token,
        })
        .await;
    let body = match answer {
        Ok(response) => match response.into_inner() {
            // Past `exp` is inactive here: verifiers allow a leeway for clock skew
            // (ValidateToken does), but the issuer's own answer has none to allow.
            aia_proto::auth::v1::ValidateTokenResponse {
                claims: Some(c),
                revoked: false,
            } if c.exp > chrono::Utc::now().timestamp() => serde_json::json!({
                "active": true,
                "token_type": "access_token",
                "sub": c.sub,
                "sid": c.sid,
                "jti": c.jti,
                "exp": c.exp,
                "iat": c.iat,
                "iss": c.iss,
                "aud": c.aud,
                "scope": c.roles.join(" "),
                "roles": c.roles,
            }),
            _ => serde_json::json!({"active": false}),
        },
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            serde_json::json!({"active": false})
        }
        Err(status) => return Err(Problem::from_status(&status)),
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(body))
}
