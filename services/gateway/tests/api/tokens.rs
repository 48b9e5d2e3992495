//! Forged and foreign tokens are refused at the gateway; the JWKS verifies real ones.

use aia_testkit::Stack;
use aia_tokens::{AccessClaims, Jwks, SigningKey, Verifier};
use reqwest::StatusCode;

use crate::helpers::{field, me_status, signed_in};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jwks_verifies_issued_tokens_offline() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let tokens = signed_in(&stack).await?;
    let response = stack
        .http()
        .get(stack.url("/.well-known/jwks.json"))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let jwks: Jwks = response.json().await?;
    assert_eq!(jwks.keys.len(), 1);
    assert_eq!(jwks.keys[0].kty, "OKP");
    assert_eq!(jwks.keys[0].alg, "EdDSA");
    let verifier = Verifier::new(&jwks, "http://localhost:8080", "aia");
    let claims = verifier.verify(field(&tokens, "access_token"))?;
    assert_eq!(claims.roles, vec!["user".to_owned()]);
    assert_eq!(claims.exp - claims.iat, 900);
    // When the gateway last fetched the set, for the staleness alert
    // (`AiaGatewaySigningKeysStale`: a withdrawn key is still taken where this is old).
    let metrics = crate::helpers::metrics(&stack).await?;
    let fetched = metrics
        .lines()
        .find_map(|line| line.strip_prefix("gateway_signing_keys_fetched_timestamp_seconds "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no fetch time in the metrics"))?;
    let age = chrono::Utc::now().timestamp() as f64 - fetched;
    assert!((0.0..120.0).contains(&age), "fetched {age} s ago");
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_tokens_are_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let tokens = signed_in(&stack).await?;
    let real = field(&tokens, "access_token");
    let claims: AccessClaims = {
        let jwks: Jwks = stack
            .http()
            .get(stack.url("/.well-known/jwks.json"))
            .send()
            .await?
            .json()
            .await?;
        Verifier::new(&jwks, "http://localhost:8080", "aia").verify(real)?
    };
    // Same claims, signed by an attacker's key.
    let attacker = SigningKey::generate()?;
    let forged = attacker.sign(&claims)?;
    assert_eq!(me_status(&stack, &forged).await?, StatusCode::UNAUTHORIZED);
    // alg=none with the real claims.
    let parts: Vec<&str> = real.split('.').collect();
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiYXQrand0In0.{}.", parts[1]);
    assert_eq!(me_status(&stack, &none).await?, StatusCode::UNAUTHORIZED);
    // The real token with its signature cut off, or with a flipped bit.
    assert_eq!(
        me_status(&stack, &format!("{}.{}.", parts[0], parts[1])).await?,
        StatusCode::UNAUTHORIZED
    );
    let mut sig = parts[2].to_owned();
    let flipped = if sig.ends_with('A') { 'B' } else { 'A' };
    sig.pop();
    sig.push(flipped);
    assert_eq!(
        me_status(&stack, &format!("{}.{}.{sig}", parts[0], parts[1])).await?,
        StatusCode::UNAUTHORIZED
    );
    // A refresh token is not an access token.
    assert_eq!(
        me_status(&stack, field(&tokens, "refresh_token")).await?,
        StatusCode::UNAUTHORIZED
    );
    // The real one still works.
    assert_eq!(me_status(&stack, real).await?, StatusCode::OK);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_mode_works_end_to_end_and_accepts_no_other_algorithm() -> anyhow::Result<()> {
    let (stack, secret) = crate::helpers::hs256_stack().await?;
    let tokens = signed_in(&stack).await?;
    let access = field(&tokens, "access_token");
    assert_eq!(me_status(&stack, access).await?, StatusCode::OK);
    assert!(Verifier::kid_of(access).is_some_and(|kid| kid.starts_with("hs-")));
    // The secret is never published.
    let jwks: serde_json::Value = stack
        .http()
        .get(stack.url("/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(jwks, serde_json::json!({"keys": []}));

    let key = aia_tokens::HmacKey::new(secret.as_bytes());
    let claims = Verifier::hs256(&key, "http://localhost:8080", "aia").verify(access)?;
    // EdDSA is not accepted in this deployment, whatever key signed it.
    let ed = SigningKey::generate()?;
    assert_eq!(
        me_status(&stack, &ed.sign(&claims)?).await?,
        StatusCode::UNAUTHORIZED
    );
    // Nor HS256 under another secret.
    let other =
        aia_tokens::HmacKey::new(b"not the deployment's secret, but long enough to look real");
    assert_eq!(
        me_status(&stack, &other.sign(&claims)?).await?,
        StatusCode::UNAUTHORIZED
    );
    stack.stop().await;
    Ok(())
}
