//! CORS as a real browser enforces it: headless Chromium loads pages from an allowed
//! origin, a lookalike, an unlisted one and a sandboxed (`null`) one, and each tries
//! a credentialed JSON POST (which needs a preflight) to the gateway.
//!
//! Chromium comes from Debian (`apt-get install chromium`; `scripts/services.sh`
//! installs it where it can); `CHROMIUM` may name another binary. Every host name
//! resolves to 127.0.0.1 inside the browser (`--host-resolver-rules`), so the
//! lookalike origin is a real, different origin.

use aia_testkit::Stack;
use axum::http::header;
use axum::response::IntoResponse;

/// The page: reads the gateway's URL from its query, POSTs, and prints the outcome.
const PAGE: &str = r#"<!doctype html><html><body><pre id="out">pending</pre><script>
const gateway = new URLSearchParams(location.search).get("gw");
const out = document.getElementById("out");
fetch(gateway + "/v1/auth/login", {
  method: "POST",
  credentials: "include",
  headers: {"content-type": "application/json", "x-request-id": "from-the-browser"},
  body: JSON.stringify({email: "nobody@example.com", password: "wrong wrong wrong"}),
})
  .then(r => r.json().then(body => {
    out.textContent = "RESULT status=" + r.status + " type=" + body.type;
  }))
  .catch(e => { out.textContent = "RESULT blocked " + e.name; });
</script></body></html>"#;

async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE)
}

async fn sandboxed() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "sandbox allow-scripts"),
        ],
        PAGE,
    )
}

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned())
}

/// What the page printed after Chromium ran it.
async fn outcome(url: &str) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--host-resolver-rules=MAP * 127.0.0.1",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot run {} ({e}): install Chromium (apt-get install chromium) or set CHROMIUM",
                chromium()
            )
        })?;
    let dom = String::from_utf8_lossy(&output.stdout);
    let result = dom
        .split("<pre id=\"out\">")
        .nth(1)
        .and_then(|rest| rest.split("</pre>").next())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(
        result.starts_with("RESULT"),
        "no result from the page at {url}: {result:?}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(result)
}

/// Preflights the gateway has answered so far (from its metrics).
async fn preflights(stack: &Stack) -> anyhow::Result<f64> {
    let text = crate::helpers::metrics(stack).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("gateway_requests_total{") && l.contains("method=\"OPTIONS\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_reads_answers_only_from_the_listed_origin() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let pages = axum::Router::new()
        .route("/page.html", axum::routing::get(page))
        .route("/sandboxed.html", axum::routing::get(sandboxed));
    tokio::spawn(async move {
        let _ = axum::serve(listener, pages).await;
    });
    let stack =
        Stack::start_with(&[("CORS_ORIGINS", format!("http://*.example.test:{port}"))]).await?;
    let gateway = stack.gateway.url();
    let at = |host: &str, path: &str| format!("http://{host}:{port}{path}?gw={gateway}");

    // Allowed (one label under the wildcard): the preflight passes, the browser lets
    // the page read the 401 problem, credentials included.
    assert_eq!(
        outcome(&at("app.example.test", "/page.html")).await?,
        "RESULT status=401 type=urn:aia:problem:unauthorized"
    );
    // A lookalike that merely starts with an allowed name, an unlisted origin, two
    // labels deep, and a sandboxed page (origin `null`): the browser blocks them all.
    // Each reached the gateway (its preflight was answered, with a refusal), so
    // "blocked" is the browser enforcing CORS, not a page that never ran.
    for (host, path) in [
        ("app.example.test.evil.test", "/page.html"),
        ("evil.test", "/page.html"),
        ("a.b.example.test", "/page.html"),
        ("app.example.test", "/sandboxed.html"),
    ] {
        let before = preflights(&stack).await?;
        assert_eq!(
            outcome(&at(host, path)).await?,
            "RESULT blocked TypeError",
            "{host}{path}"
        );
        assert!(
            preflights(&stack).await? > before,
            "{host}{path}: no preflight arrived"
        );
    }
    stack.stop().await;
    Ok(())
}
