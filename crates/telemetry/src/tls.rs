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

/// Lets the call through if its caller is one of `allowed` (any service of the
/// platform CA when `allowed` is empty). Without TLS on the connection there is no
/// identity to check: that is development (`INTERNAL_TLS=off`, which production
/// refuses) or a mesh that authenticated the caller already.
pub fn authorize<T>(request: &tonic::Request<T>, allowed: &[&str]) -> Result<(), tonic::Status> {
    let Some(certs) = request.peer_certs() else {
        return Ok(());
    };
    let Some(leaf) = certs.first() else {
        return Err(tonic::Status::unauthenticated("no client certificate"));
    };
    if allowed.is_empty() {
        return Ok(());
    }
    let cert = webpki::EndEntityCert::try_from(leaf)
        .map_err(|_| tonic::Status::unauthenticated("unreadable client certificate"))?;
    let permitted = allowed.iter().any(|name| {
        rustls_pki_types::ServerName::try_from(*name)
            .is_ok_and(|server_name| cert.verify_is_valid_for_subject_name(&server_name).is_ok())
    });
    if permitted {
        Ok(())
    } else {
        metrics::counter!("grpc_calls_refused_total", "reason" => "caller_not_allowed")
            .increment(1);
        Err(tonic::Status::permission_denied(
            "this service may not call this method",
        ))
    }
}
