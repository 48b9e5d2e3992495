//! `aia.auth.v1.AuthService`.

use std::sync::Arc;

use aia_audit_client::AuditClient;
use aia_proto::audit::v1::Outcome;
use aia_proto::auth::v1::auth_service_server::AuthService;
use aia_proto::auth::v1::{
    ApiKeyInfo, AuthenticateApiKeyRequest, AuthenticateApiKeyResponse, ChangePasswordRequest,
    ChangePasswordResponse, Claims, CreateApiKeyRequest, CreateApiKeyResponse, EmailRequest,
    EmailResponse, GetJwksRequest, GetJwksResponse, GetUserRequest, ListApiKeysRequest,
    ListApiKeysResponse, ListUsersRequest, ListUsersResponse, LoginRequest, LogoutRequest,
    LogoutResponse, RefreshRequest, RegisterRequest, RegisterResponse, ResetPasswordRequest,
    ResetPasswordResponse, RevokeApiKeyRequest, RevokeApiKeyResponse, RevokeTokenRequest,
    RevokeTokenResponse, SetUserDisabledRequest, SetUserDisabledResponse, SetUserRolesRequest,
    SetUserRolesResponse, TokenPair, UnlockUserRequest, UnlockUserResponse, User as UserMessage,
    UserSummary, ValidateTokenRequest, ValidateTokenResponse, VerifyEmailRequest,
    VerifyEmailResponse,
};
use aia_proto::session::v1 as session;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_settings::TokenSettings;
use aia_tokens::AccessClaims;

use crate::api_keys::{ApiKey, ApiKeys, SCOPES};
use crate::email_tokens::{EmailTokens, Purpose};
use crate::keys::KeyStore;
use crate::lockout::{Lockout, Refusal};
use crate::mailer::Mailer;
use crate::policy::PasswordPolicy;
use aia_telemetry::tls::authorize;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::domain::{EmailAddress, Invalid, Password};
use crate::error::AuthError;
use crate::hashing::Hasher;
use crate::users::{User, UserStore};

/// The auth service's state.
#[derive(Clone)]
pub struct Auth {
    pub(crate) users: UserStore,
    pub(crate) hasher: Hasher,
    pub(crate) keys: Arc<KeyStore>,
    pub(crate) tokens: TokenSettings,
    pub(crate) policy: PasswordPolicy,
    pub(crate) lockout: Lockout,
    pub(crate) api_keys: ApiKeys,
    pub(crate) email_tokens: EmailTokens,
    pub(crate) mailer: Mailer,
    pub(crate) mail: aia_settings::MailSettings,
    pub(crate) session: SessionServiceClient<Channel>,
    pub(crate) audit: AuditClient,
}

/// The access token id that goes with a refresh token: a one-way function of it.
fn jti_for(refresh_token: &str) -> uuid::Uuid {
    use sha2::Digest;
    let digest = sha2::Sha256::new_with_prefix(b"aia access jti v1\0")
        .chain_update(refresh_token.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

fn api_key_info(key: ApiKey) -> ApiKeyInfo {
    ApiKeyInfo {
        id: key.id.to_string(),
        name: key.name,
        scopes: key.scopes,
        created_at: Some(timestamp(key.created_at)),
        expires_at: key.expires_at.map(timestamp),
        last_used_at: key.last_used_at.map(timestamp),
    }
}

impl Auth {
    /// Signs an access token for `user` in `session_id` and pairs it with `refresh_token`.
    /// Signs an access token for `user` in `session_id`, issued at `issued_at`
    /// (seconds since the epoch) with id `jti`, and pairs it with `refresh_token`.
    fn issue(
        &self,
        user: &User,
        session_id: &str,
        refresh_token: String,
        issued_at: i64,
        jti: uuid::Uuid,
    ) -> Result<TokenPair, AuthError> {
        let ttl = i64::try_from(self.tokens.access_ttl.as_secs()).unwrap_or(900);
        let claims = AccessClaims {
            iss: self.tokens.issuer.clone(),
            aud: self.tokens.audience.clone(),
            sub: user.id.to_string(),
            exp: issued_at + ttl,
            iat: issued_at,
            nbf: issued_at,
            jti: jti.to_string(),
            sid: session_id.to_owned(),
            roles: user.roles.clone(),
        };
        let access_token = self
            .keys
            .ring()
            .active
            .sign(&claims)
            .map_err(|e| AuthError::Unexpected(e.into()))?;
        let remaining = claims.exp - chrono::Utc::now().timestamp();
        Ok(TokenPair {
            access_token,
            token_type: "Bearer".into(),
            expires_in: u32::try_from(remaining.clamp(0, ttl)).unwrap_or(0),
            refresh_token,
        })
    }

    async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, AuthError> {
        let email = EmailAddress::parse(&req.email)?;
        let password = self.policy.check(&req.password, &email)?;
        // Hash first, whatever happens next: a taken email costs the same time.
        let hash = self.hasher.hash(password).await?;
        let created = self
            .users
            .insert(&email, &hash)
            .await
            .map_err(AuthError::Unavailable)?;
        let client = req.client.as_ref();
        match created {
            Some(id) => {
                metrics::counter!("auth_register_total", "outcome" => "created").increment(1);
                self.audit
                    .event("auth.register", Outcome::Success)
                    .actor(id.to_string())
                    .subject(id.to_string())
                    .client(client)
                    .emit();
                self.send_verification(id, &email).await?;
            }
            None => {
                metrics::counter!("auth_register_total", "outcome" => "email_taken").increment(1);
                self.audit
                    .event("auth.register", Outcome::Failure)
                    .client(client)
                    .details(serde_json::json!({"reason": "email_taken"}))
                    .emit();
            }
        }
        Ok(RegisterResponse {})
    }

    async fn login(&self, req: LoginRequest) -> Result<TokenPair, AuthError> {
        let email = EmailAddress::parse(&req.email)?;
        let password = Password::presented(&req.password)?;
        let ip = req.client.as_ref().map_or("", |c| c.ip.as_str()).to_owned();
        let precheck = match self
            .lockout
            .precheck(email.as_str(), &ip)
            .await
            .map_err(AuthError::Unavailable)?
        {
            Ok(precheck) => precheck,
            Err(Refusal::RetryAfter(wait)) => {
                metrics::counter!("auth_login_total", "outcome" => "failure", "reason" => "throttled").increment(1);
                self.audit
                    .event("auth.login", Outcome::Failure)
                    .client(req.client.as_ref())
                    .details(serde_json::json!({"reason": "throttled", "retry_after_seconds": wait.as_secs()}))
                    .emit();
                return Err(AuthError::Throttled(wait));
            }
        };
        let user = self
            .users
            .by_email(&email)
            .await
            .map_err(AuthError::Unavailable)?;
        let checked = self
            .hasher
            .check(password, user.as_ref().map(|u| u.password_hash.clone()))
            .await?;
        let matches = checked.matches;
        let client = req.client.as_ref();
        let user = match user {
            Some(user) if matches && user.disabled_at.is_none() => {
                if self.mail.require_verification && !user.email_verified {
                    return Err(AuthError::EmailNotVerified);
                }
                user
            }
            other => {
                let reason = match other {
                    None => "unknown_email",
                    Some(ref u) if u.disabled_at.is_some() && matches => "disabled",
                    Some(_) => "wrong_password",
                };
                metrics::counter!("auth_login_total", "outcome" => "failure", "reason" => reason)
                    .increment(1);
                let mut event = self
                    .audit
                    .event("auth.login", Outcome::Failure)
                    .client(client)
                    .details(serde_json::json!({"reason": reason}));
                if let Some(u) = &other {
                    event = event.subject(u.id.to_string());
                }
                event.emit();
                let locked = self
                    .lockout
                    .record_failure(email.as_str(), &ip)
                    .await
                    .map_err(AuthError::Unavailable)?;
                if locked {
                    metrics::counter!("auth_lockouts_total").increment(1);
                    let mut event = self
                        .audit
                        .event("auth.lockout", Outcome::Failure)
                        .client(client)
                        .details(
                            serde_json::json!({"risk": "high", "reason": "too_many_failures"}),
                        );
                    if let Some(u) = &other {
                        event = event.subject(u.id.to_string());
                    }
                    event.emit();
                }
                return Err(AuthError::InvalidCredentials);
            }
        };
        self.lockout
            .record_success(email.as_str(), &ip)
            .await
            .map_err(AuthError::Unavailable)?;
        if checked.outdated {
            self.upgrade_hash(&user, &req.password).await;
        }
        if precheck.locked_known_client {
            tracing::info!(user = %user.id, "locked account: login let through from a known client");
        }
        let created = self
            .session
            .clone()
            .create_session(session::CreateSessionRequest {
                user_id: user.id.to_string(),
                client: req.client.clone(),
            })
            .await
            .map_err(|s| AuthError::from_upstream(s, "session.CreateSession"))?
            .into_inner();
        let now = chrono::Utc::now().timestamp();
        let pair = self.issue(
            &user,
            &created.session_id,
            created.refresh_token,
            now,
            uuid::Uuid::new_v4(),
        )?;
        metrics::counter!("auth_login_total", "outcome" => "success", "reason" => "").increment(1);
        self.audit
            .event("auth.login", Outcome::Success)
            .actor(user.id.to_string())
            .subject(user.id.to_string())
            .client(client)
            .details(serde_json::json!({"session_id": created.session_id, "amr": ["pwd"]}))
            .emit();
        Ok(pair)
    }

    async fn refresh(&self, req: RefreshRequest) -> Result<TokenPair, AuthError> {
        let rotated = self
            .session
            .clone()
            .rotate(session::RotateRequest {
                refresh_token: req.refresh_token,
                client: req.client.clone(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unauthenticated | tonic::Code::InvalidArgument => {
                    AuthError::InvalidRefreshToken
                }
                _ => AuthError::from_upstream(s, "session.Rotate"),
            })?
            .into_inner();
        let user_id =
            uuid::Uuid::parse_str(&rotated.user_id).map_err(|e| AuthError::Unexpected(e.into()))?;
        let user = self
            .users
            .by_id(user_id)
            .await
            .map_err(AuthError::Unavailable)?;
        let Some(user) = user.filter(|u| u.disabled_at.is_none()) else {
            return Err(AuthError::InvalidRefreshToken);
        };
        // Issue time and token id come from the rotation, so that a retry within the
        // grace window gets the identical access token (Ed25519 signatures are
        // deterministic), not a second one.
        let issued_at = rotated
            .issued_at
            .map_or_else(|| chrono::Utc::now().timestamp(), |t| t.seconds);
        let jti = jti_for(&rotated.refresh_token);
        self.issue(
            &user,
            &rotated.session_id,
            rotated.refresh_token,
            issued_at,
            jti,
        )
    }

    fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        self.keys.ring().verifier.verify(token).map_err(|e| {
            tracing::debug!(reason = %e, "access token refused");
            AuthError::InvalidAccessToken
        })
    }

    async fn logout(&self, req: LogoutRequest) -> Result<LogoutResponse, AuthError> {
        let claims = self.verify(&req.access_token)?;
        self.session
            .clone()
            .revoke(session::RevokeRequest {
                session_id: claims.sid,
                access_jti: claims.jti,
                access_expires_at: Some(prost_types::Timestamp {
                    seconds: claims.exp,
                    nanos: 0,
                }),
                client: req.client.clone(),
                user_id: claims.sub,
            })
            .await
            .map_err(|s| AuthError::from_upstream(s, "session.Revoke"))?;
        Ok(LogoutResponse {})
    }

    /// RFC 7009: revoke whatever `token` is; unknown or invalid tokens are a success.
    async fn revoke_token(
        &self,
        req: RevokeTokenRequest,
    ) -> Result<RevokeTokenResponse, AuthError> {
        // The hint only says what to try first (RFC 7009 §2.1); both kinds are tried.
        let claims = self.keys.ring().verifier.verify(&req.token).ok();
        match claims {
            Some(claims) => {
                self.session
                    .clone()
                    .revoke_access_token(session::RevokeAccessTokenRequest {
                        jti: claims.jti,
                        expires_at: Some(prost_types::Timestamp {
                            seconds: claims.exp,
                            nanos: 0,
                        }),
                        user_id: claims.sub,
                        client: req.client.clone(),
                    })
                    .await
                    .map_err(|s| AuthError::from_upstream(s, "session.RevokeAccessToken"))?;
            }
            None => {
                // Not a valid access token: perhaps a refresh token (session ignores
                // anything that is not one of its tokens).
                self.session
                    .clone()
                    .revoke_refresh_token(session::RevokeRefreshTokenRequest {
                        refresh_token: req.token,
                        client: req.client.clone(),
                    })
                    .await
                    .map_err(|s| AuthError::from_upstream(s, "session.RevokeRefreshToken"))?;
            }
        }
        Ok(RevokeTokenResponse {})
    }

    async fn change_password(
        &self,
        req: ChangePasswordRequest,
    ) -> Result<ChangePasswordResponse, AuthError> {
        let user_id =
            uuid::Uuid::parse_str(&req.user_id).map_err(|_| AuthError::InvalidAccessToken)?;
        let user = self
            .users
            .by_id(user_id)
            .await
            .map_err(AuthError::Unavailable)?
            .filter(|u| u.disabled_at.is_none())
            .ok_or(AuthError::InvalidAccessToken)?;
        let email = EmailAddress::parse(&user.email)?;
        let current = Password::presented(&req.current_password)?;
        if !self
            .hasher
            .verify(current, Some(user.password_hash.clone()))
            .await?
        {
            self.audit
                .event("auth.password_change", Outcome::Failure)
                .actor(user_id.to_string())
                .subject(user_id.to_string())
                .client(req.client.as_ref())
                .details(serde_json::json!({"reason": "wrong_current_password"}))
                .emit();
            return Err(AuthError::WrongCurrentPassword);
        }
        let new = self.policy.check(&req.new_password, &email)?;
        // Not the current password, nor a recent one.
        let mut recent = vec![user.password_hash.clone()];
        recent.extend(
            self.users
                .password_history(user_id, self.policy.history())
                .await
                .map_err(AuthError::Unavailable)?,
        );
        for old in recent {
            if self
                .hasher
                .verify(Password::presented(new.expose())?, Some(old))
                .await?
            {
                return Err(AuthError::Invalid(Invalid::PasswordReused));
            }
        }
        let hash = self.hasher.hash(new).await?;
        self.users
            .set_password(user_id, &user.password_hash, &hash, self.policy.history())
            .await
            .map_err(AuthError::Unavailable)?;
        let ended = self
            .end_sessions(
                user_id,
                Some(&req.session_id),
                "password_changed",
                req.client.clone(),
            )
            .await?;
        self.audit
            .event("auth.password_change", Outcome::Success)
            .actor(user_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"other_sessions_ended": ended}))
            .emit();
        Ok(ChangePasswordResponse {
            sessions_ended: ended,
        })
    }

    /// Ends every session of `user_id` but `keep`.
    async fn end_sessions(
        &self,
        user_id: uuid::Uuid,
        keep: Option<&str>,
        reason: &str,
        client: Option<aia_proto::common::v1::ClientInfo>,
    ) -> Result<u32, AuthError> {
        Ok(self
            .session
            .clone()
            .revoke_user_sessions(session::RevokeUserSessionsRequest {
                user_id: user_id.to_string(),
                except_session_id: keep.unwrap_or_default().to_owned(),
                reason: reason.to_owned(),
                client,
            })
            .await
            .map_err(|s| AuthError::from_upstream(s, "session.RevokeUserSessions"))?
            .into_inner()
            .revoked)
    }

    /// Replaces a legacy (bcrypt) or outdated argon2 hash after a successful login,
    /// while the password is at hand. A failure is logged; the login goes on.
    async fn upgrade_hash(&self, user: &User, raw_password: &str) {
        let result: Result<(), AuthError> = async {
            let hash = self.hasher.hash(Password::presented(raw_password)?).await?;
            self.users
                .upgrade_hash(user.id, &hash)
                .await
                .map_err(AuthError::Unavailable)
        }
        .await;
        match result {
            Ok(()) => {
                let from = if user.password_hash.starts_with("$2") {
                    "bcrypt"
                } else {
                    "argon2"
                };
                metrics::counter!("auth_password_rehashed_total", "from" => from).increment(1);
                tracing::info!(user = %user.id, from, "password hash upgraded to the current argon2id parameters");
            }
            Err(error) => {
                tracing::warn!(user = %user.id, error = %error, "password hash upgrade failed")
            }
        }
    }

    /// The gateway checked the token's roles; check the actor's current roles too.
    async fn require_admin(&self, actor_id: &str) -> Result<uuid::Uuid, AuthError> {
        let actor_id = uuid::Uuid::parse_str(actor_id).map_err(|_| AuthError::Forbidden)?;
        let actor = self
            .users
            .by_id(actor_id)
            .await
            .map_err(AuthError::Unavailable)?;
        if !actor.is_some_and(|a| a.disabled_at.is_none() && a.roles.iter().any(|r| r == "admin")) {
            return Err(AuthError::Forbidden);
        }
        Ok(actor_id)
    }

    async fn list_users(&self, req: ListUsersRequest) -> Result<ListUsersResponse, AuthError> {
        self.require_admin(&req.actor_id).await?;
        let limit = match req.limit {
            0 => 50,
            n @ 1..=200 => i64::from(n),
            _ => return Err(AuthError::Invalid(Invalid::PageSize)),
        };
        let after = match req.cursor.as_str() {
            "" => None,
            c => Some(
                String::from_utf8(
                    URL_SAFE_NO_PAD
                        .decode(c)
                        .map_err(|_| AuthError::Invalid(Invalid::Cursor))?,
                )
                .map_err(|_| AuthError::Invalid(Invalid::Cursor))?,
            ),
        };
        if req.query.chars().count() > 254 {
            return Err(AuthError::Invalid(Invalid::Email));
        }
        let mut users = self
            .users
            .list(&req.query, after.as_deref(), limit + 1)
            .await
            .map_err(AuthError::Unavailable)?;
        let next_cursor = if users.len() as i64 > limit {
            users.truncate(usize::try_from(limit).unwrap_or(50));
            users
                .last()
                .map(|u| URL_SAFE_NO_PAD.encode(&u.email))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(ListUsersResponse {
            users: users
                .into_iter()
                .map(|u| UserSummary {
                    id: u.id.to_string(),
                    email: u.email,
                    email_verified: u.email_verified,
                    roles: u.roles,
                    disabled: u.disabled_at.is_some(),
                    created_at: u
                        .created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                })
                .collect(),
            next_cursor,
        })
    }

    async fn set_user_roles(
        &self,
        req: SetUserRolesRequest,
    ) -> Result<SetUserRolesResponse, AuthError> {
        let actor_id = self.require_admin(&req.actor_id).await?;
        let user_id = uuid::Uuid::parse_str(&req.user_id).map_err(|_| AuthError::NotFound)?;
        let mut roles = req.roles.clone();
        roles.push("user".to_owned());
        roles.sort();
        roles.dedup();
        if !roles.iter().all(|r| r == "user" || r == "admin") {
            return Err(AuthError::Invalid(Invalid::Roles));
        }
        if user_id == actor_id && !roles.iter().any(|r| r == "admin") {
            return Err(AuthError::Invalid(Invalid::SelfDemotion));
        }
        if !self
            .users
            .set_roles(user_id, &roles)
            .await
            .map_err(AuthError::Unavailable)?
        {
            return Err(AuthError::NotFound);
        }
        let ended = self
            .end_sessions(user_id, None, "roles_changed", req.client.clone())
            .await?;
        self.audit
            .event("admin.user_roles_changed", Outcome::Success)
            .actor(actor_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"roles": roles, "sessions_ended": ended}))
            .emit();
        Ok(SetUserRolesResponse {})
    }

    async fn unlock_user(&self, req: UnlockUserRequest) -> Result<UnlockUserResponse, AuthError> {
        let actor_id = self.require_admin(&req.actor_id).await?;
        let user_id = uuid::Uuid::parse_str(&req.user_id).map_err(|_| AuthError::NotFound)?;
        let user = self
            .users
            .by_id(user_id)
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::NotFound)?;
        let was_locked = self
            .lockout
            .unlock(&user.email)
            .await
            .map_err(AuthError::Unavailable)?;
        self.audit
            .event("admin.user_unlocked", Outcome::Success)
            .actor(actor_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"was_locked": was_locked}))
            .emit();
        Ok(UnlockUserResponse { was_locked })
    }

    async fn set_user_disabled(
        &self,
        req: SetUserDisabledRequest,
    ) -> Result<SetUserDisabledResponse, AuthError> {
        let actor_id = self.require_admin(&req.actor_id).await?;
        let user_id = uuid::Uuid::parse_str(&req.user_id).map_err(|_| AuthError::NotFound)?;
        if !self
            .users
            .set_disabled(user_id, req.disabled)
            .await
            .map_err(AuthError::Unavailable)?
        {
            return Err(AuthError::NotFound);
        }
        let ended = if req.disabled {
            self.end_sessions(user_id, None, "user_disabled", req.client.clone())
                .await?
        } else {
            0
        };
        let event = if req.disabled {
            "admin.user_disabled"
        } else {
            "admin.user_enabled"
        };
        self.audit
            .event(event, Outcome::Success)
            .actor(actor_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"sessions_ended": ended}))
            .emit();
        Ok(SetUserDisabledResponse {})
    }

    async fn create_api_key(
        &self,
        req: CreateApiKeyRequest,
    ) -> Result<CreateApiKeyResponse, AuthError> {
        let user_id =
            uuid::Uuid::parse_str(&req.user_id).map_err(|_| AuthError::InvalidAccessToken)?;
        let name = req.name.trim();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(AuthError::Invalid(Invalid::ApiKeyName));
        }
        if req.scopes.is_empty() || !req.scopes.iter().all(|s| SCOPES.contains(&s.as_str())) {
            return Err(AuthError::Invalid(Invalid::ApiKeyScopes));
        }
        if req.expires_in_days > 3650 {
            return Err(AuthError::Invalid(Invalid::ApiKeyExpiry));
        }
        let expires_at = (req.expires_in_days > 0)
            .then(|| chrono::Utc::now() + chrono::Duration::days(i64::from(req.expires_in_days)));
        let mut scopes = req.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let (key, api_key) = self
            .api_keys
            .create(user_id, name, &scopes, expires_at)
            .await
            .map_err(AuthError::Unavailable)?;
        self.audit
            .event("auth.api_key_created", Outcome::Success)
            .actor(user_id.to_string())
            .subject(key.id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"scopes": scopes, "expires_at": expires_at}))
            .emit();
        Ok(CreateApiKeyResponse {
            key: Some(api_key_info(key)),
            api_key,
        })
    }

    async fn authenticate_api_key(
        &self,
        req: AuthenticateApiKeyRequest,
    ) -> Result<AuthenticateApiKeyResponse, AuthError> {
        let key = self
            .api_keys
            .authenticate(&req.api_key, chrono::Utc::now())
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::InvalidApiKey)?;
        self.users
            .by_id(key.user_id)
            .await
            .map_err(AuthError::Unavailable)?
            .filter(|u| u.disabled_at.is_none())
            .ok_or(AuthError::InvalidApiKey)?;
        Ok(AuthenticateApiKeyResponse {
            user_id: key.user_id.to_string(),
            key_id: key.id.to_string(),
            scopes: key.scopes,
        })
    }

    fn ttl(d: std::time::Duration) -> chrono::Duration {
        chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
    }

    async fn send_verification(
        &self,
        user_id: uuid::Uuid,
        email: &EmailAddress,
    ) -> Result<(), AuthError> {
        let expires = chrono::Utc::now() + Self::ttl(self.mail.verification_ttl);
        let token = self
            .email_tokens
            .issue(user_id, Purpose::VerifyEmail, expires)
            .await
            .map_err(AuthError::Unavailable)?;
        let link = format!(
            "{}/v1/auth/verify-email?token={token}",
            self.mailer.public_url
        );
        self.mailer.send(
            email.as_str(),
            "Confirm your email address",
            format!(
                "Confirm that this address is yours:\n\n{link}\n\nOr send this token to POST /v1/auth/verify-email:\n\n{token}\n\n\
                 It works once, until {expires}. If you did not sign up, ignore this message.\n"
            ),
        );
        Ok(())
    }

    async fn verify_email(
        &self,
        req: VerifyEmailRequest,
    ) -> Result<VerifyEmailResponse, AuthError> {
        let user_id = self
            .email_tokens
            .consume(&req.token, Purpose::VerifyEmail, chrono::Utc::now())
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::InvalidEmailToken)?;
        self.users
            .set_verified(user_id)
            .await
            .map_err(AuthError::Unavailable)?;
        self.audit
            .event("auth.email_verified", Outcome::Success)
            .actor(user_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .emit();
        Ok(VerifyEmailResponse {})
    }

    async fn resend_verification(&self, req: EmailRequest) -> Result<EmailResponse, AuthError> {
        let email = EmailAddress::parse(&req.email)?;
        let user = self
            .users
            .by_email(&email)
            .await
            .map_err(AuthError::Unavailable)?;
        if let Some(user) = user.filter(|u| !u.email_verified && u.disabled_at.is_none()) {
            self.send_verification(user.id, &email).await?;
        }
        Ok(EmailResponse {})
    }

    async fn forgot_password(&self, req: EmailRequest) -> Result<EmailResponse, AuthError> {
        let email = EmailAddress::parse(&req.email)?;
        let user = self
            .users
            .by_email(&email)
            .await
            .map_err(AuthError::Unavailable)?;
        let Some(user) = user.filter(|u| u.disabled_at.is_none()) else {
            self.audit
                .event("auth.password_reset_requested", Outcome::Failure)
                .client(req.client.as_ref())
                .details(serde_json::json!({"reason": "unknown_email"}))
                .emit();
            return Ok(EmailResponse {});
        };
        let expires = chrono::Utc::now() + Self::ttl(self.mail.reset_ttl);
        let token = self
            .email_tokens
            .issue(user.id, Purpose::ResetPassword, expires)
            .await
            .map_err(AuthError::Unavailable)?;
        self.mailer.send(
            email.as_str(),
            "Reset your password",
            format!(
                "Someone asked to reset the password of this account.\n\n\
                 Send this token with your new password to POST /v1/auth/password/reset:\n\n{token}\n\n\
                 It works once, until {expires}. If it was not you, ignore this message: \
                 your password stays as it is.\n"
            ),
        );
        self.audit
            .event("auth.password_reset_requested", Outcome::Success)
            .subject(user.id.to_string())
            .client(req.client.as_ref())
            .emit();
        Ok(EmailResponse {})
    }

    async fn reset_password(
        &self,
        req: ResetPasswordRequest,
    ) -> Result<ResetPasswordResponse, AuthError> {
        let now = chrono::Utc::now();
        // Check the new password before using the token up, so a refused password
        // does not cost the user their link.
        let user_id = self
            .email_tokens
            .peek(&req.token, Purpose::ResetPassword, now)
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::InvalidEmailToken)?;
        let user = self
            .users
            .by_id(user_id)
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::InvalidEmailToken)?;
        let email = EmailAddress::parse(&user.email)?;
        let new = self.policy.check(&req.new_password, &email)?;
        let hash = self.hasher.hash(new).await?;
        if self
            .email_tokens
            .consume(&req.token, Purpose::ResetPassword, now)
            .await
            .map_err(AuthError::Unavailable)?
            != Some(user_id)
        {
            return Err(AuthError::InvalidEmailToken);
        }
        self.users
            .set_password(user_id, &user.password_hash, &hash, self.policy.history())
            .await
            .map_err(AuthError::Unavailable)?;
        // A reset proves control of the mailbox: the address counts as verified.
        self.users
            .set_verified(user_id)
            .await
            .map_err(AuthError::Unavailable)?;
        let ended = self
            .end_sessions(user_id, None, "password_reset", req.client.clone())
            .await?;
        self.lockout
            .unlock(email.as_str())
            .await
            .map_err(AuthError::Unavailable)?;
        self.audit
            .event("auth.password_reset", Outcome::Success)
            .actor(user_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"sessions_ended": ended}))
            .emit();
        Ok(ResetPasswordResponse {
            sessions_ended: ended,
        })
    }

    async fn validate(
        &self,
        req: ValidateTokenRequest,
    ) -> Result<ValidateTokenResponse, AuthError> {
        let claims = self.verify(&req.access_token)?;
        let revoked = self
            .session
            .clone()
            .is_revoked(session::IsRevokedRequest {
                jti: claims.jti.clone(),
                session_id: claims.sid.clone(),
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::InvalidArgument => AuthError::InvalidAccessToken,
                _ => AuthError::from_upstream(s, "session.IsRevoked"),
            })?
            .into_inner()
            .revoked;
        Ok(ValidateTokenResponse {
            claims: Some(Claims {
                sub: claims.sub,
                sid: claims.sid,
                jti: claims.jti,
                exp: claims.exp,
                iat: claims.iat,
                iss: claims.iss,
                aud: claims.aud,
                roles: claims.roles,
            }),
            revoked,
        })
    }

    async fn get_user(&self, req: GetUserRequest) -> Result<UserMessage, AuthError> {
        let id = uuid::Uuid::parse_str(&req.user_id).map_err(|_| AuthError::NotFound)?;
        let user = self
            .users
            .by_id(id)
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::NotFound)?;
        Ok(UserMessage {
            id: user.id.to_string(),
            email: user.email,
            email_verified: user.email_verified,
            roles: user.roles,
            created_at: user
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }
}

#[tonic::async_trait]
impl AuthService for Auth {
    #[tracing::instrument(level = "info", name = "auth.register", skip_all)]
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::register(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.login", skip_all)]
    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<TokenPair>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::login(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.refresh", skip_all)]
    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::refresh(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.logout", skip_all)]
    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::logout(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "debug", name = "auth.validate_token", skip_all)]
    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        authorize(&request, &[])?; // any service of the platform
        Ok(Response::new(self.validate(request.into_inner()).await?))
    }

    #[tracing::instrument(level = "info", name = "auth.revoke_token", skip_all)]
    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::revoke_token(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.change_password", skip_all)]
    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::change_password(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.create_api_key", skip_all)]
    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::create_api_key(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "debug", name = "auth.list_api_keys", skip_all)]
    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        authorize(&request, &["gateway"])?;
        let user_id = uuid::Uuid::parse_str(&request.into_inner().user_id)
            .map_err(|_| Status::invalid_argument("user_id"))?;
        let keys = self
            .api_keys
            .list(user_id)
            .await
            .map_err(aia_telemetry::grpc::unavailable)?;
        Ok(Response::new(ListApiKeysResponse {
            keys: keys.into_iter().map(api_key_info).collect(),
        }))
    }

    #[tracing::instrument(level = "info", name = "auth.revoke_api_key", skip_all)]
    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        authorize(&request, &["gateway"])?;
        let req = request.into_inner();
        let user_id =
            uuid::Uuid::parse_str(&req.user_id).map_err(|_| Status::invalid_argument("user_id"))?;
        let key_id =
            uuid::Uuid::parse_str(&req.key_id).map_err(|_| Status::not_found("no such API key"))?;
        if !self
            .api_keys
            .revoke(user_id, key_id)
            .await
            .map_err(aia_telemetry::grpc::unavailable)?
        {
            return Err(Status::not_found("no such API key"));
        }
        self.audit
            .event("auth.api_key_revoked", Outcome::Success)
            .actor(user_id.to_string())
            .subject(key_id.to_string())
            .client(req.client.as_ref())
            .emit();
        Ok(Response::new(RevokeApiKeyResponse {}))
    }

    #[tracing::instrument(level = "debug", name = "auth.authenticate_api_key", skip_all)]
    async fn authenticate_api_key(
        &self,
        request: Request<AuthenticateApiKeyRequest>,
    ) -> Result<Response<AuthenticateApiKeyResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::authenticate_api_key(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.verify_email", skip_all)]
    async fn verify_email(
        &self,
        request: Request<VerifyEmailRequest>,
    ) -> Result<Response<VerifyEmailResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::verify_email(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.resend_verification", skip_all)]
    async fn resend_verification(
        &self,
        request: Request<EmailRequest>,
    ) -> Result<Response<EmailResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::resend_verification(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.forgot_password", skip_all)]
    async fn forgot_password(
        &self,
        request: Request<EmailRequest>,
    ) -> Result<Response<EmailResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::forgot_password(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.reset_password", skip_all)]
    async fn reset_password(
        &self,
        request: Request<ResetPasswordRequest>,
    ) -> Result<Response<ResetPasswordResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::reset_password(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.list_users", skip_all)]
    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::list_users(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.set_user_roles", skip_all)]
    async fn set_user_roles(
        &self,
        request: Request<SetUserRolesRequest>,
    ) -> Result<Response<SetUserRolesResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::set_user_roles(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.unlock_user", skip_all)]
    async fn unlock_user(
        &self,
        request: Request<UnlockUserRequest>,
    ) -> Result<Response<UnlockUserResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::unlock_user(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.set_user_disabled", skip_all)]
    async fn set_user_disabled(
        &self,
        request: Request<SetUserDisabledRequest>,
    ) -> Result<Response<SetUserDisabledResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::set_user_disabled(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "debug", name = "auth.get_user", skip_all)]
    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<UserMessage>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::get_user(self, request.into_inner()).await?,
        ))
    }

    async fn get_jwks(
        &self,
        request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksResponse>, Status> {
        authorize(&request, &[])?; // any service of the platform
        Ok(Response::new(GetJwksResponse {
            jwks_json: self.keys.ring().jwks_json.clone(),
        }))
    }
}
