//! Account actions: password change (the user) and disabling users (admins).

use actix_web::{HttpResponse, web};
use aia_proto::auth::v1::{
    ChangePasswordRequest, EmailRequest, ListUsersRequest, ResetPasswordRequest,
    SetUserDisabledRequest, SetUserRolesRequest, UnlockUserRequest, VerifyEmailRequest,
};
use serde::Deserialize;

use crate::authn::Authenticated;
use crate::client::Client;
use crate::problem::Problem;
use crate::state::State;

/// Body of a password change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// `POST /v1/auth/password/change`: needs the current password; every other session
/// of the user ends. 200 with how many ended; 403 if the current password is wrong;
/// 422 naming the policy rule the new one breaks.
pub async fn change_password(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    body: web::Json<PasswordChange>,
) -> Result<HttpResponse, Problem> {
    let PasswordChange {
        current_password,
        new_password,
    } = body.into_inner();
    let account = crate::rate_limit::user_account_key(&auth.claims.sub);
    crate::rate_limit::spend_guess(&state, &account).await?;
    let changed = state
        .auth
        .clone()
        .change_password(ChangePasswordRequest {
            access_token: auth.token,
            current_password,
            new_password,
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "other_sessions_ended": changed.sessions_ended,
        "sessions_deferred": changed.sessions_deferred,
    })))
}

/// The role admin routes need.
const ADMIN: &str = "admin";

async fn set_disabled(
    state: &State,
    client: &Client,
    auth: &Authenticated,
    user_id: &str,
    disabled: bool,
) -> Result<HttpResponse, Problem> {
    require_admin(auth)?;
    state
        .auth
        .clone()
        .set_user_disabled(SetUserDisabledRequest {
            user_id: user_id.to_owned(),
            disabled,
            access_token: auth.token.clone(),
            client: Some(client.to_proto()),
        })
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /v1/admin/users/{id}/disable`: the user cannot log in, and every session of
/// theirs ends at once; 204.
pub async fn disable_user(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    set_disabled(&state, &client, &auth, &id, true).await
}

/// `POST /v1/admin/users/{id}/unlock`: lifts a lockout early; 200 with whether the
/// account was locked.
pub async fn unlock_user(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    require_admin(&auth)?;
    let was_locked = state
        .auth
        .clone()
        .unlock_user(UnlockUserRequest {
            user_id: id.into_inner(),
            access_token: auth.token.clone(),
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner()
        .was_locked;
    Ok(HttpResponse::Ok().json(serde_json::json!({"was_locked": was_locked})))
}

pub(crate) fn require_admin(auth: &Authenticated) -> Result<(), Problem> {
    if auth.claims.roles.iter().any(|r| r == ADMIN) {
        Ok(())
    } else {
        Err(Problem::forbidden("this needs the admin role"))
    }
}

/// `POST /v1/admin/users/{id}/enable`; 204.
pub async fn enable_user(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    set_disabled(&state, &client, &auth, &id, false).await
}

/// Body with a token.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    token: String,
}

/// Body with an email.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

/// Body of a password reset.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    token: String,
    new_password: String,
}

/// The one answer of forgot-password and resend-verification, whatever happened.
fn accepted() -> HttpResponse {
    HttpResponse::Accepted().json(serde_json::json!({
        "status": "accepted",
        "message": "If this address belongs to an account, a message is on its way.",
    }))
}

/// `POST /v1/auth/verify-email`: 200 once; 422 for an unknown, used or expired token.
pub async fn verify_email(
    state: web::Data<State>,
    client: Client,
    body: web::Json<TokenBody>,
) -> Result<HttpResponse, Problem> {
    state
        .auth
        .clone()
        .verify_email(VerifyEmailRequest {
            token: body.into_inner().token,
            client: Some(client.to_proto()),
        })
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"email_verified": true})))
}

/// `POST /v1/auth/verify-email/resend`: always 202.
pub async fn resend_verification(
    state: web::Data<State>,
    client: Client,
    body: web::Json<EmailBody>,
) -> Result<HttpResponse, Problem> {
    state
        .auth
        .clone()
        .resend_verification(EmailRequest {
            email: body.into_inner().email,
            client: Some(client.to_proto()),
        })
        .await?;
    Ok(accepted())
}

/// `POST /v1/auth/password/forgot`: always 202.
pub async fn forgot_password(
    state: web::Data<State>,
    client: Client,
    body: web::Json<EmailBody>,
) -> Result<HttpResponse, Problem> {
    state
        .auth
        .clone()
        .forgot_password(EmailRequest {
            email: body.into_inner().email,
            client: Some(client.to_proto()),
        })
        .await?;
    Ok(accepted())
}

/// `POST /v1/auth/password/reset`: sets the new password, ends every session, lifts a
/// lockout; 200. 422 for a bad token or a password the policy refuses (the token
/// then stays usable).
pub async fn reset_password(
    state: web::Data<State>,
    client: Client,
    body: web::Json<ResetBody>,
) -> Result<HttpResponse, Problem> {
    let ResetBody {
        token,
        new_password,
    } = body.into_inner();
    let reset = state
        .auth
        .clone()
        .reset_password(ResetPasswordRequest {
            token,
            new_password,
            client: Some(client.to_proto()),
        })
        .await?
        .into_inner();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "sessions_ended": reset.sessions_ended,
        "sessions_deferred": reset.sessions_deferred,
        "api_keys_revoked": reset.api_keys_revoked,
    })))
}

/// Query of the user list.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    cursor: String,
}

/// `GET /v1/admin/users?q=&limit=&cursor=`: users by email, keyset-paginated.
pub async fn list_users(
    state: web::Data<State>,
    auth: Authenticated,
    query: web::Query<UserQuery>,
) -> Result<HttpResponse, Problem> {
    require_admin(&auth)?;
    let UserQuery { q, limit, cursor } = query.into_inner();
    let page = state
        .auth
        .clone()
        .list_users(ListUsersRequest {
            access_token: auth.token.clone(),
            query: q,
            limit,
            cursor,
        })
        .await
        .map_err(Problem::for_bearer)?
        .into_inner();
    let users: Vec<serde_json::Value> = page
        .users
        .into_iter()
        .map(|u| {
            serde_json::json!({
                "id": u.id, "email": u.email, "email_verified": u.email_verified,
                "roles": u.roles, "disabled": u.disabled, "created_at": u.created_at,
            })
        })
        .collect();
    let next = (!page.next_cursor.is_empty()).then_some(page.next_cursor);
    Ok(HttpResponse::Ok().json(serde_json::json!({"users": users, "next_cursor": next})))
}

/// Body of a role change.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolesBody {
    /// Documented as the roles auth knows; any other string is auth's to refuse
    /// (422), so it is read as text.
    #[schema(value_type = Vec<Role>)]
    roles: Vec<String>,
}

/// A role (the schema of [`RolesBody`]'s items).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum Role {
    /// Every account.
    #[schema(rename = "user")]
    User,
    /// Administrators.
    #[schema(rename = "admin")]
    Admin,
}

/// `PUT /v1/admin/users/{id}/roles`: sets the roles and ends the user's sessions; 204.
pub async fn set_roles(
    state: web::Data<State>,
    client: Client,
    auth: Authenticated,
    id: web::Path<String>,
    body: web::Json<RolesBody>,
) -> Result<HttpResponse, Problem> {
    require_admin(&auth)?;
    state
        .auth
        .clone()
        .set_user_roles(SetUserRolesRequest {
            access_token: auth.token.clone(),
            user_id: id.into_inner(),
            roles: body.into_inner().roles,
            client: Some(client.to_proto()),
        })
        .await
        .map_err(Problem::for_bearer)?;
    Ok(HttpResponse::NoContent().finish())
}
