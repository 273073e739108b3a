//! Customer accounts: register, log in, and bearer tokens that last 30 days.
//!
//! Passwords are stored as argon2id hashes; tokens as SHA-256 digests. A wrong password and an
//! unknown email fail the same way, after the same amount of hashing work.

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::db::Db;

/// How long a login lasts.
pub const TOKEN_TTL_MS: i64 = 30 * 24 * 60 * 60 * 1000;

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
            CustomerError::Hashing | CustomerError::Database(_) => "internal",
        }
    }
}

type Result<T> = std::result::Result<T, CustomerError>;

/// A customer as the API shows them.
#[derive(Debug, Clone, Serialize)]
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
        Self { db }
    }

    /// Registers an account.
    pub async fn register(
        &self,
        email: &str,
        password: &str,
        name: &str,
        now: i64,
    ) -> Result<Customer> {
        let email = email.trim().to_lowercase();
        if !email.contains('@') || email.len() > 254 || email.chars().any(char::is_whitespace) {
            return Err(CustomerError::Invalid(
                "email is not an email address".into(),
            ));
        }
        if password.chars().count() < 10 || password.len() > 1024 {
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
        let hash = tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map(|h| h.to_string())
        })
        .await
        .map_err(|_| CustomerError::Hashing)?
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
        let email = email.trim().to_lowercase();
        let row = sqlx::query("SELECT id, name, password_hash FROM customers WHERE email = $1")
            .bind(&email)
            .fetch_optional(self.db.reader())
            .await?;
        let stored = match &row {
            Some(r) => r.try_get::<String, _>("password_hash")?,
            None => decoy_hash().to_owned(),
        };
        let password = password.to_owned();
        let verified = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&stored)
                .map(|hash| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &hash)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .map_err(|_| CustomerError::Hashing)?;
        let Some(row) = row.filter(|_| verified) else {
            return Err(CustomerError::InvalidCredentials);
        };
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
