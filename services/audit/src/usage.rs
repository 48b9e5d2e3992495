//! Usage per caller and route class per hour (migration 000018): the gateways count
//! requests and send the counts here, where they add up; admins read them back.

use aia_db::PgPool;
use aia_proto::audit::v1::{QueryUsageRequest, UsageCount};
use aia_telemetry::grpc::{internal, unavailable};
use chrono::{DateTime, Timelike, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::{AsyncConnection, RunQueryDsl};
use tonic::Status;

use crate::schema::usage;

/// Counts accepted per call.
pub const MAX_COUNTS: usize = 10_000;

type Row = (DateTime<Utc>, String, String, i64, i64);

fn valid_caller(caller: &str) -> bool {
    let Some((kind, id)) = caller.split_once(':') else {
        return false;
    };
    matches!(kind, "user" | "key")
        && (32..=36).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn row(c: UsageCount) -> Result<Row, Status> {
    let hour = c
        .hour
        .and_then(|t| DateTime::from_timestamp(t.seconds, 0))
        .filter(|h| h.minute() == 0 && h.second() == 0)
        .ok_or_else(|| Status::invalid_argument("hour must be the start of an hour"))?;
    if !valid_caller(&c.caller) {
        return Err(Status::invalid_argument(
            "caller must be user:<id> or key:<id>",
        ));
    }
    let class_ok = !c.route_class.is_empty()
        && c.route_class.len() <= 32
        && c.route_class
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-');
    if !class_ok {
        return Err(Status::invalid_argument(
            "route_class must be 1-32 characters of [a-z-]",
        ));
    }
    if c.requests < 0 || c.errors < 0 || c.errors > c.requests {
        return Err(Status::invalid_argument(
            "requests and errors must be counts, errors at most requests",
        ));
    }
    Ok((hour, c.caller, c.route_class, c.requests, c.errors))
}

/// Adds `counts` up, in one transaction (all or nothing), unless batch `batch_id`
/// was added already.
pub async fn record(pool: &PgPool, batch_id: &str, counts: Vec<UsageCount>) -> Result<(), Status> {
    if counts.len() > MAX_COUNTS {
        return Err(Status::invalid_argument("at most 10000 counts per call"));
    }
    let batch = uuid::Uuid::parse_str(batch_id)
        .map_err(|_| Status::invalid_argument("batch_id must be a UUID"))?;
    let mut rows = counts.into_iter().map(row).collect::<Result<Vec<_>, _>>()?;
    // One order for every writer, so concurrent gateways never deadlock.
    rows.sort_by(|a, b| (&a.1, a.0, &a.2).cmp(&(&b.1, b.0, &b.2)));
    let mut conn = aia_db::conn(pool).await.map_err(unavailable)?;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::sql_query(
            "DELETE FROM audit.usage_batches WHERE recorded_at < now() - interval '1 day'",
        )
        .execute(conn)
        .await?;
        let first_time = diesel::sql_query(
            "INSERT INTO audit.usage_batches (id) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind::<diesel::sql_types::Uuid, _>(batch)
        .execute(conn)
        .await?;
        if first_time == 0 {
            return Ok(());
        }
        for chunk in rows.chunks(1000) {
            let values: Vec<_> = chunk
                .iter()
                .map(|(hour, caller, class, requests, errors)| {
                    (
                        usage::hour.eq(hour),
                        usage::caller.eq(caller),
                        usage::route_class.eq(class),
                        usage::requests.eq(requests),
                        usage::errors.eq(errors),
                    )
                })
                .collect();
            diesel::insert_into(usage::table)
                .values(values)
                .on_conflict((usage::caller, usage::hour, usage::route_class))
                .do_update()
                .set((
                    usage::requests.eq(usage::requests + excluded(usage::requests)),
                    usage::errors.eq(usage::errors + excluded(usage::errors)),
                ))
                .execute(conn)
                .await?;
        }
        Ok(())
    })
    .await
    .map_err(|e| internal(anyhow::Error::new(e).context("recording usage")))
}

/// One caller's (or every caller's) usage since a time, newest hour first.
pub async fn query(pool: &PgPool, q: QueryUsageRequest) -> Result<Vec<UsageCount>, Status> {
    let limit = match q.limit {
        0 => 100,
        n @ 1..=1000 => i64::from(n),
        _ => return Err(Status::invalid_argument("limit must be at most 1000")),
    };
    let since = match q.since {
        Some(t) => DateTime::from_timestamp(t.seconds, 0)
            .ok_or_else(|| Status::invalid_argument("since is out of range"))?,
        None => Utc::now() - chrono::Duration::hours(24),
    };
    if !q.caller.is_empty() && !valid_caller(&q.caller) {
        return Err(Status::invalid_argument(
            "caller must be user:<id> or key:<id>",
        ));
    }
    let mut query = usage::table
        .filter(usage::hour.ge(since))
        .order((usage::hour.desc(), usage::requests.desc()))
        .limit(limit)
        .into_boxed();
    if !q.caller.is_empty() {
        query = query.filter(usage::caller.eq(q.caller));
    }
    let mut conn = aia_db::conn(pool).await.map_err(unavailable)?;
    let rows: Vec<Row> = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            crate::reads::begin(conn, aia_db::scope::Scope::Service).await?;
            query
                .select((
                    usage::hour,
                    usage::caller,
                    usage::route_class,
                    usage::requests,
                    usage::errors,
                ))
                .load(conn)
                .await
        })
        .await
        .map_err(|e| crate::reads::failed(e, "reading usage"))?;
    Ok(rows
        .into_iter()
        .map(|(hour, caller, route_class, requests, errors)| UsageCount {
            hour: Some(prost_types::Timestamp {
                seconds: hour.timestamp(),
                nanos: 0,
            }),
            caller,
            route_class,
            requests,
            errors,
        })
        .collect())
}

/// Removes usage older than `before` (retention); how many rows went.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>) -> anyhow::Result<usize> {
    let mut conn = aia_db::conn(pool).await?;
    Ok(diesel::delete(usage::table.filter(usage::hour.lt(before)))
        .execute(&mut conn)
        .await?)
}
