//! Shared steps of the end-to-end tests.

use aia_testkit::Stack;
use diesel_async::RunQueryDsl;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A password that meets the default policy.
pub const PASSWORD: &str = "correct horse battery staple";

/// A unique address per call.
pub fn email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// Registers `email` and asserts the 202.
pub async fn register(stack: &Stack, email: &str) -> anyhow::Result<()> {
    let response = stack
        .http()
        .post(stack.url("/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    Ok(())
}

/// Logs in and returns the token response.
pub async fn login(stack: &Stack, email: &str) -> anyhow::Result<Value> {
    login_from(stack.http(), stack, email).await
}

/// Logs in with `client` (e.g. one from another address) and returns the answer.
pub async fn login_from(
    client: &reqwest::Client,
    stack: &Stack,
    email: &str,
) -> anyhow::Result<Value> {
    let response = client
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": PASSWORD}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::OK);
    Ok(response.json().await?)
}

/// Registers a new user and logs in.
pub async fn signed_in(stack: &Stack) -> anyhow::Result<Value> {
    let email = email();
    register(stack, &email).await?;
    login(stack, &email).await
}

/// `GET /v1/auth/me` with a bearer token; the status.
pub async fn me_status(stack: &Stack, access_token: &str) -> anyhow::Result<StatusCode> {
    Ok(stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .bearer_auth(access_token)
        .send()
        .await?
        .status())
}

/// A string field of a JSON value.
pub fn field<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name].as_str().unwrap_or_default()
}

/// Asserts a problem response with `status`, and returns its body.
pub async fn assert_problem(
    response: reqwest::Response,
    status: StatusCode,
) -> anyhow::Result<Value> {
    assert_eq!(response.status(), status);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(content_type, "application/problem+json; charset=utf-8");
    let body: Value = response.json().await?;
    assert_eq!(body["status"], status.as_u16());
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("urn:aia:problem:")),
        "{body}"
    );
    Ok(body)
}

/// A stack in HS256 mode, and its secret (random, 96 characters).
pub async fn hs256_stack() -> anyhow::Result<(Stack, String)> {
    let secret = format!(
        "{}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let stack = Stack::start_with(&[
        ("JWT_ALGORITHM", "HS256".into()),
        ("JWT_SECRET_KEY", secret.clone()),
    ])
    .await?;
    Ok((stack, secret))
}

/// An administrator (`token`) disables user `id`.
pub async fn disable(stack: &Stack, token: &str, id: &str) -> reqwest::Result<reqwest::Response> {
    stack
        .http()
        .post(stack.url(&format!("/v1/admin/users/{id}/disable")))
        .bearer_auth(token)
        .send()
        .await
}

/// A user with the admin role, logged in.
pub async fn admin(stack: &Stack) -> anyhow::Result<Value> {
    let email = email();
    register(stack, &email).await?;
    let mut conn = stack.db.connect().await?;
    diesel::sql_query("UPDATE auth.users SET roles = ARRAY['user', 'admin'] WHERE email = $1")
        .bind::<diesel::sql_types::Text, _>(&email)
        .execute(&mut conn)
        .await?;
    login(stack, &email).await
}

/// A new API key of the user of `token` with `scopes`: the key and its id.
pub async fn api_key(
    stack: &Stack,
    token: &str,
    scopes: &[&str],
) -> anyhow::Result<(String, String)> {
    let created: Value = stack
        .http()
        .post(stack.url("/v1/api-keys"))
        .bearer_auth(token)
        .json(&serde_json::json!({"name": "svc", "password": PASSWORD, "scopes": scopes}))
        .send()
        .await?
        .json()
        .await?;
    Ok((
        field(&created, "api_key").to_owned(),
        field(&created, "id").to_owned(),
    ))
}

/// The id of the user a bearer token belongs to (from `GET /v1/auth/me`).
pub async fn user_id(stack: &Stack, token: &str) -> anyhow::Result<String> {
    let me: Value = stack
        .http()
        .get(stack.url("/v1/auth/me"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    Ok(me["id"].as_str().unwrap_or_default().to_owned())
}

/// An HTTP client whose connections come from 127.0.0.`n` (all of 127/8 is loopback).
pub fn from_ip(n: u8) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .local_address(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, n)))
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}

/// Waits (up to 10 s) until `GET /v1/auth/me` with `token` answers `status`.
pub async fn eventually_status(
    stack: &Stack,
    token: &str,
    status: StatusCode,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let got = me_status(stack, token).await?;
        if got == status {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "still {got}, not {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Logs the holder of `token` out through the gateway.
pub async fn logged_out(stack: &Stack, token: &str) -> anyhow::Result<()> {
    let response = stack
        .http()
        .post(stack.url("/v1/auth/logout"))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::NO_CONTENT,
        "logout: {}",
        response.status()
    );
    Ok(())
}

/// The gateway's Prometheus text.
pub async fn metrics(stack: &Stack) -> anyhow::Result<String> {
    Ok(stack
        .http()
        .get(stack.gateway.admin_url("/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

/// Sends `request` as raw bytes (what reqwest would refuse to send) and returns the
/// status and the response head and body.
pub async fn raw(stack: &Stack, request: &[u8]) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(stack.gateway.main).await?;
    socket.write_all(request).await?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.read_to_end(&mut response),
    )
    .await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, text))
}

/// Holds every new session's insert in the test's database until [`SessionGate::open`]
/// (the session service runs as its own role: it may read the gate), so that a test
/// can change the account while a login is between its checks and its session.
pub struct SessionGate {
    conn: diesel_async::AsyncPgConnection,
}

impl SessionGate {
    /// Installs the gate, closed.
    pub async fn close(stack: &Stack) -> anyhow::Result<Self> {
        let mut conn = stack.db.connect().await?;
        for statement in [
            "CREATE TABLE public.gate (open boolean NOT NULL)",
            "GRANT SELECT ON public.gate TO PUBLIC",
            "CREATE FUNCTION public.held() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN WHILE NOT EXISTS (SELECT 1 FROM public.gate) LOOP PERFORM pg_sleep(0.02); \
             END LOOP; RETURN NEW; END $$",
            "CREATE TRIGGER held BEFORE INSERT ON session.sessions \
             FOR EACH ROW EXECUTE FUNCTION public.held()",
        ] {
            diesel::sql_query(statement).execute(&mut conn).await?;
        }
        Ok(Self { conn })
    }

    /// Waits until one session insert is held at the gate.
    pub async fn holding_one(&self, stack: &Stack) -> anyhow::Result<()> {
        aia_testkit::eventually(std::time::Duration::from_secs(20), || async {
            let waiting: Vec<aia_testkit::Count> = diesel::sql_query(
                "SELECT count(*) AS n FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
                 AND state = 'active' AND query LIKE '%INSERT INTO%sessions%'",
            )
            .load(&mut stack.db.connect().await?)
            .await?;
            Ok(waiting.iter().any(|c| c.n == 1).then_some(()))
        })
        .await
    }

    /// Lets the held inserts (and every later one) through.
    pub async fn open(mut self) -> anyhow::Result<()> {
        diesel::sql_query("INSERT INTO public.gate VALUES (true)")
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }
}

/// Posts a login in the background (an attacker's, racing the test's next steps).
pub fn login_in_background(
    stack: &Stack,
    email: &str,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let (http, url, email) = (
        stack.http().clone(),
        stack.url("/v1/auth/login"),
        email.to_owned(),
    );
    tokio::spawn(async move {
        http.post(url)
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
    })
}

/// Asserts that a login answered while the account changed left no session that
/// outlives the change: refused, or its refresh token is.
pub async fn left_no_session(stack: &Stack, answer: reqwest::Response) -> anyhow::Result<()> {
    if answer.status() == StatusCode::OK {
        let pair: Value = answer.json().await?;
        let refresh = stack
            .http()
            .post(stack.url("/v1/auth/refresh"))
            .json(&json!({"refresh_token": field(&pair, "refresh_token")}))
            .send()
            .await?;
        assert_eq!(
            refresh.status(),
            StatusCode::UNAUTHORIZED,
            "a session opened before the change outlived it"
        );
        Ok(())
    } else {
        assert_problem(answer, StatusCode::UNAUTHORIZED).await?;
        Ok(())
    }
}

/// The `__Host-aia_device` cookie a response sets, as `name=value`, and its attributes.
pub fn device_cookie(response: &reqwest::Response) -> Option<(String, String)> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-aia_device="))
        .map(|v| match v.split_once(';') {
            Some((pair, attributes)) => (pair.to_owned(), attributes.to_owned()),
            None => (v.to_owned(), String::new()),
        })
}

/// Settings for cheap password hashing, for tests about something else that log in
/// many times.
pub fn cheap_hashing() -> Vec<(&'static str, String)> {
    vec![
        ("ARGON2_MEMORY_KIB", "1024".to_owned()),
        ("ARGON2_ITERATIONS", "1".to_owned()),
    ]
}

/// A login by `client` with `password`, presenting `device` (a device cookie as
/// `name=value`, as [`device_cookie`] gives it) if any; the answer as it came.
pub async fn login_with_device(
    client: &reqwest::Client,
    stack: &Stack,
    email: &str,
    password: &str,
    device: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut request = client
        .post(stack.url("/v1/auth/login"))
        .json(&json!({"email": email, "password": password}));
    if let Some(cookie) = device {
        request = request.header("cookie", cookie);
    }
    Ok(request.send().await?)
}
