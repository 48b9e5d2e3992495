//! Revocation reaches every gateway fast, costs no round trip in the steady state,
//! and fails closed when the session service is gone.

use std::time::{Duration, Instant};

use aia_testkit::proxy::TcpProxy;
use aia_testkit::{Stack, eventually};
use reqwest::StatusCode;

use crate::helpers::{email, field, login, me_status, register, signed_in};

/// The value of a counter in Prometheus text, 0 if absent.
async fn counter(stack: &Stack, metrics_url: &str, series: &str) -> anyhow::Result<f64> {
    let text = stack.http().get(metrics_url).send().await?.text().await?;
    Ok(text
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0))
}

const MEMORY: &str = "gateway_revocation_checks_total{source=\"memory\"}";
const SESSION: &str = "gateway_revocation_checks_total{source=\"session\"}";

async fn me_on(
    stack: &Stack,
    gateway: &aia_testkit::Addrs,
    token: &str,
) -> anyhow::Result<StatusCode> {
    Ok(stack
        .http()
        .get(format!("{}/v1/auth/me", gateway.url()))
        .bearer_auth(token)
        .send()
        .await?
        .status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_at_one_gateway_is_refused_at_another_within_a_second_without_round_trips()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let second = stack.add_gateway().await?;
    let tokens = signed_in(&stack).await?;
    let access = field(&tokens, "access_token").to_owned();
    let metrics = second.admin_url("/metrics");
    // Both gateways have their snapshot once checks are answered from memory.
    eventually(Duration::from_secs(5), || async {
        let before = counter(&stack, &metrics, MEMORY).await?;
        let (a, b) = (
            me_status(&stack, &access).await?,
            me_on(&stack, &second, &access).await?,
        );
        let after = counter(&stack, &metrics, MEMORY).await?;
        Ok((a == StatusCode::OK && b == StatusCode::OK && after >= before + 2.0).then_some(()))
    })
    .await?;

    let asked_session = counter(&stack, &metrics, SESSION).await?;
    for _ in 0..20 {
        assert_eq!(me_on(&stack, &second, &access).await?, StatusCode::OK);
    }
    assert_eq!(
        counter(&stack, &metrics, SESSION).await?,
        asked_session,
        "steady state asked the session service"
    );

    crate::helpers::logged_out(&stack, &access).await?;
    let logged_out = Instant::now();
    let refused_after = eventually(Duration::from_secs(5), || async {
        let status = me_on(&stack, &second, &access).await?;
        Ok((status == StatusCode::UNAUTHORIZED).then(|| logged_out.elapsed()))
    })
    .await?;
    assert!(
        refused_after < Duration::from_secs(1),
        "took {refused_after:?}"
    );
    assert_eq!(
        counter(&stack, &metrics, SESSION).await?,
        asked_session,
        "the refusal came from memory"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_routes_answer_503_once_the_session_service_is_gone() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let tokens = signed_in(&stack).await?;
    let access = field(&tokens, "access_token").to_owned();
    assert_eq!(me_status(&stack, &access).await?, StatusCode::OK);
    stack.stop_service("session").await;
    // Within the staleness bound the in-memory copy may still answer; after it, the
    // gateway must refuse with 503, never let the token through on a guess.
    let status = eventually(Duration::from_secs(10), || async {
        let status = me_status(&stack, &access).await?;
        assert!(
            matches!(status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
            "{status}"
        );
        Ok((status == StatusCode::SERVICE_UNAVAILABLE).then_some(status))
    })
    .await?;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Routes that do not need the session service keep working.
    assert_eq!(
        stack
            .http()
            .get(stack.url("/healthz"))
            .send()
            .await?
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        stack
            .http()
            .get(stack.url("/.well-known/jwks.json"))
            .send()
            .await?
            .status(),
        StatusCode::OK
    );
    stack.stop().await;
    Ok(())
}

/// A second gateway that hears from session through a proxy the test can hold, and
/// that trusts a silent stream for 30 s: while its stream is held, its copy stays
/// "fresh" and gets no news, so only what the gateway itself records can refuse a
/// session.
async fn gateway_behind_a_proxy(
    stack: &mut Stack,
) -> anyhow::Result<(TcpProxy, aia_testkit::Addrs)> {
    let proxy = TcpProxy::start(stack.session.main).await?;
    let gateway = stack
        .add_gateway_with(&[
            ("SESSION_GRPC_URL", format!("http://{}", proxy.addr)),
            ("REVOCATION_STALE_AFTER_MS", "30000".to_owned()),
        ])
        .await?;
    Ok((proxy, gateway))
}

/// Waits until `gateway` accepts `token` from its in-memory copy (it has the
/// snapshot).
async fn answered_from_memory(
    stack: &Stack,
    gateway: &aia_testkit::Addrs,
    token: &str,
) -> anyhow::Result<()> {
    let metrics = gateway.admin_url("/metrics");
    eventually(Duration::from_secs(5), || async {
        let before = counter(stack, &metrics, MEMORY).await?;
        let status = me_on(stack, gateway, token).await?;
        let after = counter(stack, &metrics, MEMORY).await?;
        Ok((status == StatusCode::OK && after > before).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_that_logged_a_session_out_refuses_it_before_the_stream_says_so()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let (proxy, gateway) = gateway_behind_a_proxy(&mut stack).await?;
    let metrics = gateway.admin_url("/metrics");
    let tokens = signed_in(&stack).await?;
    let access = field(&tokens, "access_token").to_owned();
    answered_from_memory(&stack, &gateway, &access).await?;

    proxy.pause();
    let asked_session = counter(&stack, &metrics, SESSION).await?;
    let response = stack
        .http()
        .post(format!("{}/v1/auth/logout", gateway.url()))
        .bearer_auth(&access)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    // At once, with the stream still held: refused, from memory.
    assert_eq!(
        me_on(&stack, &gateway, &access).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        counter(&stack, &metrics, SESSION).await?,
        asked_session,
        "the refusal came from memory"
    );
    proxy.resume();
    stack.stop().await;
    Ok(())
}

/// The id of the session `token` belongs to, as `GET /v1/auth/sessions` names it.
async fn current_session(stack: &Stack, token: &str) -> anyhow::Result<String> {
    let listed: Vec<serde_json::Value> = stack
        .http()
        .get(stack.url("/v1/auth/sessions"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    listed
        .iter()
        .find(|s| s["current"] == true)
        .and_then(|s| s["id"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("no current session in {listed:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_ended_at_a_gateway_are_refused_there_before_the_stream_says_so()
-> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    // The stream (the gateway's first connection, made at start) is held below while
    // the calls the test makes pass.
    let (proxy, gateway) = gateway_behind_a_proxy(&mut stack).await?;
    eventually(Duration::from_secs(5), || async {
        Ok((proxy.accepted() >= 1).then_some(()))
    })
    .await?;
    let stream_connections = proxy.accepted();
    let metrics = gateway.admin_url("/metrics");
    let email = email();
    register(&stack, &email).await?;
    let [laptop, phone, tablet] = [
        login(&stack, &email).await?,
        login(&stack, &email).await?,
        login(&stack, &email).await?,
    ]
    .map(|tokens| field(&tokens, "access_token").to_owned());
    answered_from_memory(&stack, &gateway, &phone).await?;
    let phone_sid = current_session(&stack, &phone).await?;
    proxy.hold_first(stream_connections);

    // Another of the caller's sessions, ended at this gateway: refused here at once.
    let ended = stack
        .http()
        .delete(format!("{}/v1/auth/sessions/{phone_sid}", gateway.url()))
        .bearer_auth(&laptop)
        .send()
        .await?;
    assert_eq!(ended.status(), StatusCode::NO_CONTENT);
    let asked_session = counter(&stack, &metrics, SESSION).await?;
    assert_eq!(
        me_on(&stack, &gateway, &phone).await?,
        StatusCode::UNAUTHORIZED
    );
    // Logout-all at this gateway: the caller's own session is refused here at once.
    let all = stack
        .http()
        .post(format!("{}/v1/auth/logout-all", gateway.url()))
        .bearer_auth(&tablet)
        .send()
        .await?;
    assert_eq!(all.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        me_on(&stack, &gateway, &tablet).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        counter(&stack, &metrics, SESSION).await?,
        asked_session,
        "the refusals came from memory"
    );
    proxy.resume();
    stack.stop().await;
    Ok(())
}
