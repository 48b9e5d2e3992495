//! Who is calling: request id, client IP and user agent.
//!
//! The client IP comes from `client_ip` (forwarding headers only from trusted
//! proxies).

use actix_web::dev::Payload;
use actix_web::http::header::HeaderValue;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use futures::future::{Ready, ready};

use crate::problem::Problem;

/// The request id header, accepted from the client when well-formed, else made here.
pub const REQUEST_ID: &str = "x-request-id";

/// The request id of one request, stored in its extensions by the middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    /// The client's id if it is 1-128 characters of `[A-Za-z0-9._-]`, else a new UUID.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        let accepted = value
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .filter(|v| {
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            });
        Self(accepted.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned))
    }
}

/// What the gateway tells the services about the caller.
#[derive(Debug, Clone)]
pub struct Client {
    /// The TCP peer's IP.
    pub ip: String,
    /// The `User-Agent`, cut to 512 bytes on a character boundary.
    pub user_agent: String,
    /// The request id.
    pub request_id: String,
}

/// The client's IP: from the forwarding headers of a trusted proxy, else the TCP peer.
pub fn addr_of(req: &HttpRequest) -> Option<std::net::IpAddr> {
    req.app_data::<actix_web::web::Data<crate::client_ip::TrustedProxies>>()
        .and_then(|proxies| proxies.client_ip(req))
        .or_else(|| req.peer_addr().map(|a| a.ip()))
}

/// [`addr_of`] as text (empty when unknown).
pub fn ip_of(req: &HttpRequest) -> String {
    addr_of(req).map(|ip| ip.to_string()).unwrap_or_default()
}

impl Client {
    fn of(req: &HttpRequest) -> Self {
        let user_agent = req
            .headers()
            .get(actix_web::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let mut end = user_agent.len().min(512);
        while !user_agent.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            ip: ip_of(req),
            user_agent: user_agent[..end].to_owned(),
            request_id: req
                .extensions()
                .get::<RequestId>()
                .map(|r| r.0.clone())
                .unwrap_or_default(),
        }
    }

    /// As the services' message.
    pub fn to_proto(&self) -> aia_proto::common::v1::ClientInfo {
        aia_proto::common::v1::ClientInfo {
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
            request_id: self.request_id.clone(),
        }
    }
}

impl FromRequest for Client {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Ok(Self::of(req)))
    }
}
