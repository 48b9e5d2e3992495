//! The session service over real gRPC, against real Postgres and Redis.

use aia_proto::common::v1::ClientInfo;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_proto::session::v1::{
    CreateSessionRequest, CreateSessionResponse, IsRevokedRequest, RevokeAccessTokenRequest,
    RevokeRequest, RotateRequest,
};
use aia_testkit::{Running, TestDb};
use deadpool_redis::redis;
use diesel_async::RunQueryDsl;
use std::time::Duration;
use tonic::transport::Channel;

struct Session {
    db: TestDb,
    prefix: String,
    client: SessionServiceClient<Channel>,
    running: Running,
}

async fn spawn() -> anyhow::Result<Session> {
    let db = TestDb::create().await?;
    let prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let mut running = aia_testkit::services();
    let audit = running.audit(aia_testkit::env(&db, &prefix, &[])).await?;
    let addrs = running
        .session(aia_testkit::env(
            &db,
            &prefix,
            &[("AUDIT_GRPC_URL", audit.url())],
        ))
        .await?;
    let client = SessionServiceClient::connect(addrs.url()).await?;
    Ok(Session {
        db,
        prefix,
        client,
        running,
    })
}

impl Session {
    async fn create(&mut self, user_id: uuid::Uuid) -> anyhow::Result<CreateSessionResponse> {
        let client = Some(ClientInfo {
            ip: "203.0.113.7".into(),
            user_agent: "test".into(),
            request_id: "r1".into(),
        });
        Ok(self
            .client
            .create_session(CreateSessionRequest {
                user_id: user_id.to_string(),
                client,
                amr: vec![],
            })
            .await?
            .into_inner())
    }

    async fn rotate(&mut self, token: &str) -> Result<String, tonic::Code> {
        self.client
            .rotate(RotateRequest {
                refresh_token: token.to_owned(),
                client: None,
            })
            .await
            .map(|r| r.into_inner().refresh_token)
            .map_err(|s| s.code())
    }

    async fn is_revoked(&mut self, jti: uuid::Uuid, sid: &str) -> anyhow::Result<bool> {
        Ok(self
            .client
            .is_revoked(IsRevokedRequest {
                jti: jti.to_string(),
                session_id: sid.to_owned(),
            })
            .await?
            .into_inner()
            .revoked)
    }

    async fn revoke(
        &mut self,
        sid: &str,
        user: uuid::Uuid,
        jti: uuid::Uuid,
        ttl_secs: i64,
    ) -> Result<bool, tonic::Status> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        self.client
            .revoke(RevokeRequest {
                session_id: sid.to_owned(),
                access_jti: jti.to_string(),
                access_expires_at: Some(prost_types::Timestamp {
                    seconds: i64::try_from(exp).unwrap_or(0) + ttl_secs,
                    nanos: 0,
                }),
                client: None,
                user_id: user.to_string(),
            })
            .await
            .map(|r| r.into_inner().revoked)
    }

    async fn redis(&self) -> anyhow::Result<deadpool_redis::Connection> {
        Ok(aia_db::redis::pool(&aia_testkit::redis_url())?
            .get()
            .await?)
    }

    /// Whether Redis holds `key`.
    async fn exists(&self, key: &str) -> anyhow::Result<bool> {
        let mut conn = self.redis().await?;
        Ok(redis::cmd("EXISTS").arg(key).query_async(&mut conn).await?)
    }

    /// Deletes every key of this test's prefix: what a Redis restart without
    /// persistence does, limited to this test so parallel tests are unaffected.
    async fn wipe_redis(&self) -> anyhow::Result<usize> {
        let mut conn = self.redis().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
        Ok(keys.len())
    }

    async fn stop(self) {
        self.running.stop().await;
        let _ = self.db.drop_database().await;
    }
}

async fn rotate_ok(s: &mut Session, token: &str) -> anyhow::Result<String> {
    s.rotate(token)
        .await
        .map_err(|c| anyhow::anyhow!("rotation refused: {c:?}"))
}

async fn events_of_type(s: &Session, event_type: &str) -> anyhow::Result<usize> {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = s.db.connect().await?;
    let n = diesel::sql_query("SELECT count(*) AS n FROM audit.events WHERE event_type = $1")
        .bind::<diesel::sql_types::Text, _>(event_type)
        .get_result::<N>(&mut conn)
        .await?
        .n;
    Ok(usize::try_from(n)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_within_the_grace_window_gets_the_same_successor() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let created = s.create(uuid::Uuid::new_v4()).await?;
    let next = rotate_ok(&mut s, &created.refresh_token).await?;
    assert_ne!(next, created.refresh_token);
    // The response was lost; the client retries with the old token.
    assert_eq!(rotate_ok(&mut s, &created.refresh_token).await?, next);
    assert_eq!(rotate_ok(&mut s, &created.refresh_token).await?, next);
    // The successor works, once it is used the chain moves on.
    let third = rotate_ok(&mut s, &next).await?;
    assert_ne!(third, next);
    assert!(s.rotate(&third).await.is_ok());
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_used_after_the_window_revokes_the_family() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let user = uuid::Uuid::new_v4();
    let created = s.create(user).await?;
    let next = rotate_ok(&mut s, &created.refresh_token).await?;
    // Move the rotation out of the grace window.
    let mut conn = s.db.connect().await?;
    diesel::sql_query(
        "UPDATE session.refresh_tokens SET rotated_at = rotated_at - interval '11 seconds'",
    )
    .execute(&mut conn)
    .await?;
    assert_eq!(
        s.rotate(&created.refresh_token).await,
        Err(tonic::Code::Unauthenticated)
    );
    // The whole family is gone: the legitimate holder's successor too, and every
    // access token of the session.
    assert_eq!(s.rotate(&next).await, Err(tonic::Code::Unauthenticated));
    assert!(
        s.is_revoked(uuid::Uuid::new_v4(), &created.session_id)
            .await?
    );
    aia_testkit::eventually(Duration::from_secs(10), || async {
        Ok((events_of_type(&s, "session.refresh_reuse").await? == 1).then_some(()))
    })
    .await?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_used_after_its_successor_revokes_the_family() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let created = s.create(uuid::Uuid::new_v4()).await?;
    let next = rotate_ok(&mut s, &created.refresh_token).await?;
    let third = rotate_ok(&mut s, &next).await?;
    // Within the window, but the successor has been used: a copy is being replayed.
    assert_eq!(
        s.rotate(&created.refresh_token).await,
        Err(tonic::Code::Unauthenticated)
    );
    assert_eq!(s.rotate(&third).await, Err(tonic::Code::Unauthenticated));
    assert!(
        s.is_revoked(uuid::Uuid::new_v4(), &created.session_id)
            .await?
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_rotations_of_one_token_rotate_it_once() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let created = s.create(uuid::Uuid::new_v4()).await?;
    let calls = (0..50).map(|_| {
        let mut client = s.client.clone();
        let token = created.refresh_token.clone();
        async move {
            client
                .rotate(RotateRequest {
                    refresh_token: token,
                    client: None,
                })
                .await
                .map(|r| r.into_inner().refresh_token)
                .map_err(|e| e.code())
        }
    });
    let results = futures::future::join_all(calls).await;
    // Every caller gets the one successor: a race between tabs does not log anyone out.
    let first = results[0].clone();
    assert!(first.is_ok(), "{results:?}");
    assert!(results.iter().all(|r| *r == first), "{results:?}");
    // One successor stored, not fifty.
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = s.db.connect().await?;
    let n = diesel::sql_query("SELECT count(*) AS n FROM session.refresh_tokens")
        .get_result::<N>(&mut conn)
        .await?
        .n;
    assert_eq!(n, 2);
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_tokens_of_revoked_or_expired_sessions_are_refused() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let user = uuid::Uuid::new_v4();
    let mut conn = s.db.connect().await?;
    // Revoked.
    let revoked = s.create(user).await?;
    assert!(
        s.revoke(&revoked.session_id, user, uuid::Uuid::new_v4(), 60)
            .await?
    );
    assert_eq!(
        s.rotate(&revoked.refresh_token).await,
        Err(tonic::Code::Unauthenticated)
    );
    // Past its absolute lifetime.
    let old = s.create(user).await?;
    diesel::sql_query(format!(
        "UPDATE session.sessions SET expires_at = now() - interval '1 second' WHERE id = '{}'",
        old.session_id
    ))
    .execute(&mut conn)
    .await?;
    assert_eq!(
        s.rotate(&old.refresh_token).await,
        Err(tonic::Code::Unauthenticated)
    );
    // Idle too long.
    let idle = s.create(user).await?;
    diesel::sql_query(format!("UPDATE session.refresh_tokens SET expires_at = now() - interval '1 second' WHERE session_id = '{}'", idle.session_id))
        .execute(&mut conn)
        .await?;
    assert_eq!(
        s.rotate(&idle.refresh_token).await,
        Err(tonic::Code::Unauthenticated)
    );
    // A refused rotation of an over session did not consume anything: still refused,
    // and no successor was stored.
    assert_eq!(
        s.rotate(&old.refresh_token).await,
        Err(tonic::Code::Unauthenticated)
    );
    // Junk never reaches the database.
    for junk in ["", "x", &"A".repeat(43), &"é".repeat(100)] {
        assert_eq!(
            s.rotate(junk).await,
            Err(tonic::Code::Unauthenticated),
            "{junk}"
        );
    }
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_session_blacklists_every_access_token_of_it() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let user = uuid::Uuid::new_v4();
    let created = s.create(user).await?;
    let other = s.create(user).await?;
    let presented = uuid::Uuid::new_v4();
    let earlier = uuid::Uuid::new_v4();
    assert!(!s.is_revoked(presented, &created.session_id).await?);
    assert!(s.revoke(&created.session_id, user, presented, 600).await?);
    assert!(s.is_revoked(presented, &created.session_id).await?);
    assert!(
        s.is_revoked(earlier, &created.session_id).await?,
        "another token of the same session"
    );
    assert!(
        !s.is_revoked(uuid::Uuid::new_v4(), &other.session_id)
            .await?,
        "another session"
    );
    // Idempotent.
    assert!(!s.revoke(&created.session_id, user, presented, 600).await?);
    // The Redis copy lives as long as the token could be accepted: to its `exp`, and
    // the verifiers' 30 s of leeway past it.
    let mut redis = s.redis().await?;
    let key = aia_db::redis::key(&s.prefix, "bl", &format!("jti:{presented}"));
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await?;
    assert!(ttl > 620_000 && ttl <= 630_000, "{ttl}");
    // The session's entry: past any token the session may have been issued (the
    // 900 s access-token lifetime from the revocation's clock reading), the leeway,
    // and a minute's margin for a token signed just after that reading.
    let key = aia_db::redis::key(&s.prefix, "bl", &format!("sid:{}", created.session_id));
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await?;
    assert!(ttl > 985_000 && ttl <= 990_000, "{ttl}");
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_revoked_in_its_leeway_stays_revoked_while_it_is_accepted() -> anyhow::Result<()> {
    // Verifiers accept a token for 30 s past its `exp` (clock skew): one revoked ten
    // seconds after its `exp` (RFC 7009 revocation by auth, which still verified
    // it) must be refused for the twenty seconds it would still be accepted.
    let mut s = spawn().await?;
    let jti = uuid::Uuid::new_v4();
    let now = chrono::Utc::now().timestamp();
    s.client
        .revoke_access_token(RevokeAccessTokenRequest {
            jti: jti.to_string(),
            expires_at: Some(prost_types::Timestamp {
                seconds: now - 10,
                nanos: 0,
            }),
            user_id: uuid::Uuid::new_v4().to_string(),
            client: None,
        })
        .await?;
    assert!(
        s.is_revoked(jti, &uuid::Uuid::new_v4().to_string()).await?,
        "a token still inside the verifiers' leeway was not blacklisted"
    );
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_revoke_someone_elses_session() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let owner = uuid::Uuid::new_v4();
    let created = s.create(owner).await?;
    let status = s
        .revoke(
            &created.session_id,
            uuid::Uuid::new_v4(),
            uuid::Uuid::new_v4(),
            60,
        )
        .await
        .err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::NotFound));
    assert!(
        !s.is_revoked(uuid::Uuid::new_v4(), &created.session_id)
            .await?
    );
    assert!(s.rotate(&created.refresh_token).await.is_ok());
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_redis_losing_its_data() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let user = uuid::Uuid::new_v4();
    let created = s.create(user).await?;
    let jti = uuid::Uuid::new_v4();
    s.revoke(&created.session_id, user, jti, 600).await?;
    assert!(s.wipe_redis().await? >= 2);
    // Redis knows nothing now; the answer must still be "revoked".
    assert!(s.is_revoked(jti, &created.session_id).await?);
    assert!(
        s.is_revoked(uuid::Uuid::new_v4(), &created.session_id)
            .await?
    );
    // And the entries come back to Redis on their own.
    let key = aia_db::redis::key(&s.prefix, "bl", &format!("sid:{}", created.session_id));
    aia_testkit::eventually(Duration::from_secs(5), || async {
        Ok(s.exists(&key).await?.then_some(()))
    })
    .await?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_redis_coming_back_with_part_of_its_data() -> anyhow::Result<()> {
    // A Redis restarted from an append-only file that missed its last second, or a
    // replica promoted while it lagged, keeps the "complete" sentinel but not every
    // entry: the sentinel names the Redis process it was written for.
    let mut s = spawn().await?;
    let sentinel = aia_db::redis::key(&s.prefix, "bl", "complete");
    // The copy the service made when it started is complete before the test writes
    // behind its back (a copy still running could mark Redis complete without it).
    s.is_revoked(uuid::Uuid::new_v4(), &uuid::Uuid::new_v4().to_string())
        .await?;
    aia_testkit::eventually(Duration::from_secs(5), || async {
        Ok(s.exists(&sentinel).await?.then_some(()))
    })
    .await?;
    // A session revoked a minute ago (out of the replicas' look-back: only the copy
    // from Postgres brings it back to Redis).
    let sid = uuid::Uuid::new_v4();
    diesel::sql_query(format!(
        "INSERT INTO session.revocations (kind, id, expires_at, revoked_at) \
         VALUES ('sid', '{sid}', now() + interval '10 minutes', now() - interval '1 minute')"
    ))
    .execute(&mut s.db.connect().await?)
    .await?;
    s.wipe_redis().await?;
    let sid_text = sid.to_string();
    assert!(s.is_revoked(uuid::Uuid::new_v4(), &sid_text).await?);
    let entry = aia_db::redis::key(&s.prefix, "bl", &format!("sid:{sid}"));
    // Complete again (the copy is back, the sentinel written)...
    aia_testkit::eventually(Duration::from_secs(5), || async {
        Ok((s.exists(&sentinel).await? && s.exists(&entry).await?).then_some(()))
    })
    .await?;
    // ...then the Redis it was written for is gone: another process holds the
    // sentinel and has lost the entry.
    let mut redis = s.redis().await?;
    let () = redis::cmd("DEL")
        .arg(&entry)
        .query_async(&mut redis)
        .await?;
    let () = redis::cmd("SET")
        .arg(&sentinel)
        .arg("0123456789abcdef0123456789abcdef01234567")
        .query_async(&mut redis)
        .await?;
    let revoked = aia_testkit::eventually(Duration::from_secs(5), || {
        let (mut client, sid) = (s.client.clone(), sid_text.clone());
        async move {
            let answer = client
                .is_revoked(IsRevokedRequest {
                    jti: uuid::Uuid::new_v4().to_string(),
                    session_id: sid,
                })
                .await?
                .into_inner();
            Ok(answer.revoked.then_some(()))
        }
    })
    .await;
    assert!(
        revoked.is_ok(),
        "a revoked session passed while Redis lacked it"
    );
    aia_testkit::eventually(Duration::from_secs(5), || async {
        Ok(s.exists(&entry).await?.then_some(()))
    })
    .await?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_ids_are_invalid_arguments() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let status = s
        .client
        .create_session(CreateSessionRequest {
            user_id: "1 OR 1=1".into(),
            client: None,
            amr: vec![],
        })
        .await
        .err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    let status = s
        .client
        .is_revoked(IsRevokedRequest {
            jti: "x".into(),
            session_id: uuid::Uuid::new_v4().to_string(),
        })
        .await
        .err();
    assert_eq!(status.map(|s| s.code()), Some(tonic::Code::InvalidArgument));
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_through_one_replica_is_streamed_by_another() -> anyhow::Result<()> {
    use aia_proto::session::v1::{RevocationKind, WatchRevocationsRequest};
    let mut a = spawn().await?;
    // A second replica on the same database and Redis prefix.
    let audit = a
        .running
        .audit(aia_testkit::env(&a.db, &a.prefix, &[]))
        .await?;
    let b_addrs = a
        .running
        .session(aia_testkit::env(
            &a.db,
            &a.prefix,
            &[("AUDIT_GRPC_URL", audit.url())],
        ))
        .await?;
    let b = SessionServiceClient::connect(b_addrs.url()).await?;
    let user = uuid::Uuid::new_v4();
    let created = a.create(user).await?;

    // Watch replica A until its snapshot is in and its Redis subscription is up (a
    // resync ends the first stream if the subscription came up after it started).
    let sid = created.session_id.clone();
    let seen = aia_testkit::eventually(Duration::from_secs(10), || {
        let (mut watcher, mut b, sid) = (a.client.clone(), b.clone(), sid.clone());
        async move {
            let mut stream = watcher
                .watch_revocations(WatchRevocationsRequest {})
                .await?
                .into_inner();
            // Snapshot first.
            while let Some(batch) = stream.message().await? {
                if batch.snapshot_complete {
                    break;
                }
            }
            // Then revoke through replica B (idempotent on later attempts).
            b.revoke(RevokeRequest {
                session_id: sid.clone(),
                access_jti: String::new(),
                access_expires_at: None,
                client: None,
                user_id: user.to_string(),
            })
            .await?;
            let started = std::time::Instant::now();
            while started.elapsed() < Duration::from_secs(1) {
                let Ok(Ok(Some(batch))) =
                    tokio::time::timeout(Duration::from_secs(1), stream.message()).await
                else {
                    return Ok(None);
                };
                if batch
                    .revocations
                    .iter()
                    .any(|r| r.id == sid && r.kind == RevocationKind::Sid as i32)
                {
                    return Ok(Some(started.elapsed()));
                }
            }
            Ok(None)
        }
    })
    .await?;
    assert!(seen < Duration::from_secs(1), "{seen:?}");
    a.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_authentication_methods_across_rotations() -> anyhow::Result<()> {
    let mut s = spawn().await?;
    let created = s
        .client
        .create_session(CreateSessionRequest {
            user_id: uuid::Uuid::new_v4().to_string(),
            client: None,
            amr: vec!["pwd".into(), "otp".into()],
        })
        .await?
        .into_inner();
    let first = s
        .client
        .rotate(RotateRequest {
            refresh_token: created.refresh_token,
            client: None,
        })
        .await?
        .into_inner();
    assert_eq!(first.amr, ["pwd", "otp"]);
    let second = s
        .client
        .rotate(RotateRequest {
            refresh_token: first.refresh_token,
            client: None,
        })
        .await?
        .into_inner();
    assert_eq!(second.amr, ["pwd", "otp"]);

    // A plain session records the password alone.
    let plain = s.create(uuid::Uuid::new_v4()).await?;
    let rotated = s
        .client
        .rotate(RotateRequest {
            refresh_token: plain.refresh_token,
            client: None,
        })
        .await?
        .into_inner();
    assert_eq!(rotated.amr, ["pwd"]);

    // Only known methods, each once at most.
    for amr in [
        vec!["hwk"],
        vec!["pwd", "otp", "pwd"],
        vec!["otp", "otp"],
        vec![""],
    ] {
        let refused = s
            .client
            .create_session(CreateSessionRequest {
                user_id: uuid::Uuid::new_v4().to_string(),
                client: None,
                amr: amr.iter().map(|m| (*m).to_owned()).collect(),
            })
            .await
            .err()
            .map(|e| e.code());
        assert_eq!(refused, Some(tonic::Code::InvalidArgument), "{amr:?}");
    }
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_made_by_a_replica_cut_off_from_redis_still_reaches_the_others()
-> anyhow::Result<()> {
    use aia_proto::session::v1::RevocationKind;
    // Replica A follows Redis; replica C cannot reach it (its own outage, or a
    // partition), so the revocation it stores is not published. A's watchers must
    // learn of it anyway (A reads new entries from Postgres), or stop hearing
    // heartbeats so that they stop trusting their copy: they used to get heartbeats
    // without the entry for as long as the outage lasted.
    let mut a = spawn().await?;
    let audit = a
        .running
        .audit(aia_testkit::env(&a.db, &a.prefix, &[]))
        .await?;
    let c_addrs = a
        .running
        .session(aia_testkit::env(
            &a.db,
            &a.prefix,
            &[
                ("AUDIT_GRPC_URL", audit.url()),
                ("REDIS_URL", "redis://127.0.0.1:1".into()),
            ],
        ))
        .await?;
    let mut c = SessionServiceClient::connect(c_addrs.url()).await?;
    let user = uuid::Uuid::new_v4();
    let created = a.create(user).await?;
    let mut stream = healthy_stream(&a.client).await?;
    c.revoke(RevokeRequest {
        session_id: created.session_id.clone(),
        access_jti: String::new(),
        access_expires_at: None,
        client: None,
        user_id: user.to_string(),
    })
    .await?;
    let started = std::time::Instant::now();
    let mut heartbeats_without_it = 0;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(3), stream.message()).await;
        let Ok(Ok(Some(batch))) = next else {
            anyhow::bail!("the stream ended or went silent instead of carrying the entry");
        };
        if batch
            .revocations
            .iter()
            .any(|r| r.id == created.session_id && r.kind == RevocationKind::Sid as i32)
        {
            break;
        }
        heartbeats_without_it += 1;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{heartbeats_without_it} heartbeats in {:?} vouched for a copy without the revocation",
            started.elapsed()
        );
    }
    a.stop().await;
    Ok(())
}

/// A revocation stream past its snapshot that has had two heartbeats: one opened
/// before the replica's Redis subscription was up is ended once it is (a resync), so
/// streams are opened until one is past that.
async fn healthy_stream(
    client: &SessionServiceClient<Channel>,
) -> anyhow::Result<tonic::Streaming<aia_proto::session::v1::RevocationBatch>> {
    use aia_proto::session::v1::WatchRevocationsRequest;
    aia_testkit::eventually(Duration::from_secs(15), || {
        let mut client = client.clone();
        async move {
            let Ok(stream) = client.watch_revocations(WatchRevocationsRequest {}).await else {
                return Ok(None);
            };
            let mut stream = stream.into_inner();
            while let Ok(Some(batch)) = stream.message().await {
                if batch.snapshot_complete {
                    return Ok(
                        (heartbeat(&mut stream).await && heartbeat(&mut stream).await)
                            .then_some(stream),
                    );
                }
            }
            Ok(None)
        }
    })
    .await
}

/// Whether a batch (a heartbeat, when nothing is revoked) arrives within two seconds.
async fn heartbeat(stream: &mut tonic::Streaming<aia_proto::session::v1::RevocationBatch>) -> bool {
    let next = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
    matches!(next, Ok(Ok(Some(_))))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_read_new_revocations_stops_vouching_for_its_watchers()
-> anyhow::Result<()> {
    // Heartbeats tell a watcher its copy is current. A replica that cannot read the
    // entries stored lately (here: its role loses SELECT on them) cannot say so, and
    // goes silent, so that the watcher's copy goes stale and it asks instead; once it
    // reads again, the heartbeats come back.
    let s = spawn().await?;
    let mut stream = healthy_stream(&s.client).await?;
    let mut conn = s.db.connect().await?;
    diesel::sql_query("REVOKE SELECT ON session.revocations FROM aia_session")
        .execute(&mut conn)
        .await?;
    // What was already on its way may still arrive; then the stream ends.
    let cut = std::time::Instant::now();
    while heartbeat(&mut stream).await {
        assert!(
            cut.elapsed() < Duration::from_secs(4),
            "heartbeats went on while recent revocations could not be read"
        );
    }
    diesel::sql_query("GRANT SELECT ON session.revocations TO aia_session")
        .execute(&mut conn)
        .await?;
    // Reading again, it streams (and vouches) again.
    healthy_stream(&s.client).await?;
    s.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_never_revoked_without_its_blacklist_entry() -> anyhow::Result<()> {
    use aia_proto::session::v1::RevokeUserSessionsRequest;
    // Ending all of a user's sessions (a password change, a disable) stored each
    // session's revocation and its blacklist entry as two writes, session by session:
    // a failure in between left a session revoked (so a retry skipped it) whose
    // access tokens were not blacklisted, and the later sessions fully alive. Here
    // the blacklist refuses the second session's entry.
    let mut s = spawn().await?;
    let user = uuid::Uuid::new_v4();
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.create(user).await?.session_id);
    }
    let mut conn = s.db.connect().await?;
    for statement in [
        format!(
            "CREATE FUNCTION public.refuse() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.id = '{}' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$",
            ids[1]
        ),
        "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON session.revocations \
         FOR EACH ROW EXECUTE FUNCTION public.refuse()"
            .to_owned(),
    ] {
        diesel::sql_query(statement).execute(&mut conn).await?;
    }
    let request = || RevokeUserSessionsRequest {
        user_id: user.to_string(),
        except_session_id: String::new(),
        reason: "password_changed".into(),
        client: None,
        actor_id: String::new(),
    };
    assert!(s.client.revoke_user_sessions(request()).await.is_err());
    for id in &ids {
        let revoked: Vec<Count> = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM session.sessions WHERE id = '{id}' AND revoked_at IS NOT NULL"
        ))
        .load(&mut conn)
        .await?;
        let revoked = revoked.iter().any(|c| c.n == 1);
        assert!(
            !revoked || s.is_revoked(uuid::Uuid::new_v4(), id).await?,
            "session {id} was revoked, its access tokens were not"
        );
    }
    // Once the blacklist takes entries again, the retry ends them all.
    diesel::sql_query("DROP TRIGGER refuse ON session.revocations")
        .execute(&mut conn)
        .await?;
    let revoked = s
        .client
        .revoke_user_sessions(request())
        .await?
        .into_inner()
        .revoked;
    assert_eq!(revoked, 3);
    for id in &ids {
        assert!(s.is_revoked(uuid::Uuid::new_v4(), id).await?, "{id}");
    }
    s.stop().await;
    Ok(())
}

use aia_testkit::Count;
