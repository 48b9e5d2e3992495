//! Typed settings for every service, read from the environment.
//!
//! The environment is passed in as a map ([`Env`]) instead of being read from the
//! process, so tests build settings without touching global state. Each service has a
//! `*Settings` struct; they share [`Common`]. Reading never stops at the first
//! problem: every problem is collected and reported at once ([`SettingsError`]), with
//! the variable's name and what to do about it.
//!
//! `APP_ENV=development` (the default) fills in missing secrets with ephemeral values
//! and says so; `APP_ENV=production` refuses to start on anything weak (see
//! [`production`]).

mod check;
mod env;
pub mod production;
mod rate_limit;
mod services;
mod upstreams;

pub use check::production_readiness;
pub use env::{Env, Problem, SettingsError};
pub use rate_limit::{CLASSES as RATE_LIMIT_CLASSES, Rate, RateLimitSettings};
pub use services::{
    AppEnv, AuditSettings, AuthSettings, Common, DetectorSettings, ForwardedHeader,
    GatewaySettings, InternalTls, JwtAlgorithm, LockoutSettings, MailSettings, PasswordHashing,
    PasswordPolicySettings, SERVICE_LOGINS, SessionSettings, SigningKeySource, TokenSettings,
};
pub use upstreams::{Upstream, UpstreamSettings};
