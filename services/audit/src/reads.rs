//! The reads administrators and users make (Query, Summary, Stream, usage): each in a
//! transaction that sets its row scope and a statement timeout. The gateway gives up
//! on a call after 10 s; without a bound, Postgres went on scanning for a client that
//! had left (a filter no index serves, on a table retention may never prune).

use aia_db::scope::{self, Scope};
use aia_telemetry::grpc::internal;
use diesel_async::AsyncPgConnection;
use tonic::Status;

/// How long one statement of a read may run (Summary makes three: within the
/// gateway's 10 s all the same).
const TIMEOUT_MS: u32 = 3_000;

/// Starts a read in the current transaction: `who` it acts for, and the timeout.
pub(crate) async fn begin(conn: &mut AsyncPgConnection, who: Scope<'_>) -> diesel::QueryResult<()> {
    begin_with(conn, who, TIMEOUT_MS).await
}

async fn begin_with(
    conn: &mut AsyncPgConnection,
    who: Scope<'_>,
    timeout_ms: u32,
) -> diesel::QueryResult<()> {
    scope::set_with_timeout(conn, who, timeout_ms).await
}

/// A read's failure as a status: one that ran past its timeout is the query's own
/// cost (DEADLINE_EXCEEDED, and the caller narrows it), anything else internal.
pub(crate) fn failed(error: diesel::result::Error, what: &'static str) -> Status {
    if timed_out(&error) {
        too_slow()
    } else {
        internal(anyhow::Error::new(error).context(what))
    }
}

/// The answer to a read that ran past its timeout (counted).
pub(crate) fn too_slow() -> Status {
    metrics::counter!("audit_reads_timed_out_total").increment(1);
    Status::deadline_exceeded("the query ran too long: narrow its filters or its time range")
}

/// Whether `error` is a statement cancelled by its timeout.
pub(crate) fn timed_out(error: &diesel::result::Error) -> bool {
    matches!(error, diesel::result::Error::DatabaseError(_, info)
        if info.message().contains("statement timeout"))
}

#[cfg(test)]
mod tests {
    use diesel::sql_types::Text;
    use diesel_async::{AsyncConnection, RunQueryDsl};

    use super::*;

    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = Text)]
        statement_timeout: String,
    }

    #[tokio::test]
    async fn a_read_runs_under_a_timeout_and_a_slow_one_is_a_deadline_not_a_failure()
    -> anyhow::Result<()> {
        let db = aia_testkit::TestDb::create().await?;
        let mut conn = db.connect().await?;
        let timeout = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                begin(conn, Scope::Service).await?;
                diesel::sql_query("SHOW statement_timeout")
                    .get_result::<Setting>(conn)
                    .await
            })
            .await?
            .statement_timeout;
        assert_eq!(timeout, "3s");
        let slow = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                begin_with(conn, Scope::Service, 50).await?;
                diesel::sql_query("SELECT pg_sleep(2)").execute(conn).await
            })
            .await;
        let code = slow.err().map(|e| failed(e, "sleeping").code());
        assert_eq!(code, Some(tonic::Code::DeadlineExceeded));
        // Local to its transaction: the connection goes back to the pool without it.
        let after = diesel::sql_query("SHOW statement_timeout")
            .get_result::<Setting>(&mut conn)
            .await?
            .statement_timeout;
        assert_eq!(after, "0");
        drop(conn);
        db.drop_database().await?;
        Ok(())
    }
}
