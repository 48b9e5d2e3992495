//! Mutual TLS between the services, and the per-rpc caller allowlists.
//!
//! With `INTERNAL_TLS=mtls` every gRPC listener requires a client certificate signed
//! by the platform CA, every client presents its own and checks that the server's
//! certificate names the service it meant to reach, and every rpc checks the caller's
//! identity — the DNS name in its certificate (`auth`, `session`, `audit`, `gateway`)
//! — against its own allowlist ([`authorize`]). Client URLs are switched to `https`
//! in this mode, so a leftover `http://` cannot silently mean plaintext.

use std::time::Duration;

use aia_settings::InternalTls;
use anyhow::Context;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The certificates of this service, when it speaks mTLS.
#[derive(Clone)]
pub struct TlsMaterial {
    ca: Certificate,
    identity: Identity,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsMaterial(..)")
    }
}

impl TlsMaterial {
    /// Reads the PEM files named in settings; `None` unless `INTERNAL_TLS=mtls`.
    pub fn load(settings: &InternalTls) -> anyhow::Result<Option<Self>> {
        if let InternalTls::Mesh {
            namespace,
            trust_domain,
        } = settings
        {
            // One namespace per process: a second setting (tests start several
            // services in one process) keeps the first.
            let _ = MESH.set((namespace.clone(), trust_domain.clone()));
        }
        let InternalTls::Mtls {
            ca_file,
            cert_file,
            key_file,
        } = settings
        else {
            return Ok(None);
        };
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).with_context(|| format!("reading {what} {}", path.display()))
        };
        Ok(Some(Self {
            ca: Certificate::from_pem(read(ca_file, "TLS_CA_FILE")?),
            identity: Identity::from_pem(
                read(cert_file, "TLS_CERT_FILE")?,
                read(key_file, "TLS_KEY_FILE")?,
            ),
        }))
    }

    /// The listener side: present our certificate, require the caller's.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
            .client_auth_optional(false)
    }

    /// The client side towards `peer` (its certificate must name `peer`).
    pub fn client(&self, peer: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(peer)
    }
}

/// An endpoint towards the service `peer` at `url`: mTLS when `tls` is given (the
/// scheme becomes `https`), a 2 s connect timeout, `TCP_NODELAY`. Callers add request
/// timeouts or keep-alives as their calls need.
pub fn endpoint(url: &str, tls: Option<&TlsMaterial>, peer: &str) -> anyhow::Result<Endpoint> {
    let url = match (tls, url.strip_prefix("http://")) {
        (Some(_), Some(rest)) => format!("https://{rest}"),
        _ => url.to_owned(),
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("{url} is not a URL"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.client(peer))
            .context("TLS client configuration"),
        None => Ok(endpoint),
    }
}

/// The platform's namespace, set when this process runs with `INTERNAL_TLS=mesh` (see
/// [`authorize`]).
/// The platform's namespace and the mesh's trust domain, in mesh mode.
static MESH: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();

/// [`MESH`] borrowed.
fn mesh() -> Option<(&'static str, &'static str)> {
    MESH.get()
        .map(|(namespace, domain)| (namespace.as_str(), domain.as_str()))
}

/// The header a Linkerd inbound proxy adds with the meshed caller's verified identity
/// (and removes from whatever the caller sent).
const MESH_IDENTITY: &str = "l5d-client-id";

/// Lets the call through if its caller is one of `allowed` (any service of the
/// platform when `allowed` is empty):
///
/// - `INTERNAL_TLS=mtls`: the client certificate must name the caller;
/// - `INTERNAL_TLS=mesh`: the Linkerd proxy's `l5d-client-id` must be the caller's
///   service account in the platform's namespace (`MESH_NAMESPACE`) and the mesh's
///   trust domain (`MESH_TRUST_DOMAIN`),
///   `aia-<service>.<namespace>.serviceaccount.identity.<control plane>.<trust domain>`;
///   a call without it did not come through the mesh and is refused;
/// - `INTERNAL_TLS=off` (development; production refuses it): no identity to check.
pub fn authorize<T>(request: &tonic::Request<T>, allowed: &[&str]) -> Result<(), tonic::Status> {
    authorize_in(request, allowed, mesh(), false).map(|_| ())
}

/// [`authorize`], and which service of the platform the caller is, when its
/// certificate or mesh identity names one (`None` without internal TLS, or for a
/// certificate of the CA that names none of them).
pub fn caller<T>(
    request: &tonic::Request<T>,
    allowed: &[&str],
) -> Result<Option<&'static str>, tonic::Status> {
    authorize_in(request, allowed, mesh(), true)
}

/// The services of the platform, by the names their certificates and service
/// accounts carry.
pub const SERVICES: [&str; 4] = ["gateway", "auth", "session", "audit"];

fn refused() -> tonic::Status {
    metrics::counter!("grpc_calls_refused_total", "reason" => "caller_not_allowed").increment(1);
    tonic::Status::permission_denied("this service may not call this method")
}

/// The check of [`authorize`]; with `identify`, also the caller's platform name (a
/// certificate is parsed and matched against the names only when that is asked, or
/// when `allowed` names callers: `ValidateToken`, open to any certificate of the CA,
/// is on every service's hot path).
fn authorize_in<T>(
    request: &tonic::Request<T>,
    allowed: &[&str],
    mesh: Option<(&str, &str)>,
    identify: bool,
) -> Result<Option<&'static str>, tonic::Status> {
    let Some(certs) = request.peer_certs() else {
        let Some((platform_namespace, trust_domain)) = mesh else {
            return Ok(None);
        };
        let identity = request
            .metadata()
            .get(MESH_IDENTITY)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                metrics::counter!("grpc_calls_refused_total", "reason" => "not_meshed")
                    .increment(1);
                tonic::Status::unauthenticated("no mesh identity")
            })?;
        // `<account>.<namespace>.serviceaccount.identity.<control plane>.<trust domain>`
        let account = identity
            .split_once(".serviceaccount.identity.")
            .filter(|(_, issuer)| {
                issuer
                    .strip_suffix(trust_domain)
                    .and_then(|control_plane| control_plane.strip_suffix('.'))
                    .is_some_and(|control_plane| {
                        !control_plane.is_empty() && !control_plane.contains('.')
                    })
            })
            .and_then(|(head, _)| head.split_once('.'))
            .filter(|(_, namespace)| *namespace == platform_namespace)
            .map(|(account, _)| account);
        let service = account
            .and_then(|a| a.strip_prefix("aia-"))
            .and_then(|s| SERVICES.iter().copied().find(|known| *known == s));
        let permitted = service.is_some_and(|s| allowed.is_empty() || allowed.contains(&s));
        return if permitted {
            Ok(service)
        } else {
            Err(refused())
        };
    };
    let Some(leaf) = certs.first() else {
        return Err(tonic::Status::unauthenticated("no client certificate"));
    };
    if allowed.is_empty() && !identify {
        return Ok(None);
    }
    let cert = webpki::EndEntityCert::try_from(leaf);
    let valid_for = |name: &str| {
        cert.as_ref().is_ok_and(|cert| {
            rustls_pki_types::ServerName::try_from(name).is_ok_and(|server_name| {
                cert.verify_is_valid_for_subject_name(&server_name).is_ok()
            })
        })
    };
    let service = || {
        identify
            .then(|| SERVICES.iter().copied().find(|s| valid_for(s)))
            .flatten()
    };
    if allowed.is_empty() {
        return Ok(service());
    }
    if cert.is_err() {
        return Err(tonic::Status::unauthenticated(
            "unreadable client certificate",
        ));
    }
    if allowed.iter().any(|name| valid_for(name)) {
        Ok(service())
    } else {
        Err(refused())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(identity: Option<&str>) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        if let Some(id) = identity
            && let Ok(value) = id.parse()
        {
            request.metadata_mut().insert(MESH_IDENTITY, value);
        }
        request
    }

    /// The namespace the mesh tests run the platform in, and the trust domain.
    const MESH_TEST: Option<(&str, &str)> = Some(("aia", "cluster.local"));

    #[test]
    fn in_the_mesh_the_proxys_identity_decides() {
        let gateway = "aia-gateway.aia.serviceaccount.identity.linkerd.cluster.local";
        let auth = "aia-auth.aia.serviceaccount.identity.linkerd.cluster.local";
        // The gateway may call a gateway-only method; auth may not.
        assert!(authorize_in(&from(Some(gateway)), &["gateway"], MESH_TEST, false).is_ok());
        let denied = authorize_in(&from(Some(auth)), &["gateway"], MESH_TEST, false);
        assert_eq!(
            denied.err().map(|s| s.code()),
            Some(tonic::Code::PermissionDenied)
        );
        // A control plane in another namespace issues the same trust domain's names.
        let elsewhere = "aia-gateway.aia.serviceaccount.identity.mesh-system.cluster.local";
        assert!(authorize_in(&from(Some(elsewhere)), &["gateway"], MESH_TEST, false).is_ok());
        // Any platform service where any is allowed; nobody else.
        assert!(authorize_in(&from(Some(auth)), &[], MESH_TEST, false).is_ok());
        // The name audit binds a producer to: the service the proxy vouches for, and
        // none for a stranger's identity.
        assert_eq!(
            authorize_in(&from(Some(auth)), &[], MESH_TEST, true)
                .ok()
                .flatten(),
            Some("auth")
        );
        assert!(
            authorize_in(
                &from(Some(
                    "aia-reports.aia.serviceaccount.identity.linkerd.cluster.local"
                )),
                &[],
                MESH_TEST,
                true
            )
            .is_err()
        );
        for stranger in [
            "default.aia.serviceaccount.identity.linkerd.cluster.local",
            "aia-gateway-evil.aia.serviceaccount.identity.linkerd.cluster.local",
            // The gateway's account name in another namespace is not the gateway.
            "aia-gateway.tenant-b.serviceaccount.identity.linkerd.cluster.local",
            "aia-gateway.aia.evil.serviceaccount.identity.linkerd.cluster.local",
            // Another cluster sharing the trust anchor is not this one.
            "aia-gateway.aia.serviceaccount.identity.linkerd.other.local",
            "aia-gateway.aia.serviceaccount.identity.linkerd.evil.cluster.local",
            "aia-gateway.aia.serviceaccount.identity.cluster.local",
            "aia-gateway",
            "",
        ] {
            assert!(
                authorize_in(&from(Some(stranger)), &[], MESH_TEST, false).is_err(),
                "{stranger}"
            );
        }
        // Not through the mesh at all: refused in mesh mode, let through only in
        // development.
        let bare = authorize_in(&from(None), &["gateway"], MESH_TEST, false);
        assert_eq!(
            bare.err().map(|s| s.code()),
            Some(tonic::Code::Unauthenticated)
        );
        assert!(authorize_in(&from(None), &["gateway"], None, false).is_ok());
    }
}
