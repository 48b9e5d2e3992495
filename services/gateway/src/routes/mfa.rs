//! `/v1/auth/login/mfa` and `/v1/auth/mfa/totp/*`: the second login step and the
//! TOTP factor's life cycle. Bearer tokens only: an API key never reaches these.

use actix_web::{HttpResponse, web};
use aia_proto::auth::v1::{
    CompleteMfaLoginRequest, ConfirmTotpRequest, DisableTotpRequest, EnrollTotpRequest,
};
use serde::Deserialize;

use crate::authn::Authenticated;
use crate::client::Client;
use crate::problem::Problem;
use crate::routes::auth::{SessionMode, login_tokens, no_store};
use crate::state::State;

/// Body of the second login step.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaLogin {
    /// The challenge from `POST /v1/auth/login`.
    challenge: String,
    /// A TOTP code or a recovery code.
    code: String,
    /// `token` (default) or `cookie`, as at login.
    #[serde(default)]
    session: SessionMode,
}

/// `POST /v1/auth/login/mfa`: the challenge plus a code gives the token pair; one
/// 401 for a wrong code and for an unknown, used or expired challenge.
pub async fn login(
    state: web::Data<State>,
    client: Client,
    body: web::Json<MfaLogin>,
) -> Result<HttpResponse, Problem> {
    let MfaLogin {
        challenge,
        code,
        session,
    } = body.into_inner();
    let pair = state
        .auth
        .clone()
        .complete_mfa_login(CompleteMfaLoginRequest {
            challenge,
            code,
            client: Some(client.to_proto()),
        })
        .await?
        .into_inner();
    login_tokens(&state, pair, session)
}

/// `POST /v1/auth/mfa/totp/enroll`: a new secret as an `otpauth://` URI (and in
/// base32), shown once; nothing changes until it is confirmed.
pub async fn enroll(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
) -> Result<HttpResponse, Problem> {
    let enrolment = state
        .auth
        .clone()
        .enroll_totp(EnrollTotpRequest {
            access_token: auth.token,
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    Ok(no_store(HttpResponse::Ok()).json(serde_json::json!({
        "otpauth_uri": enrolment.otpauth_uri,
        "secret": enrolment.secret,
    })))
}

/// Body of confirm.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    /// A code from the new authenticator.
    code: String,
    /// The account's password (a stolen access token alone cannot turn TOTP on).
    password: String,
}

/// `POST /v1/auth/mfa/totp/confirm`: the password and a first code turn TOTP on;
/// the answer holds the ten recovery codes, shown once. Every other session ends.
pub async fn confirm(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    body: web::Json<Confirm>,
) -> Result<HttpResponse, Problem> {
    let Confirm { code, password } = body.into_inner();
    // A guess at the password, as for a password change.
    let account = crate::rate_limit::user_account_key(&auth.claims.sub);
    crate::rate_limit::spend_guess(&state, &account).await?;
    let confirmed = state
        .auth
        .clone()
        .confirm_totp(ConfirmTotpRequest {
            access_token: auth.token,
            code,
            password,
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    Ok(no_store(HttpResponse::Ok()).json(serde_json::json!({
        "enabled": true,
        "recovery_codes": confirmed.recovery_codes,
    })))
}

/// Body of disable: a code or the password.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disable {
    #[serde(default)]
    code: String,
    #[serde(default)]
    password: String,
}

/// `POST /v1/auth/mfa/totp/disable`: needs a session opened with the second factor,
/// and a current code, a recovery code or the password; 204.
pub async fn disable(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    body: web::Json<Disable>,
) -> Result<HttpResponse, Problem> {
    let Disable { code, password } = body.into_inner();
    let account = crate::rate_limit::user_account_key(&auth.claims.sub);
    crate::rate_limit::spend_guess(&state, &account).await?;
    state
        .auth
        .clone()
        .disable_totp(DisableTotpRequest {
            access_token: auth.token,
            code,
            password,
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?;
    Ok(no_store(HttpResponse::NoContent()).finish())
}
