//! The row model every stage shares: ordered, named, typed fields.
//!
//! A CSV line becomes a [`Row`], travels through Kafka (see `source::wire`), through the transform
//! chain (mirrored by the `row` type in `wit/transform.wit`) and into a Snowflake column per field.
//! The value types are the intersection that fits both CSV and Snowflake: null, bool, 64-bit
//! integer, 64-bit float, string, timestamp (UTC, microsecond precision, as TIMESTAMP_NTZ) and
//! JSON text for nested values (VARIANT).

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Timelike, Utc};

/// A field name. Shared (`Arc`) because every row of a batch repeats the same names.
pub type Name = Arc<str>;

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL; also an empty CSV field.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer (Snowflake NUMBER(38,0)).
    Int(i64),
    /// A 64-bit float (Snowflake FLOAT).
    Float(f64),
    /// UTF-8 text (Snowflake VARCHAR).
    String(String),
    /// Microseconds since the Unix epoch, UTC, no zone kept (Snowflake TIMESTAMP_NTZ).
    Timestamp(i64),
    /// Nested data as JSON text (Snowflake VARIANT).
    Json(String),
}

/// The type of a [`Value`], used for schemas, inference and Snowflake column mapping.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// [`Value::Null`]; the type of a column that has only ever been null.
    Null,
    /// [`Value::Bool`].
    Bool,
    /// [`Value::Int`].
    Int,
    /// [`Value::Float`].
    Float,
    /// [`Value::String`].
    String,
    /// [`Value::Timestamp`].
    Timestamp,
    /// [`Value::Json`].
    Json,
}

impl ValueType {
    /// The lowercase name used in pipeline.json schemas and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueType::Null => "null",
            ValueType::Bool => "bool",
            ValueType::Int => "int",
            ValueType::Float => "float",
            ValueType::String => "string",
            ValueType::Timestamp => "timestamp",
            ValueType::Json => "json",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Value {
    /// This value's type.
    pub fn value_type(&self) -> ValueType {
        match self {
            Value::Null => ValueType::Null,
            Value::Bool(_) => ValueType::Bool,
            Value::Int(_) => ValueType::Int,
            Value::Float(_) => ValueType::Float,
            Value::String(_) => ValueType::String,
            Value::Timestamp(_) => ValueType::Timestamp,
            Value::Json(_) => ValueType::Json,
        }
    }

    /// Converts to JSON. Timestamps become ISO-8601 strings (`2024-01-02T03:04:05.123456`), JSON
    /// text is parsed back into a JSON value (kept as a string if it does not parse), and
    /// non-finite floats become null because JSON has no NaN.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Bool(b) => J::Bool(*b),
            Value::Int(i) => J::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f).map_or(J::Null, J::Number),
            Value::String(s) => J::String(s.clone()),
            Value::Timestamp(us) => J::String(format_timestamp(*us)),
            Value::Json(text) => {
                serde_json::from_str(text).unwrap_or_else(|_| J::String(text.clone()))
            }
        }
    }

    /// Converts from JSON into a known type; `None` when the JSON does not fit it.
    pub fn from_json_typed(v: &serde_json::Value, ty: ValueType) -> Option<Value> {
        use serde_json::Value as J;
        if v.is_null() {
            return Some(Value::Null);
        }
        Some(match (ty, v) {
            (ValueType::Null, _) => return None,
            (ValueType::Bool, J::Bool(b)) => Value::Bool(*b),
            (ValueType::Int, J::Number(n)) => Value::Int(n.as_i64()?),
            (ValueType::Float, J::Number(n)) => Value::Float(n.as_f64()?),
            (ValueType::String, J::String(s)) => Value::String(s.clone()),
            (ValueType::Timestamp, J::String(s)) => Value::Timestamp(parse_timestamp(s)?),
            (ValueType::Json, v) => Value::Json(v.to_string()),
            _ => return None,
        })
    }
}

impl fmt::Display for Value {
    /// The text form used for CSV output and messages: null is empty, timestamps are ISO-8601.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => Ok(()),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::String(s) | Value::Json(s) => f.write_str(s),
            Value::Timestamp(us) => f.write_str(&format_timestamp(*us)),
        }
    }
}

/// One named value.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// The column name, case preserved.
    pub name: Name,
    /// The value.
    pub value: Value,
}

/// An ordered list of named fields: one CSV line, one Kafka message, one table row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Row {
    /// The fields, in column order.
    pub fields: Vec<Field>,
}

impl Row {
    /// An empty row with room for `n` fields.
    pub fn with_capacity(n: usize) -> Row {
        Row {
            fields: Vec::with_capacity(n),
        }
    }

    /// Appends a field.
    pub fn push(&mut self, name: impl Into<Name>, value: Value) {
        self.fields.push(Field {
            name: name.into(),
            value,
        });
    }

    /// The value of the first field called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields
            .iter()
            .find(|f| &*f.name == name)
            .map(|f| &f.value)
    }

    /// The row as a JSON object, fields in order (see [`Value::to_json`]).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.fields
                .iter()
                .map(|f| (f.name.to_string(), f.value.to_json()))
                .collect(),
        )
    }
}

/// Read-only facts about the Kafka record a row came from, shown to transforms.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecordMeta {
    /// The topic the record was read from.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset within the partition.
    pub offset: i64,
    /// The message key, if any.
    pub key: Option<Vec<u8>>,
    /// The record timestamp, milliseconds since the Unix epoch, if the broker kept one.
    pub timestamp_ms: Option<i64>,
    /// Message headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl RecordMeta {
    /// The value of header `name`, as text.
    pub fn header_text(&self, name: &str) -> Option<&str> {
        let (_, value) = self.headers.iter().find(|(k, _)| k == name)?;
        std::str::from_utf8(value).ok()
    }

    /// The CSV line the record's row starts on, when the source wrote it (`sluice.line`).
    pub fn csv_line(&self) -> Option<u64> {
        self.header_text(crate::source::wire::HEADER_LINE)?
            .parse()
            .ok()
    }
}

/// Formats microseconds since the epoch as ISO-8601 without a zone
/// (`2024-01-02T03:04:05` or `...05.123456` when there is a fraction).
pub fn format_timestamp(us: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(us) {
        Some(dt) if us.rem_euclid(1_000_000) == 0 => dt.format("%Y-%m-%dT%H:%M:%S").to_string(),
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        None => us.to_string(),
    }
}

/// Parses an ISO-8601 timestamp into microseconds since the epoch (UTC). Accepts a date alone,
/// `T` or a space between date and time, optional fractional seconds, and an optional `Z` or
/// `+hh:mm` offset (converted to UTC). Second 60 only at 23:59:60 UTC, where leap seconds go.
/// Returns `None` for anything else.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    let s = s.trim();
    // Cheap rejection first: inference calls this on every string cell.
    let b = s.as_bytes();
    if b.len() < 10 || !b[0].is_ascii_digit() || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let utc = parse_utc(s)?;
    // chrono reads second 60 at any minute, as a leap second (second 59 with a nanosecond past
    // 1e9), and its timestamp is the next minute's first second: `03:04:60` would silently be
    // 03:05:00. A leap second is only ever inserted at 23:59:60 UTC, so that one is a real time
    // (kept as the next day's 00:00:00, the epoch count having no leap seconds); at any other
    // minute, second 60 is no time at all.
    if utc.nanosecond() >= 1_000_000_000 && (utc.hour(), utc.minute()) != (23, 59) {
        return None;
    }
    Some(utc.and_utc().timestamp_micros())
}

/// [`parse_timestamp`]'s formats, as a UTC time that may be a leap second.
fn parse_utc(s: &str) -> Option<NaiveDateTime> {
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.naive_utc());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(dt);
        }
    }
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(dt.naive_utc());
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        for s in [
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05.123456",
            "1969-12-31T23:59:59.500000",
        ] {
            let us = parse_timestamp(s).unwrap();
            assert_eq!(format_timestamp(us), s);
        }
        assert_eq!(
            parse_timestamp("2024-01-02"),
            parse_timestamp("2024-01-02T00:00:00")
        );
        assert_eq!(
            parse_timestamp("2024-01-02T03:04:05+01:00"),
            parse_timestamp("2024-01-02 02:04:05")
        );
        assert_eq!(
            parse_timestamp("2024-01-02T03:04:05Z"),
            parse_timestamp("2024-01-02T03:04:05")
        );
        assert_eq!(parse_timestamp("hello"), None);
        assert_eq!(parse_timestamp("2024-13-45"), None);
    }

    /// Second 60 is a leap second only at 23:59:60 UTC; elsewhere it does not roll over into the
    /// next minute.
    #[test]
    fn second_60_only_at_a_leap_second() {
        for s in [
            "2024-01-02T03:04:60",
            "2024-01-02 03:04:60.5",
            "2024-01-02T03:04:60Z",
            "2024-01-02T23:59:60+01:00",
            "2024-01-02 03:04:60+00:00",
            "2024-01-02T03:04:61",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s}");
        }
        for (s, at) in [
            ("2016-12-31T23:59:60", "2017-01-01T00:00:00"),
            ("2016-12-31 23:59:60.5", "2017-01-01T00:00:00.500000"),
            ("2016-12-31T23:59:60Z", "2017-01-01T00:00:00"),
            ("2017-01-01T00:59:60+01:00", "2017-01-01T00:00:00"),
            ("2024-01-02T03:04:59", "2024-01-02T03:04:59"),
        ] {
            assert_eq!(
                parse_timestamp(s).map(format_timestamp).as_deref(),
                Some(at),
                "{s}"
            );
        }
    }

    #[test]
    fn json_round_trip_keeps_types_and_order() {
        let mut row = Row::default();
        row.push("id", Value::Int(7));
        row.push("name", Value::String("a,b".into()));
        row.push("v", Value::Float(1.5));
        row.push("nested", Value::Json(r#"{"x":[1,2]}"#.into()));
        row.push("gone", Value::Null);
        let json = row.to_json();
        assert_eq!(
            json.to_string(),
            r#"{"id":7,"name":"a,b","v":1.5,"nested":{"x":[1,2]},"gone":null}"#
        );
        let text = json.to_string();
        assert_eq!(
            crate::source::wire::decode(Some(text.as_bytes()), None).unwrap(),
            row
        );
    }
}
