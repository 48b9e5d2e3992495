//! Risk scores and detectors, driven by the events producers would send.

use aia_proto::audit::v1::{
    Event, Outcome, QueryRequest, RecordBatchRequest, StoredEvent, VerifyChainRequest,
};

use crate::{event, spawn};

fn login(outcome: Outcome, subject: &str, ip: &str, agent: &str) -> Event {
    Event {
        outcome: outcome.into(),
        actor: String::new(),
        subject: subject.to_owned(),
        source_ip: ip.to_owned(),
        user_agent: agent.to_owned(),
        producer: "auth".into(),
        details_json: if outcome == Outcome::Failure {
            r#"{"reason":"wrong_password"}"#.into()
        } else {
            "{}".into()
        },
        ..event("auth.login")
    }
}

async fn record(audit: &mut crate::Audit, events: Vec<Event>) -> anyhow::Result<()> {
    audit
        .client
        .record_batch(RecordBatchRequest { events })
        .await?;
    Ok(())
}

async fn query(audit: &mut crate::Audit, q: QueryRequest) -> anyhow::Result<Vec<StoredEvent>> {
    Ok(audit.client.query(q).await?.into_inner().events)
}

async fn alerts(audit: &mut crate::Audit, alert: &str) -> anyhow::Result<Vec<StoredEvent>> {
    query(
        audit,
        QueryRequest {
            event_type: alert.to_owned(),
            ..QueryRequest::default()
        },
    )
    .await
}

fn risk_of(events: &[StoredEvent], id: &str) -> (i32, Vec<String>) {
    events
        .iter()
        .find(|e| e.event.as_ref().is_some_and(|e| e.id == id))
        .map(|e| (e.risk_score, e.risk_reasons.clone()))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_scored_by_their_history() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    let first = login(Outcome::Success, "ada", "198.51.100.1", "firefox");
    let same = login(Outcome::Success, "ada", "198.51.100.1", "firefox");
    let elsewhere = login(Outcome::Success, "ada", "203.0.113.66", "curl");
    let ids = [first.id.clone(), same.id.clone(), elsewhere.id.clone()];
    record(&mut audit, vec![first, same, elsewhere]).await?;
    let all = query(&mut audit, QueryRequest::default()).await?;
    assert_eq!(risk_of(&all, &ids[0]), (0, vec![]), "a first login");
    assert_eq!(risk_of(&all, &ids[1]), (0, vec![]), "a known IP and agent");
    assert_eq!(
        risk_of(&all, &ids[2]),
        (45, vec!["new_ip".to_owned(), "new_user_agent".to_owned()])
    );
    // Only the risky one passes a risk filter.
    let risky = query(
        &mut audit,
        QueryRequest {
            min_risk: 40,
            ..QueryRequest::default()
        },
    )
    .await?;
    assert_eq!(risky.len(), 1);
    assert!(
        audit
            .client
            .query(QueryRequest {
                min_risk: 101,
                ..QueryRequest::default()
            })
            .await
            .is_err_and(|s| s.code() == tonic::Code::InvalidArgument)
    );
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_a_second_factor_or_with_a_stolen_session_is_brute_force() -> anyhow::Result<()> {
    // With the password known, the guessing moves to the second factor (auth.mfa),
    // or, with a stolen session, to the password a change or a new key asks for:
    // those failures count as the login form's do.
    let mut audit = spawn().await?;
    let guess = |event_type: &str| Event {
        outcome: Outcome::Failure.into(),
        subject: "carol".into(),
        source_ip: "198.51.100.20".into(),
        producer: "auth".into(),
        details_json: r#"{"reason":"wrong_code"}"#.into(),
        ..event(event_type)
    };
    let mut guesses: Vec<Event> = (0..7).map(|_| guess("auth.mfa")).collect();
    guesses.push(guess("auth.password_change"));
    guesses.push(guess("auth.mfa_disabled"));
    record(&mut audit, guesses).await?;
    assert!(alerts(&mut audit, "alert.brute_force").await?.is_empty());
    record(&mut audit, vec![guess("auth.api_key_created")]).await?;
    let raised = alerts(&mut audit, "alert.brute_force").await?;
    assert_eq!(raised.len(), 1);
    assert_eq!(
        raised[0].event.as_ref().map(|e| e.subject.as_str()),
        Some("carol")
    );
    // The login that finally gets through is scored for the failures before it.
    let through = login(Outcome::Success, "carol", "198.51.100.20", "x");
    let id = through.id.clone();
    record(&mut audit, vec![through]).await?;
    let all = query(&mut audit, QueryRequest::default()).await?;
    let (_, reasons) = risk_of(&all, &id);
    assert!(
        reasons.contains(&"success_after_failures".to_owned()),
        "{reasons:?}"
    );
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_on_one_account_raises_one_alert_per_window() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    let failures: Vec<Event> = (0..9)
        .map(|i| login(Outcome::Failure, "bob", &format!("198.51.100.{i}"), "x"))
        .collect();
    record(&mut audit, failures).await?;
    assert!(
        alerts(&mut audit, "alert.brute_force").await?.is_empty(),
        "9 is below the threshold"
    );
    let tenth = login(Outcome::Failure, "bob", "198.51.100.10", "x");
    let tenth_id = tenth.id.clone();
    record(&mut audit, vec![tenth]).await?;
    let raised = alerts(&mut audit, "alert.brute_force").await?;
    assert_eq!(raised.len(), 1);
    let alert = raised[0].event.clone().unwrap_or_default();
    assert_eq!(alert.subject, "bob");
    assert_eq!(alert.producer, "audit");
    assert_eq!(raised[0].risk_score, 100);
    let details: serde_json::Value = serde_json::from_str(&alert.details_json)?;
    assert_eq!(details["failures"], 10);
    assert_eq!(details["trigger_event"], tenth_id.as_str());
    // The tenth failure itself scored high: the account was failing repeatedly.
    let all = query(&mut audit, QueryRequest::default()).await?;
    let (score, reasons) = risk_of(&all, &tenth_id);
    assert!(
        score >= 50 && reasons.contains(&"repeated_failures".to_owned()),
        "{score} {reasons:?}"
    );
    // More failures within the window: no second alert.
    record(
        &mut audit,
        vec![login(Outcome::Failure, "bob", "198.51.100.11", "x")],
    )
    .await?;
    assert_eq!(alerts(&mut audit, "alert.brute_force").await?.len(), 1);
    // Alerts are chained like every event.
    let chain = audit
        .client
        .verify_chain(VerifyChainRequest::default())
        .await?
        .into_inner();
    assert!(chain.intact, "{chain:?}");
    audit.stop().await;
    Ok(())
}

/// Thresholds and windows come from the settings: with `DETECT_BRUTE_FORCE=3/60`,
/// three failures raise the alert that takes ten by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detector_thresholds_are_configurable() -> anyhow::Result<()> {
    let mut audit = crate::spawn_with(&[("DETECT_BRUTE_FORCE", "3/60".into())]).await?;
    let failures = |n: usize| -> Vec<Event> {
        (0..n)
            .map(|i| login(Outcome::Failure, "carol", &format!("198.51.100.{i}"), "x"))
            .collect()
    };
    record(&mut audit, failures(2)).await?;
    assert!(alerts(&mut audit, "alert.brute_force").await?.is_empty());
    record(&mut audit, failures(1)).await?;
    let raised = alerts(&mut audit, "alert.brute_force").await?;
    assert_eq!(raised.len(), 1);
    let details: serde_json::Value =
        serde_json::from_str(&raised[0].event.clone().unwrap_or_default().details_json)?;
    assert_eq!(details["threshold"], 3);
    assert_eq!(details["window_seconds"], 60);
    audit.stop().await;
    // Nonsense is refused at start-up, naming the variable.
    let settings =
        aia_settings::AuditSettings::from_env([("DETECT_MANY_IPS", "many")].into_iter().collect());
    let problems = settings.err().map(|e| e.0).unwrap_or_default();
    assert!(problems.iter().any(|p| p.variable == "DETECT_MANY_IPS"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ip_failing_across_accounts_is_credential_stuffing() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    let ip = "203.0.113.200";
    let spray: Vec<Event> = (0..5)
        .map(|i| login(Outcome::Failure, &format!("victim-{i}"), ip, "bot"))
        .collect();
    record(&mut audit, spray).await?;
    let raised = alerts(&mut audit, "alert.credential_stuffing").await?;
    assert_eq!(raised.len(), 1);
    let alert = raised[0].event.clone().unwrap_or_default();
    assert_eq!(alert.source_ip, ip);
    // Unknown emails count too (they have no subject).
    let unknown: Vec<Event> = (0..10)
        .map(|_| Event {
            subject: String::new(),
            details_json: r#"{"reason":"unknown_email"}"#.into(),
            ..login(Outcome::Failure, "", "203.0.113.201", "bot")
        })
        .collect();
    record(&mut audit, unknown).await?;
    assert_eq!(
        alerts(&mut audit, "alert.credential_stuffing").await?.len(),
        2
    );
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_many_ips_and_rate_limit_surges_raise_alerts() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    let reuse = Event {
        outcome: Outcome::Failure.into(),
        actor: "user-7".into(),
        subject: "session-7".into(),
        source_ip: "198.51.100.7".into(),
        producer: "session".into(),
        ..event("session.refresh_reuse")
    };
    record(&mut audit, vec![reuse.clone()]).await?;
    let raised = alerts(&mut audit, "alert.refresh_token_reuse").await?;
    assert_eq!(raised.len(), 1);
    let first = raised[0].event.clone().unwrap_or_default();
    assert_eq!(first.subject, "user-7");
    assert!(
        first.details_json.contains("session-7"),
        "{}",
        first.details_json
    );
    // The same account replaying tokens of further sessions from the same network:
    // on the trail, not one alert each (a user could otherwise flood the
    // responders). From another network (a thief elsewhere), another account, or
    // naming no account: alerted.
    let like = |session: &str, actor: &str, ip: &str| Event {
        id: uuid::Uuid::new_v4().to_string(),
        actor: actor.into(),
        subject: session.into(),
        source_ip: ip.into(),
        ..reuse.clone()
    };
    let again: Vec<Event> = (8..18)
        .map(|n| like(&format!("session-{n}"), "user-7", "198.51.100.7"))
        .collect();
    record(&mut audit, again).await?;
    assert_eq!(
        alerts(&mut audit, "alert.refresh_token_reuse").await?.len(),
        1
    );
    for (n, elsewhere) in [
        like("session-30", "user-7", "203.0.113.30"),
        like("session-80", "user-8", "198.51.100.7"),
        like("session-90", "", "198.51.100.7"),
        like("session-91", "", "198.51.100.7"),
    ]
    .into_iter()
    .enumerate()
    {
        record(&mut audit, vec![elsewhere]).await?;
        assert_eq!(
            alerts(&mut audit, "alert.refresh_token_reuse").await?.len(),
            n + 2
        );
    }

    let logins: Vec<Event> = (0..4)
        .map(|i| login(Outcome::Success, "carol", &format!("192.0.2.{i}"), "app"))
        .collect();
    record(&mut audit, logins).await?;
    assert_eq!(alerts(&mut audit, "alert.many_ips").await?.len(), 1);

    let rejected = |count: u32| Event {
        outcome: Outcome::Failure.into(),
        actor: String::new(),
        subject: String::new(),
        producer: "gateway".into(),
        details_json: format!(
            r#"{{"reason":"rate_limit","key":"ip:x","count":{count},"aggregated":true}}"#
        ),
        ..event("gateway.rejected")
    };
    record(&mut audit, vec![rejected(600)]).await?;
    assert!(
        alerts(&mut audit, "alert.rate_limit_surge")
            .await?
            .is_empty()
    );
    record(&mut audit, vec![rejected(400)]).await?;
    assert_eq!(alerts(&mut audit, "alert.rate_limit_surge").await?.len(), 1);
    audit.stop().await;
    Ok(())
}

/// An IPv6 address counts as its /64 (and an IPv4-mapped one as the IPv4 address):
/// rotating addresses within one subscriber's network changes nothing, for the
/// attacker or for a user whose device uses privacy addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_subscriber_is_one_ip_however_many_addresses_it_rotates() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    // Five accounts sprayed from five addresses of one /64: credential stuffing.
    let spray: Vec<Event> = (1..=5)
        .map(|i| {
            login(
                Outcome::Failure,
                &format!("target-{i}"),
                &format!("2001:db8:77:1:{i:x}::{i}"),
                "bot",
            )
        })
        .collect();
    record(&mut audit, spray).await?;
    let raised = alerts(&mut audit, "alert.credential_stuffing").await?;
    assert_eq!(raised.len(), 1);
    // Four more from four other networks: each network failed once, no alert.
    let spread: Vec<Event> = (2..=5)
        .map(|i| {
            login(
                Outcome::Failure,
                &format!("other-{i}"),
                &format!("2001:db8:77:{i}::1"),
                "bot",
            )
        })
        .collect();
    record(&mut audit, spread).await?;
    assert_eq!(
        alerts(&mut audit, "alert.credential_stuffing").await?.len(),
        1
    );
    // The monitoring summary counts the sprayed /64 as one source (its five failures
    // and the alert they raised).
    let summary = audit
        .client
        .summary(aia_proto::audit::v1::SummaryRequest::default())
        .await?
        .into_inner();
    let top = summary.top_failing_ips.first().cloned().unwrap_or_default();
    assert_eq!((top.key.as_str(), top.count), ("2001:db8:77:1::/64", 6));

    // A user's privacy addresses are not new IPs; another network is.
    let home = login(Outcome::Success, "dora", "2001:db8:88:1::10", "phone");
    let rotated = login(
        Outcome::Success,
        "dora",
        "2001:db8:88:1:a1b2:c3d4:e5f6:1",
        "phone",
    );
    let away = login(Outcome::Success, "dora", "2001:db8:88:2::10", "phone");
    let ids = [rotated.id.clone(), away.id.clone()];
    record(&mut audit, vec![home, rotated, away]).await?;
    // An IPv4 address is the same address written IPv4-mapped.
    let v4 = login(Outcome::Success, "finn", "203.0.113.5", "laptop");
    let mapped = login(Outcome::Success, "finn", "::ffff:203.0.113.5", "laptop");
    let mapped_id = mapped.id.clone();
    record(&mut audit, vec![v4, mapped]).await?;
    let all = query(&mut audit, QueryRequest::default()).await?;
    assert_eq!(risk_of(&all, &ids[0]), (0, vec![]), "the same /64");
    assert_eq!(risk_of(&all, &ids[1]), (30, vec!["new_ip".to_owned()]));
    assert_eq!(risk_of(&all, &mapped_id), (0, vec![]), "IPv4-mapped");

    // Four logins of one account from four addresses of one /64 are one IP.
    let logins: Vec<Event> = (1..=4)
        .map(|i| {
            login(
                Outcome::Success,
                "erin",
                &format!("2001:db8:99:1::{i}"),
                "app",
            )
        })
        .collect();
    record(&mut audit, logins).await?;
    assert!(alerts(&mut audit, "alert.many_ips").await?.is_empty());
    audit.stop().await;
    Ok(())
}
