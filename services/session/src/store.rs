//! Sessions and their refresh-token chains in Postgres.

use aia_audit_client::EventBuilder;
use aia_db::PgPool;
use aia_db::scope::{self, Scope};
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::blacklist::{Blacklist, Kind};
use crate::refresh_token::RefreshToken;
use crate::schema::{refresh_tokens, sessions};

/// Lifetimes of sessions and refresh tokens.
#[derive(Debug, Clone, Copy)]
pub struct Lifetimes {
    /// A refresh token unused this long expires.
    pub idle: chrono::Duration,
    /// No session outlives this.
    pub absolute: chrono::Duration,
    /// How long after a rotation the old token still gets the same successor.
    pub grace: chrono::Duration,
}

/// A new session's first token.
#[derive(Debug)]
pub struct Created {
    /// The session id.
    pub session_id: uuid::Uuid,
    /// Its first refresh token.
    pub token: RefreshToken,
    /// When that token expires if unused.
    pub expires_at: DateTime<Utc>,
}

/// What presenting a refresh token led to.
#[derive(Debug)]
pub enum Rotation {
    /// The token was current; it is now rotated, and this is its successor.
    Rotated(Rotated),
    /// The token was rotated within the grace window and its successor is still
    /// unused: a retry (a lost response, or a race between tabs) gets the same
    /// successor again, not a new branch.
    Replayed(Rotated),
    /// A rotated token presented outside the rules: someone holds a copy of it. The
    /// caller revokes the whole session.
    Reused {
        /// The compromised session.
        session_id: uuid::Uuid,
        /// Its user.
        user_id: uuid::Uuid,
    },
    /// Unknown, expired, or its session is over.
    Refused,
}

/// A live session's side of a rotation.
struct Live {
    session_id: uuid::Uuid,
    user_id: uuid::Uuid,
    expires_at: DateTime<Utc>,
    issued_at: DateTime<Utc>,
    amr: Vec<String>,
}

/// What the rotation transaction found (the successor token is added after it).
enum Outcome {
    Rotated(Live),
    Replayed(Live),
    Reused {
        session_id: uuid::Uuid,
        user_id: uuid::Uuid,
    },
    Refused,
}

/// A token that did not claim its row: was it rotated moments ago (a retry), long
/// ago or after its successor was used (reuse), or is it simply dead?
async fn already_rotated(
    conn: &mut diesel_async::AsyncPgConnection,
    old_hash: &[u8],
    derived_successor: &[u8],
    now: DateTime<Utc>,
    grace: chrono::Duration,
) -> Result<Outcome, diesel::result::Error> {
    type Row = (
        Option<DateTime<Utc>>,
        Option<Vec<u8>>,
        uuid::Uuid,
        uuid::Uuid,
        Option<DateTime<Utc>>,
        DateTime<Utc>,
        Vec<String>,
    );
    let row: Option<Row> = refresh_tokens::table
        .inner_join(sessions::table)
        .filter(refresh_tokens::token_hash.eq(old_hash))
        .select((
            refresh_tokens::rotated_at,
            refresh_tokens::successor_hash,
            refresh_tokens::session_id,
            sessions::user_id,
            sessions::revoked_at,
            sessions::expires_at,
            sessions::amr,
        ))
        .first(conn)
        .await
        .optional()?;
    let Some((Some(rotated_at), Some(successor_hash), session_id, user_id, None, session_end, amr)) =
        row
    else {
        // Unknown, expired without rotation, or its session is revoked.
        return Ok(Outcome::Refused);
    };
    if session_end <= now {
        return Ok(Outcome::Refused);
    }
    let successor: Option<(Option<DateTime<Utc>>, DateTime<Utc>)> = refresh_tokens::table
        .find(&successor_hash)
        .select((refresh_tokens::rotated_at, refresh_tokens::expires_at))
        .first(conn)
        .await
        .optional()?;
    let within_grace = now - rotated_at <= grace;
    match successor {
        Some((None, expires_at)) if within_grace && successor_hash == derived_successor => {
            Ok(Outcome::Replayed(Live {
                session_id,
                user_id,
                expires_at,
                issued_at: rotated_at,
                amr,
            }))
        }
        // The successor was derived with another key (SESSION_SECRET changed): not
        // the same client retrying, but no evidence of theft either.
        Some((None, _)) if within_grace => Ok(Outcome::Refused),
        _ => Ok(Outcome::Reused {
            session_id,
            user_id,
        }),
    }
}

/// The outcome of a successful rotation.
#[derive(Debug)]
pub struct Rotated {
    /// The session (unchanged by rotation).
    pub session_id: uuid::Uuid,
    /// Its user.
    pub user_id: uuid::Uuid,
    /// The successor token.
    pub token: RefreshToken,
    /// When the successor expires if unused.
    pub expires_at: DateTime<Utc>,
    /// When the rotation happened: the issue time of the pair's access token.
    pub issued_at: DateTime<Utc>,
    /// How the user authenticated at login.
    pub amr: Vec<String>,
}

/// A session as listed to its user.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = sessions)]
pub struct SessionRow {
    /// Session id.
    pub id: uuid::Uuid,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last refresh.
    pub last_used_at: DateTime<Utc>,
    /// Absolute end.
    pub expires_at: DateTime<Utc>,
    /// IP at login.
    pub ip: String,
    /// User agent at login.
    pub user_agent: String,
}

/// Where a request came from.
#[derive(Debug, Default, Clone)]
pub struct Client {
    /// Client IP.
    pub ip: String,
    /// User agent.
    pub user_agent: String,
}

/// Sessions in Postgres.
#[derive(Clone)]
pub struct SessionStore {
    pool: PgPool,
    lifetimes: Lifetimes,
    /// Derives each successor token from its predecessor (see `RefreshToken::successor`).
    successor_key: std::sync::Arc<[u8]>,
}

impl SessionStore {
    /// A store over `pool`.
    pub fn new(pool: PgPool, lifetimes: Lifetimes, successor_key: &[u8]) -> Self {
        Self {
            pool,
            lifetimes,
            successor_key: successor_key.into(),
        }
    }

    /// Starts a session and issues its first refresh token.
    pub async fn create(
        &self,
        user_id: uuid::Uuid,
        client: &Client,
        amr: &[String],
        now: DateTime<Utc>,
    ) -> anyhow::Result<Created> {
        let session_id = uuid::Uuid::new_v4();
        let token = RefreshToken::generate()?;
        let session_end = now + self.lifetimes.absolute;
        let expires_at = (now + self.lifetimes.idle).min(session_end);
        let hash = token.hash();
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            scope::set(conn, Scope::User(&owner)).await?;
            diesel::insert_into(sessions::table)
                .values((
                    sessions::id.eq(session_id),
                    sessions::user_id.eq(user_id),
                    sessions::created_at.eq(now),
                    sessions::last_used_at.eq(now),
                    sessions::expires_at.eq(session_end),
                    sessions::ip.eq(&client.ip),
                    sessions::user_agent.eq(&client.user_agent),
                    sessions::amr.eq(amr),
                ))
                .execute(conn)
                .await?;
            diesel::insert_into(refresh_tokens::table)
                .values((
                    refresh_tokens::token_hash.eq(&hash),
                    refresh_tokens::session_id.eq(session_id),
                    refresh_tokens::created_at.eq(now),
                    refresh_tokens::expires_at.eq(expires_at),
                ))
                .execute(conn)
                .await?;
            Ok(())
        })
        .await
        .context("creating a session")?;
        Ok(Created {
            session_id,
            token,
            expires_at,
        })
    }

    /// Exchanges `presented` for a successor (see [`Rotation`] for the outcomes).
    ///
    /// Atomic: the token row is claimed with one conditional UPDATE
    /// (`rotated_at IS NULL`), so of concurrent calls exactly one rotates; the others
    /// wait on the row lock, find the row rotated, and are answered as retries within
    /// the grace window: with the same successor.
    ///
    /// `event` makes the audit event of a rotation (from the session and user ids); it
    /// is written in the rotation's own transaction, so it is stored if and only if
    /// the rotation is.
    pub async fn rotate<'a>(
        &self,
        presented: &RefreshToken,
        now: DateTime<Utc>,
        event: impl FnOnce(uuid::Uuid, uuid::Uuid) -> EventBuilder<'a> + Send,
    ) -> anyhow::Result<Rotation> {
        let successor = presented.successor(&self.successor_key)?;
        let old_hash = presented.hash();
        let new_hash = successor.hash();
        let (idle, grace) = (self.lifetimes.idle, self.lifetimes.grace);
        let mut conn = aia_db::conn(&self.pool).await?;
        let outcome = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                // Found by the token's hash: the user is what the lookup finds.
                scope::set(conn, Scope::Service).await?;
                let claimed: Option<uuid::Uuid> = diesel::update(refresh_tokens::table)
                    .filter(refresh_tokens::token_hash.eq(&old_hash))
                    .filter(refresh_tokens::rotated_at.is_null())
                    .filter(refresh_tokens::expires_at.gt(now))
                    .set((
                        refresh_tokens::rotated_at.eq(now),
                        refresh_tokens::successor_hash.eq(&new_hash),
                    ))
                    .returning(refresh_tokens::session_id)
                    .get_result(conn)
                    .await
                    .optional()?;
                let Some(session_id) = claimed else {
                    return already_rotated(conn, &old_hash, &new_hash, now, grace).await;
                };
                let live: Option<(uuid::Uuid, DateTime<Utc>, Vec<String>)> =
                    diesel::update(sessions::table.find(session_id))
                        .filter(sessions::revoked_at.is_null())
                        .filter(sessions::expires_at.gt(now))
                        .set(sessions::last_used_at.eq(now))
                        .returning((sessions::user_id, sessions::expires_at, sessions::amr))
                        .get_result(conn)
                        .await
                        .optional()?;
                let Some((user_id, session_end, amr)) = live else {
                    // Undo the claim: the session is over, nothing rotates.
                    return Err(diesel::result::Error::RollbackTransaction);
                };
                let expires_at = (now + idle).min(session_end);
                diesel::insert_into(refresh_tokens::table)
                    .values((
                        refresh_tokens::token_hash.eq(&new_hash),
                        refresh_tokens::session_id.eq(session_id),
                        refresh_tokens::created_at.eq(now),
                        refresh_tokens::expires_at.eq(expires_at),
                    ))
                    .execute(conn)
                    .await?;
                event(session_id, user_id).write_in(conn).await?;
                Ok(Outcome::Rotated(Live {
                    session_id,
                    user_id,
                    expires_at,
                    issued_at: now,
                    amr,
                }))
            })
            .await;
        let rotated = move |live: Live| Rotated {
            session_id: live.session_id,
            user_id: live.user_id,
            token: successor,
            expires_at: live.expires_at,
            issued_at: live.issued_at,
            amr: live.amr,
        };
        match outcome {
            Ok(Outcome::Rotated(live)) => Ok(Rotation::Rotated(rotated(live))),
            Ok(Outcome::Replayed(live)) => Ok(Rotation::Replayed(rotated(live))),
            Ok(Outcome::Reused {
                session_id,
                user_id,
            }) => Ok(Rotation::Reused {
                session_id,
                user_id,
            }),
            Ok(Outcome::Refused) | Err(diesel::result::Error::RollbackTransaction) => {
                Ok(Rotation::Refused)
            }
            Err(e) => Err(e).context("rotating a refresh token"),
        }
    }

    /// A user's live sessions, newest first.
    pub async fn live_sessions(
        &self,
        user_id: uuid::Uuid,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Vec<SessionRow>> {
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            scope::set(conn, Scope::User(&owner)).await?;
            sessions::table
                .filter(sessions::user_id.eq(user_id))
                .filter(sessions::revoked_at.is_null())
                .filter(sessions::expires_at.gt(now))
                .order(sessions::created_at.desc())
                .select(SessionRow::as_select())
                .load(conn)
                .await
        })
        .await
        .context("listing sessions")
    }

    /// Revokes every live session of `user_id` but `keep` at `now` (and those that
    /// ended after `since`, whose last access tokens may still be valid) in one
    /// transaction, with their blacklist entries and `event` (given the count of live
    /// ones): all of them, or none and an error. The ids revoked, and how many of
    /// them were live.
    pub async fn revoke_all<'a>(
        &self,
        user_id: uuid::Uuid,
        keep: Option<uuid::Uuid>,
        reason: &str,
        (now, since): (DateTime<Utc>, DateTime<Utc>),
        blacklist_until: DateTime<Utc>,
        event: impl FnOnce(usize) -> EventBuilder<'a> + Send,
    ) -> anyhow::Result<(Vec<uuid::Uuid>, usize)> {
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            scope::set(conn, Scope::User(&owner)).await?;
            let ended: Vec<(uuid::Uuid, DateTime<Utc>)> = diesel::update(sessions::table)
                .filter(sessions::user_id.eq(user_id))
                .filter(sessions::revoked_at.is_null())
                .filter(sessions::expires_at.gt(since))
                .filter(sessions::id.ne(keep.unwrap_or(uuid::Uuid::nil())))
                .set((
                    sessions::revoked_at.eq(now),
                    sessions::revoke_reason.eq(reason),
                ))
                .returning((sessions::id, sessions::expires_at))
                .get_results(conn)
                .await?;
            let mut ids: Vec<uuid::Uuid> = ended.iter().map(|(id, _)| *id).collect();
            ids.sort();
            for id in &ids {
                Blacklist::store_in(conn, (Kind::Sid, *id, blacklist_until)).await?;
            }
            // Counted (in the answer and the event): the sessions that were live.
            let live = ended.iter().filter(|(_, expires)| *expires > now).count();
            event(live).write_in(conn).await?;
            Ok((ids, live))
        })
        .await
        .context("revoking a user's sessions")
    }

    /// The session (and its user) that `token` belongs to, rotated or not.
    pub async fn session_of(
        &self,
        token: &RefreshToken,
    ) -> anyhow::Result<Option<(uuid::Uuid, uuid::Uuid)>> {
        let hash = token.hash();
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            scope::set(conn, Scope::Service).await?;
            refresh_tokens::table
                .inner_join(sessions::table)
                .filter(refresh_tokens::token_hash.eq(hash))
                .select((sessions::id, sessions::user_id))
                .first(conn)
                .await
                .optional()
        })
        .await
        .context("looking up a refresh token's session")
    }

    /// Marks a session of `user_id` revoked. `Some(true)` if it was live until now,
    /// `Some(false)` if it was already revoked, `None` if `user_id` has no such session.
    ///
    /// `event`, if given, is written in the revoking transaction when this call is the
    /// one that revokes; otherwise it is handed back, unwritten.
    ///
    /// The session's blacklist entry (`sid`, until `blacklist_until`) is stored in the
    /// same transaction, also when the session was revoked before (which repairs an
    /// entry a crash kept from being written before this change): a session is never
    /// revoked without its access tokens being blacklisted.
    #[allow(clippy::too_many_arguments)]
    pub async fn revoke<'a>(
        &self,
        session_id: uuid::Uuid,
        user_id: uuid::Uuid,
        reason: &str,
        now: DateTime<Utc>,
        blacklist_until: DateTime<Utc>,
        event: Option<EventBuilder<'a>>,
    ) -> anyhow::Result<(Option<bool>, Option<EventBuilder<'a>>)> {
        let owner = user_id.to_string();
        let mut conn = aia_db::conn(&self.pool).await?;
        // Conditional on still being live: of two concurrent logouts one revokes.
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            scope::set(conn, Scope::User(&owner)).await?;
            // The session row is locked before its blacklist entry, in the order
            // `revoke_all` takes them (the other order deadlocked against it).
            let exists: Option<Option<DateTime<Utc>>> = sessions::table
                .find(session_id)
                .filter(sessions::user_id.eq(user_id))
                .select(sessions::revoked_at)
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let Some(previous) = exists else {
                return Ok((None, event));
            };
            Blacklist::store_in(conn, (Kind::Sid, session_id, blacklist_until)).await?;
            if previous.is_some() {
                return Ok((Some(false), event));
            }
            let changed = diesel::update(sessions::table.find(session_id))
                .filter(sessions::revoked_at.is_null())
                .set((
                    sessions::revoked_at.eq(now),
                    sessions::revoke_reason.eq(reason),
                ))
                .execute(conn)
                .await?;
            match event {
                Some(event) if changed == 1 => {
                    event.write_in(conn).await?;
                    Ok((Some(true), None))
                }
                event => Ok((Some(changed == 1), event)),
            }
        })
        .await
        .context("revoking a session")
    }
}

#[cfg(test)]
mod tests {
    //! Expiry with a controlled clock: the store takes `now` as an argument, so these
    //! tests move time forward instead of waiting, against a real Postgres.
    use super::*;

    const DAY: i64 = 86_400;

    async fn store() -> anyhow::Result<(SessionStore, aia_testkit::TestDb)> {
        let db = aia_testkit::TestDb::create().await?;
        let lifetimes = Lifetimes {
            idle: chrono::Duration::days(30),
            absolute: chrono::Duration::days(90),
            grace: chrono::Duration::seconds(10),
        };
        Ok((
            SessionStore::new(aia_db::pool(&db.url, 2)?, lifetimes, b"test key"),
            db,
        ))
    }

    fn at(start: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
        start + chrono::Duration::seconds(seconds)
    }

    async fn rotate(
        store: &SessionStore,
        token: &RefreshToken,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<Rotated>> {
        let audit = aia_audit_client::AuditClient::outbox_only(
            "session",
            store.pool.clone(),
            "session.audit_outbox",
        );
        let event = |_, _| audit.event("session.refresh", aia_proto::audit::v1::Outcome::Success);
        Ok(match store.rotate(token, now, event).await? {
            Rotation::Rotated(r) => Some(r),
            _ => None,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refresh_token_unused_for_the_idle_time_expires() -> anyhow::Result<()> {
        let (store, db) = store().await?;
        let start = Utc::now();
        let created = store
            .create(
                uuid::Uuid::new_v4(),
                &Client::default(),
                &["pwd".to_owned()],
                start,
            )
            .await?;
        assert!(
            rotate(&store, &created.token, at(start, 30 * DAY + 1))
                .await?
                .is_none()
        );
        db.drop_database().await?;
        Ok(())
    }

    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    async fn outbox_rows(store: &SessionStore) -> anyhow::Result<i64> {
        let mut conn = aia_db::conn(&store.pool).await?;
        Ok(
            diesel::sql_query("SELECT count(*) AS n FROM session.audit_outbox")
                .get_result::<Count>(&mut conn)
                .await?
                .n,
        )
    }

    /// The audit event of a change is stored with the change, and only then.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_are_written_in_the_changes_own_transaction() -> anyhow::Result<()> {
        let (store, db) = store().await?;
        let now = Utc::now();
        let user = uuid::Uuid::new_v4();
        let created = store
            .create(user, &Client::default(), &["pwd".to_owned()], now)
            .await?;
        // A rotation that happens writes its event.
        let rotated = rotate(&store, &created.token, now).await?;
        assert!(rotated.is_some());
        assert_eq!(outbox_rows(&store).await?, 1);
        // A refused rotation (the session was revoked meanwhile) rolls back: no event.
        let audit = aia_audit_client::AuditClient::outbox_only(
            "session",
            store.pool.clone(),
            "session.audit_outbox",
        );
        let logout = || Some(audit.event("session.logout", aia_proto::audit::v1::Outcome::Success));
        let (revoked, unwritten) = store
            .revoke(created.session_id, user, "logout", now, now, logout())
            .await?;
        assert_eq!(revoked, Some(true));
        assert!(unwritten.is_none());
        assert_eq!(outbox_rows(&store).await?, 2);
        let successor = rotated.map(|r| r.token);
        if let Some(successor) = successor {
            assert!(rotate(&store, &successor, now).await?.is_none());
        }
        assert_eq!(
            outbox_rows(&store).await?,
            2,
            "a refused rotation wrote an event"
        );
        // Revoking again changes nothing: the event comes back unwritten.
        let (revoked, unwritten) = store
            .revoke(created.session_id, user, "logout", now, now, logout())
            .await?;
        assert_eq!(revoked, Some(false));
        assert!(unwritten.is_some());
        assert_eq!(outbox_rows(&store).await?, 2);
        db.drop_database().await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn using_a_session_keeps_it_alive_but_never_past_its_absolute_end() -> anyhow::Result<()>
    {
        let (store, db) = store().await?;
        let start = Utc::now();
        let created = store
            .create(
                uuid::Uuid::new_v4(),
                &Client::default(),
                &["pwd".to_owned()],
                start,
            )
            .await?;
        // Used every 29 days: each use extends the idle window ...
        let mut token = created.token;
        for day in [29, 58, 87] {
            let rotated = rotate(&store, &token, at(start, day * DAY)).await?;
            let rotated = rotated.ok_or_else(|| anyhow::anyhow!("refused on day {day}"))?;
            // ... but the successor never outlives the session.
            assert!(
                rotated.expires_at <= at(start, 90 * DAY),
                "day {day}: {}",
                rotated.expires_at
            );
            token = rotated.token;
        }
        // Day 87's token would be idle-valid until day 117; the session ends on day 90.
        assert!(
            rotate(&store, &token, at(start, 90 * DAY + 1))
                .await?
                .is_none()
        );
        db.drop_database().await?;
        Ok(())
    }
}
