//! `GET /openapi.json` stays true: every documented operation is served, every other
//! method on a documented path is 405, undocumented paths are 404, and the errors
//! are described.

use aia_testkit::Stack;
use reqwest::{Method, StatusCode};
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_matches_the_routes_served() -> anyhow::Result<()> {
    let stack = Stack::start_with(&[("UPSTREAMS", "/api/=http://127.0.0.1:9".into())]).await?;
    let response = stack.http().get(stack.url("/openapi.json")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let doc: Value = response.json().await?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{doc}"
    );
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    assert!(paths.len() >= 25, "{} paths", paths.len());
    for expected in [
        "/v1/auth/login",
        "/v1/auth/login/mfa",
        "/v1/auth/mfa/totp/enroll",
        "/v1/api-keys/{id}",
        "/v1/oauth/introspect",
        "/.well-known/jwks.json",
        "/api/{path}",
    ] {
        assert!(paths.contains_key(expected), "{expected} undocumented");
    }

    let mut operation_ids = std::collections::HashSet::new();
    let mut checked = 0;
    for (path, item) in &paths {
        let concrete = path
            .replace("{id}", &uuid::Uuid::new_v4().to_string())
            .replace("{path}", "orders/1");
        for method in METHODS {
            let request = stack.http().request(
                Method::from_bytes(method.to_uppercase().as_bytes())?,
                stack.url(&concrete),
            );
            let status = request.send().await?.status();
            match item.get(method) {
                Some(operation) => {
                    // Documented: served (whatever it answers without credentials or
                    // a body, it is not "no such route" nor "no such method").
                    assert!(
                        status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
                        "{method} {path}: documented but answers {status}"
                    );
                    checked += 1;
                    if let Some(id) = operation["operationId"].as_str() {
                        assert!(operation_ids.insert(id.to_owned()), "duplicate {id}");
                    }
                    let responses = operation["responses"]
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    assert!(
                        responses.keys().any(|s| s.starts_with('2')),
                        "{method} {path}"
                    );
                    // Errors are described, as problems.
                    for (code, response) in &responses {
                        if code.starts_with('4') || code.starts_with('5') {
                            assert_eq!(
                                response["content"]["application/problem+json"]["schema"]["$ref"],
                                "#/components/schemas/Problem",
                                "{method} {path} {code}"
                            );
                        }
                    }
                    if path.starts_with("/v1/") {
                        assert!(
                            responses.keys().any(|s| s.starts_with('4')),
                            "{method} {path} lists no errors"
                        );
                    }
                    // A documented body names a schema that exists.
                    if let Some(content) = operation["requestBody"]["content"].as_object() {
                        for media in content.values() {
                            let reference = media["schema"]["$ref"].as_str().unwrap_or_default();
                            let name = reference.trim_start_matches("#/components/schemas/");
                            assert!(
                                doc["components"]["schemas"].get(name).is_some(),
                                "{method} {path}: schema {reference} missing"
                            );
                        }
                    }
                }
                None if path.starts_with("/api/") => {}
                None => assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}: undocumented but answers {status}"
                ),
            }
        }
    }
    assert!(checked >= 30, "{checked} operations checked");
    // The schemas are the handlers' own: the login body has exactly its fields.
    let credentials = &doc["components"]["schemas"]["Credentials"];
    let mut fields: Vec<&String> = credentials["properties"]
        .as_object()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    fields.sort();
    assert_eq!(fields, ["email", "password"]);
    // Paths nobody documented are not served.
    for path in ["/v1/auth/nope", "/v1/admin", "/internal/metrics"] {
        let status = stack.http().get(stack.url(path)).send().await?.status();
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    stack.stop().await;
    Ok(())
}
