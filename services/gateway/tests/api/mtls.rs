//! mTLS between the services: the flow works end to end, and internal listeners
//! refuse callers without a certificate of the platform CA or with the wrong identity.

use aia_proto::audit::v1::audit_service_client::AuditServiceClient;
use aia_proto::auth::v1::ValidateTokenRequest;
use aia_proto::auth::v1::auth_service_client::AuthServiceClient;
use aia_proto::session::v1::session_service_client::SessionServiceClient;
use aia_proto::session::v1::{CreateSessionRequest, IsRevokedRequest};
use aia_telemetry::tls::{TlsMaterial, endpoint};
use aia_testkit::Stack;
use aia_testkit::pki::TestPki;
use reqwest::StatusCode;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::helpers::{field, me_status, signed_in};

/// The status code of a refused call; `None` if it was answered.
fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Option<tonic::Code> {
    result.err().map(|s| s.code())
}

/// `token` with one character of its signature changed (the middle of the third
/// segment: well-formed, every claim intact, the signature wrong).
fn forged(token: &str) -> String {
    let start = token.rfind('.').map_or(0, |dot| dot + 1);
    let middle = start + (token.len() - start) / 2;
    let flipped = if &token[middle..=middle] == "A" {
        "B"
    } else {
        "A"
    };
    let mut forged = token.to_owned();
    forged.replace_range(middle..=middle, flipped);
    forged
}

/// Auth, called as the gateway (its certificate): what a compromised gateway can
/// send.
async fn auth_as_gateway(
    pki: &TestPki,
    stack: &Stack,
) -> anyhow::Result<AuthServiceClient<Channel>> {
    Ok(AuthServiceClient::new(
        as_service(pki, "gateway", &stack.auth.url(), "auth").await?,
    ))
}

/// A channel to `url` presenting a certificate for `identity` issued by `pki`.
async fn as_service(
    pki: &TestPki,
    identity: &str,
    url: &str,
    peer: &str,
) -> anyhow::Result<Channel> {
    let tls = TlsMaterial::load(&pki.settings(identity)?)?
        .ok_or_else(|| anyhow::anyhow!("no TLS material"))?;
    Ok(endpoint(url, Some(&tls), peer)?.connect().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_works_with_mtls_between_the_services() -> anyhow::Result<()> {
    let pki = TestPki::new()?;
    let stack = Stack::start_mtls(&pki).await?;
    let tokens = signed_in(&stack).await?;
    let access = field(&tokens, "access_token");
    assert_eq!(me_status(&stack, access).await?, StatusCode::OK);
    crate::helpers::logged_out(&stack, access).await?;
    assert_eq!(me_status(&stack, access).await?, StatusCode::UNAUTHORIZED);
    // Audit events arrived over mTLS too (read as auth: audit's one reader).
    let mut audit =
        AuditServiceClient::new(as_service(&pki, "auth", &stack.audit.url(), "audit").await?);
    let stored = aia_testkit::eventually(std::time::Duration::from_secs(10), || {
        let mut audit = audit.clone();
        async move {
            let events = audit
                .query(aia_proto::audit::v1::QueryRequest::default())
                .await?
                .into_inner()
                .events;
            Ok(events
                .iter()
                .any(|e| {
                    e.event
                        .as_ref()
                        .is_some_and(|e| e.event_type == "session.logout")
                })
                .then_some(()))
        }
    })
    .await;
    assert!(stored.is_ok(), "no logout event over mTLS");
    let _ = audit
        .query(aia_proto::audit::v1::QueryRequest::default())
        .await?;
    stack.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_listeners_refuse_strangers_and_check_each_callers_identity() -> anyhow::Result<()>
{
    let pki = TestPki::new()?;
    let stack = Stack::start_mtls(&pki).await?;
    let session_url = stack.session.url();
    let create = CreateSessionRequest {
        user_id: uuid::Uuid::new_v4().to_string(),
        client: None,
        amr: vec![],
    };

    // Plaintext: no TLS handshake, no call.
    let plain = SessionServiceClient::connect(session_url.clone()).await;
    if let Ok(mut plain) = plain {
        assert!(
            plain.create_session(create.clone()).await.is_err(),
            "plaintext call accepted"
        );
    }

    // TLS without a client certificate.
    let ca = Certificate::from_pem(std::fs::read(pki.ca_file())?);
    let https = session_url.replacen("http://", "https://", 1);
    let anonymous = Endpoint::from_shared(https)?
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name("session"),
        )?
        .connect()
        .await;
    if let Ok(channel) = anonymous {
        let result = SessionServiceClient::new(channel)
            .create_session(create.clone())
            .await;
        assert!(result.is_err(), "a caller without a certificate was served");
    }

    // A certificate from another CA, even with the right name.
    let rogue = TestPki::new()?;
    if let Ok(channel) = as_service(&rogue, "auth", &session_url, "session").await {
        let result = SessionServiceClient::new(channel)
            .create_session(create.clone())
            .await;
        assert!(
            result.is_err(),
            "a certificate from another CA was accepted"
        );
    }

    // A real certificate, but for the gateway: it may ask IsRevoked, not create sessions.
    let mut as_gateway =
        SessionServiceClient::new(as_service(&pki, "gateway", &session_url, "session").await?);
    let denied = as_gateway
        .create_session(create.clone())
        .await
        .err()
        .map(|s| s.code());
    assert_eq!(denied, Some(tonic::Code::PermissionDenied));
    let allowed = as_gateway
        .is_revoked(IsRevokedRequest {
            jti: uuid::Uuid::new_v4().to_string(),
            session_id: uuid::Uuid::new_v4().to_string(),
        })
        .await;
    assert!(allowed.is_ok(), "{allowed:?}");

    // Auth's ValidateToken is open to any service of the CA; Login only to the gateway.
    let mut as_audit =
        AuthServiceClient::new(as_service(&pki, "audit", &stack.auth.url(), "auth").await?);
    let validate = as_audit
        .validate_token(ValidateTokenRequest {
            access_token: "junk".into(),
        })
        .await;
    assert_eq!(
        validate.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );
    let login = as_audit
        .login(aia_proto::auth::v1::LoginRequest {
            email: "a@example.com".into(),
            password: "x".into(),
            client: None,
            device_id: String::new(),
        })
        .await;
    assert_eq!(
        login.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    // Audit takes events from the platform's services only, each under its own
    // name: the gateway cannot file an auth.login as auth (it could have made an
    // attacker's address "known" to the risk rules, or raised alerts against anyone),
    // and a certificate of the CA for one of your services records nothing.
    let event = |producer: &str| aia_proto::audit::v1::RecordRequest {
        event: Some(aia_proto::audit::v1::Event {
            id: uuid::Uuid::new_v4().to_string(),
            occurred_at: Some(prost_types::Timestamp {
                seconds: chrono::Utc::now().timestamp(),
                nanos: 0,
            }),
            event_type: "auth.login".into(),
            outcome: aia_proto::audit::v1::Outcome::Success.into(),
            producer: producer.into(),
            ..Default::default()
        }),
    };
    let mut as_gateway_to_audit =
        AuditServiceClient::new(as_service(&pki, "gateway", &stack.audit.url(), "audit").await?);
    let forged = as_gateway_to_audit.record(event("auth")).await;
    assert_eq!(
        forged.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    // Nor as itself, nor in a batch.
    let as_itself = as_gateway_to_audit.record(event("gateway")).await;
    assert_eq!(
        as_itself.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    let batch = as_gateway_to_audit
        .record_batch(aia_proto::audit::v1::RecordBatchRequest {
            events: event("gateway").event.into_iter().collect(),
        })
        .await;
    assert_eq!(
        batch.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    // Its own kind of event, under its own name, is taken.
    let mut own = event("gateway");
    if let Some(e) = own.event.as_mut() {
        e.event_type = "gateway.rejected".into();
    }
    let own = as_gateway_to_audit.record(own).await;
    assert!(own.is_ok(), "{own:?}");
    // No service of the platform may run a verification of the whole chain (a long
    // read); an operator's tool with an `ops` certificate may.
    let verify = aia_proto::audit::v1::VerifyChainRequest::default();
    let by_gateway = as_gateway_to_audit.verify_chain(verify.clone()).await;
    assert_eq!(
        by_gateway.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );
    let mut as_ops =
        AuditServiceClient::new(as_service(&pki, "ops", &stack.audit.url(), "audit").await?);
    let by_ops = as_ops.verify_chain(verify).await;
    assert!(by_ops.is_ok_and(|r| r.into_inner().intact));
    let mut as_yours =
        AuditServiceClient::new(as_service(&pki, "reports", &stack.audit.url(), "audit").await?);
    let stranger = as_yours.record(event("reports")).await;
    assert_eq!(
        stranger.err().map(|s| s.code()),
        Some(tonic::Code::PermissionDenied)
    );

    // A client that expects the session service but reaches a listener whose
    // certificate names another service refuses to talk.
    let wrong_peer = endpoint(
        &stack.auth.url(),
        TlsMaterial::load(&pki.settings("gateway")?)?.as_ref(),
        "session",
    )?
    .connect()
    .await;
    assert!(
        wrong_peer.is_err(),
        "the client accepted a certificate for the wrong service"
    );
    stack.stop().await;
    Ok(())
}

/// What a compromised gateway (its own certificate, any request it likes) can do at
/// auth's admin RPCs: nothing without a live admin access token. Naming an admin is
/// not enough (auth verifies the token itself), nor is a user's token, an altered
/// admin token, or an admin's token after its logout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_certificate_alone_cannot_act_as_an_admin() -> anyhow::Result<()> {
    use aia_proto::auth::v1::SetUserRolesRequest;

    let pki = TestPki::new()?;
    let stack = Stack::start_mtls(&pki).await?;
    let user = signed_in(&stack).await?;
    let user_token = field(&user, "access_token").to_owned();
    let user_id = crate::helpers::user_id(&stack, &user_token).await?;
    let admin = crate::helpers::admin(&stack).await?;
    let admin_token = field(&admin, "access_token").to_owned();
    let mut as_gateway = auth_as_gateway(&pki, &stack).await?;
    let promote = |access_token: &str| SetUserRolesRequest {
        access_token: access_token.to_owned(),
        user_id: user_id.clone(),
        roles: vec!["user".into(), "admin".into()],
        client: None,
    };

    // No token, a forged one, the user's own: refused, and nothing changed.
    let forged = forged(&admin_token);
    for (token, expected) in [
        ("", tonic::Code::Unauthenticated),
        (forged.as_str(), tonic::Code::Unauthenticated),
        (user_token.as_str(), tonic::Code::PermissionDenied),
    ] {
        let answer = as_gateway.set_user_roles(promote(token)).await;
        assert_eq!(code(answer), Some(expected), "{token:.12}");
    }
    let mut conn = stack.db.connect().await?;
    let roles = "SELECT count(*) AS n FROM auth.users WHERE 'admin' = ANY(roles)";
    assert_eq!(
        diesel_async::RunQueryDsl::get_result::<aia_testkit::Count>(
            diesel::sql_query(roles),
            &mut conn
        )
        .await?
        .n,
        1
    );

    // The admin's token works (the gateway passes it on)...
    let answer = as_gateway.set_user_roles(promote(&admin_token)).await;
    assert!(answer.is_ok(), "{answer:?}");
    // ...until the admin logs out: a copy kept by the gateway is then worth nothing.
    crate::helpers::logged_out(&stack, &admin_token).await?;
    let answer = aia_testkit::eventually(std::time::Duration::from_secs(10), || {
        let mut as_gateway = as_gateway.clone();
        let request = promote(&admin_token);
        async move {
            let answer = as_gateway.set_user_roles(request).await;
            Ok(answer.err().map(|s| s.code()))
        }
    })
    .await?;
    assert_eq!(answer, tonic::Code::Unauthenticated);
    stack.stop().await;
    Ok(())
}

/// The account actions (TOTP, password change, API keys) read the user, session and
/// `amr` from the caller's access token, checked by auth: the gateway's certificate
/// names no account, so a gateway (or anything holding its certificate) cannot list,
/// revoke or mint an account's keys, nor start a TOTP enrolment, with no live token
/// of the account's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_certificate_alone_cannot_act_on_an_account() -> anyhow::Result<()> {
    use aia_proto::auth::v1::{
        ChangePasswordRequest, ConfirmTotpRequest, CreateApiKeyRequest, DisableTotpRequest,
        EnrollTotpRequest, GetUserRequest, ListApiKeysRequest, RevokeApiKeyRequest,
    };

    let pki = TestPki::new()?;
    let stack = Stack::start_mtls(&pki).await?;
    let owner = signed_in(&stack).await?;
    let owner_token = field(&owner, "access_token").to_owned();
    let owner_id = crate::helpers::user_id(&stack, &owner_token).await?;
    let (api_key, key_id) = crate::helpers::api_key(&stack, &owner_token, &["api:access"]).await?;
    let stranger = signed_in(&stack).await?;
    let stranger_token = field(&stranger, "access_token").to_owned();
    let mut as_gateway = auth_as_gateway(&pki, &stack).await?;
    let password = crate::helpers::PASSWORD.to_owned();
    let listed = |access_token: &str| ListApiKeysRequest {
        access_token: access_token.to_owned(),
    };

    // No token or a forged one: every account action is refused before it looks at
    // anything else (right password and all).
    for token in [String::new(), forged(&owner_token)] {
        let access_token = token.clone();
        let refused = [
            code(as_gateway.list_api_keys(listed(&token)).await),
            code(
                as_gateway
                    .revoke_api_key(RevokeApiKeyRequest {
                        access_token: access_token.clone(),
                        key_id: key_id.clone(),
                        client: None,
                    })
                    .await,
            ),
            code(
                as_gateway
                    .create_api_key(CreateApiKeyRequest {
                        access_token: access_token.clone(),
                        name: "minted".into(),
                        scopes: vec!["api:access".into()],
                        password: password.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                as_gateway
                    .enroll_totp(EnrollTotpRequest {
                        access_token: access_token.clone(),
                        client: None,
                    })
                    .await,
            ),
            code(
                as_gateway
                    .confirm_totp(ConfirmTotpRequest {
                        access_token: access_token.clone(),
                        code: "000000".into(),
                        password: password.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                as_gateway
                    .disable_totp(DisableTotpRequest {
                        access_token: access_token.clone(),
                        password: password.clone(),
                        ..Default::default()
                    })
                    .await,
            ),
            code(
                as_gateway
                    .change_password(ChangePasswordRequest {
                        access_token: access_token.clone(),
                        current_password: password.clone(),
                        new_password: "an entirely new passphrase 7".into(),
                        client: None,
                    })
                    .await,
            ),
            code(
                as_gateway
                    .get_user(GetUserRequest {
                        access_token,
                        api_key: String::new(),
                    })
                    .await,
            ),
        ];
        assert_eq!(
            refused,
            [Some(tonic::Code::Unauthenticated); 8],
            "{token:.12}"
        );
    }
    // A profile is the credential's holder's: a token's, or a key's with
    // profile:read (the owner's key has only api:access).
    let profile = |access_token: &str, api_key: &str| GetUserRequest {
        access_token: access_token.to_owned(),
        api_key: api_key.to_owned(),
    };
    let owners = as_gateway
        .get_user(profile(&owner_token, ""))
        .await?
        .into_inner();
    assert_eq!(owners.id, owner_id);
    assert_eq!(
        code(as_gateway.get_user(profile("", &api_key)).await),
        Some(tonic::Code::PermissionDenied)
    );
    assert_eq!(
        code(as_gateway.get_user(profile("", "aia_junk")).await),
        Some(tonic::Code::Unauthenticated)
    );
    let (reader, _) = crate::helpers::api_key(&stack, &owner_token, &["profile:read"]).await?;
    let by_key = as_gateway
        .get_user(profile("", &reader))
        .await?
        .into_inner();
    assert_eq!(by_key.id, owner_id);
    // A token acts on its own account only: the stranger sees no key and cannot
    // revoke the owner's.
    let keys_of = |answer: Result<tonic::Response<aia_proto::auth::v1::ListApiKeysResponse>, _>| {
        answer.map(|r| {
            r.into_inner()
                .keys
                .into_iter()
                .map(|k| k.id)
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        keys_of(as_gateway.list_api_keys(listed(&stranger_token)).await)?,
        Vec::<String>::new()
    );
    let revoke = as_gateway
        .revoke_api_key(RevokeApiKeyRequest {
            access_token: stranger_token.clone(),
            key_id: key_id.clone(),
            client: None,
        })
        .await;
    assert_eq!(code(revoke), Some(tonic::Code::NotFound));
    let owners_keys = keys_of(as_gateway.list_api_keys(listed(&owner_token)).await)?;
    assert!(owners_keys.contains(&key_id), "{owners_keys:?}");

    // Once the owner logs out, a copy of their token kept by the gateway is worth
    // nothing.
    crate::helpers::logged_out(&stack, &owner_token).await?;
    let answer = aia_testkit::eventually(std::time::Duration::from_secs(10), || {
        let mut as_gateway = as_gateway.clone();
        let request = listed(&owner_token);
        async move { Ok(code(as_gateway.list_api_keys(request).await)) }
    })
    .await?;
    assert_eq!(answer, tonic::Code::Unauthenticated);
    stack.stop().await;
    Ok(())
}

/// A user's sessions are listed and ended through auth, which reads the user from
/// their verified token: session answers those calls for auth alone, so the
/// gateway's certificate can neither list a user's sessions (addresses, browsers)
/// nor log them out by naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_certificate_alone_cannot_touch_a_users_sessions() -> anyhow::Result<()> {
    use aia_proto::auth::v1::{
        EndOwnSessionRequest, EndOwnSessionsRequest, ListOwnSessionsRequest,
    };
    use aia_proto::session::v1::{ListSessionsRequest, RevokeRequest, RevokeUserSessionsRequest};

    let pki = TestPki::new()?;
    let stack = Stack::start_mtls(&pki).await?;
    let owner = signed_in(&stack).await?;
    let owner_token = field(&owner, "access_token").to_owned();
    let owner_id = crate::helpers::user_id(&stack, &owner_token).await?;
    let stranger = signed_in(&stack).await?;
    let stranger_token = field(&stranger, "access_token").to_owned();
    let mut auth = auth_as_gateway(&pki, &stack).await?;
    let mut session = SessionServiceClient::new(
        as_service(&pki, "gateway", &stack.session.url(), "session").await?,
    );
    let sessions_of = |access_token: &str| ListOwnSessionsRequest {
        access_token: access_token.to_owned(),
    };
    let owner_session = auth
        .list_own_sessions(sessions_of(&owner_token))
        .await?
        .into_inner()
        .sessions
        .into_iter()
        .map(|s| s.id)
        .collect::<Vec<_>>();
    assert_eq!(owner_session.len(), 1);
    let owner_session = owner_session.concat();

    // Straight to session, naming the owner: refused.
    let refused = [
        code(
            session
                .list_sessions(ListSessionsRequest {
                    user_id: owner_id.clone(),
                })
                .await,
        ),
        code(
            session
                .revoke_user_sessions(RevokeUserSessionsRequest {
                    user_id: owner_id.clone(),
                    reason: "logout_all".into(),
                    ..Default::default()
                })
                .await,
        ),
        code(
            session
                .revoke(RevokeRequest {
                    session_id: owner_session.clone(),
                    user_id: owner_id.clone(),
                    ..Default::default()
                })
                .await,
        ),
    ];
    assert_eq!(refused, [Some(tonic::Code::PermissionDenied); 3]);

    // Through auth, without the owner's live token: refused too.
    for token in [String::new(), forged(&owner_token)] {
        let refused = [
            code(auth.list_own_sessions(sessions_of(&token)).await),
            code(
                auth.end_own_session(EndOwnSessionRequest {
                    access_token: token.clone(),
                    session_id: owner_session.clone(),
                    client: None,
                })
                .await,
            ),
            code(
                auth.end_own_sessions(EndOwnSessionsRequest {
                    access_token: token.clone(),
                    keep_current: false,
                    client: None,
                })
                .await,
            ),
        ];
        assert_eq!(
            refused,
            [Some(tonic::Code::Unauthenticated); 3],
            "{token:.12}"
        );
    }
    // Another user's token ends no session of the owner's: as if there were none.
    let ended = auth
        .end_own_session(EndOwnSessionRequest {
            access_token: stranger_token.clone(),
            session_id: owner_session.clone(),
            client: None,
        })
        .await;
    assert_eq!(code(ended), Some(tonic::Code::NotFound));
    assert_eq!(me_status(&stack, &owner_token).await?, StatusCode::OK);
    // "Log out everywhere" with the stranger's token ends the stranger's session only.
    let ended = auth
        .end_own_sessions(EndOwnSessionsRequest {
            access_token: stranger_token.clone(),
            keep_current: false,
            client: None,
        })
        .await?
        .into_inner()
        .revoked;
    assert_eq!(ended, 1);
    assert_eq!(me_status(&stack, &owner_token).await?, StatusCode::OK);
    crate::helpers::eventually_status(&stack, &stranger_token, StatusCode::UNAUTHORIZED).await?;
    stack.stop().await;
    Ok(())
}

/// The audit trail holds every user's addresses and activity: audit answers reads to
/// auth alone, and auth reads for the holder of a live token only (an admin's, for
/// anything but the holder's own events). The gateway's certificate alone reads none
/// of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_certificate_alone_cannot_read_the_audit_trail() -> anyhow::Result<()> {
    use aia_proto::audit::v1::{QueryRequest, QueryUsageRequest, StreamRequest, SummaryRequest};
    use aia_proto::auth::v1::{
        AdminQueryEventsRequest, AdminQueryUsageRequest, AdminStreamEventsRequest,
        AdminSummarizeEventsRequest, QueryOwnEventsRequest,
    };

    let pki = TestPki::new()?;
    let stack = Stack::start_mtls(&pki).await?;
    let user = signed_in(&stack).await?;
    let user_token = field(&user, "access_token").to_owned();
    let user_id = crate::helpers::user_id(&stack, &user_token).await?;
    let other = signed_in(&stack).await?;
    let other_id = crate::helpers::user_id(&stack, field(&other, "access_token")).await?;
    let admin = crate::helpers::admin(&stack).await?;
    let admin_token = field(&admin, "access_token").to_owned();
    let mut audit =
        AuditServiceClient::new(as_service(&pki, "gateway", &stack.audit.url(), "audit").await?);
    let mut auth = auth_as_gateway(&pki, &stack).await?;

    // Straight to audit: no read at all.
    let refused = [
        code(audit.query(QueryRequest::default()).await),
        code(audit.summary(SummaryRequest::default()).await),
        code(audit.query_usage(QueryUsageRequest::default()).await),
        code(audit.stream(StreamRequest::default()).await),
    ];
    assert_eq!(refused, [Some(tonic::Code::PermissionDenied); 4]);

    // Through auth: the admin reads need an admin's live token.
    let admin_reads = |token: &str| {
        let mut auth = auth.clone();
        let token = token.to_owned();
        async move {
            [
                code(
                    auth.admin_query_events(AdminQueryEventsRequest {
                        access_token: token.clone(),
                        query: Some(QueryRequest::default()),
                    })
                    .await,
                ),
                code(
                    auth.admin_summarize_events(AdminSummarizeEventsRequest {
                        access_token: token.clone(),
                        summary: Some(SummaryRequest::default()),
                    })
                    .await,
                ),
                code(
                    auth.admin_query_usage(AdminQueryUsageRequest {
                        access_token: token.clone(),
                        query: Some(QueryUsageRequest::default()),
                    })
                    .await,
                ),
                code(
                    auth.admin_stream_events(AdminStreamEventsRequest {
                        access_token: token,
                        stream: Some(StreamRequest::default()),
                    })
                    .await,
                ),
            ]
        }
    };
    assert_eq!(
        admin_reads("").await,
        [Some(tonic::Code::Unauthenticated); 4]
    );
    assert_eq!(
        admin_reads(&forged(&admin_token)).await,
        [Some(tonic::Code::Unauthenticated); 4]
    );
    assert_eq!(
        admin_reads(&user_token).await,
        [Some(tonic::Code::PermissionDenied); 4]
    );
    assert_eq!(admin_reads(&admin_token).await, [None; 4]);

    // A user's own view holds their events only, whatever else is on the trail
    // (once the other user's login has reached it: events travel through outboxes).
    let involves = |e: &aia_proto::audit::v1::StoredEvent, id: &str| {
        e.event
            .as_ref()
            .is_some_and(|e| e.actor == id || e.subject == id)
    };
    aia_testkit::eventually(std::time::Duration::from_secs(10), || {
        let (mut auth, admin_token, other_id) = (auth.clone(), admin_token.clone(), &other_id);
        async move {
            let everyone = auth
                .admin_query_events(AdminQueryEventsRequest {
                    access_token: admin_token,
                    query: Some(QueryRequest::default()),
                })
                .await?
                .into_inner()
                .events;
            Ok(everyone.iter().any(|e| involves(e, other_id)).then_some(()))
        }
    })
    .await?;
    let own = |token: &str| QueryOwnEventsRequest {
        access_token: token.to_owned(),
        limit: 0,
        cursor: String::new(),
    };
    let mine = aia_testkit::eventually(std::time::Duration::from_secs(10), || {
        let (mut auth, request) = (auth.clone(), own(&user_token));
        async move {
            let mine = auth.query_own_events(request).await?.into_inner().events;
            Ok((!mine.is_empty()).then_some(mine))
        }
    })
    .await?;
    assert!(mine.iter().all(|e| involves(e, &user_id)), "{mine:?}");
    assert_eq!(
        code(auth.query_own_events(own("")).await),
        Some(tonic::Code::Unauthenticated)
    );
    stack.stop().await;
    Ok(())
}

/// An admin's event stream through auth lasts no longer than the admin's token is
/// live: a logout ends it within seconds at auth itself (a gateway that kept it open
/// past its own re-checks would otherwise read the trail until the token expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_event_stream_ends_at_auth_when_the_admin_logs_out() -> anyhow::Result<()> {
    use aia_proto::audit::v1::StreamRequest;
    use aia_proto::auth::v1::AdminStreamEventsRequest;

    let pki = TestPki::new()?;
    let stack = Stack::start_mtls(&pki).await?;
    let admin = crate::helpers::admin(&stack).await?;
    let admin_token = field(&admin, "access_token").to_owned();
    let mut auth = auth_as_gateway(&pki, &stack).await?;
    let mut events = auth
        .admin_stream_events(AdminStreamEventsRequest {
            access_token: admin_token.clone(),
            stream: Some(StreamRequest::default()),
        })
        .await?
        .into_inner();
    crate::helpers::logged_out(&stack, &admin_token).await?;
    // Events may come (the logout's own); the stream must end well within the
    // token's remaining 15 minutes: within auth's 5 s re-check.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let ended = loop {
        match tokio::time::timeout_at(deadline, events.message()).await {
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None) | Err(_)) => break true,
            Err(_) => break false,
        }
    };
    assert!(ended, "the stream outlived the admin's logout");
    stack.stop().await;
    Ok(())
}
