//! `aia.audit.v1.AuditService`.

use aia_db::PgPool;
use aia_db::scope::{self, Scope};
use aia_proto::audit::v1::audit_service_server::AuditService;
use aia_proto::audit::v1::{
    KeyCount, Outcome, QueryRequest, QueryResponse, QueryUsageRequest, QueryUsageResponse,
    RecordBatchRequest, RecordBatchResponse, RecordRequest, RecordResponse, RecordUsageRequest,
    RecordUsageResponse, StoredEvent, StreamRequest, SummaryRequest, SummaryResponse,
    TypeOutcomeCount, VerifyChainRequest, VerifyChainResponse,
};
use aia_telemetry::grpc::{internal, unavailable};
use aia_telemetry::tls::authorize;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tonic::{Request, Response, Status};
use tracing::Instrument;

/// Who may read the trail (Query, Stream, Summary, QueryUsage): auth alone, which
/// verifies the token of the user or admin it reads for (`QueryOwnEvents`,
/// `Admin*Events`). The trail holds every user's addresses and activity; the
/// gateway's certificate alone reads none of it.
const READERS: &[&str] = &["auth"];

use crate::event::{EventRow, NewEvent};
use crate::schema::events;

/// Most events in one RecordBatch.
const MAX_BATCH: usize = 1000;
/// How often a Stream looks for new events. Polling by sequence number works the same
/// whichever audit replica stored them.
const STREAM_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// Events per poll, at most.
const STREAM_BATCH: i64 = 500;
/// Events a slow Stream client may have in flight before the poller waits for it.
const STREAM_BUFFER: usize = 256;

/// The audit service's state.
#[derive(Clone)]
pub struct Audit {
    pool: PgPool,
    detectors: crate::risk::Detectors,
}

impl Audit {
    /// A service over `pool`, raising alerts as `detectors` say.
    pub fn new(pool: PgPool, detectors: crate::risk::Detectors) -> Self {
        Self { pool, detectors }
    }

    /// Inserts validated events in order, in one transaction, skipping ids already
    /// stored: each is scored first (`risk`), and each new one runs the detectors,
    /// whose alerts are stored right after it. Returns how many were new.
    async fn store(&self, rows: Vec<NewEvent>) -> Result<usize, Status> {
        let mut conn = aia_db::conn(&self.pool).await.map_err(unavailable)?;
        let stored = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                // Appending (and the detectors' look-backs) concern every account.
                scope::set(conn, Scope::Service).await?;
                let mut stored = 0;
                for mut row in rows {
                    // Each event is stored in a span of the trace that produced it.
                    let span = tracing::info_span!(
                        "audit.store",
                        event.id = %row.id,
                        event_type = %row.event_type,
                    );
                    aia_telemetry::otel::continue_traceparent(&span, &row.traceparent);
                    let new = async {
                        crate::risk::annotate(conn, &mut row).await?;
                        let new = insert(conn, &row).await?;
                        if new {
                            for alert in crate::risk::detect(conn, &row, &self.detectors).await? {
                                insert(conn, &alert).await?;
                            }
                        }
                        Ok::<_, diesel::result::Error>(new)
                    }
                    .instrument(span)
                    .await?;
                    stored += usize::from(new);
                }
                Ok(stored)
            })
            .await
            .map_err(|e| internal(anyhow::Error::new(e).context("inserting events")))?;
        metrics::counter!("audit_events_stored_total").increment(stored as u64);
        Ok(stored)
    }
}

/// The event families each service of the platform records.
const FAMILIES: [(&str, &[&str]); 3] = [
    ("gateway", &["gateway."]),
    ("auth", &["auth.", "admin."]),
    ("session", &["session.", "token."]),
];

/// Families only this service writes (its detectors and retention), never over RPC.
const OWN_FAMILIES: [&str; 2] = ["alert.", "audit."];

/// Who may record what: the platform's services only (not every certificate of the
/// CA: your services get those to call `ValidateToken`), each under its own name and
/// its own event families: with internal TLS or a mesh, an event's `producer` must be
/// the calling service and its type one of that service's families (the gateway
/// cannot file an `auth.login`, under any producer, that the risk rules would take
/// for a real one). Nobody records `alert.*` or `audit.*` over RPC. The check to apply
/// to each event of the call.
fn producer_check<T>(
    request: &Request<T>,
) -> Result<impl Fn(&NewEvent) -> Result<(), Status> + use<T>, Status> {
    let caller = aia_telemetry::tls::caller(request, &aia_telemetry::tls::SERVICES)?;
    Ok(move |event: &NewEvent| {
        let own = OWN_FAMILIES.iter().any(|f| event.event_type.starts_with(f));
        let permitted = !own
            && caller.is_none_or(|service| {
                event.producer == service
                    && FAMILIES.iter().any(|(name, families)| {
                        *name == service && families.iter().any(|f| event.event_type.starts_with(f))
                    })
            });
        if permitted {
            Ok(())
        } else {
            metrics::counter!("grpc_calls_refused_total", "reason" => "event_not_callers")
                .increment(1);
            Err(Status::permission_denied(
                "a service records only its own events, under its own name",
            ))
        }
    })
}

#[tonic::async_trait]
impl AuditService for Audit {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn record(
        &self,
        request: Request<RecordRequest>,
    ) -> Result<Response<RecordResponse>, Status> {
        let caller = producer_check(&request)?;
        let event = request
            .into_inner()
            .event
            .ok_or_else(|| Status::invalid_argument("event is required"))?;
        let row = NewEvent::try_from(event).map_err(|e| Status::invalid_argument(e.to_string()))?;
        caller(&row)?;
        let stored = self.store(vec![row]).await? == 1;
        Ok(Response::new(RecordResponse { stored }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(count))]
    async fn record_batch(
        &self,
        request: Request<RecordBatchRequest>,
    ) -> Result<Response<RecordBatchResponse>, Status> {
        let caller = producer_check(&request)?;
        let events = request.into_inner().events;
        tracing::Span::current().record("count", events.len());
        if events.len() > MAX_BATCH {
            return Err(Status::invalid_argument("at most 1000 events per batch"));
        }
        if events.is_empty() {
            return Ok(Response::new(RecordBatchResponse { stored: 0 }));
        }
        let rows = events
            .into_iter()
            .map(NewEvent::try_from)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        rows.iter().try_for_each(&caller)?;
        let stored = self.store(rows).await?;
        Ok(Response::new(RecordBatchResponse {
            stored: u32::try_from(stored).unwrap_or(u32::MAX),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        authorize(&request, READERS)?;
        let q = request.into_inner();
        let limit = match q.limit {
            0 => 100,
            n @ 1..=500 => i64::from(n),
            _ => return Err(Status::invalid_argument("limit must be at most 500")),
        };
        let mut query = filtered(&q)?.order(events::seq.desc()).limit(limit + 1);
        if !q.cursor.is_empty() {
            let before: i64 = q
                .cursor
                .parse()
                .map_err(|_| Status::invalid_argument("cursor is not one this service issued"))?;
            query = query.filter(events::seq.lt(before));
        }
        let mut conn = aia_db::conn(&self.pool).await.map_err(unavailable)?;
        // A user's own view (`involving`) sees only their rows, whatever the filters.
        let involving = q.involving.clone();
        let mut rows: Vec<EventRow> = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let who = if involving.is_empty() {
                    Scope::Service
                } else {
                    Scope::User(&involving)
                };
                crate::reads::begin(conn, who).await?;
                query.load(conn).await
            })
            .await
            .map_err(|e| crate::reads::failed(e, "querying events"))?;
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| r.seq().to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(QueryResponse {
            events: rows.into_iter().map(StoredEvent::from).collect(),
            next_cursor,
        }))
    }

    type StreamStream = tokio_stream::wrappers::ReceiverStream<Result<StoredEvent, Status>>;

    #[tracing::instrument(level = "info", skip_all)]
    async fn stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        authorize(&request, READERS)?;
        let r = request.into_inner();
        let filter = r.filter.unwrap_or_default();
        // Check the filter once, before anything is streamed.
        filtered(&filter)?;
        let pool = self.pool.clone();
        let newest = {
            let mut conn = aia_db::conn(&pool).await.map_err(unavailable)?;
            conn.transaction::<_, diesel::result::Error, _>(async |conn| {
                crate::reads::begin(conn, Scope::Service).await?;
                events::table
                    .select(diesel::dsl::max(events::seq))
                    .first::<Option<i64>>(conn)
                    .await
            })
            .await
            .map_err(|e| crate::reads::failed(e, "reading the last seq"))?
            .unwrap_or(0)
        };
        // A resumption point past the newest event is no event's: the stream would
        // stay silent until the trail caught up with it.
        if r.after_seq > newest {
            return Err(Status::invalid_argument(
                "after_seq is past the newest event: resume from an id this stream sent",
            ));
        }
        let mut last = if r.after_seq > 0 { r.after_seq } else { newest };
        let (tx, rx) = tokio::sync::mpsc::channel(STREAM_BUFFER);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(STREAM_POLL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = tx.closed() => return,
                }
                // Up to the newest stored event (seqs are committed in order, under
                // the chain lock): when fewer than a batch match, everything up to it
                // has been seen, so the next poll starts there instead of scanning
                // again every row the filter skipped.
                let rows = async {
                    let mut conn = aia_db::conn(&pool).await?;
                    let query =
                        filtered(&filter).map_err(|s| anyhow::anyhow!("{}", s.message()))?;
                    let found = conn
                        .transaction::<_, diesel::result::Error, _>(async |conn| {
                            crate::reads::begin(conn, Scope::Service).await?;
                            let upto = events::table
                                .select(diesel::dsl::max(events::seq))
                                .first::<Option<i64>>(conn)
                                .await?
                                .unwrap_or(last);
                            let rows: Vec<EventRow> = query
                                .filter(events::seq.gt(last))
                                .filter(events::seq.le(upto))
                                .order(events::seq.asc())
                                .limit(STREAM_BATCH)
                                .load(conn)
                                .await?;
                            Ok((rows, upto))
                        })
                        .await?;
                    Ok::<_, anyhow::Error>(found)
                };
                match rows.await {
                    Ok((rows, upto)) => {
                        let whole = rows.len() < usize::try_from(STREAM_BATCH).unwrap_or(0);
                        for row in rows {
                            last = row.seq();
                            if tx.send(Ok(StoredEvent::from(row))).await.is_err() {
                                return;
                            }
                        }
                        if whole {
                            last = last.max(upto);
                        }
                    }
                    // A filter too costly to poll ends the stream (the client narrows
                    // it); the database away keeps it open, and the poll tries again.
                    Err(error) => {
                        if error
                            .downcast_ref::<diesel::result::Error>()
                            .is_some_and(crate::reads::timed_out)
                        {
                            let _ = tx.send(Err(crate::reads::too_slow())).await;
                            return;
                        }
                        tracing::warn!(error = format!("{error:#}"), "stream poll failed");
                    }
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    #[tracing::instrument(level = "info", skip_all)]
    async fn summary(
        &self,
        request: Request<SummaryRequest>,
    ) -> Result<Response<SummaryResponse>, Status> {
        authorize(&request, READERS)?;
        let q = request.into_inner();
        let window = match q.window_seconds {
            0 => 3600,
            n @ 60..=2_592_000 => i64::from(n),
            _ => {
                return Err(Status::invalid_argument(
                    "window_seconds must be between 60 and 2592000",
                ));
            }
        };
        let top = match q.top {
            0 => 10,
            n @ 1..=100 => i64::from(n),
            _ => return Err(Status::invalid_argument("top must be at most 100")),
        };
        let since = chrono::Utc::now() - chrono::Duration::seconds(window);
        let mut conn = aia_db::conn(&self.pool).await.map_err(unavailable)?;
        let failed = || {
            events::table
                .filter(events::occurred_at.ge(since))
                .filter(events::outcome.eq("failure"))
        };
        let (counts, ips, subjects) = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                crate::reads::begin(conn, Scope::Service).await?;
                let counts: Vec<(String, String, i64)> = events::table
                    .filter(events::occurred_at.ge(since))
                    .group_by((events::event_type, events::outcome))
                    .select((
                        events::event_type,
                        events::outcome,
                        diesel::dsl::count_star(),
                    ))
                    .order(diesel::dsl::count_star().desc())
                    .load(conn)
                    .await?;
                // By network, as the risk rules count them (an IPv6 address by its
                // /64): a subscriber rotating addresses is one line, not many.
                let network =
                    || diesel::dsl::sql::<diesel::sql_types::Text>("audit.ip_network(source_ip)");
                let ips: Vec<(String, i64)> = failed()
                    .filter(events::source_ip.ne(""))
                    .group_by(network())
                    .select((network(), diesel::dsl::count_star()))
                    .order((diesel::dsl::count_star().desc(), network()))
                    .limit(top)
                    .load(conn)
                    .await?;
                let subjects: Vec<(String, i64)> = failed()
                    .filter(events::subject.ne(""))
                    .group_by(events::subject)
                    .select((events::subject, diesel::dsl::count_star()))
                    .order((diesel::dsl::count_star().desc(), events::subject))
                    .limit(top)
                    .load(conn)
                    .await?;
                Ok((counts, ips, subjects))
            })
            .await
            .map_err(|e| crate::reads::failed(e, "summarising events"))?;
        let keyed = |rows: Vec<(String, i64)>| {
            rows.into_iter()
                .map(|(key, count)| KeyCount { key, count })
                .collect()
        };
        Ok(Response::new(SummaryResponse {
            since: Some(prost_types::Timestamp {
                seconds: since.timestamp(),
                nanos: 0,
            }),
            counts: counts
                .into_iter()
                .map(|(event_type, outcome, count)| TypeOutcomeCount {
                    event_type,
                    outcome: if outcome == "success" {
                        Outcome::Success
                    } else {
                        Outcome::Failure
                    }
                    .into(),
                    count,
                })
                .collect(),
            top_failing_ips: keyed(ips),
            top_failing_subjects: keyed(subjects),
        }))
    }

    async fn record_usage(
        &self,
        request: Request<RecordUsageRequest>,
    ) -> Result<Response<RecordUsageResponse>, Status> {
        authorize(&request, &["gateway"])?;
        let r = request.into_inner();
        crate::usage::record(&self.pool, &r.batch_id, r.counts).await?;
        Ok(Response::new(RecordUsageResponse {}))
    }

    async fn query_usage(
        &self,
        request: Request<QueryUsageRequest>,
    ) -> Result<Response<QueryUsageResponse>, Status> {
        authorize(&request, READERS)?;
        let counts = crate::usage::query(&self.pool, request.into_inner()).await?;
        Ok(Response::new(QueryUsageResponse { counts }))
    }

    /// For operators' tools with a certificate of the CA named `ops` (under mTLS; a
    /// mesh has no such identity): no service of the platform calls it, and a
    /// verification of the whole chain is a long read (`aia verify-audit-chain`
    /// reads the database itself).
    async fn verify_chain(
        &self,
        request: Request<VerifyChainRequest>,
    ) -> Result<Response<VerifyChainResponse>, Status> {
        authorize(&request, &["ops"])?;
        let req = request.into_inner();
        if req.from_seq < 0 || req.to_seq < 0 {
            return Err(Status::invalid_argument(
                "from_seq and to_seq must not be negative",
            ));
        }
        let to = if req.to_seq == 0 {
            i64::MAX
        } else {
            req.to_seq
        };
        let checkpoint = match (req.checkpoint_seq, req.checkpoint_hash.as_slice()) {
            (0, []) => None,
            (seq, hash) if seq > 0 => Some(crate::chain::Checkpoint {
                seq,
                hash: hash
                    .try_into()
                    .map_err(|_| Status::invalid_argument("checkpoint_hash must be 32 bytes"))?,
            }),
            _ => {
                return Err(Status::invalid_argument(
                    "a checkpoint is a positive checkpoint_seq with a 32-byte checkpoint_hash",
                ));
            }
        };
        let report = crate::chain::verify(&self.pool, req.from_seq.max(1), to, checkpoint.as_ref())
            .await
            .map_err(unavailable)?;
        metrics::counter!("audit_chain_verifications_total", "intact" => report.broken_seq.is_none().to_string()).increment(1);
        let (head_seq, head_hash) = report
            .head
            .map_or((0, Vec::new()), |head| (head.seq, head.hash.to_vec()));
        Ok(Response::new(VerifyChainResponse {
            checked: report.checked,
            intact: report.broken_seq.is_none(),
            broken_seq: report.broken_seq.unwrap_or(0),
            reason: report.reason.unwrap_or_default(),
            head_seq,
            head_hash,
            checkpoint_pruned: report.checkpoint_pruned,
        }))
    }
}

/// A protobuf timestamp as a time the database compares.
fn time(t: &prost_types::Timestamp) -> Result<chrono::DateTime<chrono::Utc>, Status> {
    chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        .ok_or_else(|| Status::invalid_argument("timestamp out of range"))
}

/// Inserts one event unless its id is stored already; true if it was new.
async fn insert(conn: &mut AsyncPgConnection, row: &NewEvent) -> diesel::QueryResult<bool> {
    let n = diesel::insert_into(events::table)
        .values(row)
        .on_conflict(events::id)
        .do_nothing()
        .execute(conn)
        .await?;
    Ok(n == 1)
}

/// The rows of the events table that `q`'s filters select (limit, order and cursor
/// are the caller's).
type Filtered = events::BoxedQuery<
    'static,
    diesel::pg::Pg,
    diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<EventRow, diesel::pg::Pg>>,
>;

fn filtered(q: &QueryRequest) -> Result<Filtered, Status> {
    let mut query = events::table.select(EventRow::as_select()).into_boxed();
    if !q.event_type.is_empty() {
        query = query.filter(events::event_type.eq(q.event_type.clone()));
    }
    if !q.subject.is_empty() {
        query = query.filter(events::subject.eq(q.subject.clone()));
    }
    match Outcome::try_from(q.outcome) {
        Ok(Outcome::Unspecified) => {}
        Ok(Outcome::Success) => query = query.filter(events::outcome.eq("success")),
        Ok(Outcome::Failure) => query = query.filter(events::outcome.eq("failure")),
        Err(_) => return Err(Status::invalid_argument("outcome is not a known value")),
    }
    if !q.actor.is_empty() {
        query = query.filter(events::actor.eq(q.actor.clone()));
    }
    if !q.source_ip.is_empty() {
        query = query.filter(events::source_ip.eq(q.source_ip.clone()));
    }
    if !q.involving.is_empty() {
        query = query.filter(
            events::actor
                .eq(q.involving.clone())
                .or(events::subject.eq(q.involving.clone())),
        );
    }
    if let Some(since) = &q.since {
        query = query.filter(events::occurred_at.ge(time(since)?));
    }
    if let Some(until) = &q.until {
        query = query.filter(events::occurred_at.lt(time(until)?));
    }
    if q.type_prefixes.len() > 20
        || q.type_prefixes
            .iter()
            .any(|p| p.is_empty() || p.len() > 128)
    {
        return Err(Status::invalid_argument(
            "type_prefixes: at most 20, each 1..=128 bytes",
        ));
    }
    if !q.type_prefixes.is_empty() {
        let mut any: Box<
            dyn BoxableExpression<events::table, diesel::pg::Pg, SqlType = diesel::sql_types::Bool>,
        > = Box::new(diesel::dsl::sql::<diesel::sql_types::Bool>("false"));
        for prefix in &q.type_prefixes {
            // LIKE with the prefix's own wildcards escaped.
            let pattern = format!(
                "{}%",
                prefix
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            any = Box::new(any.or(events::event_type.like(pattern)));
        }
        query = query.filter(any);
    }
    if q.min_risk > 100 {
        return Err(Status::invalid_argument("min_risk must be at most 100"));
    }
    if q.min_risk > 0 {
        query = query.filter(events::risk_score.ge(i16::try_from(q.min_risk).unwrap_or(100)));
    }
    Ok(query)
}
