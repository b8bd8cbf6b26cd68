//! Timestamps are stored as integers: microseconds since the Unix epoch
//! (schema 10; 8 bytes, ordered as numbers, what PostgreSQL's `timestamptz`
//! holds). Text in RFC 3339, as files before schema 10 held, still reads.

use chrono::{DateTime, Utc};
use rusqlite::ToSql;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};

/// A timestamp as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ts(pub(crate) DateTime<Utc>);

impl ToSql for Ts {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.timestamp_micros()))
    }
}

impl FromSql for Ts {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value {
            ValueRef::Integer(micros) => from_micros(micros)
                .map(Ts)
                .ok_or(FromSqlError::OutOfRange(micros)),
            ValueRef::Text(_) => DateTime::parse_from_rfc3339(value.as_str()?)
                .map(|t| Ts(t.with_timezone(&Utc)))
                .map_err(|e| FromSqlError::Other(Box::new(e))),
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

/// The time `micros` microseconds after the Unix epoch, if representable.
pub(crate) fn from_micros(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros(micros)
}

/// A timestamp, for use as a parameter.
pub(crate) fn ts(t: DateTime<Utc>) -> Ts {
    Ts(t)
}
