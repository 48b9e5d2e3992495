//! A throwaway certificate authority for mTLS tests (rcgen): a CA, and certificates
//! whose DNS name is a service identity, written as PEM files into a temporary folder.

use std::path::PathBuf;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and the folder its files go to.
pub struct TestPki {
    dir: PathBuf,
    ca_file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    /// A new CA (each call makes an unrelated one).
    pub fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("aia-pki-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "aia test CA");
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, cert.pem()).context("writing the CA")?;
        Ok(Self {
            dir,
            ca_file,
            issuer: Issuer::new(params, key),
        })
    }

    /// Issues a certificate for the identity `name` (its DNS name); returns the paths
    /// of the certificate and key files.
    pub fn issue(&self, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        let params = CertificateParams::new(vec![name.to_owned()])?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let (cert_file, key_file) = (
            self.dir.join(format!("{name}.pem")),
            self.dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_file, cert.pem())?;
        std::fs::write(&key_file, key.serialize_pem())?;
        Ok((cert_file, key_file))
    }

    /// The CA's PEM file.
    pub fn ca_file(&self) -> PathBuf {
        self.ca_file.clone()
    }

    /// The settings of a service called `name` speaking mTLS under this CA.
    pub fn settings(&self, name: &str) -> anyhow::Result<aia_settings::InternalTls> {
        let (cert_file, key_file) = self.issue(name)?;
        Ok(aia_settings::InternalTls::Mtls {
            ca_file: self.ca_file(),
            cert_file,
            key_file,
        })
    }

    /// The environment of a service called `name` speaking mTLS under this CA.
    pub fn env(&self, name: &str) -> anyhow::Result<Vec<(&'static str, String)>> {
        let (cert_file, key_file) = self.issue(name)?;
        Ok(vec![
            ("INTERNAL_TLS", "mtls".to_owned()),
            ("TLS_CA_FILE", self.ca_file.display().to_string()),
            ("TLS_CERT_FILE", cert_file.display().to_string()),
            ("TLS_KEY_FILE", key_file.display().to_string()),
        ])
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
