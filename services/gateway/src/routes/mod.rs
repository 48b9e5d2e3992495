//! The route table: one list of [`Endpoint`]s both registers the routes and
//! describes them in `GET /openapi.json` (see `openapi`), so the two cannot drift.
//! Each path is a resource with its listed methods; any other method gets 405, any
//! other path 404, both as problems.

pub mod account;
pub mod api_keys;
pub mod auth;
pub mod mfa;
pub mod oauth;
pub mod security_events;
pub mod sessions;

use actix_web::http::Method;
use actix_web::{HttpResponse, web};

use crate::problem::Problem;

async fn not_found() -> Result<HttpResponse, Problem> {
    Err(Problem::not_found())
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok\n")
}

/// Ready when auth answers with its signing keys (every protected route needs them).
async fn readyz(state: web::Data<crate::state::State>) -> Result<HttpResponse, Problem> {
    state
        .keys
        .for_kid(None)
        .await
        .map_err(|_| Problem::unavailable())?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ready\n"))
}

/// Who may call an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A user's access token.
    Bearer,
    /// A user's access token, or an API key with this scope.
    BearerOrKey(&'static str),
    /// An admin's access token.
    Admin,
}

/// What an endpoint takes in its body.
#[derive(Debug, Clone, Copy)]
pub enum Body {
    /// Nothing.
    None,
    /// JSON of this schema.
    Json(fn() -> Schema),
    /// `application/x-www-form-urlencoded` of this schema.
    Form(fn() -> Schema),
}

/// A named schema (from `utoipa::ToSchema`) and the named schemas it refers to.
pub type Schema = (
    String,
    utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    Vec<(
        String,
        utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    )>,
);

fn schema<T: utoipa::ToSchema>() -> Schema {
    let mut nested = Vec::new();
    T::schemas(&mut nested);
    (T::name().into_owned(), T::schema(), nested)
}

/// One public operation.
#[derive(Clone)]
pub struct Endpoint {
    /// The method.
    pub method: Method,
    /// The path, with `{id}` for a path parameter.
    pub path: &'static str,
    /// The OpenAPI `operationId`.
    pub id: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// Who may call it.
    pub access: Access,
    /// Its body.
    pub body: Body,
    /// The success status, and its body's schema if it has a named one.
    pub ok: (u16, Option<fn() -> Schema>),
    /// The statuses of the problems it may answer (besides 429 and 503, which any
    /// limited route may).
    pub errors: &'static [u16],
    route: fn() -> actix_web::Route,
}

/// JSON-body validation failures.
const BODY: &[u16] = &[400, 413, 415, 422];
/// A bearer-protected JSON route's failures.
const BEARER_BODY: &[u16] = &[400, 401, 403, 413, 415, 422];

#[allow(clippy::too_many_lines)]
/// Every public operation of the gateway (the proxied prefixes come on top).
pub fn endpoints() -> Vec<Endpoint> {
    use Access::{Admin, Bearer, BearerOrKey, Public};
    let e = |method: Method,
             path: &'static str,
             id: &'static str,
             summary: &'static str,
             access: Access,
             body: Body,
             ok: (u16, Option<fn() -> Schema>),
             errors: &'static [u16],
             route: fn() -> actix_web::Route| Endpoint {
        method,
        path,
        id,
        summary,
        access,
        body,
        ok,
        errors,
        route,
    };
    let tokens: Option<fn() -> Schema> = Some(schema::<auth::TokenResponse>);
    vec![
        e(
            Method::POST,
            "/v1/auth/register",
            "register",
            "Register; the same 202 whether or not the email was taken",
            Public,
            Body::Json(schema::<auth::Credentials>),
            (202, None),
            BODY,
            || web::post().to(auth::register),
        ),
        e(
            Method::POST,
            "/v1/auth/login",
            "login",
            "Log in: a token pair, or an MFA challenge for users with a second factor; a login that proves the password gets the device cookie",
            Public,
            Body::Json(schema::<auth::Login>),
            (200, tokens),
            &[400, 401, 403, 413, 415, 422],
            || web::post().to(auth::login),
        ),
        e(
            Method::POST,
            "/v1/auth/login/mfa",
            "login_mfa",
            "Second login step: challenge plus TOTP or recovery code",
            Public,
            Body::Json(schema::<mfa::MfaLogin>),
            (200, tokens),
            &[400, 401, 413, 415, 422],
            || web::post().to(mfa::login),
        ),
        e(
            Method::POST,
            "/v1/auth/refresh",
            "refresh",
            "Rotate the refresh token for a new pair",
            Public,
            Body::Json(schema::<auth::RefreshBody>),
            (200, tokens),
            &[400, 401, 413, 415, 422],
            || web::post().to(auth::refresh),
        ),
        e(
            Method::POST,
            "/v1/auth/logout",
            "logout",
            "End this session and blacklist the token",
            Bearer,
            Body::None,
            (204, None),
            &[401],
            || web::post().to(auth::logout),
        ),
        e(
            Method::POST,
            "/v1/auth/logout-all",
            "logout_all",
            "End every session of the user",
            Bearer,
            Body::None,
            (204, None),
            &[401],
            || web::post().to(sessions::logout_all),
        ),
        e(
            Method::GET,
            "/v1/auth/me",
            "me",
            "The caller's profile",
            BearerOrKey("profile:read"),
            Body::None,
            (200, None),
            &[401, 403],
            || web::get().to(auth::me),
        ),
        e(
            Method::GET,
            "/v1/auth/sessions",
            "list_sessions",
            "The user's live sessions",
            Bearer,
            Body::None,
            (200, None),
            &[401],
            || web::get().to(sessions::list),
        ),
        e(
            Method::DELETE,
            "/v1/auth/sessions",
            "revoke_other_sessions",
            "End every session but this one",
            Bearer,
            Body::None,
            (200, None),
            &[401],
            || web::delete().to(sessions::revoke_others),
        ),
        e(
            Method::DELETE,
            "/v1/auth/sessions/{id}",
            "revoke_session",
            "End one session of the user",
            Bearer,
            Body::None,
            (204, None),
            &[401, 404],
            || web::delete().to(sessions::revoke_one),
        ),
        e(
            Method::POST,
            "/v1/auth/verify-email",
            "verify_email",
            "Verify an email address with its token",
            Public,
            Body::Json(schema::<account::TokenBody>),
            (200, None),
            BODY,
            || web::post().to(account::verify_email),
        ),
        e(
            Method::POST,
            "/v1/auth/verify-email/resend",
            "resend_verification",
            "Send a new verification message; the same 202 whatever the address",
            Public,
            Body::Json(schema::<account::EmailBody>),
            (202, None),
            BODY,
            || web::post().to(account::resend_verification),
        ),
        e(
            Method::POST,
            "/v1/auth/password/forgot",
            "forgot_password",
            "Send a reset message; the same 202 whatever the address",
            Public,
            Body::Json(schema::<account::EmailBody>),
            (202, None),
            BODY,
            || web::post().to(account::forgot_password),
        ),
        e(
            Method::POST,
            "/v1/auth/password/reset",
            "reset_password",
            "Set a new password with a reset token; ends every session",
            Public,
            Body::Json(schema::<account::ResetBody>),
            (200, None),
            BODY,
            || web::post().to(account::reset_password),
        ),
        e(
            Method::POST,
            "/v1/auth/password/change",
            "change_password",
            "Change the password (needs the current one); ends the other sessions",
            Bearer,
            Body::Json(schema::<account::PasswordChange>),
            (200, None),
            &[400, 401, 403, 409, 413, 415, 422],
            || web::post().to(account::change_password),
        ),
        e(
            Method::POST,
            "/v1/auth/mfa/totp/enroll",
            "enroll_totp",
            "Start TOTP enrolment: the otpauth URI, once",
            Bearer,
            Body::None,
            (200, None),
            &[401, 403],
            || web::post().to(mfa::enroll),
        ),
        e(
            Method::POST,
            "/v1/auth/mfa/totp/confirm",
            "confirm_totp",
            "Turn TOTP on with the password and a first code; ten recovery codes, once",
            Bearer,
            Body::Json(schema::<mfa::Confirm>),
            (200, None),
            BEARER_BODY,
            || web::post().to(mfa::confirm),
        ),
        e(
            Method::POST,
            "/v1/auth/mfa/totp/disable",
            "disable_totp",
            "Turn TOTP off with a code or the password",
            Bearer,
            Body::Json(schema::<mfa::Disable>),
            (204, None),
            BEARER_BODY,
            || web::post().to(mfa::disable),
        ),
        e(
            Method::POST,
            "/v1/api-keys",
            "create_api_key",
            "Create an API key, shown once (at most 25 live per user)",
            Bearer,
            Body::Json(schema::<api_keys::NewKey>),
            (201, None),
            BEARER_BODY,
            || web::post().to(api_keys::create),
        ),
        e(
            Method::GET,
            "/v1/api-keys",
            "list_api_keys",
            "The user's live API keys",
            Bearer,
            Body::None,
            (200, None),
            &[401],
            || web::get().to(api_keys::list),
        ),
        e(
            Method::DELETE,
            "/v1/api-keys/{id}",
            "revoke_api_key",
            "Revoke one of the user's API keys",
            Bearer,
            Body::None,
            (204, None),
            &[401, 404],
            || web::delete().to(api_keys::revoke),
        ),
        e(
            Method::GET,
            "/v1/admin/users",
            "list_users",
            "Users by email, searched, keyset-paginated (q, limit, cursor)",
            Admin,
            Body::None,
            (200, None),
            &[401, 403, 422],
            || web::get().to(account::list_users),
        ),
        e(
            Method::GET,
            "/v1/admin/security-events",
            "search_security_events",
            "The audit trail, newest first: type, type_prefix, outcome, actor, subject, ip, since, until (RFC 3339), min_risk, limit, cursor",
            Admin,
            Body::None,
            (200, None),
            &[401, 403, 422],
            || web::get().to(security_events::search),
        ),
        e(
            Method::GET,
            "/v1/admin/security-events/summary",
            "security_summary",
            "Events per type and outcome over a window (window seconds, top), and the IPs and subjects with the most failures",
            Admin,
            Body::None,
            (200, None),
            &[401, 403, 422],
            || web::get().to(security_events::summary),
        ),
        e(
            Method::GET,
            "/v1/admin/security-events/stream",
            "stream_security_events",
            "New events and alerts as Server-Sent Events, filtered like the search; reconnect with Last-Event-ID (or after=seq)",
            Admin,
            Body::None,
            (200, None),
            &[401, 403, 422],
            || web::get().to(security_events::stream),
        ),
        e(
            Method::GET,
            "/v1/admin/usage",
            "usage",
            "Requests per caller (user:<id> or key:<id>), route class and hour, newest first (caller, since RFC 3339, limit)",
            Admin,
            Body::None,
            (200, None),
            &[401, 403, 422],
            || web::get().to(security_events::usage),
        ),
        e(
            Method::GET,
            "/v1/auth/me/security-events",
            "my_security_events",
            "The caller's own recent security activity: logins, sessions, credential, MFA and admin changes (limit, cursor)",
            Bearer,
            Body::None,
            (200, None),
            &[401, 422],
            || web::get().to(security_events::mine),
        ),
        e(
            Method::PUT,
            "/v1/admin/users/{id}/roles",
            "set_user_roles",
            "Set a user's roles; ends their sessions",
            Admin,
            Body::Json(schema::<account::RolesBody>),
            (204, None),
            &[400, 401, 403, 404, 413, 415, 422],
            || web::put().to(account::set_roles),
        ),
        e(
            Method::POST,
            "/v1/admin/users/{id}/unlock",
            "unlock_user",
            "Lift a user's lockout",
            Admin,
            Body::None,
            (200, None),
            &[401, 403, 404],
            || web::post().to(account::unlock_user),
        ),
        e(
            Method::POST,
            "/v1/admin/users/{id}/disable",
            "disable_user",
            "Disable a user; ends their sessions (an admin cannot disable themselves: 422)",
            Admin,
            Body::None,
            (204, None),
            &[401, 403, 404, 422],
            || web::post().to(account::disable_user),
        ),
        e(
            Method::POST,
            "/v1/admin/users/{id}/enable",
            "enable_user",
            "Enable a user again",
            Admin,
            Body::None,
            (204, None),
            &[401, 403, 404],
            || web::post().to(account::enable_user),
        ),
        e(
            Method::POST,
            "/v1/oauth/revoke",
            "revoke_token",
            "RFC 7009 revocation; 200 whether or not the token was valid",
            Public,
            Body::Form(schema::<oauth::TokenForm>),
            (200, None),
            &[400, 413, 415, 422],
            || web::post().to(oauth::revoke),
        ),
        e(
            Method::POST,
            "/v1/oauth/introspect",
            "introspect_token",
            "RFC 7662 introspection, for admins and API keys with tokens:introspect",
            BearerOrKey("tokens:introspect"),
            Body::Form(schema::<oauth::TokenForm>),
            (200, None),
            &[400, 401, 403, 413, 415, 422],
            || web::post().to(oauth::introspect),
        ),
        e(
            Method::GET,
            "/.well-known/jwks.json",
            "jwks",
            "The public signing keys (RFC 7517)",
            Public,
            Body::None,
            (200, None),
            &[],
            || web::get().to(auth::jwks),
        ),
        e(
            Method::GET,
            "/openapi.json",
            "openapi",
            "This document",
            Public,
            Body::None,
            (200, None),
            &[],
            || web::get().to(crate::openapi::serve),
        ),
        e(
            Method::GET,
            "/healthz",
            "healthz",
            "Liveness",
            Public,
            Body::None,
            (200, None),
            &[],
            || web::get().to(healthz),
        ),
        e(
            Method::GET,
            "/readyz",
            "readyz",
            "Readiness: the signing keys are at hand",
            Public,
            Body::None,
            (200, None),
            &[],
            || web::get().to(readyz),
        ),
    ]
}

/// Registers the proxied `prefixes` (every method) and every endpoint.
pub fn configure(cfg: &mut web::ServiceConfig, prefixes: &[String]) {
    for prefix in prefixes {
        // A scope matches by plain prefix (no regex per request); the handler then
        // finds the upstream by its configured prefix.
        let scope = prefix.strip_suffix('/').unwrap_or(prefix);
        cfg.service(web::scope(scope).default_service(web::to(crate::proxy::forward)));
    }
    let endpoints = endpoints();
    let mut paths: Vec<&'static str> = Vec::new();
    for endpoint in &endpoints {
        if !paths.contains(&endpoint.path) {
            paths.push(endpoint.path);
        }
    }
    for path in paths {
        let resource = endpoints
            .iter()
            .filter(|e| e.path == path)
            .fold(web::resource(path), |resource, e| {
                resource.route((e.route)())
            });
        // 405 names the methods the path has (RFC 9110 §15.5.6), preflights included.
        let mut methods: Vec<String> = endpoints
            .iter()
            .filter(|e| e.path == path)
            .map(|e| e.method.to_string())
            .collect();
        methods.push("OPTIONS".to_owned());
        let allow = actix_web::http::header::HeaderValue::from_str(&methods.join(", ")).ok();
        cfg.service(resource.default_service(web::to(move || {
            let allow = allow.clone();
            async move {
                let mut problem = Problem::method_not_allowed();
                if let Some(allow) = allow {
                    problem
                        .headers
                        .push((actix_web::http::header::ALLOW, allow));
                }
                Err::<HttpResponse, Problem>(problem)
            }
        })));
    }
    cfg.default_service(web::to(not_found));
}
