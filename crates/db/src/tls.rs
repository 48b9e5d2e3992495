//! Postgres over TLS (rustls), for `DATABASE_URL`s that ask for it.
//!
//! diesel-async connects without TLS on its own. A URL with `sslmode=require`,
//! `verify-ca` or `verify-full` is connected here instead, always verifying the
//! server's certificate and host name (rustls knows no unverified mode, so `require`
//! is as strict as `verify-full`). The trusted roots are the file named by
//! `sslrootcert=` in the URL (as libpq does), else the system's roots.

use std::sync::Arc;

use anyhow::Context;
use diesel::ConnectionResult;
use diesel_async::AsyncPgConnection;
use futures::FutureExt;
use futures::future::BoxFuture;

/// What a URL asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct TlsUrl {
    /// The URL for tokio-postgres: `sslmode=require`, no `sslrootcert`.
    pub url: String,
    /// The CA file to trust, if named.
    pub root_cert: Option<String>,
}

/// `Some` when `url` asks for TLS.
pub fn parse(url: &str) -> Option<TlsUrl> {
    let (base, query) = url.split_once('?')?;
    let mut tls = false;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslmode", "require" | "verify-ca" | "verify-full")) => tls = true,
            Some(("sslmode", _)) => {}
            Some(("sslrootcert", path)) => root_cert = Some(path.to_owned()),
            _ => kept.push(pair),
        }
    }
    if !tls {
        return None;
    }
    kept.push("sslmode=require");
    Some(TlsUrl {
        url: format!("{base}?{}", kept.join("&")),
        root_cert,
    })
}

fn client_config(root_cert: Option<&str>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading sslrootcert {path}"))?;
            for cert in rustls_pki_types::pem::PemObject::pem_slice_iter(&pem) {
                roots
                    .add(cert.context("sslrootcert is not PEM")?)
                    .context("sslrootcert")?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    anyhow::ensure!(
        !roots.is_empty(),
        "no trusted root certificates for the database"
    );
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects to `url`, over TLS when it asks for it.
pub fn establish(url: &str) -> BoxFuture<'_, ConnectionResult<AsyncPgConnection>> {
    async move {
        use diesel_async::AsyncConnection;
        let Some(tls) = parse(url) else {
            return AsyncPgConnection::establish(url).await;
        };
        let bad = |e: anyhow::Error| diesel::ConnectionError::BadConnection(format!("{e:#}"));
        let config = client_config(tls.root_cert.as_deref()).map_err(bad)?;
        let (client, connection) = tls
            .url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| bad(e.into()))?
            .connect(tokio_postgres_rustls::MakeRustlsConnect::new(config))
            .await
            .map_err(|e| bad(anyhow::Error::new(e).context("TLS connection to Postgres")))?;
        AsyncPgConnection::try_from_client_and_connection(client, connection).await
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_urls_that_ask_for_tls_get_it() {
        assert_eq!(parse("postgres://h/db"), None);
        assert_eq!(parse("postgres://h/db?sslmode=prefer"), None);
        assert_eq!(
            parse("postgres://h/db?application_name=x&sslmode=verify-full&sslrootcert=/ca.pem"),
            Some(TlsUrl {
                url: "postgres://h/db?application_name=x&sslmode=require".into(),
                root_cert: Some("/ca.pem".into())
            })
        );
    }
}
