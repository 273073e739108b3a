//! Customer accounts: register, log in, and bearer tokens that last 30 days.
//!
//! Passwords are stored as argon2id hashes; tokens as SHA-256 digests. A wrong password and an
//! unknown email fail the same way, after the same amount of hashing work.
//!
//! Guessing is slowed per email: after [`MAX_FAILED_LOGINS`] failures within
//! [`FAILURE_WINDOW_MS`] the email is locked for [`LOCKOUT_MS`], known or not, and a login for
//! it is refused (429) before any hashing. Hashing itself (each argon2 run holds ~19 MiB for
//! tens of milliseconds) runs on at most as many blocking threads as there are cores: a flood
//! of logins or registrations queues instead of taking the process's memory.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::sync::Arc;
use tokio::sync::Semaphore;

use crate::db::{Db, Tx, args};

/// How long a login lasts.
pub const TOKEN_TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;
/// Failed logins of one email within [`FAILURE_WINDOW_MS`] that lock it.
pub const MAX_FAILED_LOGINS: i64 = 5;
/// The window failed logins are counted in.
pub const FAILURE_WINDOW_MS: i64 = 15 * 60 * 1000;
/// How long a locked email stays locked.
pub const LOCKOUT_MS: i64 = 15 * 60 * 1000;
/// The longest password accepted (bytes): argon2's work grows with the input.
const MAX_PASSWORD_BYTES: usize = 1024;

/// Why an account operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum CustomerError {
    /// Bad input; the message says what.
    #[error("{0}")]
    Invalid(String),
    /// The email already has an account.
    #[error("an account with this email exists")]
    EmailTaken,
    /// Wrong email or password.
    #[error("wrong email or password")]
    InvalidCredentials,
    /// Too many failed logins for this email of late.
    #[error("too many failed logins for this email; try again in {retry_after_secs} s")]
    TooManyAttempts {
        /// When a login may be tried again, in seconds from now.
        retry_after_secs: i64,
    },
    /// No customer has this id.
    #[error("no such customer")]
    NotFound,
    /// Hashing failed.
    #[error("password hashing failed")]
    Hashing,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl CustomerError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            CustomerError::Invalid(_) => "invalid_input",
            CustomerError::EmailTaken => "email_taken",
            CustomerError::InvalidCredentials => "invalid_credentials",
            CustomerError::TooManyAttempts { .. } => "too_many_attempts",
            CustomerError::NotFound => "customer_not_found",
            CustomerError::Hashing | CustomerError::Database(_) => "internal",
        }
    }
}

type Result<T> = std::result::Result<T, CustomerError>;

/// Most segments one customer is in.
pub const MAX_TAGS: usize = 20;
/// Longest segment name.
const MAX_TAG_CHARS: usize = 40;

/// A customer as the admin API shows them: the account and the segments the merchant
/// assigned, which the pricing, fraud and personalization hooks are given.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Profile {
    /// Their id.
    pub id: String,
    /// Their email, lower-cased.
    pub email: String,
    /// Their name.
    pub name: String,
    /// Segments ("vip", "wholesale"), sorted.
    pub tags: Vec<String>,
    /// When the account was made (Unix ms).
    pub created_at: i64,
}

/// A page of customers.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ProfileList {
    /// Newest account first.
    pub customers: Vec<Profile>,
}

/// An email address as it is stored, compared and searched: trimmed and lower-cased. An
/// account, a guest's orders and the buyer history that fraud checks see all match on it.
pub fn normalized_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// Segment names as stored: trimmed, lower-cased, without duplicates, sorted. Each is 1 to 40
/// of `a`–`z`, `0`–`9`, `-` and `_`, starting with a letter or digit; at most [`MAX_TAGS`].
pub fn tags_of(given: &[String]) -> Result<Vec<String>> {
    let mut tags: Vec<String> = given.iter().map(|t| t.trim().to_lowercase()).collect();
    for tag in &tags {
        let well_formed = tag.chars().count() <= MAX_TAG_CHARS
            && tag.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !well_formed {
            return Err(CustomerError::Invalid(format!(
                "tag {tag:?} is not 1 to {MAX_TAG_CHARS} of a-z, 0-9, '-' and '_' starting with a letter or digit"
            )));
        }
    }
    tags.sort_unstable();
    tags.dedup();
    if tags.len() > MAX_TAGS {
        return Err(CustomerError::Invalid(format!(
            "a customer has at most {MAX_TAGS} tags"
        )));
    }
    Ok(tags)
}

/// The columns of a [`Profile`], for `FROM customers c`; `tags` joined by commas (a comma is
/// not part of a tag), in no order ([`split_sorted`] sorts them).
const PROFILE_COLUMNS: &str = "c.id, c.email, c.name, c.created_at, \
     (SELECT string_agg(t.tag, ',') FROM customer_tags t \
      WHERE t.customer_id = c.id) AS tags";

fn profile_of(row: &crate::db::Row) -> sqlx::Result<Profile> {
    Ok(Profile {
        id: row.get("id")?,
        email: row.get("email")?,
        name: row.get("name")?,
        tags: split_sorted(row.get("tags")?),
        created_at: row.get("created_at")?,
    })
}

/// A list a statement joined with commas (tags, coupon codes: a comma is part of neither),
/// split and sorted by their bytes. Sorted here rather than by `string_agg(… ORDER BY …)`: an
/// ordered aggregate costs SQLite a temporary B-tree each time it is evaluated (on every cart
/// read, twice), and PostgreSQL would order by its collation, not by bytes.
pub(crate) fn split_sorted(joined: Option<String>) -> Vec<String> {
    let mut items: Vec<String> = joined
        .map(|j| j.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    items.sort_unstable();
    items
}

/// A customer as the API shows them.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Customer {
    /// Their id.
    pub id: String,
    /// Their email, lower-cased.
    pub email: String,
    /// Their name.
    pub name: String,
}

/// The accounts service.
#[derive(Debug, Clone)]
pub struct Customers {
    db: Db,
    /// Permits for password hashing, one per core.
    hashing: Arc<Semaphore>,
}

/// Runs `work` (password hashing) on a blocking thread once a permit of `permits` is free; the
/// permit is held until the work ends, even when the caller has gone.
async fn hash_bounded<T: Send + 'static>(
    permits: &Arc<Semaphore>,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let permit = Arc::clone(permits)
        .acquire_owned()
        .await
        .map_err(|_| CustomerError::Hashing)?;
    tokio::task::spawn_blocking(move || {
        let done = work();
        drop(permit);
        done
    })
    .await
    .map_err(|_| CustomerError::Hashing)
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A hash to verify against when the email is unknown, so that both failures cost the same.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"decoy password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

impl Customers {
    /// Accounts over `db`.
    pub fn new(db: Db) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            db,
            hashing: Arc::new(Semaphore::new(cores)),
        }
    }

    /// The customer with this id, and their segments.
    pub async fn profile(&self, id: &str) -> Result<Profile> {
        let id = id.to_owned();
        self.db
            .read(move |tx| Box::pin(async move { profile_in(tx, &id).await }))
            .await
    }

    /// Replaces the customer's segments with `tags` (see [`tags_of`]); the answer is the
    /// customer as stored.
    pub async fn set_tags(&self, id: &str, tags: &[String]) -> Result<Profile> {
        let tags = tags_of(tags)?;
        let id = id.to_owned();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    // The account's row is written first: two replacements of one customer's
                    // tags take turns on it instead of interleaving their deletes and inserts.
                    let touched = tx
                        .execute(
                            "UPDATE customers SET email = email WHERE id = $1",
                            &args![&id],
                        )
                        .await?;
                    if touched == 0 {
                        return Err(CustomerError::NotFound);
                    }
                    tx.execute(
                        "DELETE FROM customer_tags WHERE customer_id = $1",
                        &args![&id],
                    )
                    .await?;
                    if !tags.is_empty() {
                        let sql = format!(
                            "INSERT INTO customer_tags (customer_id, tag) VALUES {}",
                            crate::db::param_rows(1, tags.len(), 2)
                        );
                        let mut values = Vec::with_capacity(tags.len() * 2);
                        for tag in &tags {
                            values.extend(args![&id, tag]);
                        }
                        tx.execute(&sql, &values).await?;
                    }
                    profile_in(tx, &id).await
                })
            })
            .await
    }

    /// Customers, newest account first; only those with `email` (case-insensitive) and in
    /// segment `tag`, when given; at most `limit` (1 to 100) after skipping `offset`.
    pub async fn search(
        &self,
        email: Option<&str>,
        tag: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<Profile>> {
        let filter = args![
            email.map_or(crate::db::Value::NullText, |e| normalized_email(e).into()),
            tag.map_or(crate::db::Value::NullText, |t| t
                .trim()
                .to_lowercase()
                .into()),
            i64::from(limit.clamp(1, 100)),
            i64::from(offset),
        ];
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch(
                            &format!(
                                "SELECT {PROFILE_COLUMNS} FROM customers c \
                                 WHERE ($1 IS NULL OR c.email = $1) \
                                   AND ($2 IS NULL OR EXISTS (SELECT 1 FROM customer_tags s \
                                        WHERE s.customer_id = c.id AND s.tag = $2)) \
                                 ORDER BY c.created_at DESC, c.id DESC LIMIT $3 OFFSET $4"
                            ),
                            &filter,
                        )
                        .await?;
                    Ok(rows.iter().map(profile_of).collect::<sqlx::Result<_>>()?)
                })
            })
            .await
    }

    /// Registers an account.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
        now: i64,
    ) -> Result<Customer> {
        let email = normalized_email(email);
        if !email.contains('@') || email.len() > 254 || email.chars().any(char::is_whitespace) {
            return Err(CustomerError::Invalid(
                "email is not an email address".into(),
            ));
        }
        if password.chars().count() < 10 || password.len() > MAX_PASSWORD_BYTES {
            return Err(CustomerError::Invalid(
                "a password needs at least 10 characters".into(),
            ));
        }
        if name.trim().is_empty() || name.chars().count() > 200 {
            return Err(CustomerError::Invalid(
                "name must be 1 to 200 characters".into(),
            ));
        }
        let password = password.to_owned();
        let hash = hash_bounded(&self.hashing, move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|_| CustomerError::Hashing)?;
        let id = uuid::Uuid::now_v7().to_string();
        let inserted = sqlx::query(
            "INSERT INTO customers (id, email, name, password_hash, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (email) DO NOTHING",
        )
        .bind(&id)
        .bind(&email)
        .bind(name.trim())
        .bind(hash)
        .bind(now)
        .execute(&mut *self.db.write_conn().await?)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Err(CustomerError::EmailTaken);
        }
        Ok(Customer {
            id,
            email,
            name: name.trim().to_owned(),
        })
    }

    /// Logs in; returns the customer and a new bearer token (shown once).
    pub async fn login(&self, email: &str, password: &str, now: i64) -> Result<(Customer, String)> {
        let email = normalized_email(email);
        let locked_until: Option<i64> =
            sqlx::query_scalar("SELECT locked_until FROM login_throttle WHERE email = $1")
                .bind(&email)
                .fetch_optional(self.db.reader())
                .await?;
        if let Some(until) = locked_until.filter(|until| *until > now) {
            return Err(CustomerError::TooManyAttempts {
                retry_after_secs: (until - now + 999) / 1000,
            });
        }
        let row = sqlx::query("SELECT id, name, password_hash FROM customers WHERE email = $1")
            .bind(&email)
            .fetch_optional(self.db.reader())
            .await?;
        let stored = match &row {
            Some(r) => r.try_get::<String, _>("password_hash")?,
            None => decoy_hash().to_owned(),
        };
        // No account has a longer password: refused without the hashing it would cost.
        let verified = password.len() <= MAX_PASSWORD_BYTES && {
            let password = password.to_owned();
            hash_bounded(&self.hashing, move || {
                PasswordHash::new(&stored)
                    .map(|hash| {
                        Argon2::default()
                            .verify_password(password.as_bytes(), &hash)
                            .is_ok()
                    })
                    .unwrap_or(false)
            })
            .await?
        };
        let Some(row) = row.filter(|_| verified) else {
            self.record_failed_login(&email, now).await?;
            return Err(CustomerError::InvalidCredentials);
        };
        if locked_until.is_some() {
            sqlx::query("DELETE FROM login_throttle WHERE email = $1")
                .bind(&email)
                .execute(&mut *self.db.write_conn().await?)
                .await?;
        }
        let customer = Customer {
            id: row.try_get("id")?,
            email,
            name: row.try_get("name")?,
        };
        let token = format!(
            "cus_{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        sqlx::query("INSERT INTO customer_tokens (token_hash, customer_id, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(digest(&token))
            .bind(&customer.id)
            .bind(now)
            .bind(now + TOKEN_TTL_MS)
            .execute(&mut *self.db.write_conn().await?)
            .await?;
        Ok((customer, token))
    }

    /// Counts a failed login of `email`: the count starts over when its window has passed, and
    /// the failure that reaches [`MAX_FAILED_LOGINS`] locks the email for [`LOCKOUT_MS`]. One
    /// guarded upsert, so concurrent failures each count.
    async fn record_failed_login(&self, email: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO login_throttle (email, failures, first_failed_at, locked_until) \
             VALUES ($1, 1, $2, 0) \
             ON CONFLICT (email) DO UPDATE SET \
               failures = CASE WHEN login_throttle.first_failed_at < $3 THEN 1 \
                               ELSE login_throttle.failures + 1 END, \
               first_failed_at = CASE WHEN login_throttle.first_failed_at < $3 THEN $2 \
                                      ELSE login_throttle.first_failed_at END, \
               locked_until = CASE WHEN login_throttle.first_failed_at >= $3 \
                                        AND login_throttle.failures + 1 >= $4 THEN $5 \
                                   ELSE login_throttle.locked_until END",
        )
        .bind(email)
        .bind(now)
        .bind(now - FAILURE_WINDOW_MS)
        .bind(MAX_FAILED_LOGINS)
        .bind(now + LOCKOUT_MS)
        .execute(&mut *self.db.write_conn().await?)
        .await?;
        Ok(())
    }

    /// Forgets failed logins whose window and lock have both passed. Returns how many emails.
    pub async fn sweep_login_failures(&self, now: i64) -> Result<u64> {
        Ok(sqlx::query(
            "DELETE FROM login_throttle WHERE locked_until <= $1 AND first_failed_at < $2",
        )
        .bind(now)
        .bind(now - FAILURE_WINDOW_MS)
        .execute(&mut *self.db.write_conn().await?)
        .await?
        .rows_affected())
    }

    /// The customer a bearer token belongs to, if it is valid now.
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT customer_id FROM customer_tokens WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(digest(token))
        .bind(now)
        .fetch_optional(self.db.reader())
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("customer_id")?),
            None => None,
        })
    }
}

/// [`Customers::profile`] inside the caller's transaction.
async fn profile_in(tx: &mut dyn Tx, id: &str) -> Result<Profile> {
    let rows = tx
        .fetch(
            &format!("SELECT {PROFILE_COLUMNS} FROM customers c WHERE c.id = $1"),
            &args![id],
        )
        .await?;
    Ok(profile_of(rows.first().ok_or(CustomerError::NotFound)?)?)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Semaphore;

    use super::{hash_bounded, split_sorted};

    /// Hashing stand-in: counts the jobs running at once, and the most seen.
    #[derive(Clone, Default)]
    struct Gauge {
        running: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Gauge {
        fn spawn(&self, permits: &Arc<Semaphore>, ms: u64) -> tokio::task::JoinHandle<()> {
            let (gauge, permits) = (self.clone(), permits.clone());
            tokio::spawn(async move {
                hash_bounded(&permits, move || {
                    let now = gauge.running.fetch_add(1, Ordering::SeqCst) + 1;
                    gauge.most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(ms));
                    gauge.running.fetch_sub(1, Ordering::SeqCst);
                })
                .await
                .expect("hashed");
            })
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn password_hashing_runs_at_most_one_job_per_permit() {
        let permits = Arc::new(Semaphore::new(2));
        let gauge = Gauge::default();
        // A caller that gives up while its job runs does not free the permit early.
        let abandoned = gauge.spawn(&permits, 300);
        while gauge.running.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        abandoned.abort();
        let jobs: Vec<_> = (0..12).map(|_| gauge.spawn(&permits, 20)).collect();
        for job in jobs {
            job.await.expect("job");
        }
        assert_eq!(gauge.most.load(Ordering::SeqCst), 2);
    }

    /// Joined lists come back sorted by bytes whatever order the database joined them in
    /// (PostgreSQL's `string_agg` without `ORDER BY` follows the heap), and none is empty.
    #[test]
    fn joined_lists_are_split_and_sorted_by_their_bytes() {
        assert_eq!(
            split_sorted(Some("vip,b2b,VIP,wholesale".into())),
            ["VIP", "b2b", "vip", "wholesale"]
        );
        assert_eq!(split_sorted(None), Vec::<String>::new());
    }
}
