//! MFA flows: the challenge after a correct password, its completion, and TOTP
//! enrolment, confirmation and removal.
//!
//! Rules (see `mfa` for the storage):
//! - A user with TOTP on gets a challenge instead of tokens; the throttle is cleared
//!   only by the second factor, and each code counts on the account before it is
//!   checked (a wrong one then on every axis, as a wrong password does), so a stolen
//!   password does not buy unlimited code guesses, not even sent all at once.
//! - Sessions record how they were opened (`amr`: `pwd`, or `pwd` + `otp`), and
//!   access tokens carry it. With TOTP on, the actions that change credentials
//!   (password change, API key creation, turning TOTP off) need a token whose `amr`
//!   includes `otp`; an API key never reaches them (the gateway takes only bearer
//!   tokens there).
//! - Confirming TOTP ends every other session of the user: sessions opened with the
//!   password alone before the factor existed do not live on beside it.

use aia_proto::audit::v1::Outcome;
use aia_proto::auth::v1::{
    CompleteMfaLoginRequest, ConfirmTotpRequest, ConfirmTotpResponse, DisableTotpRequest,
    DisableTotpResponse, EnrollTotpRequest, EnrollTotpResponse, LoginResponse, MfaChallenge,
    TokenPair, login_response,
};
use aia_proto::common::v1::ClientInfo;

use crate::domain::{EmailAddress, Invalid, Password};
use crate::error::AuthError;
use crate::mfa::{CHALLENGE_TTL, Mfa};
use crate::service::{Auth, Holder};
use crate::users::User;

impl Auth {
    /// A user whose password was right and who has TOTP on: a challenge (which
    /// remembers whether the password step came from a known device).
    pub(crate) async fn mfa_challenge(
        &self,
        user: &User,
        email: &EmailAddress,
        device: &str,
        client: Option<&ClientInfo>,
    ) -> Result<LoginResponse, AuthError> {
        let challenge = self
            .mfa
            .challenge(user.id, email.as_str(), &user.password_hash, device)
            .await
            .map_err(AuthError::Unavailable)?;
        metrics::counter!("auth_login_total", "outcome" => "mfa_required", "reason" => "")
            .increment(1);
        self.audit
            .event("auth.mfa_challenge", Outcome::Success)
            .actor(user.id.to_string())
            .subject(user.id.to_string())
            .client(client)
            .emit()
            .await?;
        Ok(LoginResponse {
            result: Some(login_response::Result::Mfa(MfaChallenge {
                challenge,
                expires_in: u32::try_from(CHALLENGE_TTL.as_secs()).unwrap_or(300),
                methods: vec!["totp".into(), "recovery_code".into()],
            })),
        })
    }

    pub(crate) async fn complete_mfa_login(
        &self,
        req: CompleteMfaLoginRequest,
    ) -> Result<TokenPair, AuthError> {
        let client = req.client.as_ref();
        let ip = client.map_or("", |c| c.ip.as_str());
        let pending = self
            .mfa
            .take_a_try(&req.challenge)
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::InvalidMfaLogin)?;
        let precheck = self
            .may_try(&pending.email, ip, &pending.device, client)
            .await?;
        let user = self
            .users
            .by_id(pending.user_id)
            .await
            .map_err(AuthError::Unavailable)?
            .filter(|u| u.disabled_at.is_none())
            // The password that opened the challenge must still be the password: a
            // change or reset since ends the pending login with the sessions.
            .filter(|u| Mfa::password_fingerprint(&u.password_hash) == pending.password)
            .ok_or(AuthError::InvalidMfaLogin)?;
        // Counted before it is checked: codes sent at once on many challenges
        // cannot all pass the lock check.
        let attempts = self.count_code(&pending.email, &precheck, client).await?;
        let recovery_used = self
            .audit
            .event("auth.recovery_code_used", Outcome::Success)
            .actor(user.id.to_string())
            .subject(user.id.to_string())
            .client(client);
        let factor = self
            .mfa
            .verify(user.id, &req.code, Some(recovery_used))
            .await
            .map_err(AuthError::Unavailable)?;
        if factor.is_none() {
            metrics::counter!("auth_login_total", "outcome" => "failure", "reason" => "wrong_mfa_code")
                .increment(1);
            let recorded = self
                .audit
                .event("auth.mfa", Outcome::Failure)
                .subject(user.id.to_string())
                .client(client)
                .details(serde_json::json!({"reason": "wrong_code"}))
                .emit()
                .await;
            // Counted whether or not the event could be written.
            self.count_failure(
                &pending.email,
                ip,
                &pending.device,
                client,
                Some(user.id),
                Some(attempts),
            )
            .await?;
            recorded?;
            return Err(AuthError::InvalidMfaLogin);
        }
        if !self
            .mfa
            .complete(&pending)
            .await
            .map_err(AuthError::Unavailable)?
        {
            // A concurrent request completed this challenge first.
            return Err(AuthError::InvalidMfaLogin);
        }
        let ip = ip.to_owned();
        let pair = self
            .start_session(&user, req.client, vec!["pwd".into(), "otp".into()])
            .await?;
        Ok(self
            .login_completed(&pending.email, &ip, &pending.device, pair)
            .await)
    }

    /// Refuses (403, and a failure event of `event_type`) unless `presented` is the
    /// password of `user`: for the changes a stolen access token alone must not make.
    pub(crate) async fn require_password(
        &self,
        user: &User,
        presented: &str,
        event_type: &'static str,
        client: Option<&ClientInfo>,
    ) -> Result<(), AuthError> {
        let presented = Password::presented(presented)?;
        let checked = async {
            Ok(self
                .hasher
                .verify(presented, Some(user.password_hash.clone()))
                .await?)
        };
        if self.check_throttled(user, client, false, checked).await? {
            return Ok(());
        }
        self.audit
            .event(event_type, Outcome::Failure)
            .actor(user.id.to_string())
            .subject(user.id.to_string())
            .client(client)
            .details(serde_json::json!({"reason": "wrong_password"}))
            .emit()
            .await?;
        Err(AuthError::WrongCurrentPassword)
    }

    /// With TOTP on, a credential change needs a session that used it.
    pub(crate) async fn require_second_factor(
        &self,
        user_id: uuid::Uuid,
        amr: &[String],
    ) -> Result<(), AuthError> {
        if amr.iter().any(|m| m == "otp") {
            return Ok(());
        }
        if self
            .mfa
            .is_enabled(user_id)
            .await
            .map_err(AuthError::Unavailable)?
        {
            return Err(AuthError::SecondFactorRequired);
        }
        Ok(())
    }

    pub(crate) async fn enroll_totp(
        &self,
        req: EnrollTotpRequest,
    ) -> Result<EnrollTotpResponse, AuthError> {
        let Holder { user, .. } = self.holder(&req.access_token).await?;
        let enrolment = self
            .mfa
            .enroll(user.id, &user.email)
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::Precondition(
                "TOTP is already on; turn it off first to enrol a new authenticator",
            ))?;
        self.audit
            .event("auth.mfa_enroll", Outcome::Success)
            .actor(user.id.to_string())
            .subject(user.id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"method": "totp", "step": "started"}))
            .emit()
            .await?;
        Ok(EnrollTotpResponse {
            otpauth_uri: enrolment.uri,
            secret: enrolment.secret,
        })
    }

    pub(crate) async fn confirm_totp(
        &self,
        req: ConfirmTotpRequest,
    ) -> Result<ConfirmTotpResponse, AuthError> {
        let Holder {
            user, session_id, ..
        } = self.holder(&req.access_token).await?;
        // The password first: with a stolen access token alone, an attacker could
        // otherwise put their own authenticator on the account and shut the owner out
        // (a password reset does not remove the factor).
        self.require_password(&user, &req.password, "auth.mfa_enroll", req.client.as_ref())
            .await?;
        // Sessions it ends are recorded by the session service (`session.revoke_all`).
        let enabled = self
            .audit
            .event("auth.mfa_enabled", Outcome::Success)
            .actor(user.id.to_string())
            .subject(user.id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"method": "totp"}));
        let Some(recovery_codes) = self
            .mfa
            .confirm(user.id, &req.code, enabled)
            .await
            .map_err(AuthError::Unavailable)?
        else {
            self.audit
                .event("auth.mfa_enroll", Outcome::Failure)
                .actor(user.id.to_string())
                .subject(user.id.to_string())
                .client(req.client.as_ref())
                .details(serde_json::json!({"method": "totp", "reason": "wrong_code"}))
                .emit()
                .await?;
            return Err(AuthError::WrongCode);
        };
        self.end_sessions(
            user.id,
            Some(&session_id),
            "mfa_enabled",
            req.client.clone(),
            None,
        )
        .await?;
        Ok(ConfirmTotpResponse { recovery_codes })
    }

    pub(crate) async fn disable_totp(
        &self,
        req: DisableTotpRequest,
    ) -> Result<DisableTotpResponse, AuthError> {
        let Holder { user, amr, .. } = self.holder(&req.access_token).await?;
        if !self
            .mfa
            .is_enabled(user.id)
            .await
            .map_err(AuthError::Unavailable)?
        {
            return Err(AuthError::Precondition("TOTP is not on"));
        }
        self.require_second_factor(user.id, &amr).await?;
        let checked = async {
            if !req.code.is_empty() {
                Ok(self
                    .mfa
                    // Its own event (auth.mfa_disabled) records the code.
                    .verify(user.id, &req.code, None)
                    .await
                    .map_err(AuthError::Unavailable)?
                    .is_some())
            } else if !req.password.is_empty() {
                Ok(self
                    .hasher
                    .verify(
                        Password::presented(&req.password)?,
                        Some(user.password_hash.clone()),
                    )
                    .await?)
            } else {
                Err(AuthError::Invalid(Invalid::ProofMissing))
            }
        };
        let proven = self
            .check_throttled(&user, req.client.as_ref(), !req.code.is_empty(), checked)
            .await?;
        if !proven {
            self.audit
                .event("auth.mfa_disabled", Outcome::Failure)
                .actor(user.id.to_string())
                .subject(user.id.to_string())
                .client(req.client.as_ref())
                .details(serde_json::json!({"reason": "wrong_proof"}))
                .emit()
                .await?;
            return Err(if req.code.is_empty() {
                AuthError::WrongCurrentPassword
            } else {
                AuthError::WrongCode
            });
        }
        let disabled = self
            .audit
            .event("auth.mfa_disabled", Outcome::Success)
            .actor(user.id.to_string())
            .subject(user.id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"risk": "medium", "method": "totp"}));
        self.mfa
            .disable(user.id, disabled)
            .await
            .map_err(AuthError::Unavailable)?;
        Ok(DisableTotpResponse {})
    }
}
