//! The audit service over real gRPC, against a real Postgres.

mod risk;
mod usage;

use std::time::Duration;

use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_proto::audit::v1::{Event, Outcome, QueryRequest, RecordBatchRequest, RecordRequest};
use aia_testkit::{Addrs, Running, TestDb};
use diesel_async::RunQueryDsl;
use tonic::transport::Channel;

struct Audit {
    db: TestDb,
    addrs: Addrs,
    client: AuditServiceClient<Channel>,
    running: Running,
}

async fn spawn() -> anyhow::Result<Audit> {
    spawn_with(&[]).await
}

async fn spawn_with(extra: &[(&str, String)]) -> anyhow::Result<Audit> {
    let db = TestDb::create().await?;
    let mut running = aia_testkit::services();
    let addrs = running.audit(aia_testkit::env(&db, "", extra)).await?;
    let client = AuditServiceClient::connect(addrs.url()).await?;
    Ok(Audit {
        db,
        addrs,
        client,
        running,
    })
}

impl Audit {
    async fn stop(self) {
        self.running.stop().await;
        let _ = self.db.drop_database().await;
    }
}

fn event(event_type: &str) -> Event {
    Event {
        id: uuid::Uuid::new_v4().to_string(),
        occurred_at: Some(prost_types_now()),
        event_type: event_type.to_owned(),
        outcome: Outcome::Success.into(),
        actor: "user-1".into(),
        subject: "user-1".into(),
        producer: "test".into(),
        details_json: r#"{"k":"v"}"#.into(),
        ..Event::default()
    }
}

fn prost_types_now() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap_or(0),
        nanos: 0,
    }
}

async fn count(db: &TestDb) -> anyhow::Result<i64> {
    let mut conn = db.connect().await?;
    Ok(diesel::sql_query("SELECT count(*) AS n FROM audit.events")
        .get_result::<Count>(&mut conn)
        .await?
        .n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_stored_once() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    let e = event("auth.login");
    let first = audit
        .client
        .record(RecordRequest {
            event: Some(e.clone()),
        })
        .await?
        .into_inner();
    let again = audit
        .client
        .record(RecordRequest {
            event: Some(e.clone()),
        })
        .await?
        .into_inner();
    assert!(first.stored);
    assert!(!again.stored);
    let batch = audit
        .client
        .record_batch(RecordBatchRequest {
            events: vec![e.clone(), event("auth.logout"), e],
        })
        .await?
        .into_inner();
    assert_eq!(batch.stored, 1);
    assert_eq!(count(&audit.db).await?, 2);
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_malformed_event_is_refused_whole() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    type Mutation = fn(&mut Event);
    let mutations: Vec<(&str, Mutation)> = vec![
        ("bad id", |e| e.id = "not-a-uuid".into()),
        ("no time", |e| e.occurred_at = None),
        ("empty type", |e| e.event_type.clear()),
        ("odd type", |e| e.event_type = "auth login; drop".into()),
        ("no outcome", |e| e.outcome = Outcome::Unspecified.into()),
        ("no producer", |e| e.producer.clear()),
        ("details not an object", |e| e.details_json = "[1]".into()),
        ("details not JSON", |e| e.details_json = "{".into()),
        ("huge field", |e| e.user_agent = "x".repeat(5000)),
        // What Postgres cannot store: refused here as the caller's mistake (it was an
        // internal error, which the producers' relays retry for ever, holding back
        // every event after it).
        ("NUL in a field", |e| e.user_agent = "a\0b".into()),
        ("NUL in details", |e| {
            e.details_json = r#"{"a":"\u0000"}"#.into()
        }),
        ("before the year 1", |e| {
            e.occurred_at = Some(prost_types::Timestamp {
                seconds: -70_000_000_000,
                nanos: 0,
            });
        }),
    ];
    for (name, mutate) in mutations {
        let mut bad = event("auth.login");
        mutate(&mut bad);
        let status = audit
            .client
            .record_batch(RecordBatchRequest {
                events: vec![event("auth.login"), bad],
            })
            .await
            .err();
        assert_eq!(
            status.map(|s| s.code()),
            Some(tonic::Code::InvalidArgument),
            "{name}"
        );
    }
    let too_many = (0..1001).map(|_| event("x")).collect();
    let status = audit
        .client
        .record_batch(RecordBatchRequest { events: too_many })
        .await
        .err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    assert_eq!(count(&audit.db).await?, 0);
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_events_cannot_be_changed_even_with_direct_sql() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    audit
        .client
        .record(RecordRequest {
            event: Some(event("auth.login")),
        })
        .await?;
    let mut conn = audit.db.connect().await?;
    for statement in [
        "UPDATE audit.events SET outcome = 'failure'",
        "DELETE FROM audit.events",
        "TRUNCATE audit.events",
    ] {
        let result = diesel::sql_query(statement).execute(&mut conn).await;
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("append-only"), "{statement}: {message}");
    }
    assert_eq!(count(&audit.db).await?, 1);
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_pages_newest_first_and_filters() -> anyhow::Result<()> {
    let mut audit = spawn().await?;
    let events: Vec<Event> = (0..5)
        .map(|i| {
            event(if i % 2 == 0 {
                "auth.login"
            } else {
                "auth.logout"
            })
        })
        .collect();
    for e in &events {
        audit
            .client
            .record(RecordRequest {
                event: Some(e.clone()),
            })
            .await?;
    }
    let page1 = audit
        .client
        .query(QueryRequest {
            limit: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    let ids = |page: &aia_proto::audit::v1::QueryResponse| -> Vec<String> {
        page.events
            .iter()
            .filter_map(|e| e.event.as_ref())
            .map(|e| e.id.clone())
            .collect()
    };
    assert_eq!(
        ids(&page1),
        vec![events[4].id.clone(), events[3].id.clone()]
    );
    let page2 = audit
        .client
        .query(QueryRequest {
            limit: 2,
            cursor: page1.next_cursor.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(
        ids(&page2),
        vec![events[2].id.clone(), events[1].id.clone()]
    );
    let page3 = audit
        .client
        .query(QueryRequest {
            limit: 2,
            cursor: page2.next_cursor.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(ids(&page3), vec![events[0].id.clone()]);
    assert!(page3.next_cursor.is_empty());
    let logins = audit
        .client
        .query(QueryRequest {
            event_type: "auth.login".into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(logins.events.len(), 3);
    let bad = audit
        .client
        .query(QueryRequest {
            cursor: "'; drop".into(),
            ..Default::default()
        })
        .await
        .err();
    assert_eq!(bad.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_says_serving() -> anyhow::Result<()> {
    let audit = spawn().await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        Channel::from_shared(audit.addrs.url())?.connect().await?,
    );
    for service in ["", "aia.audit.v1.AuditService"] {
        let response = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await?
            .into_inner();
        assert_eq!(
            response.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_while_the_database_is_unreachable_and_liveness_does_not()
-> anyhow::Result<()> {
    let db = TestDb {
        url: "postgres://postgres@127.0.0.1:1/nothing".into(),
    };
    let mut running = aia_testkit::services();
    let addrs = running.audit(aia_testkit::env(&db, "", &[])).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    assert_eq!(
        http.get(addrs.admin_url("/healthz")).send().await?.status(),
        200
    );
    let ready = http.get(addrs.admin_url("/readyz")).send().await?;
    assert_eq!(ready.status(), 503);
    assert_eq!(ready.headers()["content-type"], "application/problem+json");
    // A write while the database is down is UNAVAILABLE, not a hang or INTERNAL.
    let mut client = AuditServiceClient::connect(addrs.url()).await?;
    let status = client
        .record(RecordRequest {
            event: Some(event("auth.login")),
        })
        .await
        .err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::Unavailable));
    running.stop().await;
    Ok(())
}

/// The rows' sequence numbers, oldest first.
async fn seqs(db: &TestDb) -> anyhow::Result<Vec<i64>> {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
    }
    let mut conn = db.connect().await?;
    Ok(
        diesel::sql_query("SELECT seq FROM audit.events ORDER BY seq")
            .load::<S>(&mut conn)
            .await?
            .into_iter()
            .map(|s| s.seq)
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hash_chain_holds_under_concurrent_writes_and_names_a_tampered_row()
-> anyhow::Result<()> {
    let mut audit = spawn().await?;
    // Writers racing each other, and a redelivery, still make one unforked chain.
    let writes = (0..20).map(|n| {
        let mut client = audit.client.clone();
        async move {
            client
                .record_batch(RecordBatchRequest {
                    events: vec![event(&format!("test.{n}")), event("test.batch")],
                })
                .await
        }
    });
    for result in futures::future::join_all(writes).await {
        result?;
    }
    let again = event("test.again");
    for _ in 0..2 {
        audit
            .client
            .record(RecordRequest {
                event: Some(again.clone()),
            })
            .await?;
    }
    let verify = |from_seq, to_seq| {
        let mut client = audit.client.clone();
        async move {
            anyhow::Ok(
                client
                    .verify_chain(aia_proto::audit::v1::VerifyChainRequest {
                        from_seq,
                        to_seq,
                        ..Default::default()
                    })
                    .await?
                    .into_inner(),
            )
        }
    };
    let intact = verify(0, 0).await?;
    assert!(intact.intact, "{intact:?}");
    assert_eq!(intact.checked, 41);

    // Someone with database access disables the guard and edits one row.
    let rows = seqs(&audit.db).await?;
    let (victim, after) = (rows[17], rows[18]);
    let mut conn = audit.db.connect().await?;
    diesel::sql_query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
        .execute(&mut conn)
        .await?;
    diesel::sql_query(format!(
        "UPDATE audit.events SET outcome = 'failure', details = '{{\"k\":\"forged\"}}' WHERE seq = {victim}"
    ))
    .execute(&mut conn)
    .await?;
    let broken = verify(0, 0).await?;
    assert!(!broken.intact);
    assert_eq!(broken.broken_seq, victim, "{broken:?}");
    assert!(broken.reason.contains("altered"), "{broken:?}");
    // A range before the victim still verifies; one that starts at it does not.
    assert!(verify(0, victim - 1).await?.intact);
    assert_eq!(verify(victim, 0).await?.broken_seq, victim);
    // The same function serves `aia verify-audit-chain`.
    let report =
        aia_audit::verify_chain(&aia_db::pool(&audit.db.url, 1)?, 1, i64::MAX, None).await?;
    assert_eq!(report.broken_seq, Some(victim));

    // Deleting the row instead (and putting the edit back is impossible: its hash is
    // gone with it) breaks the link of the next one.
    diesel::sql_query(format!("DELETE FROM audit.events WHERE seq = {victim}"))
        .execute(&mut conn)
        .await?;
    let removed = verify(0, 0).await?;
    assert_eq!(removed.broken_seq, after, "{removed:?}");
    assert!(removed.reason.contains("link"), "{removed:?}");
    audit.stop().await;
    Ok(())
}

/// Two changes the links alone cannot show, made by someone who can write the table:
/// the newest events deleted, and the chain recomputed after an edit. A checkpoint
/// (an earlier head, kept elsewhere) shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_catches_a_removed_tail_and_a_recomputed_chain() -> anyhow::Result<()> {
    use aia_proto::audit::v1::{VerifyChainRequest, VerifyChainResponse};
    let mut audit = spawn().await?;
    let record = |n: usize| {
        let mut client = audit.client.clone();
        async move {
            let events = (0..n).map(|_| event("test.checkpoint")).collect();
            client.record_batch(RecordBatchRequest { events }).await
        }
    };
    let verify_from = |from_seq: i64, checkpoint: Option<&VerifyChainResponse>| {
        let mut client = audit.client.clone();
        let (checkpoint_seq, checkpoint_hash) =
            checkpoint.map_or((0, Vec::new()), |c| (c.head_seq, c.head_hash.clone()));
        async move {
            anyhow::Ok(
                client
                    .verify_chain(VerifyChainRequest {
                        from_seq,
                        checkpoint_seq,
                        checkpoint_hash,
                        ..Default::default()
                    })
                    .await?
                    .into_inner(),
            )
        }
    };
    let verify = |checkpoint| verify_from(0, checkpoint);
    record(5).await?;
    let first = verify(None).await?;
    assert!(first.intact, "{first:?}");
    assert_eq!(
        (first.head_seq, first.head_hash.len()),
        (5, 32),
        "{first:?}"
    );
    record(3).await?;
    let second = verify(Some(&first)).await?;
    assert!(second.intact && !second.checkpoint_pruned, "{second:?}");
    assert_eq!(second.head_seq, 8);

    // The newest events deleted: the links that remain all hold.
    let mut conn = audit.db.connect().await?;
    diesel::sql_query("ALTER TABLE audit.events DISABLE TRIGGER events_append_only")
        .execute(&mut conn)
        .await?;
    diesel::sql_query("DELETE FROM audit.events WHERE seq > 6")
        .execute(&mut conn)
        .await?;
    let unaware = verify(None).await?;
    assert!(unaware.intact && unaware.head_seq == 6, "{unaware:?}");
    let caught = verify(Some(&second)).await?;
    assert!(!caught.intact, "{caught:?}");
    assert_eq!(caught.broken_seq, 8, "{caught:?}");
    assert!(caught.reason.contains("the newest is 6"), "{caught:?}");
    assert!(caught.head_hash.is_empty(), "no head from a broken chain");
    // The older checkpoint is still held.
    assert!(verify(Some(&first)).await?.intact);

    // An event before the checkpoint edited and the hashes recomputed up to the
    // checkpoint's event, which stays as it was: its link to the one before it
    // breaks, and a range that starts after it still checks that link.
    let recompute = |upto: i64| {
        diesel::sql_query(format!(
            "DO $$ DECLARE r audit.events; prev bytea := '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea; BEGIN \
             FOR r IN SELECT * FROM audit.events WHERE seq <= {upto} ORDER BY seq LOOP \
               IF r.seq = 3 THEN r.outcome := 'failure'; END IF; \
               UPDATE audit.events SET outcome = r.outcome, prev_hash = prev, hash = audit.event_digest(prev, r) \
                 WHERE seq = r.seq RETURNING hash INTO prev; \
             END LOOP; END $$"
        ))
    };
    recompute(4).execute(&mut conn).await?;
    assert!(verify_from(6, None).await?.intact, "the range alone holds");
    let caught = verify_from(6, Some(&first)).await?;
    assert_eq!((caught.intact, caught.broken_seq), (false, 5), "{caught:?}");
    assert!(caught.reason.contains("link"), "{caught:?}");

    // Every hash from the edit on recomputed.
    recompute(i64::MAX).execute(&mut conn).await?;
    let unaware = verify(None).await?;
    assert!(unaware.intact, "{unaware:?}");
    let caught = verify(Some(&first)).await?;
    assert_eq!((caught.intact, caught.broken_seq), (false, 5), "{caught:?}");
    assert!(caught.reason.contains("recomputed"), "{caught:?}");

    // Malformed checkpoints are refused, not ignored.
    for (checkpoint_seq, checkpoint_hash) in [(5, vec![0; 31]), (-5, vec![0; 32]), (0, vec![0; 32])]
    {
        let refused = audit
            .client
            .verify_chain(VerifyChainRequest {
                checkpoint_seq,
                checkpoint_hash,
                ..Default::default()
            })
            .await
            .err()
            .map(|status| status.code());
        assert_eq!(
            refused,
            Some(tonic::Code::InvalidArgument),
            "{checkpoint_seq}"
        );
    }
    audit.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_event_audit_refuses_costs_an_outbox_batch_only_itself() -> anyhow::Result<()> {
    // Audit refuses a batch whole for one invalid event; the producer's relay used to
    // drop the whole batch then (up to 255 good events lost for one bad one). Now it
    // sends the batch's events one by one and drops only the one refused.
    let audit = spawn().await?;
    let pool = aia_db::pool(&audit.db.url, 2)?;
    let writer =
        aia_audit_client::AuditClient::outbox_only("auth", pool.clone(), "auth.audit_outbox");
    let long = "x".repeat(5000);
    for agent in ["good", long.as_str(), "good too"] {
        let client = aia_proto::common::v1::ClientInfo {
            ip: "203.0.113.9".into(),
            user_agent: agent.into(),
            request_id: String::new(),
        };
        writer
            .event("auth.login", Outcome::Success)
            .client(Some(&client))
            .emit()
            .await?;
    }
    let shutdown = aia_telemetry::shutdown::CancellationToken::new();
    let (_relaying, relay) = aia_audit_client::AuditClient::spawn_outbox(
        &audit.addrs.url(),
        "auth",
        None,
        pool,
        "auth.audit_outbox",
        shutdown.clone(),
    )?;
    let db = &audit.db;
    aia_testkit::eventually(Duration::from_secs(15), || async move {
        let mut conn = db.connect().await?;
        let left: Vec<Count> = diesel::sql_query("SELECT count(*) AS n FROM auth.audit_outbox")
            .load(&mut conn)
            .await?;
        Ok(left.iter().any(|c| c.n == 0).then_some(()))
    })
    .await?;
    assert_eq!(count(&audit.db).await?, 2, "the two good events are stored");
    shutdown.cancel();
    let _ = relay.await;
    audit.stop().await;
    Ok(())
}

use aia_testkit::Count;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_audit_events_cannot_be_recorded_over_rpc() -> anyhow::Result<()> {
    // The detectors and retention write these themselves; from outside they would be
    // decoys (an alert raised against anyone, a fake retention record).
    let mut audit = spawn().await?;
    for event_type in ["alert.brute_force", "audit.retention"] {
        let refused = audit
            .client
            .record(RecordRequest {
                event: Some(event(event_type)),
            })
            .await
            .err()
            .map(|s| s.code());
        assert_eq!(refused, Some(tonic::Code::PermissionDenied), "{event_type}");
    }
    assert_eq!(count(&audit.db).await?, 0);
    audit.stop().await;
    Ok(())
}
