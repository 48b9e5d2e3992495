//! The signing key, from settings.

use aia_settings::{AppEnv, SigningKeySource};
use aia_tokens::SigningKey;
use anyhow::Context;
use secrecy::ExposeSecret;

/// Loads the configured key, or generates one in development (and says so).
pub fn load(source: &SigningKeySource, env: AppEnv) -> anyhow::Result<SigningKey> {
    match source {
        SigningKeySource::File(path) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading JWT_SIGNING_KEY_FILE {}", path.display()))?;
            SigningKey::from_pkcs8_pem(&pem).context("JWT_SIGNING_KEY_FILE")
        }
        SigningKeySource::Pem(pem) => {
            SigningKey::from_pkcs8_pem(pem.expose_secret()).context("JWT_SIGNING_KEY")
        }
        SigningKeySource::Ephemeral => {
            anyhow::ensure!(
                !env.is_production(),
                "production needs JWT_SIGNING_KEY_FILE"
            );
            let key = SigningKey::generate()?;
            tracing::warn!(
                kid = key.kid(),
                "DEVELOPMENT: generated an ephemeral signing key; tokens die with this process. \
                 Set JWT_SIGNING_KEY_FILE to keep them."
            );
            Ok(key)
        }
    }
}
