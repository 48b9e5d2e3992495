//! One login is one trace: the gateway's request span continues the caller's
//! `traceparent`, auth and session continue it from the gRPC metadata, and the audit
//! service stores each event in a span of the trace that produced it (carried through
//! the outbox). Spans go over OTLP/gRPC to a test receiver, as to a Collector.

use std::time::Duration;

use aia_testkit::{Stack, eventually, otlp::ReceivedSpan};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, admin, email, field, register};

fn attribute<'a>(span: &'a ReceivedSpan, key: &str) -> &'a str {
    span.attributes.get(key).map_or("", String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_login_is_one_trace_across_the_four_services() -> anyhow::Result<()> {
    let sink = aia_testkit::otlp::OtlpSink::start().await?;
    aia_telemetry::init_tracing("tests", false, Some(&sink.endpoint));
    // 127.0.0.1 (this test's client) is the deployment's proxy; 127.0.0.9 is not.
    let stack = Stack::start_with(&[("TRUSTED_PROXIES", "127.0.0.1/32".into())]).await?;
    let ada = email();
    register(&stack, &ada).await?;

    let trace = uuid::Uuid::new_v4().simple().to_string();
    let caller_span = "00f067aa0ba902b7";
    // The proxy's context says "not sampled": the gateway traces the login anyway.
    let response = stack
        .http()
        .post(stack.url("/v1/auth/login"))
        .header("traceparent", format!("00-{trace}-{caller_span}-00"))
        .json(&json!({"email": ada, "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);

    let is_gateway =
        |s: &ReceivedSpan| attribute(s, "url.path") == "/v1/auth/login" && s.name == "HTTP POST";
    let is_rpc = |s: &ReceivedSpan, method: &str| attribute(s, "rpc.method") == method;
    let is_stored = |s: &ReceivedSpan, kind: &str| {
        s.name == "audit.store" && attribute(s, "event_type") == kind
    };
    let spans = eventually(Duration::from_secs(20), || {
        let (sink, trace) = (&sink, &trace);
        async move {
            tokio::task::spawn_blocking(aia_telemetry::otel::flush).await?;
            let spans = sink.trace(trace);
            let complete = spans.iter().any(is_gateway)
                && spans
                    .iter()
                    .any(|s| is_rpc(s, "/aia.auth.v1.AuthService/Login"))
                && spans
                    .iter()
                    .any(|s| is_rpc(s, "/aia.session.v1.SessionService/CreateSession"))
                && spans.iter().any(|s| is_stored(s, "auth.login"));
            Ok(complete.then_some(spans))
        }
    })
    .await
    .map_err(|e| {
        let names: Vec<String> = sink
            .trace(&trace)
            .iter()
            .map(|s| format!("{} {:?}", s.name, s.attributes))
            .collect();
        anyhow::anyhow!("{e}: the trace has {names:#?}")
    })?;

    // One tree: the gateway's span hangs from the caller's, every other span from a
    // span of this trace.
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    for span in &spans {
        if is_gateway(span) {
            assert_eq!(span.parent_span_id, caller_span, "{span:?}");
        } else {
            assert!(
                ids.contains(&span.parent_span_id.as_str()),
                "{} has a parent outside the trace: {span:?}",
                span.name
            );
        }
        assert_eq!(span.service, "aia-tests");
    }
    // Auth's call is a child of the gateway's request span, session's of auth's work.
    let gateway = spans
        .iter()
        .find(|s| is_gateway(s))
        .map(|s| s.span_id.clone());
    let login = spans
        .iter()
        .find(|s| is_rpc(s, "/aia.auth.v1.AuthService/Login"))
        .map(|s| s.parent_span_id.clone());
    assert_eq!(login, gateway);

    // A client's own traceparent (not from a trusted proxy) is not continued: the
    // login gets a trace of its own, with the client's context as a link.
    let chosen = uuid::Uuid::new_v4().simple().to_string();
    let response = crate::helpers::from_ip(9)?
        .post(stack.url("/v1/auth/login"))
        .header("traceparent", format!("00-{chosen}-{caller_span}-01"))
        .json(&json!({"email": ada, "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    let linked = eventually(Duration::from_secs(20), || {
        let (sink, chosen) = (&sink, &chosen);
        async move {
            tokio::task::spawn_blocking(aia_telemetry::otel::flush).await?;
            Ok(sink
                .spans()
                .into_iter()
                .find(|s| is_gateway(s) && s.links.contains(chosen)))
        }
    })
    .await?;
    assert_ne!(linked.trace_id, chosen);
    assert!(sink.trace(&chosen).is_empty(), "{:?}", sink.trace(&chosen));

    // The stored event names its trace, for an admin to follow.
    let admin = admin(&stack).await?;
    let page: Value = stack
        .http()
        .get(stack.url("/v1/admin/security-events?type=auth.login&outcome=success&limit=50"))
        .bearer_auth(field(&admin, "access_token"))
        .send()
        .await?
        .json()
        .await?;
    let traced = page["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["trace_id"] == trace.as_str()));
    assert!(traced, "{page}");
    stack.stop().await;
    Ok(())
}
