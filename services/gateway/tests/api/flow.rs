//! The walking skeleton's flow, end to end.

use std::time::Duration;

use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_proto::audit::v1::{Outcome, QueryRequest};
use aia_testkit::{Stack, eventually};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, assert_problem, email, field, login, me_status, register, signed_in,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_me_refresh_logout_and_then_me_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let email = email();
    register(&stack, &email).await?;

    let response = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email.to_uppercase(), "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let first: Value = response.json().await?;
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 900);
    let access = field(&first, "access_token");
    let refresh = field(&first, "refresh_token");
    assert_eq!(refresh.len(), 43, "256 bits, base64url");

    let me: Value = stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .bearer_auth(access)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["email"], email);
    assert_eq!(me["roles"], json!(["user"]));

    let response = stack
        .http()
        .post(stack.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let second: Value = response.json().await?;
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_ne!(second["access_token"], first["access_token"]);
    let access2 = field(&second, "access_token");
    assert_eq!(me_status(&stack, access2).await?, StatusCode::OK);
    // A retry of the old refresh token (the response was lost) gets the same pair,
    // access token included, within the grace window.
    let retry: Value = stack
        .http()
        .post(stack.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(retry["refresh_token"], second["refresh_token"]);
    assert_eq!(retry["access_token"], second["access_token"]);

    let response = stack
        .http()
        .post(stack.url("/v1/auth/logout"))
        .bearer_auth(access2)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.headers().contains_key("clear-site-data"));

    // The token used to log out, and the older one of the same session, are refused.
    assert_eq!(me_status(&stack, access2).await?, StatusCode::UNAUTHORIZED);
    assert_eq!(me_status(&stack, access).await?, StatusCode::UNAUTHORIZED);
    // And the session's refresh token is dead.
    let response = stack
        .http()
        .post(stack.url("/v1/auth/refresh"))
        .json(&json!({"refresh_token": second["refresh_token"]}))
        .send()
        .await?;
    assert_problem(response, StatusCode::UNAUTHORIZED).await?;

    // Every step reached the audit trail.
    let audit = AuditServiceClient::connect(stack.audit.url()).await?;
    let types = eventually(Duration::from_secs(10), || {
        let mut audit = audit.clone();
        async move {
            let events = audit
                .query(QueryRequest {
                    limit: 100,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .events;
            let seen: Vec<(String, i32)> = events
                .into_iter()
                .filter_map(|e| e.event)
                .map(|e| (e.event_type, e.outcome))
                .collect();
            let (ok, failed) = (Outcome::Success as i32, Outcome::Failure as i32);
            let wanted = [
                ("auth.register", ok),
                ("auth.login", ok),
                ("session.refresh", ok),
                ("session.logout", ok),
                ("session.refresh", failed),
            ];
            Ok(wanted
                .iter()
                .all(|(t, o)| seen.iter().any(|(st, so)| st == t && so == o))
                .then_some(seen))
        }
    })
    .await?;
    assert_eq!(
        types.iter().filter(|(t, _)| t == "auth.login").count(),
        1,
        "{types:?}"
    );
    assert!(types.iter().all(|(t, _)| !t.is_empty()));
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_racing_refreshes_of_one_token_all_get_the_one_successor_pair() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let tokens = signed_in(&stack).await?;
    let refresh = field(&tokens, "refresh_token").to_owned();
    let attempts = (0..50).map(|_| {
        let request = stack
            .http()
            .post(stack.url("/v1/auth/refresh"))
            .json(&json!({"refresh_token": refresh}));
        async move {
            let response = request.send().await?;
            anyhow::ensure!(
                response.status() == StatusCode::OK,
                "status {}",
                response.status()
            );
            let body: Value = response.json().await?;
            Ok((
                field(&body, "access_token").to_owned(),
                field(&body, "refresh_token").to_owned(),
            ))
        }
    });
    let pairs: Vec<(String, String)> = futures::future::join_all(attempts)
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    assert!(
        pairs.iter().all(|p| *p == pairs[0]),
        "one rotation, one pair"
    );
    assert_ne!(pairs[0].1, refresh);
    // And that pair works.
    assert_eq!(me_status(&stack, &pairs[0].0).await?, StatusCode::OK);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_email_and_a_wrong_password_get_identical_answers() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let known = email();
    register(&stack, &known).await?;
    let mut answers = Vec::new();
    for (email, password) in [
        (known.as_str(), "wrong password entirely"),
        ("nobody@example.com", PASSWORD),
    ] {
        let response = stack
            .http()
            .post(stack.url("/v1/auth/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await?;
        let status = response.status();
        let www = response.headers().get("www-authenticate").cloned();
        answers.push((status, www, response.text().await?));
    }
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED);
    assert_eq!(answers[0], answers[1]);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_a_taken_email_looks_like_success_and_keeps_the_first_password()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let email = email();
    let first = stack
        .http()
        .post(stack.url("/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    let (status, body) = (first.status(), first.text().await?);
    let second = stack
        .http()
        .post(stack.url("/v1/auth/register"))
        .json(&json!({"email": email, "password": "another long password"}))
        .send()
        .await?;
    assert_eq!((second.status(), second.text().await?), (status, body));
    // The account still belongs to whoever registered first.
    login(&stack, &email).await?;
    let response = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": "another long password"}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_metrics_answer_on_every_admin_port() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let http = stack.http();
    for service in [stack.audit, stack.session, stack.auth, stack.gateway] {
        assert_eq!(
            http.get(service.admin_url("/healthz"))
                .send()
                .await?
                .status(),
            StatusCode::OK
        );
        assert_eq!(
            http.get(service.admin_url("/readyz"))
                .send()
                .await?
                .status(),
            StatusCode::OK
        );
        let metrics = http.get(service.admin_url("/metrics")).send().await?;
        assert_eq!(metrics.status(), StatusCode::OK);
    }
    assert_eq!(
        http.get(stack.url("/healthz")).send().await?.status(),
        StatusCode::OK
    );
    assert_eq!(
        http.get(stack.url("/readyz")).send().await?.status(),
        StatusCode::OK
    );
    // After a login, the counters and latency histograms show up: HTTP at the
    // gateway, gRPC at each service, login, session and rate-limit decisions.
    crate::helpers::signed_in(&stack).await?;
    let text = http
        .get(stack.auth.admin_url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    for needle in [
        "gateway_requests_total",
        "gateway_request_duration_seconds",
        "gateway_rate_limit_decisions_total{policy=\"login\",decision=\"allowed\"}",
        "grpc_server_duration_seconds_bucket{method=\"/aia.auth.v1.AuthService/Login\",le=",
        "gateway_request_duration_seconds_bucket{",
        "grpc_server_requests_total{method=\"/aia.session.v1.SessionService/CreateSession\",code=\"0\"}",
        "auth_login_total",
        "session_created_total",
    ] {
        assert!(text.contains(needle), "no {needle} in:\n{text}");
    }
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_share_one_metric_series() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let http = stack.http();
    // Any token is a method to HTTP; were each its own label value, a client could
    // grow the gateway's metrics without bound.
    for method in ["BREWCOFFEE", "BREWTEA", "GET"] {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let answer = http
            .request(method.clone(), stack.url("/healthz"))
            .send()
            .await?;
        let expected = if method == reqwest::Method::GET {
            StatusCode::OK
        } else {
            StatusCode::METHOD_NOT_ALLOWED
        };
        assert_eq!(answer.status(), expected, "{method}");
    }
    let text = http
        .get(stack.gateway.admin_url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(!text.contains("BREW"), "{text}");
    for needle in [
        "gateway_requests_total{route=\"/healthz\",method=\"other\",status=\"405\"}",
        "gateway_requests_total{route=\"/healthz\",method=\"GET\",status=\"200\"}",
    ] {
        assert!(text.contains(needle), "no {needle} in:\n{text}");
    }
    stack.stop().await;
    Ok(())
}
