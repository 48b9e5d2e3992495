//! Bearer authentication: the [`Authenticated`] extractor.
//!
//! A route that takes `Authenticated` is protected: the token must verify locally
//! against auth's keys (EdDSA only, `typ` at+jwt, exact `iss`/`aud`, see
//! `aia_tokens::Verifier`) and must not be revoked. Revocation is checked against the
//! in-memory blacklist while it is fresh, else asked of the session service; if that
//! cannot answer either, the request fails closed with 503.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use aia_proto::session::v1::IsRevokedRequest;
use aia_tokens::{AccessClaims, Verifier};

use crate::problem::Problem;
use crate::state::State;

static REVOCATION_CHECKS: std::sync::LazyLock<aia_telemetry::metrics::Family<metrics::Counter>> =
    std::sync::LazyLock::new(|| {
        aia_telemetry::metrics::Family::counter("gateway_revocation_checks_total", &["source"])
    });

/// A request whose bearer token verified and is not revoked.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The verified claims.
    pub claims: AccessClaims,
    /// The token itself (for logout).
    pub token: String,
}

/// The token of `Authorization: Bearer <token>` (scheme case-insensitive).
pub fn bearer(headers: &header::HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

/// A token whose signature and claims verified earlier in this request (by the rate
/// limiter, which keys on the user), so that it is not verified twice.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The token.
    pub token: String,
    /// Its claims.
    pub claims: AccessClaims,
}

/// Verifies the signature and claims of `token` (not its revocation).
pub async fn verify(state: &State, token: &str) -> Result<AccessClaims, Problem> {
    let kid = Verifier::kid_of(token);
    let keys = state
        .keys
        .for_kid(kid.as_deref())
        .await
        .map_err(|_| Problem::unavailable())?;
    keys.verifier.verify(token).map_err(|reason| {
        metrics::counter!("gateway_token_refused_total", "reason" => reason.to_string())
            .increment(1);
        Problem::invalid_token()
    })
}

/// Whether the in-memory copy of the blacklist already knows `claims` revoked (no
/// network: `false` when the copy is not fresh, or the ids do not parse, which
/// [`revoked`] refuses later anyway).
pub fn known_revoked(state: &State, claims: &AccessClaims) -> bool {
    ids(claims).is_some_and(|(jti, sid)| state.revocations.check(jti, sid) == Some(true))
}

/// The token's and its session's ids.
fn ids(claims: &AccessClaims) -> Option<(uuid::Uuid, uuid::Uuid)> {
    Some((
        uuid::Uuid::parse_str(&claims.jti).ok()?,
        uuid::Uuid::parse_str(&claims.sid).ok()?,
    ))
}

/// Whether the access token of `claims` has been revoked (itself or its session):
/// from the in-memory copy of the blacklist when it knows, else from the session
/// service. Unreachable session service: an error (refuse, never assume).
pub async fn revoked(state: &State, claims: &AccessClaims) -> Result<bool, Problem> {
    let (jti, sid) = ids(claims).ok_or_else(Problem::invalid_token)?;
    let revoked = match state.revocations.check(jti, sid) {
        Some(revoked) => {
            REVOCATION_CHECKS.get(&["memory"]).increment(1);
            revoked
        }
        None => {
            REVOCATION_CHECKS.get(&["session"]).increment(1);
            state
                .session
                .clone()
                .is_revoked(IsRevokedRequest {
                    jti: claims.jti.clone(),
                    session_id: claims.sid.clone(),
                })
                .await
                .map_err(|status| {
                    tracing::warn!(code = ?status.code(), "revocation check failed; refusing");
                    Problem::unavailable()
                })?
                .into_inner()
                .revoked
        }
    };
    if revoked {
        metrics::counter!("gateway_token_refused_total", "reason" => "revoked").increment(1);
    }
    Ok(revoked)
}

async fn authenticate(
    state: web::Data<State>,
    token: Option<String>,
    verified: Option<Verified>,
) -> Result<Authenticated, Problem> {
    let token = token.ok_or_else(Problem::invalid_token)?;
    let claims = match verified {
        Some(v) if v.token == token => v.claims,
        _ => verify(&state, &token).await?,
    };
    if revoked(&state, &claims).await? {
        return Err(Problem::invalid_token());
    }
    Ok(Authenticated { claims, token })
}

impl FromRequest for Authenticated {
    type Error = Problem;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Problem>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<State>>().cloned();
        let token = bearer(req.headers());
        let verified = req.extensions().get::<Verified>().cloned();
        let ambiguous = ambiguous(req.headers());
        let with_key = api_key(req.headers()).is_some();
        let req = req.clone();
        Box::pin(async move {
            if ambiguous {
                return Err(ambiguous_problem());
            }
            // An API key is the request's credential wherever it is sent (the rate
            // limiter charged the key, or its address for a bad one): a route that
            // takes bearer tokens only does not then act on a token beside it.
            if with_key {
                return Err(Problem::unauthorized()
                    .detail("this route takes a bearer access token, not an API key")
                    .header(header::WWW_AUTHENTICATE, "Bearer"));
            }
            let state = state.ok_or_else(Problem::internal)?;
            let auth = authenticate(state, token, verified).await?;
            identify(&req, format!("user:{}", auth.claims.sub));
            Ok(auth)
        })
    }
}

/// Whether the request's credentials are ambiguous: more than one `Authorization` or
/// `X-API-Key` field. Each reader would pick its own (the gateway the first, an
/// upstream perhaps the last), so such a request is refused before any of them: the
/// credential checked must be the one forwarded. (An API key beside a bearer token
/// is not ambiguous: the key is the credential, everywhere, and the token is not
/// forwarded.)
pub fn ambiguous(headers: &header::HeaderMap) -> bool {
    headers.get_all(header::AUTHORIZATION).count() > 1 || headers.get_all("x-api-key").count() > 1
}

/// The refusal of [`ambiguous`] credentials.
fn ambiguous_problem() -> Problem {
    Problem::bad_request().detail("send one credential, in one header field")
}

/// The API key of `Authorization: ApiKey <key>` or `X-API-Key: <key>`.
pub fn api_key(headers: &header::HeaderMap) -> Option<String> {
    if let Some(value) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(value.trim().to_owned());
    }
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("apikey")
        .then(|| key.trim().to_owned())
}

/// Who is calling a route that accepts API keys as well as bearer tokens.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A user with a verified, unrevoked access token.
    User(Authenticated),
    /// An API key, with its owner and scopes.
    ApiKey {
        /// The owner.
        user_id: String,
        /// The key's id.
        key_id: String,
        /// The key's scopes. Roles are not carried: an API key never acts as an
        /// admin, whatever its owner's roles.
        scopes: Vec<String>,
    },
}

impl Caller {
    /// Whether the caller may act with `scope`: a user token always may, an API key
    /// only if it carries the scope.
    pub fn may(&self, scope: &str) -> bool {
        match self {
            Self::User(_) => true,
            Self::ApiKey { scopes, .. } => scopes.iter().any(|s| s == scope),
        }
    }
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Problem>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<State>>().cloned();
        let key = api_key(req.headers());
        let token = bearer(req.headers());
        let verified = req.extensions().get::<Verified>().cloned();
        let checked = req.extensions().get::<CheckedKey>().cloned();
        let ambiguous = ambiguous(req.headers());
        let req = req.clone();
        Box::pin(async move {
            if ambiguous {
                return Err(ambiguous_problem());
            }
            let state = state.ok_or_else(Problem::internal)?;
            let Some(key) = key else {
                let auth = authenticate(state, token, verified).await?;
                identify(&req, format!("user:{}", auth.claims.sub));
                return Ok(Caller::User(auth));
            };
            // The rate limiter usually checked the key already.
            let answer = match checked {
                Some(checked) => checked.0,
                None => check_api_key(&state, key).await,
            };
            let caller = answer.map_err(|problem| *problem)?;
            if let Caller::ApiKey { key_id, .. } = &caller {
                identify(&req, format!("key:{key_id}"));
            }
            Ok(caller)
        })
    }
}

/// Notes who the caller of `req` is, for usage tracking ([`crate::usage`]).
pub fn identify(req: &HttpRequest, caller: String) {
    req.extensions_mut()
        .insert(crate::usage::Identified(caller));
}

/// The outcome of checking an API key, kept in the request's extensions so that the
/// rate limiter and the handler ask auth once.
#[derive(Clone)]
pub struct CheckedKey(pub Result<Caller, Box<Problem>>);

/// Asks auth whether `key` is a live API key.
pub async fn check_api_key(state: &State, key: String) -> Result<Caller, Box<Problem>> {
    metrics::counter!("gateway_api_key_checks_total").increment(1);
    let answer = state
        .auth
        .clone()
        .authenticate_api_key(aia_proto::auth::v1::AuthenticateApiKeyRequest { api_key: key })
        .await
        .map_err(|status| {
            Box::new(match status.code() {
                tonic::Code::Unauthenticated => Problem::invalid_api_key(),
                _ => Problem::from_status(&status),
            })
        })?
        .into_inner();
    Ok(Caller::ApiKey {
        user_id: answer.user_id,
        key_id: answer.key_id,
        scopes: answer.scopes,
    })
}
