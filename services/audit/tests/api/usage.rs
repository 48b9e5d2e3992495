//! Usage counts add up per caller, class and hour; a batch sent again is added once;
//! malformed counts are refused whole.

use aia_proto::audit::v1::{QueryUsageRequest, RecordUsageRequest, UsageCount};

fn count(caller: &str, class: &str, requests: i64, errors: i64) -> UsageCount {
    let hour = chrono::Utc::now().timestamp().div_euclid(3600) * 3600;
    UsageCount {
        hour: Some(prost_types::Timestamp {
            seconds: hour,
            nanos: 0,
        }),
        caller: caller.to_owned(),
        route_class: class.to_owned(),
        requests,
        errors,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_adds_up_once_per_batch() -> anyhow::Result<()> {
    let mut audit = crate::spawn().await?;
    let user = format!("user:{}", uuid::Uuid::new_v4());
    let first = RecordUsageRequest {
        counts: vec![count(&user, "auth", 3, 1)],
        batch_id: uuid::Uuid::new_v4().to_string(),
    };
    audit.client.record_usage(first.clone()).await?;
    // The same batch again (its answer was lost, say): not counted twice.
    audit.client.record_usage(first).await?;
    audit
        .client
        .record_usage(RecordUsageRequest {
            counts: vec![count(&user, "auth", 2, 0), count(&user, "proxy", 5, 5)],
            batch_id: uuid::Uuid::new_v4().to_string(),
        })
        .await?;
    let rows = audit
        .client
        .query_usage(QueryUsageRequest {
            caller: user.clone(),
            ..QueryUsageRequest::default()
        })
        .await?
        .into_inner()
        .counts;
    let of = |class: &str| {
        rows.iter()
            .find(|r| r.route_class == class)
            .map(|r| (r.requests, r.errors))
    };
    assert_eq!(of("auth"), Some((5, 1)));
    assert_eq!(of("proxy"), Some((5, 5)));

    // Malformed batches are refused whole: nothing of them is added.
    let bad_batches = [
        (vec![count(&user, "auth", 1, 0)], "not-a-uuid".to_owned()),
        (
            vec![count(&user, "auth", 1, 0), count("alice", "auth", 1, 0)],
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            vec![count(&user, "auth", 1, 2)],
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            vec![count(&user, "Auth!", 1, 0)],
            uuid::Uuid::new_v4().to_string(),
        ),
        (
            vec![UsageCount {
                hour: Some(prost_types::Timestamp {
                    seconds: 1_700_000_123,
                    nanos: 0,
                }),
                ..count(&user, "auth", 1, 0)
            }],
            uuid::Uuid::new_v4().to_string(),
        ),
    ];
    for (counts, batch_id) in bad_batches {
        let refused = audit
            .client
            .record_usage(RecordUsageRequest { counts, batch_id })
            .await;
        assert_eq!(
            refused.err().map(|s| s.code()),
            Some(tonic::Code::InvalidArgument)
        );
    }
    let again = audit
        .client
        .query_usage(QueryUsageRequest {
            caller: user,
            ..QueryUsageRequest::default()
        })
        .await?
        .into_inner()
        .counts;
    assert_eq!(again, rows);
    audit.stop().await;
    Ok(())
}
