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
