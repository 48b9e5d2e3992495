//! The auth service's errors, and their one mapping to gRPC statuses.

use tonic::Status;

use crate::domain::Invalid;
use crate::hashing::HashError;

/// What went wrong, in terms of what the caller can do about it.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The input is malformed; the message says which field and why.
    #[error(transparent)]
    Invalid(#[from] Invalid),
    /// Unknown email, wrong password or disabled account: one message for all, so
    /// the answer never tells which.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// A refresh token that is unknown, used, expired or revoked.
    #[error("invalid refresh token")]
    InvalidRefreshToken,
    /// An API key that is unknown, wrong, revoked or expired.
    #[error("invalid API key")]
    InvalidApiKey,
    /// An access token that fails verification.
    #[error("invalid access token")]
    InvalidAccessToken,
    /// The current password given for a change is wrong.
    #[error("the current password is wrong")]
    WrongCurrentPassword,
    /// An MFA challenge that is unknown, used or expired, or a wrong code for it.
    #[error("invalid or expired MFA challenge, or wrong code")]
    InvalidMfaLogin,
    /// A wrong TOTP or recovery code for an account action.
    #[error("the code is wrong or was already used")]
    WrongCode,
    /// The user has MFA on and the caller's session did not use it.
    #[error(
        "this action needs a session signed in with your second factor; log in again with your code"
    )]
    SecondFactorRequired,
    /// The account is not in the state the action needs (MFA on or off, too many
    /// API keys); the message says which.
    #[error("{0}")]
    Precondition(&'static str),
    /// The caller may not do this (not an admin).
    #[error("not allowed")]
    Forbidden,
    /// The user must verify their email before logging in.
    #[error("email address not verified; check your inbox or ask for a new link")]
    EmailNotVerified,
    /// A verification or reset token that is unknown, used or expired.
    #[error("token: invalid, used or expired")]
    InvalidEmailToken,
    /// The password was changed or reset while this change was being made.
    #[error(
        "the password was changed or reset while this request ran; nothing was changed: sign in again"
    )]
    PasswordChangedMeanwhile,
    /// No such user.
    #[error("user not found")]
    NotFound,
    /// Audit refused a read (a bad cursor, a window out of range, a read too
    /// costly): its code and message are for the caller, passed on as they are.
    #[error("{message}")]
    Audit {
        /// Audit's status code.
        code: tonic::Code,
        /// Audit's message.
        message: String,
    },
    /// Too many failed logins (throttle or lock); retry after this long.
    #[error("too many failed logins; retry later")]
    Throttled(std::time::Duration),
    /// Too many password hashes queued; retry later.
    #[error("too many requests in progress; retry later")]
    Overloaded,
    /// A dependency is unreachable; retry later.
    #[error("temporarily unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A bug or an unexpected failure.
    #[error("internal error")]
    Unexpected(#[from] anyhow::Error),
}

/// An event that could not be written to the outbox: the request fails with 503
/// rather than happen unrecorded (DESIGN §4).
impl From<aia_audit_client::Unrecorded> for AuthError {
    fn from(e: aia_audit_client::Unrecorded) -> Self {
        Self::Unavailable(e.into())
    }
}

impl From<HashError> for AuthError {
    fn from(e: HashError) -> Self {
        match e {
            HashError::Overloaded => Self::Overloaded,
            HashError::Unexpected(e) => Self::Unexpected(e),
        }
    }
}

impl AuthError {
    /// A failed call to another service: UNAVAILABLE and DEADLINE_EXCEEDED may pass,
    /// the rest is unexpected.
    pub fn from_upstream(status: Status, what: &'static str) -> Self {
        let error = anyhow::anyhow!("{what}: {:?} {}", status.code(), status.message());
        match status.code() {
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => Self::Unavailable(error),
            // A peer that does not take this call from auth: a deployment half-way
            // through an upgrade (or misconfigured), not a bug of this request's.
            tonic::Code::PermissionDenied | tonic::Code::Unimplemented => {
                tracing::error!(error = format!("{error:#}"), "a peer refused auth's call");
                Self::Unavailable(error)
            }
            // Session died mid-call (found by `make chaos`: it was a 500), or closed
            // the connection while the call was being set up.
            _ if aia_telemetry::grpc::broke_in_transport(&status) => Self::Unavailable(error),
            _ => Self::Unexpected(error),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Invalid(invalid) => Status::invalid_argument(invalid.to_string()),
            AuthError::InvalidCredentials
            | AuthError::InvalidRefreshToken
            | AuthError::InvalidAccessToken
            | AuthError::InvalidApiKey
            | AuthError::InvalidMfaLogin => Status::unauthenticated(e.to_string()),
            AuthError::Precondition(_) => Status::failed_precondition(e.to_string()),
            AuthError::NotFound => Status::not_found(e.to_string()),
            AuthError::PasswordChangedMeanwhile => Status::aborted(e.to_string()),
            AuthError::EmailNotVerified => Status::failed_precondition(e.to_string()),
            AuthError::InvalidEmailToken => Status::invalid_argument(e.to_string()),
            AuthError::Audit { code, message } => Status::new(code, message),
            AuthError::WrongCurrentPassword
            | AuthError::Forbidden
            | AuthError::WrongCode
            | AuthError::SecondFactorRequired => Status::permission_denied(e.to_string()),
            AuthError::Throttled(wait) => {
                let mut status = Status::resource_exhausted(e.to_string());
                if let Ok(value) = wait.as_secs().max(1).to_string().parse() {
                    status.metadata_mut().insert("retry-after", value);
                }
                status
            }
            AuthError::Overloaded => Status::unavailable(e.to_string()),
            AuthError::Unavailable(error) => aia_telemetry::grpc::unavailable(error),
            AuthError::Unexpected(error) => aia_telemetry::grpc::internal(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AuthError;

    #[test]
    fn a_dependency_that_broke_mid_call_is_unavailable_not_unexpected() {
        // What tonic gives when session's connection breaks during CreateSession.
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        )));
        let mapped = AuthError::from_upstream(broken, "session.CreateSession");
        assert!(matches!(mapped, AuthError::Unavailable(_)), "{mapped:?}");
        assert_eq!(tonic::Status::from(mapped).code(), tonic::Code::Unavailable);
        // A connection closed while the call was being set up (session accepting
        // and dropping connections): tonic's Cancelled with the transport error.
        let mut closed = tonic::Status::cancelled("operation was canceled");
        closed.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection closed",
        )));
        let mapped = AuthError::from_upstream(closed, "session.RevokeUserSessions");
        assert!(matches!(mapped, AuthError::Unavailable(_)), "{mapped:?}");
        // A peer that does not take the call from auth (a deployment half-way through
        // an upgrade): 503, not a 500.
        for refused in [
            tonic::Status::permission_denied("this service may not call this method"),
            tonic::Status::unimplemented("unknown method"),
        ] {
            let mapped = AuthError::from_upstream(refused, "session.ListSessions");
            assert_eq!(tonic::Status::from(mapped).code(), tonic::Code::Unavailable);
        }
        // An Unknown session sent is unexpected.
        let sent = AuthError::from_upstream(tonic::Status::unknown("x"), "session.CreateSession");
        assert!(matches!(sent, AuthError::Unexpected(_)), "{sent:?}");
    }
}
