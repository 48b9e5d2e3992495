//! Users in Postgres.

use aia_audit_client::EventBuilder;
use aia_db::PgPool;
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};

use crate::domain::EmailAddress;
use crate::schema::{password_history, session_ends_due, users};

/// A password write ([`UserStore::set_password`]).
#[derive(Debug, Clone, Copy)]
pub struct PasswordWrite<'a> {
    /// Whose.
    pub user_id: uuid::Uuid,
    /// The hash read before the new one was made (what `only_if_unchanged`
    /// compares with; the history keeps the hash actually replaced).
    pub old_hash: &'a str,
    /// The new hash.
    pub new_hash: &'a str,
    /// Write only if the stored hash is still `old_hash`: a change that started
    /// before a reset committed must not undo the reset.
    pub only_if_unchanged: bool,
    /// The session the change leaves alive (the caller's own), if any.
    pub keep_session: Option<uuid::Uuid>,
    /// Why the other sessions end (`password_changed`, `password_reset`).
    pub reason: &'a str,
    /// Revoke every API key of the user too (a reset: the account may have been
    /// someone else's, and a key they made would outlive the sessions).
    pub revoke_api_keys: bool,
}

/// What a password write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordWritten {
    /// The id of the sessions-due row.
    pub due: i64,
    /// API keys revoked with it.
    pub api_keys_revoked: usize,
}

/// Sessions a password write must still end (`auth.session_ends_due`).
#[derive(Debug, diesel::QueryableByName)]
pub struct SessionsDue {
    /// The row.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    /// Whose sessions.
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub user_id: uuid::Uuid,
    /// The session to keep, if any.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub keep_session_id: Option<uuid::Uuid>,
    /// Why they end.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub reason: String,
}

/// A stored user.
#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    /// UUID.
    pub id: uuid::Uuid,
    /// Normalised email.
    pub email: String,
    /// PHC hash. Never leaves this service.
    pub password_hash: String,
    /// Whether the email is verified.
    pub email_verified: bool,
    /// Roles.
    pub roles: Vec<String>,
    /// Set when an admin disabled the account.
    pub disabled_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

/// Users in Postgres.
#[derive(Clone)]
pub struct UserStore {
    pool: PgPool,
}

impl UserStore {
    /// A store over `pool`.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Inserts a user unless the email is taken, with the audit event `event` makes
    /// for the new id in the same transaction. Returns the new id, or `None` when the
    /// email already belongs to someone (and no event is written).
    pub async fn insert<'a>(
        &self,
        email: &EmailAddress,
        password_hash: &str,
        event: impl FnOnce(uuid::Uuid) -> EventBuilder<'a>,
    ) -> anyhow::Result<Option<uuid::Uuid>> {
        self.insert_with_roles(email, password_hash, &["user"], event)
            .await
    }

    /// The user with this email.
    pub async fn by_email(&self, email: &EmailAddress) -> anyhow::Result<Option<User>> {
        let mut conn = aia_db::conn(&self.pool).await?;
        users::table
            .filter(users::email.eq(email.as_str()))
            .select(User::as_select())
            .first(&mut conn)
            .await
            .optional()
            .context("looking up a user by email")
    }

    /// Replaces the password hash of `write.user_id`, keeping the old one in the
    /// history (trimmed to `keep` entries), and records the sessions the change must
    /// end (`auth.session_ends_due`, see [`crate::sessions_due`]).
    /// `event` is written in the same transaction: stored if and only if the password
    /// changed. `None` (nothing written) when `write.only_if_unchanged` and the
    /// stored hash is no longer `write.old_hash`.
    pub async fn set_password(
        &self,
        write: PasswordWrite<'_>,
        keep: usize,
        event: EventBuilder<'_>,
    ) -> anyhow::Result<Option<PasswordWritten>> {
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let PasswordWrite {
            user_id,
            old_hash,
            new_hash,
            only_if_unchanged,
            keep_session,
            reason,
            revoke_api_keys,
        } = write;
        let mut conn = aia_db::conn(&self.pool).await?;
        let written = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                // The hash this write replaces, locked: a reset that overrides a
                // change committed since it read the user keeps that change's hash
                // in the history, not the one it read.
                let replaced: Option<String> = users::table
                    .filter(users::id.eq(user_id))
                    .select(users::password_hash)
                    .for_update()
                    .first(conn)
                    .await
                    .optional()?;
                let Some(replaced) = replaced else {
                    return Err(diesel::result::Error::RollbackTransaction);
                };
                if only_if_unchanged && replaced != old_hash {
                    return Err(diesel::result::Error::RollbackTransaction);
                }
                diesel::update(users::table.filter(users::id.eq(user_id)))
                    .set((users::password_hash.eq(new_hash), users::updated_at.eq(diesel::dsl::now)))
                    .execute(conn)
                    .await?;
                if keep > 0 {
                    diesel::insert_into(password_history::table)
                        .values((password_history::user_id.eq(user_id), password_history::password_hash.eq(&replaced)))
                        .execute(conn)
                        .await?;
                }
                diesel::sql_query(
                    "DELETE FROM auth.password_history WHERE user_id = $1 AND id NOT IN \
                     (SELECT id FROM auth.password_history WHERE user_id = $1 ORDER BY id DESC LIMIT $2)",
                )
                .bind::<diesel::sql_types::Uuid, _>(user_id)
                .bind::<diesel::sql_types::BigInt, _>(keep)
                .execute(conn)
                .await?;
                let due: i64 = diesel::insert_into(session_ends_due::table)
                    .values((
                        session_ends_due::user_id.eq(user_id),
                        session_ends_due::keep_session_id.eq(keep_session),
                        session_ends_due::reason.eq(reason),
                    ))
                    .returning(session_ends_due::id)
                    .get_result(conn)
                    .await?;
                let api_keys_revoked = if revoke_api_keys {
                    let owner = user_id.to_string();
                    aia_db::scope::set(conn, aia_db::scope::Scope::User(&owner)).await?;
                    diesel::sql_query(
                        "UPDATE auth.api_keys SET revoked_at = now() \
                         WHERE user_id = $1 AND revoked_at IS NULL",
                    )
                    .bind::<diesel::sql_types::Uuid, _>(user_id)
                    .execute(conn)
                    .await?
                } else {
                    0
                };
                event.write_in(conn).await?;
                Ok(PasswordWritten {
                    due,
                    api_keys_revoked,
                })
            })
            .await;
        match written {
            Ok(written) => Ok(Some(written)),
            Err(diesel::result::Error::RollbackTransaction) => Ok(None),
            Err(error) => Err(anyhow::Error::new(error).context("changing a password")),
        }
    }

    /// Claims the oldest sessions-due row whose `attempt_after` has passed (by the
    /// database's clock) for `lease`, if one is free (see [`crate::sessions_due`]).
    pub async fn claim_session_ends_due(
        &self,
        lease: std::time::Duration,
    ) -> anyhow::Result<Option<SessionsDue>> {
        let mut conn = aia_db::conn(&self.pool).await?;
        diesel::sql_query(
            "UPDATE auth.session_ends_due \
             SET attempt_after = now() + make_interval(secs => $1) \
             WHERE id = (SELECT id FROM auth.session_ends_due WHERE attempt_after <= now() \
                         ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
             RETURNING id, user_id, keep_session_id, reason",
        )
        .bind::<diesel::sql_types::Double, _>(lease.as_secs_f64())
        .get_result(&mut conn)
        .await
        .optional()
        .context("claiming sessions due")
    }

    /// Clears a sessions-due row once the sessions are ended.
    pub async fn session_ends_done(&self, due: i64) -> anyhow::Result<()> {
        let mut conn = aia_db::conn(&self.pool).await?;
        diesel::delete(session_ends_due::table.find(due))
            .execute(&mut conn)
            .await
            .context("clearing sessions due")?;
        Ok(())
    }

    /// Makes a sessions-due row retriable at once (its request gave up on it).
    pub async fn session_ends_retry_now(&self, due: i64) -> anyhow::Result<()> {
        let mut conn = aia_db::conn(&self.pool).await?;
        diesel::update(session_ends_due::table.find(due))
            .set(session_ends_due::attempt_after.eq(diesel::dsl::now))
            .execute(&mut conn)
            .await
            .context("making sessions due retriable")?;
        Ok(())
    }

    /// The last `n` previous password hashes of `user_id`, newest first.
    pub async fn password_history(
        &self,
        user_id: uuid::Uuid,
        n: usize,
    ) -> anyhow::Result<Vec<String>> {
        let mut conn = aia_db::conn(&self.pool).await?;
        password_history::table
            .filter(password_history::user_id.eq(user_id))
            .order(password_history::id.desc())
            .limit(i64::try_from(n).unwrap_or(i64::MAX))
            .select(password_history::password_hash)
            .load(&mut conn)
            .await
            .context("reading the password history")
    }

    /// Replaces a password hash in place (an upgrade of the same password to the
    /// current parameters; no history entry).
    ///
    /// Only while the stored hash is still `old_hash`, the one the password was just
    /// checked against: a password changed meanwhile is not put back. True if written.
    pub async fn upgrade_hash(
        &self,
        user_id: uuid::Uuid,
        old_hash: &str,
        new_hash: &str,
    ) -> anyhow::Result<bool> {
        let mut conn = aia_db::conn(&self.pool).await?;
        let changed = diesel::update(users::table.find(user_id))
            .filter(users::password_hash.eq(old_hash))
            .set(users::password_hash.eq(new_hash))
            .execute(&mut conn)
            .await
            .context("upgrading a password hash")?;
        Ok(changed == 1)
    }

    /// Users ordered by email after `after`, whose email contains `query`.
    pub async fn list(
        &self,
        query: &str,
        after: Option<&str>,
        limit: i64,
    ) -> anyhow::Result<Vec<User>> {
        let mut conn = aia_db::conn(&self.pool).await?;
        let mut q = users::table
            .select(User::as_select())
            .order(users::email.asc())
            .limit(limit)
            .into_boxed();
        if !query.is_empty() {
            let escaped = query
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            q = q.filter(users::email.like(format!("%{escaped}%")));
        }
        if let Some(after) = after {
            q = q.filter(users::email.gt(after.to_owned()));
        }
        q.load(&mut conn).await.context("listing users")
    }

    /// Replaces a user's roles, as the administrator `actor`.
    pub async fn set_roles(
        &self,
        actor: uuid::Uuid,
        user_id: uuid::Uuid,
        roles: &[String],
        event: EventBuilder<'_>,
    ) -> anyhow::Result<AdminChange> {
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            let locked = lock_for_admin(conn, actor, user_id).await?;
            if locked != AdminChange::Done {
                return Ok(locked);
            }
            // Only a real change is recorded (setting the same roles again is not).
            let changed = diesel::update(users::table.find(user_id))
                .filter(users::roles.ne(roles))
                .set((
                    users::roles.eq(roles),
                    users::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            event.write_in_if_changed(changed, conn).await?;
            Ok(AdminChange::Done)
        })
        .await
        .context("setting roles")
    }

    /// Marks the user's email verified, with its audit event.
    pub async fn set_verified(
        &self,
        user_id: uuid::Uuid,
        event: EventBuilder<'_>,
    ) -> anyhow::Result<()> {
        let mut conn = aia_db::conn(&self.pool).await?;
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            let changed = diesel::update(users::table.find(user_id))
                .filter(users::email_verified.eq(false))
                .set((
                    users::email_verified.eq(true),
                    users::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            event.write_in_if_changed(changed, conn).await
        })
        .await
        .context("verifying an email")?;
        Ok(())
    }

    /// Disables (or enables again) a user, with its audit event, as the
    /// administrator `actor`.
    pub async fn set_disabled(
        &self,
        actor: uuid::Uuid,
        user_id: uuid::Uuid,
        disabled: bool,
        event: EventBuilder<'_>,
    ) -> anyhow::Result<AdminChange> {
        let mut conn = aia_db::conn(&self.pool).await?;
        let when = disabled.then(chrono::Utc::now);
        conn.transaction::<_, diesel::result::Error, _>(async |conn| {
            let locked = lock_for_admin(conn, actor, user_id).await?;
            if locked != AdminChange::Done {
                return Ok(locked);
            }
            // Only a real change is recorded (disabling a disabled user is not).
            let changed = diesel::update(users::table.find(user_id))
                .filter(users::disabled_at.is_null().eq(disabled))
                .set((
                    users::disabled_at.eq(when),
                    users::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            event.write_in_if_changed(changed, conn).await?;
            Ok(AdminChange::Done)
        })
        .await
        .context("disabling a user")
    }

    /// Inserts a user with `roles` unless the email is taken, and its audit event in
    /// the same transaction (see [`UserStore::insert`]).
    pub async fn insert_with_roles<'a>(
        &self,
        email: &EmailAddress,
        password_hash: &str,
        roles: &[&str],
        event: impl FnOnce(uuid::Uuid) -> EventBuilder<'a>,
    ) -> anyhow::Result<Option<uuid::Uuid>> {
        let id = uuid::Uuid::new_v4();
        let event = event(id);
        let roles: Vec<String> = roles.iter().map(|r| (*r).to_owned()).collect();
        let mut conn = aia_db::conn(&self.pool).await?;
        let inserted = conn
            .transaction::<_, diesel::result::Error, _>(async |conn| {
                let inserted = diesel::insert_into(users::table)
                    .values((
                        users::id.eq(id),
                        users::email.eq(email.as_str()),
                        users::password_hash.eq(password_hash),
                        users::roles.eq(roles),
                    ))
                    .on_conflict(users::email)
                    .do_nothing()
                    .execute(conn)
                    .await?;
                if inserted == 1 {
                    event.write_in(conn).await?;
                }
                Ok(inserted == 1)
            })
            .await
            .context("inserting a user")?;
        Ok(inserted.then_some(id))
    }

    /// The user with this id.
    pub async fn by_id(&self, id: uuid::Uuid) -> anyhow::Result<Option<User>> {
        let mut conn = aia_db::conn(&self.pool).await?;
        users::table
            .find(id)
            .select(User::as_select())
            .first(&mut conn)
            .await
            .optional()
            .context("looking up a user by id")
    }
}

/// Whether an account with `roles`, disabled at `disabled_at`, may act as an
/// administrator.
pub fn active_admin(roles: &[String], disabled_at: Option<chrono::DateTime<chrono::Utc>>) -> bool {
    disabled_at.is_none() && roles.iter().any(|r| r == "admin")
}

/// What an administrator's change to a user came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminChange {
    /// Applied (or already so).
    Done,
    /// No such user.
    NoSuchUser,
    /// The actor is no longer an enabled administrator.
    NotAnAdmin,
}

/// Locks the administrator's row and the target's, in id order (two administrators
/// acting on each other at once queue instead of deadlocking), and checks under the
/// lock that the actor is still an enabled admin: checked before, two admins could
/// remove each other's role at once and leave none, and a just-demoted admin's
/// request in flight went through.
async fn lock_for_admin(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: uuid::Uuid,
    target: uuid::Uuid,
) -> Result<AdminChange, diesel::result::Error> {
    type Row = (
        uuid::Uuid,
        Vec<String>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let rows: Vec<Row> = users::table
        .filter(users::id.eq_any([actor, target]))
        .select((users::id, users::roles, users::disabled_at))
        .order(users::id)
        .for_update()
        .load(conn)
        .await?;
    let admin = rows
        .iter()
        .any(|(id, roles, disabled_at)| *id == actor && active_admin(roles, *disabled_at));
    Ok(if !admin {
        AdminChange::NotAnAdmin
    } else if rows.iter().any(|(id, ..)| *id == target) {
        AdminChange::Done
    } else {
        AdminChange::NoSuchUser
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::{Text, Uuid as SqlUuid};

    #[derive(diesel::QueryableByName)]
    struct Hash {
        #[diesel(sql_type = Text)]
        password_hash: String,
    }

    /// The history keeps the hash a write replaced, not the one its caller read: a
    /// reset overriding a change that committed meanwhile keeps the change's hash
    /// (so that password cannot be chosen again); a change made over a stale read
    /// writes nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_history_keeps_the_hash_actually_replaced() -> anyhow::Result<()> {
        let db = aia_testkit::TestDb::create().await?;
        let pool = aia_db::pool(&db.url, 2)?;
        let audit =
            aia_audit_client::AuditClient::outbox_only("auth", pool.clone(), "auth.audit_outbox");
        let store = UserStore::new(pool);
        let user = uuid::Uuid::new_v4();
        let mut conn = db.connect().await?;
        diesel::sql_query(
            "INSERT INTO auth.users (id, email, password_hash) VALUES ($1, 'h@example.com', 'read')",
        )
        .bind::<SqlUuid, _>(user)
        .execute(&mut conn)
        .await?;
        // A change commits after the reset read 'read'.
        diesel::sql_query("UPDATE auth.users SET password_hash = 'changed' WHERE id = $1")
            .bind::<SqlUuid, _>(user)
            .execute(&mut conn)
            .await?;
        let write = |new_hash, only_if_unchanged| PasswordWrite {
            user_id: user,
            old_hash: "read",
            new_hash,
            only_if_unchanged,
            keep_session: None,
            reason: "password_reset",
            revoke_api_keys: false,
        };
        let event = || {
            audit.event(
                "auth.password_reset",
                aia_proto::audit::v1::Outcome::Success,
            )
        };
        assert_eq!(
            store.set_password(write("stale", true), 5, event()).await?,
            None
        );
        assert!(
            store
                .set_password(write("reset", false), 5, event())
                .await?
                .is_some()
        );
        let history: Vec<Hash> = diesel::sql_query(
            "SELECT password_hash FROM auth.password_history WHERE user_id = $1 ORDER BY id",
        )
        .bind::<SqlUuid, _>(user)
        .load(&mut conn)
        .await?;
        let history: Vec<&str> = history.iter().map(|h| h.password_hash.as_str()).collect();
        assert_eq!(history, ["changed"]);
        let now: Vec<Hash> =
            diesel::sql_query("SELECT password_hash FROM auth.users WHERE id = $1")
                .bind::<SqlUuid, _>(user)
                .load(&mut conn)
                .await?;
        assert_eq!(
            now.iter()
                .map(|h| h.password_hash.as_str())
                .collect::<Vec<_>>(),
            ["reset"]
        );
        drop(conn);
        db.drop_database().await?;
        Ok(())
    }
}
