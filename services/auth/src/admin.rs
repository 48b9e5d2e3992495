//! Admin actions: list and search users, roles, unlock, disable. Every one verifies
//! the acting admin's access token itself (the gateway's word on who acts is not
//! taken: a gateway, or anything holding its certificate, cannot act as an admin
//! without a live admin token) and re-checks in the database that its subject is
//! an admin now.

use aia_proto::audit::v1::Outcome;
use aia_proto::auth::v1::{
    ListUsersRequest, ListUsersResponse, SetUserDisabledRequest, SetUserDisabledResponse,
    SetUserRolesRequest, SetUserRolesResponse, UnlockUserRequest, UnlockUserResponse, UserSummary,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::Invalid;
use crate::error::AuthError;
use crate::service::Auth;
use crate::service::Holder;
use crate::users::AdminChange;

impl Auth {
    /// The acting admin: the subject of `access_token` (verified here: signature,
    /// expiry, revocation), if they are an active admin now.
    pub(crate) async fn require_admin(&self, access_token: &str) -> Result<uuid::Uuid, AuthError> {
        Ok(self.admin(access_token).await?.user.id)
    }

    /// [`Auth::require_admin`], with what the token says.
    pub(crate) async fn admin(&self, access_token: &str) -> Result<Holder, AuthError> {
        let holder = self.holder(access_token).await?;
        if !crate::users::active_admin(&holder.user.roles, holder.user.disabled_at) {
            return Err(AuthError::Forbidden);
        }
        Ok(holder)
    }

    pub(crate) async fn list_users(
        &self,
        req: ListUsersRequest,
    ) -> Result<ListUsersResponse, AuthError> {
        self.require_admin(&req.access_token).await?;
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

    pub(crate) async fn set_user_roles(
        &self,
        req: SetUserRolesRequest,
    ) -> Result<SetUserRolesResponse, AuthError> {
        let actor_id = self.require_admin(&req.access_token).await?;
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
        // The sessions it ends are recorded by the session service (with the count).
        let event = self
            .audit
            .event("admin.user_roles_changed", Outcome::Success)
            .actor(actor_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"roles": roles}));
        admin_change(
            self.users
                .set_roles(actor_id, user_id, &roles, event)
                .await
                .map_err(AuthError::Unavailable)?,
        )?;
        // Even when the roles were already these (a retry after a lost answer
        // finishes the job); the session service records the administrator as the
        // actor.
        self.end_sessions(
            user_id,
            None,
            "roles_changed",
            req.client.clone(),
            Some(actor_id),
        )
        .await?;
        Ok(SetUserRolesResponse {})
    }

    pub(crate) async fn unlock_user(
        &self,
        req: UnlockUserRequest,
    ) -> Result<UnlockUserResponse, AuthError> {
        let actor_id = self.require_admin(&req.access_token).await?;
        let user_id = uuid::Uuid::parse_str(&req.user_id).map_err(|_| AuthError::NotFound)?;
        let user = self
            .users
            .by_id(user_id)
            .await
            .map_err(AuthError::Unavailable)?
            .ok_or(AuthError::NotFound)?;
        // Recorded before it is done (Redis has no transaction to share with the
        // outbox): an unlock never happens unrecorded.
        let locked = self
            .lockout
            .is_locked(&user.email)
            .await
            .map_err(AuthError::Unavailable)?;
        self.audit
            .event("admin.user_unlocked", Outcome::Success)
            .actor(actor_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref())
            .details(serde_json::json!({"was_locked": locked}))
            .emit()
            .await?;
        let was_locked = self
            .lockout
            .unlock_or_fail(&user.email)
            .await
            .map_err(AuthError::Unavailable)?;
        Ok(UnlockUserResponse { was_locked })
    }

    pub(crate) async fn set_user_disabled(
        &self,
        req: SetUserDisabledRequest,
    ) -> Result<SetUserDisabledResponse, AuthError> {
        let actor_id = self.require_admin(&req.access_token).await?;
        let user_id = uuid::Uuid::parse_str(&req.user_id).map_err(|_| AuthError::NotFound)?;
        // As with their admin role: an admin cannot shut themselves out (nor can a
        // stolen admin token quietly disable the admin it belongs to).
        if req.disabled && user_id == actor_id {
            return Err(AuthError::Invalid(Invalid::SelfDisable));
        }
        let event_type = if req.disabled {
            "admin.user_disabled"
        } else {
            "admin.user_enabled"
        };
        let event = self
            .audit
            .event(event_type, Outcome::Success)
            .actor(actor_id.to_string())
            .subject(user_id.to_string())
            .client(req.client.as_ref());
        admin_change(
            self.users
                .set_disabled(actor_id, user_id, req.disabled, event)
                .await
                .map_err(AuthError::Unavailable)?,
        )?;
        if req.disabled {
            self.end_sessions(
                user_id,
                None,
                "user_disabled",
                req.client.clone(),
                Some(actor_id),
            )
            .await?;
        }
        Ok(SetUserDisabledResponse {})
    }
}

/// The answer to an administrator's change that did not apply.
fn admin_change(change: AdminChange) -> Result<(), AuthError> {
    match change {
        AdminChange::Done => Ok(()),
        AdminChange::NoSuchUser => Err(AuthError::NotFound),
        AdminChange::NotAnAdmin => Err(AuthError::Forbidden),
    }
}
