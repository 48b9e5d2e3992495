//! `/v1/auth/*`: the account and token endpoints, each a thin translation to a call
//! of the auth service.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use aia_proto::auth::v1::{
    GetUserRequest, LoginRequest, LogoutRequest, RefreshRequest, RegisterRequest, TokenPair,
    login_response,
};
use serde::{Deserialize, Serialize};

use crate::authn::{Authenticated, Caller};
use crate::client::Client;
use crate::problem::Problem;
use crate::state::State;

/// Body of register and login. Unknown fields are refused (422), so a typo such as
/// `pasword` is reported instead of silently ignored, and no body can carry
/// arbitrarily nested extra data.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    email: String,
    password: String,
}

/// Body of refresh.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    refresh_token: String,
}

/// The token response (RFC 6749 §5.1 field names).
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: u32,
    refresh_token: String,
}

impl From<TokenPair> for TokenResponse {
    fn from(p: TokenPair) -> Self {
        Self {
            access_token: p.access_token,
            token_type: p.token_type,
            expires_in: p.expires_in,
            refresh_token: p.refresh_token,
        }
    }
}

/// Token responses must never be cached (RFC 6749 §5.1).
pub(crate) fn no_store(
    mut response: actix_web::HttpResponseBuilder,
) -> actix_web::HttpResponseBuilder {
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"));
    response
}

/// `POST /v1/auth/register`: always 202 with the same body, whether or not the email
/// was already registered, so the endpoint cannot be used to find accounts.
pub async fn register(
    state: web::Data<State>,
    client: Client,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, Problem> {
    let Credentials { email, password } = body.into_inner();
    state
        .auth
        .clone()
        .register(RegisterRequest {
            email,
            password,
            client: Some(client.to_proto()),
        })
        .await?;
    Ok(no_store(HttpResponse::Accepted()).json(serde_json::json!({
        "status": "accepted",
        "message": "If this email address can be registered, its account is ready. Log in to continue.",
    })))
}

/// `POST /v1/auth/login`: a token pair, or one 401 for every kind of failure. A
/// user with a second factor gets 200 with `{"mfa_required": true, "challenge",
/// "expires_in", "methods"}` instead, to complete at `POST /v1/auth/login/mfa`.
pub async fn login(
    state: web::Data<State>,
    client: Client,
    body: web::Json<Credentials>,
) -> Result<HttpResponse, Problem> {
    let Credentials { email, password } = body.into_inner();
    let limiter = &state.limiter;
    if limiter.enabled() {
        let account = crate::rate_limit::account_key(&email);
        let decision = limiter.check(&limiter.login_account, &account).await;
        if let Some(problem) = crate::rate_limit::refusal(&limiter.login_account, &decision) {
            return Err(problem);
        }
    }
    let answer = state
        .auth
        .clone()
        .login(LoginRequest {
            email,
            password,
            client: Some(client.to_proto()),
        })
        .await?
        .into_inner();
    match answer.result {
        Some(login_response::Result::Tokens(pair)) => {
            Ok(no_store(HttpResponse::Ok()).json(TokenResponse::from(pair)))
        }
        Some(login_response::Result::Mfa(mfa)) => {
            Ok(no_store(HttpResponse::Ok()).json(serde_json::json!({
                "mfa_required": true,
                "challenge": mfa.challenge,
                "expires_in": mfa.expires_in,
                "methods": mfa.methods,
            })))
        }
        None => Err(Problem::internal()),
    }
}

/// `POST /v1/auth/refresh`: rotates the refresh token; the old one stops working.
pub async fn refresh(
    state: web::Data<State>,
    client: Client,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, Problem> {
    let pair = state
        .auth
        .clone()
        .refresh(RefreshRequest {
            refresh_token: body.into_inner().refresh_token,
            client: Some(client.to_proto()),
        })
        .await?
        .into_inner();
    Ok(no_store(HttpResponse::Ok()).json(TokenResponse::from(pair)))
}

/// `POST /v1/auth/logout`: ends the session of the presented access token and
/// blacklists the token; 204.
pub async fn logout(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
) -> Result<HttpResponse, Problem> {
    state
        .auth
        .clone()
        .logout(LogoutRequest {
            access_token: auth.token,
            client: Some(client.to_proto()),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unauthenticated => Problem::invalid_token(),
            _ => Problem::from_status(&status),
        })?;
    Ok(no_store(HttpResponse::NoContent())
        .insert_header(("Clear-Site-Data", "\"cookies\", \"storage\""))
        .finish())
}

/// `GET /v1/auth/me`: the caller's profile.
pub async fn me(state: web::Data<State>, caller: Caller) -> Result<HttpResponse, Problem> {
    if !caller.may("profile:read") {
        return Err(Problem::forbidden(
            "this API key lacks the profile:read scope",
        ));
    }
    let user = state
        .auth
        .clone()
        .get_user(GetUserRequest {
            user_id: caller.user_id().to_owned(),
        })
        .await
        .map_err(|status| match status.code() {
            // The token is valid but its user is gone: the token is no longer good.
            tonic::Code::NotFound => Problem::invalid_token(),
            _ => Problem::from_status(&status),
        })?
        .into_inner();
    Ok(no_store(HttpResponse::Ok()).json(serde_json::json!({
        "id": user.id,
        "email": user.email,
        "email_verified": user.email_verified,
        "roles": user.roles,
        "created_at": user.created_at,
        "mfa_enabled": user.mfa_enabled,
        "session_id": match &caller {
            Caller::User(auth) => Some(auth.claims.sid.clone()),
            Caller::ApiKey { .. } => None,
        },
        "amr": match &caller {
            Caller::User(auth) => Some(auth.claims.amr.clone()),
            Caller::ApiKey { .. } => None,
        },
    })))
}

/// `GET /.well-known/jwks.json`: the public keys, for offline verification.
pub async fn jwks(state: web::Data<State>) -> Result<HttpResponse, Problem> {
    let keys = state
        .keys
        .for_kid(None)
        .await
        .map_err(|_| Problem::unavailable())?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .content_type("application/jwk-set+json")
        .body(keys.json.clone()))
}
