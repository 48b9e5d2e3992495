//! The route table. Each path is a resource with its allowed methods; any other
//! method gets 405, any other path 404, both as problems.

pub mod account;
pub mod api_keys;
pub mod auth;
pub mod mfa;
pub mod oauth;
pub mod sessions;

use actix_web::{HttpResponse, web};

use crate::problem::Problem;

async fn method_not_allowed() -> Result<HttpResponse, Problem> {
    Err(Problem::method_not_allowed())
}

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

/// A resource that answers `route` and 405 to every other method.
fn only(path: &str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed))
}

/// Registers every public route, and the proxied `prefixes` (every method).
pub fn configure(cfg: &mut web::ServiceConfig, prefixes: &[String]) {
    for prefix in prefixes {
        cfg.service(web::resource(format!("{prefix}{{tail:.*}}")).to(crate::proxy::forward));
    }
    cfg.service(only("/v1/auth/register", web::post().to(auth::register)))
        .service(only("/v1/auth/login", web::post().to(auth::login)))
        .service(only("/v1/auth/login/mfa", web::post().to(mfa::login)))
        .service(only(
            "/v1/auth/mfa/totp/enroll",
            web::post().to(mfa::enroll),
        ))
        .service(only(
            "/v1/auth/mfa/totp/confirm",
            web::post().to(mfa::confirm),
        ))
        .service(only(
            "/v1/auth/mfa/totp/disable",
            web::post().to(mfa::disable),
        ))
        .service(only("/v1/auth/refresh", web::post().to(auth::refresh)))
        .service(only("/v1/auth/logout", web::post().to(auth::logout)))
        .service(only("/v1/auth/me", web::get().to(auth::me)))
        .service(only("/v1/admin/users", web::get().to(account::list_users)))
        .service(only(
            "/v1/admin/users/{id}/roles",
            web::put().to(account::set_roles),
        ))
        .service(only(
            "/v1/auth/verify-email",
            web::post().to(account::verify_email),
        ))
        .service(only(
            "/v1/auth/verify-email/resend",
            web::post().to(account::resend_verification),
        ))
        .service(only(
            "/v1/auth/password/forgot",
            web::post().to(account::forgot_password),
        ))
        .service(only(
            "/v1/auth/password/reset",
            web::post().to(account::reset_password),
        ))
        .service(
            web::resource("/v1/api-keys")
                .route(web::post().to(api_keys::create))
                .route(web::get().to(api_keys::list))
                .default_service(web::to(method_not_allowed)),
        )
        .service(only(
            "/v1/api-keys/{id}",
            web::delete().to(api_keys::revoke),
        ))
        .service(only(
            "/v1/admin/users/{id}/unlock",
            web::post().to(account::unlock_user),
        ))
        .service(only(
            "/v1/auth/password/change",
            web::post().to(account::change_password),
        ))
        .service(only(
            "/v1/admin/users/{id}/disable",
            web::post().to(account::disable_user),
        ))
        .service(only(
            "/v1/admin/users/{id}/enable",
            web::post().to(account::enable_user),
        ))
        .service(only(
            "/v1/auth/logout-all",
            web::post().to(sessions::logout_all),
        ))
        .service(
            web::resource("/v1/auth/sessions")
                .route(web::get().to(sessions::list))
                .route(web::delete().to(sessions::revoke_others))
                .default_service(web::to(method_not_allowed)),
        )
        .service(only(
            "/v1/auth/sessions/{id}",
            web::delete().to(sessions::revoke_one),
        ))
        .service(only("/v1/oauth/revoke", web::post().to(oauth::revoke)))
        .service(only(
            "/v1/oauth/introspect",
            web::post().to(oauth::introspect),
        ))
        .service(only("/.well-known/jwks.json", web::get().to(auth::jwks)))
        .service(only("/healthz", web::get().to(healthz)))
        .service(only("/readyz", web::get().to(readyz)))
        .default_service(web::to(not_found));
}
