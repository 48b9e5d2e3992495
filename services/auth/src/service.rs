//! `aia.auth.v1.AuthService`.

use std::sync::Arc;

use aia_audit_client::AuditClient;
use aia_proto::audit::v1 as audit;
use aia_proto::audit::v1::Outcome;
use aia_proto::auth::v1::auth_service_server::AuthService;
use aia_proto::auth::v1::{
    AdminQueryEventsRequest, AdminQueryUsageRequest, AdminStreamEventsRequest,
    AdminSummarizeEventsRequest, QueryOwnEventsRequest,
};
use aia_proto::auth::v1::{
    ApiKeyInfo, AuthenticateApiKeyRequest, AuthenticateApiKeyResponse, ChangePasswordRequest,
    ChangePasswordResponse, Claims, CompleteMfaLoginRequest, ConfirmTotpRequest,
    ConfirmTotpResponse, CreateApiKeyRequest, CreateApiKeyResponse, DisableTotpRequest,
    DisableTotpResponse, EmailRequest, EmailResponse, EndOwnSessionRequest, EndOwnSessionResponse,
    EndOwnSessionsRequest, EndOwnSessionsResponse, EnrollTotpRequest, EnrollTotpResponse,
    GetJwksRequest, GetJwksResponse, GetUserRequest, ListApiKeysRequest, ListApiKeysResponse,
    ListOwnSessionsRequest, ListUsersRequest, ListUsersResponse, LoginRequest, LoginResponse,
    LogoutRequest, LogoutResponse, RefreshRequest, RegisterRequest, RegisterResponse,
    ResetPasswordRequest, ResetPasswordResponse, RevokeApiKeyRequest, RevokeApiKeyResponse,
    RevokeTokenRequest, RevokeTokenResponse, SetUserDisabledRequest, SetUserDisabledResponse,
    SetUserRolesRequest, SetUserRolesResponse, TokenPair, UnlockUserRequest, UnlockUserResponse,
    User as UserMessage, ValidateTokenRequest, ValidateTokenResponse, VerifyEmailRequest,
    VerifyEmailResponse, login_response,
};
use aia_proto::session::v1 as session;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_settings::TokenSettings;
use aia_tokens::AccessClaims;

use crate::api_keys::{ApiKey, ApiKeys};
use crate::email_tokens::EmailTokens;
use crate::keys::KeyStore;
use crate::lockout::{Lockout, Precheck, Refusal};
use crate::mailer::Mailer;
use crate::policy::PasswordPolicy;
use aia_telemetry::otel::TracedChannel;
use aia_telemetry::tls::authorize;
use tonic::{Request, Response, Status};

use crate::domain::{EmailAddress, Password};
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
    pub(crate) mfa: crate::mfa::Mfa,
    pub(crate) session: SessionServiceClient<TracedChannel>,
    /// The blacklist's in-memory copy (`session.WatchRevocations`), so that
    /// `ValidateToken` asks `session.IsRevoked` only while the copy is not fresh.
    pub(crate) revocations: Arc<aia_revocations::RevocationCache>,
    pub(crate) audit: AuditClient,
    /// Audit, for the reads of the trail auth makes for verified callers (`trail`).
    pub(crate) audit_reads:
        aia_proto::audit::v1::audit_service_client::AuditServiceClient<TracedChannel>,
    /// Work done after its request was answered (see `Auth::answer_first`),
    /// bounded and waited for at shutdown.
    pub(crate) deferred: crate::deferred::Deferred,
    /// Cancelled when auth stops: long calls (an admin's event stream) end then.
    pub(crate) shutdown: aia_telemetry::shutdown::CancellationToken,
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

pub(crate) fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

pub(crate) fn api_key_info(key: ApiKey) -> ApiKeyInfo {
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
    /// Signs an access token for `user` in `session_id`, issued at `issued_at`
    /// (seconds since the epoch) with id `jti` and the session's `amr`, and pairs it
    /// with `refresh_token`.
    fn issue(
        &self,
        user: &User,
        session_id: &str,
        refresh_token: String,
        issued_at: i64,
        jti: uuid::Uuid,
        amr: Vec<String>,
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
            amr,
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
            ..TokenPair::default()
        })
    }

    async fn register(&self, req: RegisterRequest) -> Result<RegisterResponse, AuthError> {
        let email = EmailAddress::parse(&req.email)?;
        let password = self.policy.check(&req.password, &email)?;
        // Hash first, whatever happens next: a taken email costs the same time.
        let hash = self.hasher.hash(password).await?;
        let client = req.client.as_ref();
        let created = self
            .users
            .insert(&email, &hash, |id| {
                self.audit
                    .event("auth.register", Outcome::Success)
                    .actor(id.to_string())
                    .subject(id.to_string())
                    .client(client)
            })
            .await
            .map_err(AuthError::Unavailable)?;
        // What differs between a new and a taken address (the verification token and
        // mail, or the failure event) happens after the answer.
        let auth = self.clone();
        let client = req.client;
        match created {
            Some(id) => {
                metrics::counter!("auth_register_total", "outcome" => "created").increment(1);
                self.answer_first(async move { auth.send_verification(id, &email).await });
            }
            None => {
                metrics::counter!("auth_register_total", "outcome" => "email_taken").increment(1);
                self.answer_first(async move {
                    auth.audit
                        .event("auth.register", Outcome::Failure)
                        .client(client.as_ref())
                        .details(serde_json::json!({"reason": "email_taken"}))
                        .emit()
                        .await?;
                    Ok(())
                });
            }
        }
        Ok(RegisterResponse {})
    }

    async fn login(&self, req: LoginRequest) -> Result<LoginResponse, AuthError> {
        let email = EmailAddress::parse(&req.email)?;
        let password = Password::presented(&req.password)?;
        let ip = req.client.as_ref().map_or("", |c| c.ip.as_str()).to_owned();
        let precheck = self
            .may_try(
                email.as_str(),
                &ip,
                device_id(&req.device_id),
                req.client.as_ref(),
            )
            .await?;
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
                let recorded = event.emit().await;
                // Counted whether or not the event could be written.
                self.count_failure(
                    email.as_str(),
                    &ip,
                    device_id(&req.device_id),
                    client,
                    other.map(|u| u.id),
                    None,
                )
                .await?;
                recorded?;
                return Err(AuthError::InvalidCredentials);
            }
        };
        let mut user = user;
        if checked.outdated
            && let Some(upgraded) = self.upgrade_hash(&user, &req.password).await
        {
            user.password_hash = upgraded;
        }
        if precheck.locked_known_client {
            tracing::info!(user = %user.id, "locked account: login let through from a known client");
        }
        if self
            .mfa
            .is_enabled(user.id)
            .await
            .map_err(AuthError::Unavailable)?
        {
            // The throttle is not cleared yet: only the second factor does that, so
            // that a known password cannot reset the count of wrong codes.
            return self
                .mfa_challenge(&user, &email, device_id(&req.device_id), client)
                .await;
        }
        let pair = self
            .start_session(&user, req.client, vec!["pwd".to_owned()])
            .await?;
        let pair = self
            .login_completed(email.as_str(), &ip, device_id(&req.device_id), pair)
            .await;
        Ok(LoginResponse {
            result: Some(login_response::Result::Tokens(pair)),
        })
    }

    /// After a completed login (its session started, its event written): the
    /// throttle's counters start again, and the address and `device` become known
    /// clients of the account; `pair` carries the device and the email for the
    /// gateway's device cookie. Done only now, so that a login answered 503 leaves
    /// no exemption behind; a failure here leaves the account more restricted, never
    /// less, so it is logged rather than answered.
    pub(crate) async fn login_completed(
        &self,
        email: &str,
        ip: &str,
        device: &str,
        mut pair: TokenPair,
    ) -> TokenPair {
        if let Err(error) = self.lockout.record_success(email, ip, device).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "a completed login's throttle bookkeeping failed"
            );
        }
        device.clone_into(&mut pair.device_id);
        email.clone_into(&mut pair.account_email);
        pair
    }

    /// The throttle's pre-check for a login step on `email` from `ip` (and from a
    /// `device`, the gateway's device cookie, empty for none).
    pub(crate) async fn may_try(
        &self,
        email: &str,
        ip: &str,
        device: &str,
        client: Option<&aia_proto::common::v1::ClientInfo>,
    ) -> Result<Precheck, AuthError> {
        match self
            .lockout
            .precheck(email, ip, device)
            .await
            .map_err(AuthError::Unavailable)?
        {
            Ok(precheck) => Ok(precheck),
            Err(Refusal::RetryAfter(wait)) => Err(self.throttled(wait, client).await),
        }
    }

    /// A login step refused by the throttle, counted and recorded: retry after `wait`.
    pub(crate) async fn throttled(
        &self,
        wait: std::time::Duration,
        client: Option<&aia_proto::common::v1::ClientInfo>,
    ) -> AuthError {
        metrics::counter!("auth_login_total", "outcome" => "failure", "reason" => "throttled")
            .increment(1);
        self.audit
            .event("auth.login", Outcome::Failure)
            .client(client)
            .details(
                serde_json::json!({"reason": "throttled", "retry_after_seconds": wait.as_secs()}),
            )
            .emit()
            .await
            .map_or_else(AuthError::from, |()| AuthError::Throttled(wait))
    }

    /// Counts a failed login step (a wrong password or a wrong second factor) on
    /// the throttle (on the account already when `counted`, see
    /// `Lockout::count_attempt`) and on the `device` it came from (empty for none),
    /// and records a lock it causes.
    pub(crate) async fn count_failure(
        &self,
        email: &str,
        ip: &str,
        device: &str,
        client: Option<&aia_proto::common::v1::ClientInfo>,
        subject: Option<uuid::Uuid>,
        counted: Option<u64>,
    ) -> Result<(), AuthError> {
        let locked = self
            .lockout
            .record_failure(email, ip, device, counted)
            .await
            .map_err(AuthError::Unavailable)?;
        if locked {
            metrics::counter!("auth_lockouts_total").increment(1);
            let mut event = self
                .audit
                .event("auth.lockout", Outcome::Failure)
                .client(client)
                .details(serde_json::json!({"risk": "high", "reason": "too_many_failures"}));
            if let Some(id) = subject {
                event = event.subject(id.to_string());
            }
            event.emit().await?;
        }
        Ok(())
    }

    /// Checks a credential a token holder presents (the current password for a
    /// change or a new API key, a code or the password to turn TOTP off) under the
    /// login throttle: refused while the account is locked (but from a known client)
    /// or the address is throttled, and a wrong one counts as a failed login does
    /// (and may lock), so a stolen access token guesses the password or the code no
    /// faster than the login form.
    ///
    /// A one-time `code` is counted before it is checked, as at the login's second
    /// step ([`Auth::count_code`]); a right one takes its count back.
    pub(crate) async fn check_throttled(
        &self,
        user: &User,
        client: Option<&aia_proto::common::v1::ClientInfo>,
        code: bool,
        check: impl Future<Output = Result<bool, AuthError>>,
    ) -> Result<bool, AuthError> {
        let ip = client.map_or("", |c| c.ip.as_str());
        let precheck = self.may_try(&user.email, ip, "", client).await?;
        let counted = if code {
            Some(self.count_code(&user.email, &precheck, client).await?)
        } else {
            None
        };
        let right = check.await?;
        if !right {
            self.count_failure(&user.email, ip, "", client, Some(user.id), counted)
                .await?;
        } else if code {
            // Not a login: the address does not become a known client, and the
            // account's count keeps what came before this code.
            self.lockout
                .uncount_attempt(&user.email)
                .await
                .map_err(AuthError::Unavailable)?;
        }
        Ok(right)
    }

    /// Counts a one-time code on the account before it is checked (a success clears
    /// it; a failure is recorded on the other axes, and locks, after the check), so
    /// that codes sent at once cannot all pass a lock check made before any of them
    /// was counted: past the threshold, a stranger's code is not checked at all (a
    /// known client is exempt from the lock, as ever). The count, for
    /// [`Auth::count_failure`].
    pub(crate) async fn count_code(
        &self,
        email: &str,
        precheck: &Precheck,
        client: Option<&aia_proto::common::v1::ClientInfo>,
    ) -> Result<u64, AuthError> {
        let attempts = self
            .lockout
            .count_attempt(email)
            .await
            .map_err(AuthError::Unavailable)?;
        let (threshold, lock_for) = self.lockout.threshold();
        if attempts > threshold && !precheck.known_client {
            return Err(self.throttled(lock_for, client).await);
        }
        Ok(attempts)
    }

    /// Starts a session for `user`, who authenticated with `amr`, and issues its
    /// first token pair.
    pub(crate) async fn start_session(
        &self,
        user: &User,
        client: Option<aia_proto::common::v1::ClientInfo>,
        amr: Vec<String>,
    ) -> Result<TokenPair, AuthError> {
        let created = self
            .session
            .clone()
            .create_session(session::CreateSessionRequest {
                user_id: user.id.to_string(),
                client: client.clone(),
                amr: amr.clone(),
            })
            .await
            .map_err(|s| AuthError::from_upstream(s, "session.CreateSession"))?
            .into_inner();
        // `user` was read before the password was checked (tens of milliseconds, more
        // with a queue at the hasher). A password change or reset, a disable, a role
        // change or a TOTP confirmation that committed meanwhile ended the user's
        // sessions without this one, which did not exist yet: it must not outlive
        // them. Read again now that it does; whichever order the two went in, one of
        // them sees the other.
        let current = self
            .users
            .by_id(user.id)
            .await
            .map_err(AuthError::Unavailable)?;
        let mut unchanged = current.is_some_and(|now| {
            now.disabled_at.is_none()
                && now.password_hash == user.password_hash
                && now.roles == user.roles
        });
        // Likewise TOTP turned on meanwhile (its confirmation ends the other
        // sessions): a password-only session must not outlive it.
        if unchanged && !amr.iter().any(|m| m == "otp") {
            unchanged = !self
                .mfa
                .is_enabled(user.id)
                .await
                .map_err(AuthError::Unavailable)?;
        }
        if !unchanged {
            self.withdraw_session(&created.session_id, user.id, &client)
                .await?;
            metrics::counter!("auth_login_total", "outcome" => "failure", "reason" => "account_changed")
                .increment(1);
            self.audit
                .event("auth.login", Outcome::Failure)
                .subject(user.id.to_string())
                .client(client.as_ref())
                .details(serde_json::json!({"reason": "account_changed", "session_id": created.session_id}))
                .emit()
                .await?;
            return Err(AuthError::InvalidCredentials);
        }
        let now = chrono::Utc::now().timestamp();
        let pair = self.issue(
            user,
            &created.session_id,
            created.refresh_token,
            now,
            uuid::Uuid::new_v4(),
            amr.clone(),
        )?;
        let recorded = self
            .audit
            .event("auth.login", Outcome::Success)
            .actor(user.id.to_string())
            .subject(user.id.to_string())
            .client(client.as_ref())
            .details(serde_json::json!({"session_id": created.session_id, "amr": amr}))
            .emit()
            .await;
        if let Err(unrecorded) = recorded {
            // No login without its event: the client gets no tokens, and the session
            // made for them is ended.
            if let Err(error) = self
                .withdraw_session(&created.session_id, user.id, &client)
                .await
            {
                tracing::warn!(error = %error, "an unrecorded login's session was not ended");
            }
            return Err(unrecorded.into());
        }
        metrics::counter!("auth_login_total", "outcome" => "success", "reason" => "").increment(1);
        Ok(pair)
    }

    /// Ends a session this service has just made and not handed out.
    async fn withdraw_session(
        &self,
        session_id: &str,
        user_id: uuid::Uuid,
        client: &Option<aia_proto::common::v1::ClientInfo>,
    ) -> Result<(), AuthError> {
        self.session
            .clone()
            .revoke(session::RevokeRequest {
                session_id: session_id.to_owned(),
                access_jti: String::new(),
                access_expires_at: None,
                user_id: user_id.to_string(),
                client: client.clone(),
            })
            .await
            .map_err(|s| AuthError::from_upstream(s, "session.Revoke"))?;
        Ok(())
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
            rotated.amr,
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
        let expires_at = Some(prost_types::Timestamp {
            seconds: claims.exp,
            nanos: 0,
        });
        let (session_id, exp) = (claims.sid.clone(), claims.exp);
        self.session
            .clone()
            .revoke(session::RevokeRequest {
                session_id: claims.sid,
                access_jti: claims.jti,
                access_expires_at: expires_at,
                client: req.client.clone(),
                user_id: claims.sub,
            })
            .await
            .map_err(|s| AuthError::from_upstream(s, "session.Revoke"))?;
        // This replica's ValidateToken refuses the session from now on, before the
        // stream brings the entry (with the expiry of the session's last token).
        self.revocations.session_ended(&session_id, exp);
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

    /// Ends every session of `user_id` but `keep`.
    pub(crate) async fn end_sessions(
        &self,
        user_id: uuid::Uuid,
        keep: Option<&str>,
        reason: &str,
        client: Option<aia_proto::common::v1::ClientInfo>,
        by_admin: Option<uuid::Uuid>,
    ) -> Result<u32, AuthError> {
        crate::sessions_due::end(&self.session, user_id, keep, reason, client, by_admin).await
    }

    /// Ends the sessions a password write recorded as due (`due`, its row), then
    /// deletes the row; how many were live, and whether ending them was deferred.
    /// When session cannot be reached the row stays for [`crate::sessions_due`] to
    /// retry, and the answer is `(0, true)`: the password did change, and an error
    /// would send the caller to retry what cannot succeed (the old password is wrong
    /// now, the reset token used).
    pub(crate) async fn end_sessions_due(
        &self,
        due: i64,
        user_id: uuid::Uuid,
        keep: Option<&str>,
        reason: &str,
        client: Option<aia_proto::common::v1::ClientInfo>,
    ) -> (u32, bool) {
        let ended = match self.end_sessions(user_id, keep, reason, client, None).await {
            Ok(ended) => ended,
            Err(error) => {
                metrics::counter!("auth_session_ends_deferred_total").increment(1);
                tracing::warn!(error = ?error, "sessions to end after a password change are left to the retry");
                // This request has given up: the retry need not wait out its grace.
                if let Err(error) = self.users.session_ends_retry_now(due).await {
                    tracing::warn!(
                        error = format!("{error:#}"),
                        "sessions due left to their grace"
                    );
                }
                return (0, true);
            }
        };
        if let Err(error) = self.users.session_ends_done(due).await {
            // The retry ends them again (none live, or a login made since).
            tracing::warn!(error = format!("{error:#}"), "could not clear sessions due");
        }
        (ended, false)
    }

    /// Replaces a legacy (bcrypt) or outdated argon2 hash after a successful login,
    /// while the password is at hand. A failure is logged; the login goes on.
    /// The new hash, if it was stored (not if the password changed meanwhile).
    async fn upgrade_hash(&self, user: &User, raw_password: &str) -> Option<String> {
        let result: Result<Option<String>, AuthError> = async {
            let hash = self.hasher.hash(Password::presented(raw_password)?).await?;
            let stored = self
                .users
                .upgrade_hash(user.id, &user.password_hash, &hash)
                .await
                .map_err(AuthError::Unavailable)?;
            Ok(stored.then_some(hash))
        }
        .await;
        match result {
            Ok(None) => None,
            Ok(Some(hash)) => {
                let from = if user.password_hash.starts_with("$2") {
                    "bcrypt"
                } else {
                    "argon2"
                };
                metrics::counter!("auth_password_rehashed_total", "from" => from).increment(1);
                tracing::info!(user = %user.id, from, "password hash upgraded to the current argon2id parameters");
                Some(hash)
            }
            Err(error) => {
                tracing::warn!(user = %user.id, error = %error, "password hash upgrade failed");
                None
            }
        }
    }

    /// Who holds `access_token`, verified here: signature, expiry (no verifier's
    /// clock-skew leeway: the issuer's own check), revocation, and its subject an
    /// enabled account now. The user, session and `amr` of an account action come
    /// from this, never from the gateway's word: a gateway, or anything holding its
    /// certificate, cannot act on an account without a live token of its owner's.
    pub(crate) async fn holder(&self, access_token: &str) -> Result<Holder, AuthError> {
        let validated = self
            .validate(aia_proto::auth::v1::ValidateTokenRequest {
                access_token: access_token.to_owned(),
            })
            .await?;
        let now = chrono::Utc::now().timestamp();
        let claims = validated
            .claims
            .filter(|c| !validated.revoked && c.exp > now)
            .ok_or(AuthError::InvalidAccessToken)?;
        let id = uuid::Uuid::parse_str(&claims.sub).map_err(|_| AuthError::InvalidAccessToken)?;
        let user = self
            .users
            .by_id(id)
            .await
            .map_err(AuthError::Unavailable)?
            .filter(|u| u.disabled_at.is_none())
            .ok_or(AuthError::InvalidAccessToken)?;
        Ok(Holder {
            user,
            session_id: claims.sid,
            amr: claims.amr,
            expires_at: claims.exp,
        })
    }

    pub(crate) async fn validate(
        &self,
        req: ValidateTokenRequest,
    ) -> Result<ValidateTokenResponse, AuthError> {
        let claims = self.verify(&req.access_token)?;
        let ids = uuid::Uuid::parse_str(&claims.jti)
            .ok()
            .zip(uuid::Uuid::parse_str(&claims.sid).ok());
        let known = ids.and_then(|(jti, sid)| self.revocations.check(jti, sid));
        metrics::counter!("auth_revocation_checks_total", "source" => if known.is_some() { "memory" } else { "session" })
            .increment(1);
        let revoked = match known {
            Some(revoked) => revoked,
            None => {
                self.session
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
                    .revoked
            }
        };
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
                amr: claims.amr,
            }),
            revoked,
        })
    }

    /// The profile of the caller named by a verified credential (never by an id the
    /// gateway passes on).
    async fn get_user(&self, req: GetUserRequest) -> Result<UserMessage, AuthError> {
        let user = match (req.access_token.as_str(), req.api_key.as_str()) {
            (token, "") if !token.is_empty() => self.holder(token).await?.user,
            ("", key) if !key.is_empty() => {
                let (key, owner) = self.key_owner(key).await?;
                if !key.scopes.iter().any(|s| s == "profile:read") {
                    return Err(AuthError::Forbidden);
                }
                owner
            }
            _ => return Err(AuthError::InvalidAccessToken),
        };
        Ok(UserMessage {
            id: user.id.to_string(),
            email: user.email,
            email_verified: user.email_verified,
            roles: user.roles,
            created_at: user
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            mfa_enabled: self
                .mfa
                .is_enabled(user.id)
                .await
                .map_err(AuthError::Unavailable)?,
        })
    }
}

/// The holder of a verified access token (`Auth::holder`).
pub(crate) struct Holder {
    /// The token's subject, enabled now.
    pub user: User,
    /// The token's session.
    pub session_id: String,
    /// How that session was opened.
    pub amr: Vec<String>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: i64,
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
    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::login(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.complete_mfa_login", skip_all)]
    async fn complete_mfa_login(
        &self,
        request: Request<CompleteMfaLoginRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::complete_mfa_login(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.enroll_totp", skip_all)]
    async fn enroll_totp(
        &self,
        request: Request<EnrollTotpRequest>,
    ) -> Result<Response<EnrollTotpResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::enroll_totp(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.confirm_totp", skip_all)]
    async fn confirm_totp(
        &self,
        request: Request<ConfirmTotpRequest>,
    ) -> Result<Response<ConfirmTotpResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::confirm_totp(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.disable_totp", skip_all)]
    async fn disable_totp(
        &self,
        request: Request<DisableTotpRequest>,
    ) -> Result<Response<DisableTotpResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::disable_totp(self, request.into_inner()).await?,
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
        let user_id = self
            .holder(&request.into_inner().access_token)
            .await?
            .user
            .id;
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
        let user_id = self.holder(&req.access_token).await?.user.id;
        let key_id =
            uuid::Uuid::parse_str(&req.key_id).map_err(|_| Status::not_found("no such API key"))?;
        let event = self
            .audit
            .event("auth.api_key_revoked", Outcome::Success)
            .actor(user_id.to_string())
            .subject(key_id.to_string())
            .client(req.client.as_ref());
        if !self
            .api_keys
            .revoke(user_id, key_id, event)
            .await
            .map_err(aia_telemetry::grpc::unavailable)?
        {
            return Err(Status::not_found("no such API key"));
        }
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

    #[tracing::instrument(level = "debug", name = "auth.list_own_sessions", skip_all)]
    async fn list_own_sessions(
        &self,
        request: Request<ListOwnSessionsRequest>,
    ) -> Result<Response<session::ListSessionsResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::list_own_sessions(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.end_own_session", skip_all)]
    async fn end_own_session(
        &self,
        request: Request<EndOwnSessionRequest>,
    ) -> Result<Response<EndOwnSessionResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::end_own_session(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "info", name = "auth.end_own_sessions", skip_all)]
    async fn end_own_sessions(
        &self,
        request: Request<EndOwnSessionsRequest>,
    ) -> Result<Response<EndOwnSessionsResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::end_own_sessions(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "debug", name = "auth.query_own_events", skip_all)]
    async fn query_own_events(
        &self,
        request: Request<QueryOwnEventsRequest>,
    ) -> Result<Response<audit::QueryResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::query_own_events(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "debug", name = "auth.admin_query_events", skip_all)]
    async fn admin_query_events(
        &self,
        request: Request<AdminQueryEventsRequest>,
    ) -> Result<Response<audit::QueryResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::admin_query_events(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "debug", name = "auth.admin_summarize_events", skip_all)]
    async fn admin_summarize_events(
        &self,
        request: Request<AdminSummarizeEventsRequest>,
    ) -> Result<Response<audit::SummaryResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::admin_summarize_events(self, request.into_inner()).await?,
        ))
    }

    type AdminStreamEventsStream = crate::trail::EventStream;

    #[tracing::instrument(level = "debug", name = "auth.admin_stream_events", skip_all)]
    async fn admin_stream_events(
        &self,
        request: Request<AdminStreamEventsRequest>,
    ) -> Result<Response<Self::AdminStreamEventsStream>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::admin_stream_events(self, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(level = "debug", name = "auth.admin_query_usage", skip_all)]
    async fn admin_query_usage(
        &self,
        request: Request<AdminQueryUsageRequest>,
    ) -> Result<Response<audit::QueryUsageResponse>, Status> {
        authorize(&request, &["gateway"])?;
        Ok(Response::new(
            Auth::admin_query_usage(self, request.into_inner()).await?,
        ))
    }
}

/// The device id the gateway sent, if it is one it could have made (its cookie's
/// 22 base64url characters, or any such id up to 64): anything else is no device.
fn device_id(sent: &str) -> &str {
    let plausible = sent.len() <= 64
        && sent
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plausible { sent } else { "" }
}

#[cfg(test)]
mod tests {
    use super::device_id;

    /// A device id only as the gateway makes one: anything longer, or with other
    /// characters (a key separator, a Redis glob), is no device at all.
    #[test]
    fn only_plausible_device_ids_count() {
        assert_eq!(
            device_id("9_euyiO7zTYvMluubbdjHT"),
            "9_euyiO7zTYvMluubbdjHT"
        );
        for odd in ["a|b", "a:b", "*", "a b", "é", &"a".repeat(65)] {
            assert_eq!(device_id(odd), "", "{odd}");
        }
    }
}
