//! Risk scores and detectors, applied by the audit service to each event it stores.
//!
//! **Scores** (0..=100) are sums of named rules, capped at 100, stored with the names
//! (`risk_reasons`) so that every score explains itself:
//!
//! | event | rule | points |
//! |---|---|---|
//! | `auth.login` failure | `login_failed` | 20 |
//! | | `repeated_failures`: the account failed 5+ times in the last 15 min | +30 |
//! | | `ip_fails_across_accounts`: the IP failed on 3+ accounts in 15 min | +30 |
//! | `auth.login` success | `new_ip`: the account never logged in from this IP | 30 |
//! | | `new_user_agent`: nor with this user agent | +15 |
//! | | `success_after_failures`: 5+ failures in the 15 min before | +30 |
//! | | `dormant_account`: no login for 90 days | +10 |
//! | `auth.mfa` failure | `mfa_failed` | 30 |
//! | `auth.lockout` | `lockout` | 60 |
//! | `session.refresh_reuse` | `refresh_token_reuse` | 90 |
//! | `admin.*` | `admin_action` | 40 |
//! | `gateway.rejected` | `rejected_requests` | 10 |
//! | `alert.*` | the detector's name | 100 |
//!
//! (`new_ip`, `new_user_agent` and `dormant_account` need a previous successful
//! login of the account: the first one is not suspicious by itself.)
//!
//! "IP" means network everywhere here, as in the gateway's rate limiter: an IPv4
//! address, or an IPv6 address's /64 (SQL `audit.ip_network`). Per IPv6 address, a
//! /64's holder could rotate past every per-IP rule, and privacy addresses would make
//! each login of a user at home a `new_ip`.
//!
//! **Detectors** run over sliding windows ending at the stored event and raise alerts,
//! which are events themselves (`alert.*`, producer `audit`, risk 100), stored in the
//! same transaction and chained like any other; each raises at most one alert per key
//! per window:
//!
//! | alert | when (defaults; `DETECT_*` settings change them) |
//! |---|---|
//! | `alert.brute_force` | 10 failed logins on one account within 5 min |
//! | `alert.credential_stuffing` | failed logins from one IP on 5 accounts, or 10 for unknown emails, within 10 min |
//! | `alert.refresh_token_reuse` | a rotated refresh token was presented again (once per account and network per hour) |
//! | `alert.many_ips` | successful logins of one account from 4 IPs within 10 min |
//! | `alert.rate_limit_surge` | 1000 rate-limited requests (gateway aggregates) within 5 min |

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::event::NewEvent;

const FAILURES_FOR_REPEATED: i64 = 5;
const ACCOUNTS_FOR_IP_RULE: i64 = 3;
const DORMANT_DAYS: i64 = 90;

/// What the scoring rules of a login need to know about the past.
#[derive(Debug, Default, Clone, QueryableByName)]
pub(crate) struct Facts {
    /// Failed logins of the account in the 15 min before.
    #[diesel(sql_type = BigInt)]
    pub(crate) account_failures: i64,
    /// Accounts the IP failed to log in to in the 15 min before.
    #[diesel(sql_type = BigInt)]
    pub(crate) ip_failed_accounts: i64,
    /// The account's last successful login before this event.
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub(crate) last_success: Option<DateTime<Utc>>,
    /// Some successful login of the account came from this IP.
    #[diesel(sql_type = Bool)]
    pub(crate) known_ip: bool,
    /// Some successful login of the account came with this user agent.
    #[diesel(sql_type = Bool)]
    pub(crate) known_agent: bool,
}

/// The score of `e` given `facts`, and the rules that gave it.
pub(crate) fn score(e: &NewEvent, facts: &Facts) -> (i16, Vec<String>) {
    let mut rules: Vec<(&str, i16)> = Vec::new();
    let failed = e.outcome == "failure";
    match e.event_type.as_str() {
        "auth.login" if failed => {
            rules.push(("login_failed", 20));
            if facts.account_failures >= FAILURES_FOR_REPEATED {
                rules.push(("repeated_failures", 30));
            }
            if facts.ip_failed_accounts >= ACCOUNTS_FOR_IP_RULE {
                rules.push(("ip_fails_across_accounts", 30));
            }
        }
        "auth.login" => {
            if let Some(last) = facts.last_success {
                if !facts.known_ip && !e.source_ip.is_empty() {
                    rules.push(("new_ip", 30));
                }
                if !facts.known_agent && !e.user_agent.is_empty() {
                    rules.push(("new_user_agent", 15));
                }
                if e.occurred_at - last > chrono::Duration::days(DORMANT_DAYS) {
                    rules.push(("dormant_account", 10));
                }
            }
            if facts.account_failures >= FAILURES_FOR_REPEATED {
                rules.push(("success_after_failures", 30));
            }
        }
        "auth.mfa" if failed => rules.push(("mfa_failed", 30)),
        "auth.lockout" => rules.push(("lockout", 60)),
        "session.refresh_reuse" => rules.push(("refresh_token_reuse", 90)),
        "gateway.rejected" => rules.push(("rejected_requests", 10)),
        t if t.starts_with("admin.") => rules.push(("admin_action", 40)),
        t if t.starts_with("alert.") => rules.push((t.trim_start_matches("alert."), 100)),
        _ => {}
    }
    let total = rules.iter().map(|(_, p)| *p).sum::<i16>().min(100);
    (
        total,
        rules.into_iter().map(|(r, _)| r.to_owned()).collect(),
    )
}

/// The events whose failure is a wrong guess at an account's secrets: its password
/// at the login form, its second factor at the login's second step, and the password
/// or code a signed-in session presents (a change of password, a new API key, TOTP
/// turned on or off). The brute-force detector and the login scores count them all:
/// guessing with the password already known, or with a stolen session, is guessing.
pub(crate) const GUESSES: [&str; 6] = [
    "auth.login",
    "auth.mfa",
    "auth.password_change",
    "auth.api_key_created",
    "auth.mfa_enroll",
    "auth.mfa_disabled",
];

/// [`GUESSES`] as an SQL list, for the queries below.
const GUESSES_SQL: &str = "('auth.login', 'auth.mfa', 'auth.password_change', \
     'auth.api_key_created', 'auth.mfa_enroll', 'auth.mfa_disabled')";

/// The account a login event is about.
fn account(e: &NewEvent) -> &str {
    if e.subject.is_empty() {
        &e.actor
    } else {
        &e.subject
    }
}

/// Looks up the facts `e` is scored on (only logins need any) and scores it.
pub(crate) async fn annotate(
    conn: &mut AsyncPgConnection,
    e: &mut NewEvent,
) -> diesel::QueryResult<()> {
    let facts = if e.event_type == "auth.login" {
        diesel::sql_query(format!(
            "SELECT \
               (SELECT count(*) FROM audit.events WHERE $1 <> '' AND subject = $1 \
                  AND event_type IN {GUESSES_SQL} AND outcome = 'failure' \
                  AND occurred_at > $3 - interval '15 minutes' AND occurred_at <= $3) AS account_failures, \
               (SELECT count(DISTINCT subject) FROM audit.events WHERE $2 <> '' \
                  AND source_ip <> '' AND audit.ip_network(source_ip) = audit.ip_network($2) \
                  AND subject <> '' AND event_type = 'auth.login' AND outcome = 'failure' \
                  AND occurred_at > $3 - interval '15 minutes' AND occurred_at <= $3) AS ip_failed_accounts, \
               (SELECT max(occurred_at) FROM audit.events WHERE $1 <> '' AND subject = $1 \
                  AND event_type = 'auth.login' AND outcome = 'success' AND occurred_at <= $3) AS last_success, \
               EXISTS (SELECT 1 FROM audit.events WHERE $1 <> '' AND subject = $1 \
                  AND event_type = 'auth.login' AND outcome = 'success' \
                  AND audit.ip_network(source_ip) = audit.ip_network($2)) AS known_ip, \
               EXISTS (SELECT 1 FROM audit.events WHERE $1 <> '' AND subject = $1 \
                  AND event_type = 'auth.login' AND outcome = 'success' \
                  AND md5(user_agent) = md5($4) AND user_agent = $4) AS known_agent",
        ))
        .bind::<Text, _>(account(e))
        .bind::<Text, _>(&e.source_ip)
        .bind::<Timestamptz, _>(e.occurred_at)
        .bind::<Text, _>(&e.user_agent)
        .get_result::<Facts>(conn)
        .await?
    } else {
        Facts::default()
    };
    let (score, reasons) = score(e, &facts);
    e.risk_score = score;
    e.risk_reasons = reasons;
    Ok(())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// One detector: a name, the key it watches, a window and a threshold.
#[derive(Debug, Clone, Copy)]
struct Rule {
    alert: &'static str,
    window_secs: i32,
    threshold: i64,
}

impl Rule {
    fn new(alert: &'static str, rate: aia_settings::Rate) -> Self {
        Self {
            alert,
            window_secs: i32::try_from(rate.period.as_secs()).unwrap_or(i32::MAX),
            threshold: i64::from(rate.limit),
        }
    }
}

/// The detectors, with their thresholds and windows from the settings
/// (`DETECT_*`; the table above gives the defaults).
#[derive(Debug, Clone, Copy)]
pub struct Detectors {
    brute_force: Rule,
    stuffing: Rule,
    stuffing_unknown: i64,
    many_ips: Rule,
    rate_limit_surge: Rule,
}

impl Detectors {
    /// The detectors `settings` describe.
    pub fn new(settings: &aia_settings::DetectorSettings) -> Self {
        Self {
            brute_force: Rule::new("alert.brute_force", settings.brute_force),
            stuffing: Rule::new("alert.credential_stuffing", settings.credential_stuffing),
            stuffing_unknown: i64::from(settings.stuffing_unknown_emails),
            many_ips: Rule::new("alert.many_ips", settings.many_ips),
            rate_limit_surge: Rule::new("alert.rate_limit_surge", settings.rate_limit_surge),
        }
    }
}

impl Default for Detectors {
    fn default() -> Self {
        Self::new(&aia_settings::DetectorSettings::default())
    }
}

async fn count(
    conn: &mut AsyncPgConnection,
    sql: &str,
    key: &str,
    at: DateTime<Utc>,
    window_secs: i32,
) -> diesel::QueryResult<i64> {
    Ok(diesel::sql_query(sql)
        .bind::<Text, _>(key)
        .bind::<Timestamptz, _>(at)
        .bind::<Integer, _>(window_secs)
        .get_result::<Count>(conn)
        .await?
        .n)
}

/// The rate-limited requests of the surge window (the gateway aggregates them per
/// key and minute, with a count). Its reason is a literal so that the partial index
/// `events_rate_limited_time` (migration 000023) serves it whatever the plan.
const RATE_LIMITED_IN_WINDOW: &str = "SELECT COALESCE(sum((details->>'count')::bigint), 0)::bigint AS n \
     FROM audit.events \
     WHERE event_type = 'gateway.rejected' AND details->>'reason' = 'rate_limit' \
     AND occurred_at > $1 - make_interval(secs => $2) AND occurred_at <= $1";

/// The query of [`raised`] for a key condition. `LIKE 'alert.%'` is the partial index
/// `events_alerts_time`'s predicate, written out so that it serves whatever the plan
/// (migration 000025).
fn raised_sql(keyed: &str) -> String {
    format!(
        "SELECT count(*) AS n FROM audit.events WHERE event_type LIKE 'alert.%' \
         AND event_type = $4 AND {keyed} \
         AND occurred_at > $2 - make_interval(secs => $3) AND occurred_at <= $2"
    )
}

/// True if `rule` already raised an alert for `key` (a subject, or an IP when
/// `by_ip`) within its window before `at`.
async fn raised(
    conn: &mut AsyncPgConnection,
    rule: &Rule,
    key: &str,
    by_ip: bool,
    at: DateTime<Utc>,
) -> diesel::QueryResult<bool> {
    let keyed = if by_ip {
        "source_ip <> '' AND audit.ip_network(source_ip) = audit.ip_network($1)"
    } else {
        "subject = $1"
    };
    let n = diesel::sql_query(raised_sql(keyed))
        .bind::<Text, _>(key)
        .bind::<Timestamptz, _>(at)
        .bind::<Integer, _>(rule.window_secs)
        .bind::<Text, _>(rule.alert)
        .get_result::<Count>(conn)
        .await?
        .n;
    Ok(n > 0)
}

fn alert(
    rule: &Rule,
    trigger: &NewEvent,
    subject: &str,
    source_ip: &str,
    details: serde_json::Value,
) -> NewEvent {
    let mut details = details;
    if let Some(map) = details.as_object_mut() {
        map.insert("trigger_event".into(), trigger.id.to_string().into());
        map.insert("window_seconds".into(), rule.window_secs.into());
        map.insert("threshold".into(), rule.threshold.into());
    }
    let mut e = NewEvent {
        id: uuid::Uuid::new_v4(),
        occurred_at: trigger.occurred_at,
        event_type: rule.alert.to_owned(),
        outcome: "failure".to_owned(),
        actor: "audit".to_owned(),
        subject: subject.to_owned(),
        source_ip: source_ip.to_owned(),
        user_agent: String::new(),
        request_id: trigger.request_id.clone(),
        producer: "audit".to_owned(),
        details,
        risk_score: 0,
        risk_reasons: Vec::new(),
        // The alert belongs to the trace of the event that tripped it.
        traceparent: trigger.traceparent.clone(),
    };
    let (score, reasons) = score(&e, &Facts::default());
    e.risk_score = score;
    e.risk_reasons = reasons;
    e
}

/// An account's refresh-token reuse from one network raises one alert per this many
/// seconds.
const REUSE_ALERT_WINDOW_SECS: i32 = 3600;

/// True if `rule` already raised an alert about `subject` from the network of `ip`
/// within its window before `at`.
async fn raised_from(
    conn: &mut AsyncPgConnection,
    rule: &Rule,
    subject: &str,
    ip: &str,
    at: DateTime<Utc>,
) -> diesel::QueryResult<bool> {
    let n = diesel::sql_query(raised_sql(
        "subject = $1 AND audit.ip_network(source_ip) = audit.ip_network($5)",
    ))
    .bind::<Text, _>(subject)
    .bind::<Timestamptz, _>(at)
    .bind::<Integer, _>(rule.window_secs)
    .bind::<Text, _>(rule.alert)
    .bind::<Text, _>(ip)
    .get_result::<Count>(conn)
    .await?
    .n;
    Ok(n > 0)
}

/// The alerts `e` (just stored) raises. Runs under the chain's lock (taken by the
/// insert), so concurrent writers cannot raise the same alert twice.
pub(crate) async fn detect(
    conn: &mut AsyncPgConnection,
    e: &NewEvent,
    d: &Detectors,
) -> diesel::QueryResult<Vec<NewEvent>> {
    let (brute_force, stuffing, many_ips, surge) = (
        &d.brute_force,
        &d.stuffing,
        &d.many_ips,
        &d.rate_limit_surge,
    );
    let mut alerts = Vec::new();
    let at = e.occurred_at;
    let failed = e.outcome == "failure";
    if failed && GUESSES.contains(&e.event_type.as_str()) {
        let who = account(e);
        if !who.is_empty() {
            let n = count(
                conn,
                &format!(
                    "SELECT count(*) AS n FROM audit.events WHERE subject = $1 \
                     AND event_type IN {GUESSES_SQL} AND outcome = 'failure' \
                     AND occurred_at > $2 - make_interval(secs => $3) AND occurred_at <= $2"
                ),
                who,
                at,
                brute_force.window_secs,
            )
            .await?;
            if n >= brute_force.threshold && !raised(conn, brute_force, who, false, at).await? {
                alerts.push(alert(
                    brute_force,
                    e,
                    who,
                    "",
                    serde_json::json!({"failures": n}),
                ));
            }
        }
    }
    match e.event_type.as_str() {
        "auth.login" if failed && !e.source_ip.is_empty() => {
            let accounts = count(
                conn,
                "SELECT count(DISTINCT subject) AS n FROM audit.events \
                 WHERE source_ip <> '' AND audit.ip_network(source_ip) = audit.ip_network($1) \
                 AND subject <> '' AND event_type = 'auth.login' AND outcome = 'failure' \
                 AND occurred_at > $2 - make_interval(secs => $3) AND occurred_at <= $2",
                &e.source_ip,
                at,
                stuffing.window_secs,
            )
            .await?;
            let unknown = count(
                conn,
                "SELECT count(*) AS n FROM audit.events \
                 WHERE source_ip <> '' AND audit.ip_network(source_ip) = audit.ip_network($1) \
                 AND event_type = 'auth.login' AND outcome = 'failure' \
                 AND details->>'reason' = 'unknown_email' \
                 AND occurred_at > $2 - make_interval(secs => $3) AND occurred_at <= $2",
                &e.source_ip,
                at,
                stuffing.window_secs,
            )
            .await?;
            if (accounts >= stuffing.threshold || unknown >= d.stuffing_unknown)
                && !raised(conn, stuffing, &e.source_ip, true, at).await?
            {
                alerts.push(alert(
                    stuffing,
                    e,
                    "",
                    &e.source_ip,
                    serde_json::json!({"accounts": accounts, "unknown_emails": unknown}),
                ));
            }
        }
        "auth.login" => {
            let who = account(e);
            if !who.is_empty() {
                let ips = count(
                    conn,
                    "SELECT count(DISTINCT audit.ip_network(source_ip)) AS n FROM audit.events \
                     WHERE subject = $1 \
                     AND source_ip <> '' AND event_type = 'auth.login' AND outcome = 'success' \
                     AND occurred_at > $2 - make_interval(secs => $3) AND occurred_at <= $2",
                    who,
                    at,
                    many_ips.window_secs,
                )
                .await?;
                if ips >= many_ips.threshold && !raised(conn, many_ips, who, false, at).await? {
                    alerts.push(alert(many_ips, e, who, "", serde_json::json!({"ips": ips})));
                }
            }
        }
        "session.refresh_reuse" => {
            // Once per account and network per window: each reuse is on the trail
            // (and its session revoked) anyway, and a user replaying their own
            // rotated tokens, one login after another, must not flood the responders;
            // a reuse from another network (a thief elsewhere) is alerted, as is one
            // that names no account.
            let reuse = Rule {
                alert: "alert.refresh_token_reuse",
                window_secs: REUSE_ALERT_WINDOW_SECS,
                threshold: 1,
            };
            let who = &e.actor;
            if who.is_empty() || !raised_from(conn, &reuse, who, &e.source_ip, at).await? {
                alerts.push(alert(
                    &reuse,
                    e,
                    if who.is_empty() { &e.subject } else { who },
                    &e.source_ip,
                    serde_json::json!({"user": e.actor, "session": e.subject, "action": "session_revoked"}),
                ));
            }
        }
        "gateway.rejected" if e.details["reason"] == "rate_limit" => {
            // Once alerted in the window, no sum: before it, the window holds fewer
            // rate-limited rejections than the threshold (each counts at least 1).
            let alerted = raised(conn, surge, "", false, at).await?;
            if !alerted {
                let hits = diesel::sql_query(RATE_LIMITED_IN_WINDOW)
                    .bind::<Timestamptz, _>(at)
                    .bind::<Integer, _>(surge.window_secs)
                    .get_result::<Count>(conn)
                    .await?
                    .n;
                if hits >= surge.threshold {
                    alerts.push(alert(
                        surge,
                        e,
                        "",
                        "",
                        serde_json::json!({"rate_limited": hits}),
                    ));
                }
            }
        }
        _ => {}
    }
    for a in &alerts {
        metrics::counter!("audit_alerts_total", "alert" => a.event_type.clone()).increment(1);
    }
    Ok(alerts)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The detectors' queries under the chain lock read through their own indexes:
    /// the surge sum only the rate-limited rejections (not every rejection of the
    /// window), the "already alerted?" check only alerts (for the subject-less surge
    /// alert, not every surge alert kept).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_surge_checks_read_through_their_own_indexes() -> anyhow::Result<()> {
        #[derive(diesel::QueryableByName)]
        struct Plan {
            #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
            line: String,
        }
        let text = |plan: Vec<Plan>| {
            plan.into_iter()
                .map(|p| p.line)
                .collect::<Vec<_>>()
                .join("\n")
        };
        let db = aia_testkit::TestDb::create().await?;
        let mut conn = db.connect().await?;
        diesel::sql_query("SET enable_seqscan = off")
            .execute(&mut conn)
            .await?;
        let sum = diesel::sql_query(format!("EXPLAIN {RATE_LIMITED_IN_WINDOW}"))
            .bind::<Timestamptz, _>(Utc::now())
            .bind::<Integer, _>(300)
            .load::<Plan>(&mut conn)
            .await
            .map(text)?;
        let alerted = diesel::sql_query(format!("EXPLAIN {}", raised_sql("subject = $1")))
            .bind::<Text, _>("")
            .bind::<Timestamptz, _>(Utc::now())
            .bind::<Integer, _>(300)
            .bind::<Text, _>("alert.rate_limit_surge")
            .load::<Plan>(&mut conn)
            .await
            .map(text)?;
        drop(conn);
        db.drop_database().await?;
        assert!(sum.contains("events_rate_limited_time"), "{sum}");
        assert!(alerted.contains("events_alerts_time"), "{alerted}");
        Ok(())
    }

    #[test]
    fn the_sql_list_of_guesses_is_the_list() {
        let listed = GUESSES
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        assert_eq!(
            GUESSES_SQL.split_whitespace().collect::<String>(),
            format!("({listed})").split_whitespace().collect::<String>()
        );
    }

    fn event(event_type: &str, outcome: &str) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::new_v4(),
            occurred_at: Utc::now(),
            event_type: event_type.to_owned(),
            outcome: outcome.to_owned(),
            actor: String::new(),
            subject: "u1".to_owned(),
            source_ip: "203.0.113.9".to_owned(),
            user_agent: "curl/8".to_owned(),
            request_id: String::new(),
            producer: "auth".to_owned(),
            details: serde_json::json!({}),
            risk_score: 0,
            risk_reasons: Vec::new(),
            traceparent: String::new(),
        }
    }

    #[test]
    fn scores_name_their_rules_and_stop_at_100() {
        let failure = event("auth.login", "failure");
        assert_eq!(
            score(&failure, &Facts::default()),
            (20, vec!["login_failed".into()])
        );
        let hot = Facts {
            account_failures: 5,
            ip_failed_accounts: 3,
            ..Facts::default()
        };
        assert_eq!(score(&failure, &hot).0, 80);
        // A first login is not suspicious; a later one from a new IP and agent is.
        let success = event("auth.login", "success");
        assert_eq!(score(&success, &Facts::default()), (0, vec![]));
        let seen_before = Facts {
            last_success: Some(Utc::now() - chrono::Duration::days(100)),
            ..hot
        };
        let (points, reasons) = score(&success, &seen_before);
        assert_eq!(points, 85);
        assert_eq!(
            reasons,
            vec![
                "new_ip",
                "new_user_agent",
                "dormant_account",
                "success_after_failures"
            ]
        );
        assert_eq!(
            score(
                &event("session.refresh_reuse", "failure"),
                &Facts::default()
            )
            .0,
            90
        );
        assert_eq!(
            score(&event("admin.user_disabled", "success"), &Facts::default()).0,
            40
        );
        assert_eq!(
            score(&event("alert.brute_force", "failure"), &Facts::default()).0,
            100
        );
        assert_eq!(
            score(&event("auth.register", "success"), &Facts::default()).0,
            0
        );
    }
}
