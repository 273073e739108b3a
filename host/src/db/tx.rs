//! Transactions written once for both databases: [`Tx`], the handful of operations a
//! transaction body needs, with one implementation on a sqlx connection (PostgreSQL) and one
//! on a rusqlite connection ([`super::sqlite`]).
//!
//! A body is an `async` function of `&mut dyn Tx`. On PostgreSQL it runs as any future does;
//! on SQLite every call completes at once (the statement runs on the calling thread), so the
//! body is polled to completion in one go, on whichever thread holds the connection, and no
//! statement is handed to another thread. That is the point: on SQLite the write lock is held only while SQLite works.
//!
//! Parameters are `$1, $2, …` as everywhere else; values are [`Value`]s, rows are [`Row`]s.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::{Column, Row as _};

use super::Backend;

/// A parameter or a column value. Nulls keep a type: PostgreSQL types parameters from them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A 64-bit integer (every integer column; smaller ones are widened).
    Int(i64),
    /// Text.
    Text(String),
    /// A null integer.
    NullInt,
    /// A null text.
    NullText,
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Self::Int(v.into())
    }
}

impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Self::Text(v.to_owned())
    }
}

impl From<String> for Value {
    fn from(v: String) -> Self {
        Self::Text(v)
    }
}

impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Self::Text(v.clone())
    }
}

impl From<Option<&str>> for Value {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Self::NullText, Self::from)
    }
}

impl From<Option<String>> for Value {
    fn from(v: Option<String>) -> Self {
        v.map_or(Self::NullText, Self::Text)
    }
}

impl From<Option<i64>> for Value {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Self::NullInt, Self::Int)
    }
}

/// `[Value::from(a), Value::from(b), …]`: a statement's arguments.
macro_rules! args {
    ($($value:expr),* $(,)?) => {
        [$($crate::db::Value::from($value)),*]
    };
}
pub(crate) use args;

/// A result row: its values by column name.
#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Value>,
}

/// A type a [`Row`] column can be read as.
pub trait FromValue: Sized {
    /// `None` when the value is not of this type.
    fn from_value(value: &Value) -> Option<Self>;
}

impl FromValue for i64 {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }
}

impl FromValue for i32 {
    fn from_value(value: &Value) -> Option<Self> {
        i64::from_value(value).and_then(|v| i32::try_from(v).ok())
    }
}

impl FromValue for String {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::Text(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: &Value) -> Option<Self> {
        match value {
            Value::NullInt | Value::NullText => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl Row {
    /// The value of `column` as a `T`.
    pub fn get<T: FromValue>(&self, column: &str) -> sqlx::Result<T> {
        let value = self.value(column)?;
        T::from_value(value).ok_or_else(|| {
            decode_error(
                column,
                format!("{value:?} is not a {}", std::any::type_name::<T>()),
            )
        })
    }

    /// The text of `column`, borrowed.
    pub fn text(&self, column: &str) -> sqlx::Result<&str> {
        match self.value(column)? {
            Value::Text(v) => Ok(v),
            other => Err(decode_error(column, format!("{other:?} is not text"))),
        }
    }

    fn value(&self, column: &str) -> sqlx::Result<&Value> {
        self.columns
            .iter()
            .position(|c| c == column)
            .map(|index| &self.values[index])
            .ok_or_else(|| sqlx::Error::ColumnNotFound(column.to_owned()))
    }

    pub(super) fn new(columns: Arc<[String]>, values: Vec<Value>) -> Self {
        Self { columns, values }
    }
}

fn decode_error(column: &str, why: String) -> sqlx::Error {
    sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: why.into(),
    }
}

/// What a [`Tx`] call returns: ready at once on SQLite.
pub type TxFuture<'a, T> = Pin<Box<dyn Future<Output = sqlx::Result<T>> + Send + 'a>>;

/// A transaction body's future.
pub type JobFuture<'a, R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send + 'a>>;

/// The statements of one write transaction (begun and ended by [`super::Db::write`]).
pub trait Tx: Send {
    /// Runs a statement; the number of rows it changed.
    fn execute<'a>(&'a mut self, sql: &'a str, args: &'a [Value]) -> TxFuture<'a, u64>;
    /// Runs a query; all its rows.
    fn fetch<'a>(&'a mut self, sql: &'a str, args: &'a [Value]) -> TxFuture<'a, Vec<Row>>;
    /// Which database this is (for the few statements that differ, such as row locks).
    fn backend(&self) -> Backend;
}

impl dyn Tx + '_ {
    /// The one row a query must return.
    pub async fn fetch_one(&mut self, sql: &str, args: &[Value]) -> sqlx::Result<Row> {
        self.fetch(sql, args)
            .await?
            .into_iter()
            .next()
            .ok_or(sqlx::Error::RowNotFound)
    }
}

/// [`Tx`] on a sqlx connection (inside a transaction for writes).
pub(super) struct SqlxTx<'t>(pub(super) &'t mut sqlx::AnyConnection, pub(super) Backend);

pub(super) fn bind<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: &'q [Value],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for arg in args {
        query = match arg {
            Value::Int(v) => query.bind(*v),
            Value::Text(v) => query.bind(v.as_str()),
            Value::NullInt => query.bind(None::<i64>),
            Value::NullText => query.bind(None::<&str>),
        };
    }
    query
}

fn any_value(row: &sqlx::any::AnyRow, index: usize) -> sqlx::Result<Value> {
    use sqlx::TypeInfo;
    use sqlx::any::AnyTypeInfoKind as Kind;
    let raw = sqlx::Row::try_get_raw(row, index)?;
    let kind = sqlx::ValueRef::type_info(&raw).kind();
    let value = match kind {
        Kind::SmallInt => row
            .try_get::<Option<i16>, _>(index)?
            .map_or(Value::NullInt, |v| Value::Int(v.into())),
        Kind::Integer => row
            .try_get::<Option<i32>, _>(index)?
            .map_or(Value::NullInt, |v| Value::Int(v.into())),
        Kind::BigInt => row.try_get::<Option<i64>, _>(index)?.into(),
        Kind::Bool => row
            .try_get::<Option<bool>, _>(index)?
            .map_or(Value::NullInt, |v| Value::Int(v.into())),
        Kind::Null => Value::NullText,
        Kind::Text => row
            .try_get::<Option<String>, _>(index)?
            .map_or(Value::NullText, Value::Text),
        Kind::Real | Kind::Double | Kind::Blob => {
            return Err(sqlx::Error::ColumnDecode {
                index: row.column(index).name().to_owned(),
                source: format!(
                    "{} columns are not read in write transactions",
                    sqlx::ValueRef::type_info(&raw).name()
                )
                .into(),
            });
        }
    };
    Ok(value)
}

impl Tx for SqlxTx<'_> {
    fn execute<'a>(&'a mut self, sql: &'a str, args: &'a [Value]) -> TxFuture<'a, u64> {
        Box::pin(async move {
            Ok(bind(sqlx::query(sql), args)
                .execute(&mut *self.0)
                .await?
                .rows_affected())
        })
    }

    fn fetch<'a>(&'a mut self, sql: &'a str, args: &'a [Value]) -> TxFuture<'a, Vec<Row>> {
        Box::pin(async move {
            let rows = bind(sqlx::query(sql), args).fetch_all(&mut *self.0).await?;
            let Some(first) = rows.first() else {
                return Ok(vec![]);
            };
            let columns: Arc<[String]> = first
                .columns()
                .iter()
                .map(|c| c.name().to_owned())
                .collect();
            rows.iter()
                .map(|row| {
                    let values = (0..columns.len())
                        .map(|i| any_value(row, i))
                        .collect::<sqlx::Result<Vec<_>>>()?;
                    Ok(Row::new(columns.clone(), values))
                })
                .collect()
        })
    }

    fn backend(&self) -> Backend {
        self.1
    }
}

/// A SQLite error as sqlx reports database errors, so callers see one error type.
#[derive(Debug)]
pub(super) struct SqliteError {
    message: String,
    /// SQLite's extended result code, when SQLite (not rusqlite) failed.
    code: Option<i32>,
}

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SqliteError {}

impl sqlx::error::DatabaseError for SqliteError {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        self.code.map(|c| Cow::Owned(c.to_string()))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        use rusqlite::ffi;
        use sqlx::error::ErrorKind;
        match self.code {
            Some(ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                ErrorKind::UniqueViolation
            }
            Some(ffi::SQLITE_CONSTRAINT_FOREIGNKEY) => ErrorKind::ForeignKeyViolation,
            Some(ffi::SQLITE_CONSTRAINT_NOTNULL) => ErrorKind::NotNullViolation,
            Some(ffi::SQLITE_CONSTRAINT_CHECK) => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

impl SqliteError {
    /// sqlx's error for a rusqlite one.
    pub(super) fn wrap(error: rusqlite::Error) -> sqlx::Error {
        let code = match &error {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.extended_code),
            _ => None,
        };
        sqlx::Error::Database(Box::new(Self {
            message: error.to_string(),
            code,
        }))
    }
}
