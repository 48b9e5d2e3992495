//! RFC 9457 problem details: the only error body the gateway sends.
//!
//! Every error, from a malformed body to an upstream outage, becomes a [`Problem`]
//! with a stable `type` URI; 5xx bodies say nothing about the cause, which goes to the
//! log instead.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// The media type of problem bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem response.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A short summary of the kind.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened this time, safe to show.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Extra headers (e.g. `WWW-Authenticate`, `Retry-After`).
    #[serde(skip)]
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.title, self.status)
    }
}

impl Problem {
    pub fn new(status: StatusCode, kind: &'static str, title: &'static str) -> Self {
        Self {
            kind,
            title,
            status: status.as_u16(),
            detail: None,
            headers: Vec::new(),
        }
    }

    /// Adds a detail message.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: header::HeaderName, value: &'static str) -> Self {
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// 400: the request is malformed (e.g. invalid JSON).
    pub fn bad_request() -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "urn:aia:problem:bad-request",
            "Bad request",
        )
    }

    /// 401: missing or invalid credentials.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "urn:aia:problem:unauthorized",
            "Unauthorized",
        )
    }

    /// 401 for bearer-protected routes, with the RFC 6750 challenge.
    pub fn invalid_token() -> Self {
        Self::unauthorized()
            .detail("missing, invalid, expired or revoked access token")
            .header(header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\"")
    }

    /// 401 for an API key auth does not accept (unknown, revoked, expired, its owner
    /// disabled).
    pub fn invalid_api_key() -> Self {
        Self::unauthorized()
            .detail("invalid API key")
            .header(header::WWW_AUTHENTICATE, "ApiKey")
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(detail: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "urn:aia:problem:forbidden",
            "Forbidden",
        )
        .detail(detail)
    }

    /// 409: the state changed under the request (another change won).
    pub fn conflict(detail: &str) -> Self {
        Self::new(StatusCode::CONFLICT, "urn:aia:problem:conflict", "Conflict").detail(detail)
    }

    /// 404.
    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "urn:aia:problem:not-found",
            "Not found",
        )
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "urn:aia:problem:method-not-allowed",
            "Method not allowed",
        )
    }

    /// 413: the body is over the route's limit.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "urn:aia:problem:payload-too-large",
            "Payload too large",
        )
        .detail(format!("the body must be at most {limit} bytes"))
    }

    /// 415: not `application/json`.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "urn:aia:problem:unsupported-media-type",
            "Unsupported media type",
        )
        .detail("the body must be application/json")
    }

    /// 422: well-formed but invalid content.
    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "urn:aia:problem:validation",
            "Validation failed",
        )
        .detail(detail)
    }

    /// 429 with `Retry-After` (seconds).
    pub fn too_many_requests(retry_after: HeaderValue) -> Self {
        let mut problem = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:aia:problem:too-many-requests",
            "Too many requests",
        );
        problem.headers.push((header::RETRY_AFTER, retry_after));
        problem
    }

    /// 502 or 504: the upstream failed or timed out.
    pub fn upstream(status: StatusCode) -> Self {
        if status == StatusCode::GATEWAY_TIMEOUT {
            Self::new(
                status,
                "urn:aia:problem:upstream-timeout",
                "Upstream timed out",
            )
        } else {
            Self::new(
                StatusCode::BAD_GATEWAY,
                "urn:aia:problem:upstream-failed",
                "Upstream failed",
            )
        }
    }

    /// 503: a dependency is down; retry later.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "urn:aia:problem:unavailable",
            "Service unavailable",
        )
        .detail("a backing service is unavailable; retry later")
        .header(header::RETRY_AFTER, "1")
    }

    /// 500: a bug. The body says nothing more.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "urn:aia:problem:internal",
            "Internal error",
        )
    }

    /// Maps a failed gRPC call to the answer a client should get.
    /// A refusal of a call to auth made with the caller's bearer token: a 401 (auth
    /// found the token revoked, expired or its user disabled) carries the RFC 6750
    /// challenge, as the gateway's own refusals of a token do.
    pub fn for_bearer(status: tonic::Status) -> Self {
        if status.code() == tonic::Code::Unauthenticated {
            Self::invalid_token()
        } else {
            Self::from_status(&status)
        }
    }

    pub fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        match status.code() {
            Code::InvalidArgument => Self::validation(status.message()),
            Code::Unauthenticated => Self::unauthorized().detail(status.message()),
            Code::NotFound => Self::not_found(),
            Code::PermissionDenied | Code::FailedPrecondition => Self::forbidden(status.message()),
            Code::Aborted => Self::conflict(status.message()),
            Code::ResourceExhausted => {
                let retry_after = status
                    .metadata()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| HeaderValue::from_str(v).ok())
                    .unwrap_or(HeaderValue::from_static("1"));
                Self::too_many_requests(retry_after).detail(status.message())
            }
            // A service's own deadline (audit: a read too costly) says what to change.
            Code::DeadlineExceeded => {
                tracing::warn!(message = status.message(), "upstream deadline exceeded");
                Self::unavailable().detail(status.message())
            }
            Code::Unavailable | Code::Cancelled => {
                tracing::warn!(code = ?status.code(), "upstream unavailable");
                Self::unavailable()
            }
            // A service of another release that lacks the call (mid-upgrade).
            Code::Unimplemented => {
                tracing::error!(message = status.message(), "upstream lacks the call");
                Self::unavailable()
            }
            // The service died mid-call: a dependency gone, like a refused connect.
            // An Unknown a service sent stays a 500.
            _ if aia_telemetry::grpc::broke_in_transport(status) => {
                tracing::warn!(
                    message = status.message(),
                    "upstream connection broke mid-call"
                );
                Self::unavailable()
            }
            _ => {
                tracing::error!(code = ?status.code(), message = status.message(), "upstream failed");
                Self::internal()
            }
        }
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CONTENT_TYPE, PROBLEM_JSON));
        response.insert_header((header::CACHE_CONTROL, "no-store"));
        for (name, value) in &self.headers {
            response.insert_header((name.clone(), value.clone()));
        }
        response.body(serde_json::to_string(self).unwrap_or_default())
    }
}

impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status)
    }
}

#[cfg(test)]
mod tests {
    use super::Problem;

    /// Auth refusing a token the gateway had accepted (revoked meanwhile, its user
    /// disabled) answers as the gateway's own refusal does: 401 with the RFC 6750
    /// challenge; other refusals keep their meaning.
    #[test]
    fn auths_refusal_of_a_bearer_token_carries_the_challenge() {
        let challenge = |p: &Problem| {
            p.headers
                .iter()
                .find(|(name, _)| name == actix_web::http::header::WWW_AUTHENTICATE)
                .and_then(|(_, value)| value.to_str().ok().map(str::to_owned))
        };
        let refused = Problem::for_bearer(tonic::Status::unauthenticated("invalid access token"));
        assert_eq!(refused.status, 401);
        assert_eq!(
            challenge(&refused).as_deref(),
            Some("Bearer error=\"invalid_token\"")
        );
        // A service of another release lacking the call (mid-upgrade): 503.
        assert_eq!(
            Problem::for_bearer(tonic::Status::unimplemented("unknown method")).status,
            503
        );
        let forbidden = Problem::for_bearer(tonic::Status::permission_denied("not allowed"));
        assert_eq!(forbidden.status, 403);
        assert_eq!(challenge(&forbidden), None);
        // Not a bearer call: no challenge of that kind.
        let login =
            Problem::from_status(&tonic::Status::unauthenticated("invalid email or password"));
        assert_eq!(login.status, 401);
        assert_eq!(challenge(&login), None);
    }

    /// What a gRPC client gets when the service's connection breaks in the middle of a
    /// call: the server here reads the request, then drops the connection.
    async fn call_to_a_dying_server() -> anyhow::Result<tonic::Status> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                // Whatever of the preface and the request has come, then gone.
                let _ = socket.read(&mut buf).await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        });
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?.connect_lazy();
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let call = client.check(tonic_health::pb::HealthCheckRequest::default());
        match tokio::time::timeout(std::time::Duration::from_secs(10), call).await? {
            Ok(_) => anyhow::bail!("a server that answers nothing answered"),
            Err(status) => Ok(status),
        }
    }

    #[tokio::test]
    async fn a_service_dying_mid_call_is_a_503_not_a_500() -> anyhow::Result<()> {
        let status = call_to_a_dying_server().await?;
        // tonic reports it as Unknown (with the transport error as source), the code
        // a service could also send on purpose.
        assert_eq!(status.code(), tonic::Code::Unknown, "{status:?}");
        assert_eq!(Problem::from_status(&status).status, 503, "{status:?}");
        // The transport's own error, as tonic wraps it: Unknown with a source.
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        )));
        assert_eq!(broken.code(), tonic::Code::Unknown);
        assert_eq!(Problem::from_status(&broken).status, 503);
        // An Unknown a service sent is still a bug somewhere: 500.
        assert_eq!(
            Problem::from_status(&tonic::Status::unknown("boom")).status,
            500
        );
        Ok(())
    }
}
