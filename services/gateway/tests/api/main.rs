//! End-to-end tests: all four services, driven through the gateway over HTTP.

mod account;
mod admin;
mod api_keys;
mod bad_input;
mod browser;
mod cookies;
mod cors;
mod edge;
mod email;
mod flow;
mod helpers;
mod lockout;
mod log_secrets;
mod mfa;
mod mtls;
mod oauth;
mod openapi;
mod outbox;
mod proxy;
mod rate_limit;
mod rejections;
mod revocation;
mod security_events;
mod sessions;
mod tokens;
mod traces;
