//! What every handler shares.

use aia_proto::auth::v1::auth_service_client::AuthServiceClient;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_telemetry::otel::TracedChannel;

use crate::keys::KeyCache;
use aia_revocations::RevocationCache;

/// Shared state: gRPC clients (cheap to clone) and the key cache.
pub struct State {
    /// The auth service.
    pub auth: AuthServiceClient<TracedChannel>,
    /// The auth service, for reads of the audit trail (a longer timeout).
    pub auth_reads: AuthServiceClient<TracedChannel>,
    /// The session service.
    pub session: SessionServiceClient<TracedChannel>,
    /// The public signing keys.
    pub keys: std::sync::Arc<KeyCache>,
    /// The in-memory blacklist.
    pub revocations: std::sync::Arc<RevocationCache>,
    /// `ACCESS_TOKEN_TTL_SECONDS`: no access token of a session ended now outlives
    /// now plus this.
    pub access_ttl: std::time::Duration,
    /// Rate limits.
    pub limiter: std::sync::Arc<crate::rate_limit::Limiter>,
    /// Seals the session cookies of browser clients.
    pub cookies: crate::cookies::CookieSealer,
    /// The CORS allowlist (also the origins a cookie session may come from).
    pub origins: crate::cors::Origins,
    /// Rejections, counted for audit.
    pub rejections: std::sync::Arc<crate::rejections::Rejections>,
    /// Usage counts not yet sent to audit.
    pub usage: std::sync::Arc<crate::usage::Usage>,
    /// The open security-event streams, bounded.
    pub streams: std::sync::Arc<crate::streams::StreamSlots>,
    /// Cancelled when the gateway stops: long-lived responses (event streams) end.
    pub shutdown: aia_telemetry::shutdown::CancellationToken,
}
