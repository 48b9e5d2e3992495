//! Rejections reach the audit store aggregated: a flood of them becomes one event per
//! reason and key per window, carrying the count.

use std::time::Duration;

use aia_proto::audit::v1::QueryRequest;
use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_testkit::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// `(reason, key) -> (events, total count)` of the stored `gateway.rejected` events.
async fn stored(stack: &Stack) -> anyhow::Result<Vec<(String, String, u64)>> {
    let mut audit = AuditServiceClient::connect(stack.audit.url()).await?;
    let events = audit
        .query(QueryRequest {
            event_type: "gateway.rejected".into(),
            limit: 500,
            ..Default::default()
        })
        .await?
        .into_inner()
        .events;
    Ok(events
        .iter()
        .filter_map(|e| e.event.as_ref())
        .filter_map(|e| serde_json::from_str::<Value>(&e.details_json).ok())
        .map(|d| {
            (
                d["reason"].as_str().unwrap_or_default().to_owned(),
                d["key"].as_str().unwrap_or_default().to_owned(),
                d["count"].as_u64().unwrap_or_default(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rejections_is_a_handful_of_counted_events() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[
        ("AUDIT_REJECTIONS_WINDOW_SECONDS", "1".into()),
        ("RATE_LIMIT_LOGIN", "2/60".into()),
    ])
    .await?;
    // Two hundred requests with a forbidden path, and six logins against a limit of two.
    for _ in 0..200 {
        let response = stack.http().get(stack.url("/v1/auth/me%00")).send().await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    for _ in 0..6 {
        stack
            .http()
            .post(stack.url("/v1/auth/login"))
            .json(&json!({"email": "x@example.com", "password": "not the password"}))
            .send()
            .await?;
    }
    let rows = aia_testkit::eventually(Duration::from_secs(15), || async {
        let rows = stored(&stack).await?;
        let total =
            |reason: &str| -> u64 { rows.iter().filter(|r| r.0 == reason).map(|r| r.2).sum() };
        let complete = total("validation") == 200 && total("rate_limit") == 4;
        Ok(complete.then_some(rows))
    })
    .await?;
    // Counted, not copied: a few events (one per window), never one per request.
    let validation: Vec<_> = rows.iter().filter(|r| r.0 == "validation").collect();
    assert!(validation.len() <= 5, "{validation:?}");
    assert!(
        validation.iter().all(|r| r.1 == "127.0.0.1"),
        "{validation:?}"
    );
    assert!(
        rows.iter()
            .filter(|r| r.0 == "rate_limit")
            .all(|r| r.1 == "login:ip:127.0.0.1"),
        "{rows:?}"
    );
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ipv6_network_is_one_key() -> anyhow::Result<()> {
    // Rejections keyed per address would let one /64 (2^64 addresses, what one
    // subscriber gets) write an event per request; keyed as the limiter keys it, they
    // are counted under the network.
    let stack = Stack::start_with(&[
        ("AUDIT_REJECTIONS_WINDOW_SECONDS", "1".into()),
        ("TRUSTED_PROXIES", "127.0.0.1/32".into()),
    ])
    .await?;
    for n in 1..=50 {
        let response = stack
            .http()
            .get(stack.url("/v1/auth/me%00"))
            .header("x-forwarded-for", format!("2001:db8:1:2::{n:x}"))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    }
    let rows = aia_testkit::eventually(Duration::from_secs(15), || async {
        let rows = stored(&stack).await?;
        let total: u64 = rows.iter().map(|r| r.2).sum();
        Ok((total >= 50).then_some(rows))
    })
    .await?;
    assert!(
        rows.iter()
            .all(|r| r.0 == "validation" && r.1 == "2001:db8:1:2::/64"),
        "{rows:?}"
    );
    assert!(rows.len() <= 5, "{rows:?}");
    stack.stop().await;
    Ok(())
}
