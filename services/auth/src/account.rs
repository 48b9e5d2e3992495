//! Account flows beyond login: password change, API keys, email verification and
//! password reset.

use aia_proto::audit::v1::Outcome;
use aia_proto::auth::v1::{
    AuthenticateApiKeyRequest, AuthenticateApiKeyResponse, ChangePasswordRequest,
    ChangePasswordResponse, CreateApiKeyRequest, CreateApiKeyResponse, EmailRequest, EmailResponse,
    ResetPasswordRequest, ResetPasswordResponse, VerifyEmailRequest, VerifyEmailResponse,
};

use crate::api_keys::SCOPES;
use crate::domain::{EmailAddress, Invalid, Password};
use crate::email_tokens::Purpose;
use crate::error::AuthError;
use crate::service::Holder;
use crate::service::{Auth, api_key_info};
use crate::users::{PasswordWrite, User};

impl Auth {
    /// Runs `work` after the answer has gone: whether an address has an account
    /// changes what a reset, verification or registration request does (a token
    /// written, a mail queued), and must not change how long its answer takes
    /// (DESIGN §3: never reveal it in timing). Tracked, so that shutdown waits for
    /// it (within the grace period), and bounded (`crate::deferred`); a failure is
    /// counted and logged.
    pub(crate) fn answer_first(
        &self,
        work: impl Future<Output = Result<(), AuthError>> + Send + 'static,
    ) {
        self.deferred.spawn("email", async move {
            if let Err(error) = work.await {
                metrics::counter!("auth_deferred_email_work_failures_total").increment(1);
                tracing::warn!(error = ?error, "an email request's work failed after its answer");
            }
        });
    }

    pub(crate) async fn change_password(
        &self,
        req: ChangePasswordRequest,
    ) -> Result<ChangePasswordResponse, AuthError> {
        let Holder {
            user,
            session_id,
            amr,
            ..
        } = self.holder(&req.access_token).await?;
        let user_id = user.id;
        self.require_second_factor(user_id, &amr).await?;
        let email = EmailAddress::parse(&user.email)?;
        let current = Password::presented(&req.current_password)?;
        let checked = async {
            Ok(self
                .hasher
                .verify(current, Some(user.password_hash.clone()))
                .await?)
        };
        if !self
            .check_throttled(&user, req.client.as_ref(), false, checked)
            .await?
        {
            self.audit
                .event("auth.password_change", Outcome::Failure)
                .actor(user_id.to_string())
                .subject(user_id.to_string())
                .client(req.client.as_ref())
                .details(serde_json::json!({"reason": "wrong_current_password"}))
                .emit()
                .await?;
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
        // The event goes with the change; the sessions it ends are recorded by the
        // session service (`session.revoke_all`, with the count).
        let event = self
            .audit
            .event("auth.password_change", Outcome::Success)
            .actor(user_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref());
        let keep = uuid::Uuid::parse_str(&session_id).ok();
        let reason = "password_changed";
        // Only over the hash the current password was checked against: a reset (or
        // another change) that committed while this one hashed wins, and this one is
        // refused instead of putting back a password its caller knows.
        // API keys stay: their owner is signed in and manages them.
        let written = self
            .users
            .set_password(
                PasswordWrite {
                    user_id,
                    old_hash: &user.password_hash,
                    new_hash: &hash,
                    only_if_unchanged: true,
                    keep_session: keep,
                    reason,
                    revoke_api_keys: false,
                },
                self.policy.history(),
                event,
            )
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::PasswordChangedMeanwhile)?;
        let (ended, deferred) = self
            .end_sessions_due(
                written.due,
                user_id,
                Some(&session_id),
                reason,
                req.client.clone(),
            )
            .await;
        Ok(ChangePasswordResponse {
            sessions_ended: ended,
            sessions_deferred: deferred,
        })
    }

    pub(crate) async fn create_api_key(
        &self,
        req: CreateApiKeyRequest,
    ) -> Result<CreateApiKeyResponse, AuthError> {
        let Holder { user, amr, .. } = self.holder(&req.access_token).await?;
        let user_id = user.id;
        self.require_second_factor(user_id, &amr).await?;
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
        // Checked last, once the request is otherwise good (a refused name costs no
        // hash): a key outlives the access token and a password reset.
        self.require_password(
            &user,
            &req.password,
            "auth.api_key_created",
            req.client.as_ref(),
        )
        .await?;
        let mut scopes = req.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let (key, api_key) = self
            .api_keys
            .create(user_id, name, &scopes, expires_at, |id| {
                self.audit
                    .event("auth.api_key_created", Outcome::Success)
                    .actor(user_id.to_string())
                    .subject(id.to_string())
                    .client(req.client.as_ref())
                    .details(serde_json::json!({"scopes": scopes, "expires_at": expires_at}))
            })
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::Precondition(
                "at most 25 live API keys; revoke one you no longer use first",
            ))?;
        Ok(CreateApiKeyResponse {
            key: Some(api_key_info(key)),
            api_key,
        })
    }

    pub(crate) async fn authenticate_api_key(
        &self,
        req: AuthenticateApiKeyRequest,
    ) -> Result<AuthenticateApiKeyResponse, AuthError> {
        let (key, _) = self.key_owner(&req.api_key).await?;
        Ok(AuthenticateApiKeyResponse {
            user_id: key.user_id.to_string(),
            key_id: key.id.to_string(),
            scopes: key.scopes,
        })
    }

    /// A live API key and its owner, enabled now.
    pub(crate) async fn key_owner(
        &self,
        api_key: &str,
    ) -> Result<(crate::api_keys::ApiKey, User), AuthError> {
        let key = self
            .api_keys
            .authenticate(api_key, chrono::Utc::now())
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::InvalidApiKey)?;
        let owner = self
            .users
            .by_id(key.user_id)
            .await
            .map_err(AuthError::Unavailable)?
            .filter(|u| u.disabled_at.is_none())
            .ok_or(AuthError::InvalidApiKey)?;
        Ok((key, owner))
    }

    pub(crate) fn ttl(d: std::time::Duration) -> chrono::Duration {
        chrono::Duration::from_std(d).unwrap_or(chrono::Duration::hours(1))
    }

    pub(crate) async fn send_verification(
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
        let link = self.mailer.link("verify-email", &token);
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

    pub(crate) async fn verify_email(
        &self,
        req: VerifyEmailRequest,
    ) -> Result<VerifyEmailResponse, AuthError> {
        let user_id = self
            .email_tokens
            .consume(&req.token, Purpose::VerifyEmail, chrono::Utc::now())
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::InvalidEmailToken)?;
        let event = self
            .audit
            .event("auth.email_verified", Outcome::Success)
            .actor(user_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref());
        self.users
            .set_verified(user_id, event)
            .await
            .map_err(AuthError::Unavailable)?;
        Ok(VerifyEmailResponse {})
    }

    pub(crate) async fn resend_verification(
        &self,
        req: EmailRequest,
    ) -> Result<EmailResponse, AuthError> {
        let email = EmailAddress::parse(&req.email)?;
        let user = self
            .users
            .by_email(&email)
            .await
            .map_err(AuthError::Unavailable)?;
        if let Some(user) = user.filter(|u| !u.email_verified && u.disabled_at.is_none()) {
            // After the answer (see `Auth::answer_first`).
            let auth = self.clone();
            self.answer_first(async move { auth.send_verification(user.id, &email).await });
        }
        Ok(EmailResponse {})
    }

    pub(crate) async fn forgot_password(
        &self,
        req: EmailRequest,
    ) -> Result<EmailResponse, AuthError> {
        let email = EmailAddress::parse(&req.email)?;
        let user = self
            .users
            .by_email(&email)
            .await
            .map_err(AuthError::Unavailable)?;
        let auth = self.clone();
        self.answer_first(async move { auth.reset_requested(user, email, req.client).await });
        Ok(EmailResponse {})
    }

    /// What a reset request does once it is answered: a token and a mail for a
    /// live account, an event either way.
    async fn reset_requested(
        &self,
        user: Option<User>,
        email: EmailAddress,
        client: Option<aia_proto::common::v1::ClientInfo>,
    ) -> Result<(), AuthError> {
        let Some(user) = user.filter(|u| u.disabled_at.is_none()) else {
            self.audit
                .event("auth.password_reset_requested", Outcome::Failure)
                .client(client.as_ref())
                .details(serde_json::json!({"reason": "unknown_email"}))
                .emit()
                .await?;
            return Ok(());
        };
        // Recorded before any token exists: no reset mail goes out unrecorded.
        self.audit
            .event("auth.password_reset_requested", Outcome::Success)
            .subject(user.id.to_string())
            .client(client.as_ref())
            .emit()
            .await?;
        let expires = chrono::Utc::now() + Self::ttl(self.mail.reset_ttl);
        let token = self
            .email_tokens
            .issue(user.id, Purpose::ResetPassword, expires)
            .await
            .map_err(AuthError::Unavailable)?;
        let link = self.mailer.link("reset-password", &token);
        self.mailer.send(
            email.as_str(),
            "Reset your password",
            format!(
                "Someone asked to reset the password of this account. Choose a new one here:\n\n{link}\n\n\
                 Or send this token with your new password to POST /v1/auth/password/reset:\n\n{token}\n\n\
                 It works once, until {expires}. If it was not you, ignore this message: \
                 your password stays as it is.\n"
            ),
        );
        Ok(())
    }

    pub(crate) async fn reset_password(
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
        let event = self
            .audit
            .event("auth.password_reset", Outcome::Success)
            .actor(user_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref());
        let reason = "password_reset";
        // Whatever is stored now: the mailbox's proof wins over a change that
        // committed since the user was read.
        // A reset is how an account is taken back: every API key goes with the
        // sessions (one its taker made would outlive them).
        let written = self
            .users
            .set_password(
                PasswordWrite {
                    user_id,
                    old_hash: &user.password_hash,
                    new_hash: &hash,
                    only_if_unchanged: false,
                    keep_session: None,
                    reason,
                    revoke_api_keys: true,
                },
                self.policy.history(),
                event.details(serde_json::json!({"api_keys_revoked": true})),
            )
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::InvalidEmailToken)?;
        let due = written.due;
        // The password has changed and the token is spent: what follows is done as
        // well as it can be, never answered as an error (a retry could not succeed).
        // A reset proves control of the mailbox: the address counts as verified.
        let verified = self
            .audit
            .event("auth.email_verified", Outcome::Success)
            .actor(user_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"via": "password_reset"}));
        if let Err(error) = self.users.set_verified(user_id, verified).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "a reset's address not marked verified"
            );
        }
        let (ended, deferred) = self
            .end_sessions_due(due, user_id, None, reason, req.client.clone())
            .await;
        // A reset lifts a lock (a stranger's wrong passwords), but not on an account
        // with TOTP on: there the count holds wrong codes too, and a reset would let
        // whoever has the password and the mailbox guess codes again at once.
        let unlocked = async {
            if !self.mfa.is_enabled(user_id).await? {
                self.lockout.unlock(email.as_str()).await?;
            }
            anyhow::Ok(())
        };
        if let Err(error) = unlocked.await {
            tracing::warn!(
                error = format!("{error:#}"),
                "a reset's account lock not lifted"
            );
        }
        Ok(ResetPasswordResponse {
            sessions_ended: ended,
            sessions_deferred: deferred,
            api_keys_revoked: u32::try_from(written.api_keys_revoked).unwrap_or(u32::MAX),
        })
    }
}
