//! JSON bodies: size limit, content type, and every parse failure as a problem.
//!
//! - over the limit → 413; not `application/json` → 415;
//! - not JSON (syntax, truncated, nested too deep) → 400;
//! - JSON of the wrong shape (missing field, wrong type) → 422.

use actix_web::error::{JsonPayloadError, UrlencodedError};
use actix_web::web::{FormConfig, JsonConfig, QueryConfig};

use crate::problem::Problem;

/// The extractor configuration for JSON routes.
pub fn config(limit: usize) -> JsonConfig {
    JsonConfig::default()
        .limit(limit)
        .content_type_required(true)
        .content_type(|mime| {
            mime.type_() == "application"
                && (mime.subtype() == "json" || mime.suffix().is_some_and(|s| s == "json"))
        })
        .error_handler(move |err, _req| problem(&err, limit).into())
}

/// The extractor configuration for query strings: a malformed one is a 422 problem.
pub fn query_config() -> QueryConfig {
    QueryConfig::default().error_handler(|_, _| {
        Problem::validation("the query string has an unknown parameter or a bad value").into()
    })
}

/// The extractor configuration for form routes (the OAuth endpoints).
pub fn form_config(limit: usize) -> FormConfig {
    FormConfig::default()
        .limit(limit)
        .error_handler(move |err, _req| {
            match err {
                UrlencodedError::Overflow { .. } => Problem::payload_too_large(limit),
                UrlencodedError::ContentType => Problem::unsupported_media_type()
                    .detail("the body must be application/x-www-form-urlencoded"),
                UrlencodedError::Parse(_) => {
                    Problem::validation("the form is missing `token` or is malformed")
                }
                _ => Problem::bad_request().detail("the body could not be read"),
            }
            .into()
        })
}

fn problem(err: &JsonPayloadError, limit: usize) -> Problem {
    match err {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => {
            Problem::payload_too_large(limit)
        }
        JsonPayloadError::ContentType => Problem::unsupported_media_type(),
        JsonPayloadError::Deserialize(e) if e.classify() == serde_json::error::Category::Data => {
            Problem::validation(describe(&e.to_string()))
        }
        JsonPayloadError::Deserialize(_) | JsonPayloadError::Serialize(_) => {
            Problem::bad_request().detail("the body is not valid JSON")
        }
        JsonPayloadError::Payload(_) => Problem::bad_request().detail("the body could not be read"),
        _ => Problem::bad_request(),
    }
}

/// Keeps serde's message when it names a field ("missing field `email`"); other
/// messages may quote the submitted value (a password sent as a number, say), so they
/// are replaced by a generic one.
fn describe(message: &str) -> String {
    let message = message.split(" at line ").next().unwrap_or(message);
    if message.starts_with("missing field") || message.starts_with("unknown field") {
        message.to_owned()
    } else {
        "a field has the wrong type; expected a JSON object of strings".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test as actix_test;
    use actix_web::{App, HttpResponse, web};
    use proptest::prelude::*;

    use crate::routes::auth::Credentials;

    /// A value that must never come back in an error (it stands for a password).
    const SECRET: &str = "Zq7-not-to-be-echoed-41x";
    const LIMIT: usize = 512;

    /// Status, content type and body of POSTing `body` as `content_type` to a route
    /// that takes the login body, configured as the gateway configures it.
    fn post(content_type: &str, body: Vec<u8>) -> (u16, String, Vec<u8>) {
        actix_web::rt::System::new().block_on(async move {
            let app =
                actix_test::init_service(App::new().app_data(super::config(LIMIT)).route(
                    "/t",
                    web::post().to(|_: web::Json<Credentials>| async {
                        HttpResponse::NoContent().finish()
                    }),
                ))
                .await;
            let request = actix_test::TestRequest::post()
                .uri("/t")
                .insert_header(("content-type", content_type))
                .set_payload(body)
                .to_request();
            let response = actix_test::call_service(&app, request).await;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            (
                status,
                content_type,
                actix_test::read_body(response).await.to_vec(),
            )
        })
    }

    /// JSON-ish bodies: the right shape, wrong types, extra fields, nesting, cut
    /// short, and the secret placed where serde might quote it.
    fn bodies() -> impl Strategy<Value = Vec<u8>> {
        let value = prop_oneof![
            Just(format!("\"{SECRET}\"")),
            Just("12345678901234567890".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just(format!("[\"{SECRET}\"]")),
            Just(format!("{{\"a\":\"{SECRET}\"}}")),
            "[a-z@.]{0,20}".prop_map(|s| format!("\"{s}\"")),
        ];
        let field = prop_oneof![
            Just("email".to_owned()),
            Just("password".to_owned()),
            "[a-z]{1,8}".prop_map(|s| s),
        ];
        let object = prop::collection::vec((field, value), 0..4).prop_map(|fields| {
            let inner: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{{}}}", inner.join(","))
        });
        prop_oneof![
            object.clone().prop_map(String::into_bytes),
            (object, any::<prop::sample::Index>()).prop_map(|(o, cut)| {
                let bytes = o.into_bytes();
                let at = cut.index(bytes.len().max(1));
                bytes.get(..at).map(<[u8]>::to_vec).unwrap_or_default()
            }),
            (1usize..200).prop_map(
                |depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
            ),
            prop::collection::vec(any::<u8>(), 0..(LIMIT * 2)),
        ]
    }

    fn content_types() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("application/json".to_owned()),
            Just("application/json; charset=utf-8".to_owned()),
            Just("application/problem+json".to_owned()),
            Just("text/plain".to_owned()),
            Just("application/x-www-form-urlencoded".to_owned()),
            "[ -~]{0,40}",
        ]
    }

    proptest! {
        /// Whatever the body and content type, the answer is the handler's 204 or a
        /// 4xx problem document that names its own status and quotes nothing secret.
        #[test]
        fn every_refused_body_is_a_problem_document(body in bodies(), content_type in content_types()) {
            let (status, answered_type, answer) = post(&content_type, body);
            prop_assert!(status == 204 || [400, 413, 415, 422].contains(&status), "status {status}");
            if status != 204 {
                prop_assert_eq!(answered_type, "application/problem+json");
                let problem: serde_json::Value = serde_json::from_slice(&answer)
                    .map_err(|e| TestCaseError::fail(format!("not JSON: {e}")))?;
                prop_assert_eq!(problem.get("status").and_then(serde_json::Value::as_u64), Some(u64::from(status)));
                prop_assert!(problem.get("title").is_some_and(serde_json::Value::is_string));
                prop_assert!(problem.get("type").is_some_and(serde_json::Value::is_string));
                prop_assert!(!String::from_utf8_lossy(&answer).contains(SECRET), "echoed: {}", String::from_utf8_lossy(&answer));
            }
        }
    }
}
