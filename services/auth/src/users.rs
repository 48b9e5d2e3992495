//! Users in Postgres.

use aia_db::PgPool;
use anyhow::Context;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::domain::EmailAddress;
use crate::schema::users;

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

    /// Inserts a user unless the email is taken. Returns the new id, or `None` when the
    /// email already belongs to someone.
    pub async fn insert(
        &self,
        email: &EmailAddress,
        password_hash: &str,
    ) -> anyhow::Result<Option<uuid::Uuid>> {
        let id = uuid::Uuid::new_v4();
        let mut conn = aia_db::conn(&self.pool).await?;
        let inserted = diesel::insert_into(users::table)
            .values((
                users::id.eq(id),
                users::email.eq(email.as_str()),
                users::password_hash.eq(password_hash),
            ))
            .on_conflict(users::email)
            .do_nothing()
            .execute(&mut conn)
            .await
            .context("inserting a user")?;
        Ok((inserted == 1).then_some(id))
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
