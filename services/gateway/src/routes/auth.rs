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
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// At least `PASSWORD_MIN_LENGTH` characters (12 by default), at most 1024.
    #[schema(max_length = 1024)]
    password: String,
}

/// Where the refresh token goes: the body (API clients) or a sealed `HttpOnly`
/// cookie (browsers; see `cookies`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionMode {
    /// In the response body.
    #[default]
    Token,
    /// In the `__Host-aia_session` cookie, with a CSRF token.
    Cookie,
}

/// Body of login.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(max_length = 1024)]
    password: String,
    /// `token` (default) or `cookie`.
    #[serde(default)]
    session: SessionMode,
}

/// Body of refresh: the refresh token, or none to use the session cookie (which then
/// needs `Origin` and `X-CSRF-Token`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    #[serde(default)]
    refresh_token: Option<String>,
}

/// The token response (RFC 6749 §5.1 field names). In cookie mode the refresh token
/// is in the cookie and `csrf_token` is here instead.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    csrf_token: Option<String>,
}

/// The answer carrying `pair`: in the body, or with the refresh token in cookies.
pub(crate) fn tokens(
    state: &State,
    pair: TokenPair,
    mode: SessionMode,
) -> Result<HttpResponse, Problem> {
    let mut body = TokenResponse {
        access_token: pair.access_token,
        token_type: pair.token_type,
        expires_in: pair.expires_in,
        refresh_token: None,
        csrf_token: None,
    };
    let mut response = no_store(HttpResponse::Ok());
    match mode {
        SessionMode::Token => body.refresh_token = Some(pair.refresh_token),
        SessionMode::Cookie => {
            let (cookies, csrf) = state.cookies.issue(&pair.refresh_token)?;
            for cookie in cookies {
                response.cookie(cookie);
            }
            body.csrf_token = Some(csrf);
        }
    }
    Ok(response.json(body))
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
/// The guess is spent from the account's bucket, or from the device's when the
/// request carries a device cookie of this account; a completed login gets (or
/// renews) the cookie (see `cookies`).
pub async fn login(
    req: actix_web::HttpRequest,
    state: web::Data<State>,
    client: Client,
    body: web::Json<Login>,
) -> Result<HttpResponse, Problem> {
    let Login {
        email,
        password,
        session,
    } = body.into_inner();
    let account = crate::rate_limit::account_key(&email);
    let (device_id, bucket) = match state.cookies.device_of(&req, &account) {
        Some(id) => (id.clone(), format!("device:{id}")),
        None => (crate::cookies::new_device_id()?, account),
    };
    crate::rate_limit::spend_guess(&state, &bucket).await?;
    let answer = state
        .auth
        .clone()
        .login(LoginRequest {
            email,
            password,
            client: Some(client.to_proto()),
            device_id,
        })
        .await?
        .into_inner();
    match answer.result {
        Some(login_response::Result::Tokens(pair)) => login_tokens(&state, pair, session),
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

/// The answer to a completed login: [`tokens`], with the device cookie of the device
/// auth registered (renewed if the request presented it). The tokens are issued
/// already, so a cookie that cannot be made is logged, not answered.
pub(crate) fn login_tokens(
    state: &State,
    mut pair: TokenPair,
    mode: SessionMode,
) -> Result<HttpResponse, Problem> {
    let device = std::mem::take(&mut pair.device_id);
    let email = std::mem::take(&mut pair.account_email);
    let mut response = tokens(state, pair, mode)?;
    if !device.is_empty() && !email.is_empty() {
        let account = crate::rate_limit::account_key(&email);
        let added = state
            .cookies
            .device(&account, &device)
            .ok()
            .and_then(|cookie| response.add_cookie(&cookie).ok());
        if added.is_none() {
            tracing::warn!("a completed login's device cookie was not set");
        }
    }
    Ok(response)
}

/// `POST /v1/auth/refresh`: rotates the refresh token; the old one stops working.
/// Without a `refresh_token` in the body, the session cookie is used (and renewed),
/// behind the CSRF checks of `cookies`.
pub async fn refresh(
    req: actix_web::HttpRequest,
    state: web::Data<State>,
    client: Client,
    body: web::Json<RefreshBody>,
) -> Result<HttpResponse, Problem> {
    let (refresh_token, mode) = match body.into_inner().refresh_token {
        Some(token) => (token, SessionMode::Token),
        None => {
            let session = state.cookies.open(&req).ok_or_else(|| {
                Problem::unauthorized().detail("no refresh token and no valid session cookie")
            })?;
            crate::cookies::check_csrf(&req, &session, &state.origins)?;
            (session.refresh_token, SessionMode::Cookie)
        }
    };
    let pair = state
        .auth
        .clone()
        .refresh(RefreshRequest {
            refresh_token,
            client: Some(client.to_proto()),
        })
        .await?
        .into_inner();
    tokens(&state, pair, mode)
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
    // This gateway refuses the session from its next request on, before the
    // revocation stream brings the entry (read-your-writes for the client that logged
    // out; other gateways learn it from the stream, within tens of milliseconds).
    state
        .revocations
        .session_ended(&auth.claims.sid, auth.claims.exp);
    let mut response = no_store(HttpResponse::NoContent());
    for cookie in crate::cookies::removal() {
        response.cookie(cookie);
    }
    Ok(response
        .insert_header(("Clear-Site-Data", "\"cookies\", \"storage\""))
        .finish())
}

/// `GET /v1/auth/me`: the caller's profile.
pub async fn me(
    state: web::Data<State>,
    caller: Caller,
    request: actix_web::HttpRequest,
) -> Result<HttpResponse, Problem> {
    if !caller.may("profile:read") {
        return Err(Problem::forbidden(
            "this API key lacks the profile:read scope",
        ));
    }
    // Auth reads whose profile from the credential itself.
    let credential = match &caller {
        Caller::User(auth) => GetUserRequest {
            access_token: auth.token.clone(),
            api_key: String::new(),
        },
        Caller::ApiKey { .. } => GetUserRequest {
            access_token: String::new(),
            api_key: crate::authn::api_key(request.headers()).unwrap_or_default(),
        },
    };
    let user = state
        .auth
        .clone()
        .get_user(credential)
        .await
        .map_err(|status| match (&caller, status.code()) {
            // Auth refused the credential (revoked, expired, its user disabled or
            // gone): refused with the challenge of its kind.
            (Caller::ApiKey { .. }, tonic::Code::Unauthenticated) => Problem::invalid_api_key(),
            (Caller::User(_), _) => Problem::for_bearer(status),
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
