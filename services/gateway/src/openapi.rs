//! `GET /openapi.json`: the OpenAPI 3.1 description of every public route, built
//! with utoipa from the same table that registers the routes (`routes::endpoints`),
//! with request schemas derived from the very types the handlers parse, and every
//! problem answer described. The proxied prefixes are described too.

use actix_web::http::Method;
use actix_web::{HttpResponse, web};
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ComponentsBuilder, ObjectBuilder, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Ref, Required};

use crate::problem::{PROBLEM_JSON, Problem};
use crate::routes::{Access, Body, Endpoint, endpoints};

/// The OpenAPI document, as served.
pub struct Document(pub String);

fn http_method(method: &Method) -> Option<HttpMethod> {
    Some(match *method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        _ => return None,
    })
}

fn reason(status: u16) -> &'static str {
    actix_web::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Answer")
}

/// The media type of a success answer without a named schema; `None` when it has no
/// body (204, and RFC 7009's empty 200 of token revocation).
fn ok_media(path: &str, status: u16) -> Option<&'static str> {
    match (path, status) {
        (_, 204) | ("/v1/oauth/revoke", _) => None,
        ("/.well-known/jwks.json", _) => Some("application/jwk-set+json"),
        ("/healthz" | "/readyz", _) => Some("text/plain"),
        _ => Some("application/json"),
    }
}

fn problem_response(status: u16) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(format!("{}: a problem (RFC 9457)", reason(status)))
        .content(
            PROBLEM_JSON,
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

fn security(access: Access) -> Vec<SecurityRequirement> {
    let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
    match access {
        Access::Public => Vec::new(),
        Access::Bearer | Access::Admin => vec![bearer],
        Access::BearerOrKey(scope) => vec![bearer, SecurityRequirement::new("apiKey", [scope])],
    }
}

fn operation(
    endpoint: &Endpoint,
    schemas: &mut ComponentsBuilder,
) -> utoipa::openapi::path::Operation {
    let mut description = endpoint.summary.to_owned();
    if endpoint.access == Access::Admin {
        description.push_str(". Needs the admin role.");
    }
    if let Access::BearerOrKey(scope) = endpoint.access {
        description.push_str(&format!(". An API key needs the `{scope}` scope."));
    }
    let mut op = OperationBuilder::new()
        .operation_id(Some(endpoint.id))
        .summary(Some(endpoint.summary))
        .description(Some(description))
        .tag(endpoint.path.split('/').nth(2).unwrap_or("gateway"));
    if endpoint.path.contains("{id}") {
        op = op.parameter(
            ParameterBuilder::new()
                .name("id")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).format(
                    Some(utoipa::openapi::SchemaFormat::KnownFormat(
                        utoipa::openapi::KnownFormat::Uuid,
                    )),
                ))),
        );
    }
    let (content_type, body) = match endpoint.body {
        Body::None => (None, None),
        Body::Json(schema) => (Some("application/json"), Some(schema())),
        Body::Form(schema) => (Some("application/x-www-form-urlencoded"), Some(schema())),
    };
    if let (Some(content_type), Some((name, schema, nested))) = (content_type, body) {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    content_type,
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name(name.clone())))
                        .build(),
                )
                .build(),
        ));
        *schemas = std::mem::take(schemas)
            .schema(name, schema)
            .schemas_from_iter(nested);
    }
    let (status, body) = endpoint.ok;
    let mut ok = ResponseBuilder::new().description(reason(status));
    if let Some(schema) = body {
        let (name, schema, nested) = schema();
        ok = ok.content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name(name.clone())))
                .build(),
        );
        *schemas = std::mem::take(schemas)
            .schema(name, schema)
            .schemas_from_iter(nested);
    } else if let Some(media) = ok_media(endpoint.path, status) {
        ok = ok.content(media, ContentBuilder::new().build());
    }
    op = op.response(status.to_string(), ok.build());
    let limited = endpoint.path.starts_with("/v1/");
    // 400 from request validation (a control character in the path, a bad header)
    // can answer any operation.
    let mut errors: Vec<u16> = vec![400];
    errors.extend(endpoint.errors.iter().filter(|s| **s != 400));
    if limited {
        errors.extend([429, 503]);
    }
    for status in errors {
        op = op.response(status.to_string(), problem_response(status));
    }
    for requirement in security(endpoint.access) {
        op = op.security(requirement);
    }
    op.build()
}

/// Builds the document for the endpoints and the proxied `prefixes`.
pub fn document(prefixes: &[String]) -> OpenApi {
    let mut components = ComponentsBuilder::new()
        .schema("Problem", <Problem as utoipa::PartialSchema>::schema())
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        )
        .security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    let mut paths = PathsBuilder::new();
    for endpoint in endpoints() {
        let Some(method) = http_method(&endpoint.method) else {
            continue;
        };
        let op = operation(&endpoint, &mut components);
        paths = paths.path(endpoint.path, PathItem::new(method, op));
    }
    for prefix in prefixes {
        let path = format!("{prefix}{{path}}");
        for method in [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Patch,
            HttpMethod::Delete,
        ] {
            let mut op = OperationBuilder::new()
                .summary(Some(format!("Proxied to the upstream of {prefix}")))
                .description(Some(
                    "Forwarded with x-auth-user-id, x-auth-roles, x-auth-session-id or \
                     x-auth-api-key-id, x-request-id and traceparent set by the gateway; \
                     the client's own x-auth-* headers are removed.",
                ))
                .tag("proxy")
                .parameter(
                    ParameterBuilder::new()
                        .name("path")
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
                )
                .response(
                    "200",
                    ResponseBuilder::new()
                        .description("The upstream's answer")
                        .build(),
                );
            for status in [401, 403, 413, 429, 502, 503, 504] {
                op = op.response(status.to_string(), problem_response(status));
            }
            for requirement in security(Access::BearerOrKey(crate::proxy::SCOPE)) {
                op = op.security(requirement);
            }
            paths = paths.path(path.clone(), PathItem::new(method, op.build()));
        }
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("AIA gateway")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The public HTTP API of the AIA security platform. Errors are \
                     application/problem+json (RFC 9457).",
                ))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}

/// `GET /openapi.json`.
pub async fn serve(document: web::Data<Document>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(document.0.clone())
}
