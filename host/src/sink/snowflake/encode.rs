//! Identifiers, the type mapping, staged-file encoding and deterministic file names.
//!
//! **Identifiers.** A name that is a plain SQL identifier (`[A-Za-z_][A-Za-z0-9_$]*`) is
//! uppercased, which is what Snowflake does with it unquoted, so `SELECT id FROM events` finds the
//! column a field `id` became. Any other name (spaces, dots, non-ASCII) is kept verbatim. Every
//! identifier is then emitted quoted, with embedded `"` doubled, so no name can break the SQL.
//! Names that become the same identifier, or differ only in case (`Name` and `NAME`), share one
//! column: a row holding two of them is dead-lettered rather than loaded with one value lost.
//!
//! **Type mapping** (`create_table: if_missing` and `schema_evolution: add_columns`):
//!
//! | row type | Snowflake column |
//! |---|---|
//! | int | `NUMBER(38,0)` |
//! | float | `FLOAT` |
//! | bool | `BOOLEAN` |
//! | timestamp | `TIMESTAMP_NTZ` (UTC, microseconds) |
//! | string | `VARCHAR` |
//! | json | `VARIANT` |
//! | only nulls so far | its `source.schema` type, else `VARCHAR` |
//!
//! A column whose values mix int and float becomes `FLOAT`; any other mix becomes `VARCHAR`.
//!
//! **CSV.** NULL is an empty unquoted field; strings and JSON are always quoted (`"` doubled), so
//! an empty string is `""`; numbers, booleans and ISO-8601 timestamps are bare. COPY reads it with
//! `FIELD_OPTIONALLY_ENCLOSED_BY='"' EMPTY_FIELD_AS_NULL=TRUE NULL_IF=()`. (fakesnow loads `""`
//! as NULL too; Snowflake loads it as an empty string.)

use std::io::Write as _;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::row::{Row, Value, ValueType};

/// The most characters a Snowflake identifier, and so a column name, may have.
pub const MAX_IDENT_CHARS: usize = 255;

/// Why a field named `name` cannot be a column of any table, if it cannot: no name, or one longer
/// than Snowflake takes (the emulator takes it, but Snowflake refuses the `CREATE TABLE` or
/// `ALTER TABLE` that would make the column).
pub fn column_name_problem(name: &str) -> Option<String> {
    let chars = name.chars().count();
    match chars {
        0 => Some("a field has an empty name, which cannot be a column".to_owned()),
        n if n > MAX_IDENT_CHARS => Some(format!(
            "field \"{}...\" has a name of {n} characters, and a Snowflake column name takes \
             at most {MAX_IDENT_CHARS}",
            name.chars().take(40).collect::<String>()
        )),
        _ => None,
    }
}

/// The identifier a name becomes (see the module doc): uppercased when it is a plain identifier.
pub fn normalize_ident(name: &str) -> String {
    let mut chars = name.chars();
    let plain = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    if plain {
        name.to_ascii_uppercase()
    } else {
        name.to_owned()
    }
}

/// `name` as a quoted identifier, exactly as given (no case change).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// The Snowflake column type for a row type.
pub fn column_type_for(t: ValueType) -> &'static str {
    match t {
        ValueType::Int => "NUMBER(38,0)",
        ValueType::Float => "FLOAT",
        ValueType::Bool => "BOOLEAN",
        ValueType::Timestamp => "TIMESTAMP_NTZ",
        ValueType::Json => "VARIANT",
        ValueType::String | ValueType::Null => "VARCHAR",
    }
}

/// Merges two observed types of one field (see the module doc).
pub fn merge_types(a: ValueType, b: ValueType) -> ValueType {
    use ValueType as T;
    match (a, b) {
        (x, y) if x == y => x,
        (T::Null, x) | (x, T::Null) => x,
        (T::Int, T::Float) | (T::Float, T::Int) => T::Float,
        _ => T::String,
    }
}

/// The kind of an existing column, from the result `rowtype` of `SELECT * ... LIMIT 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// `fixed` with scale 0: NUMBER(`digits`, 0).
    Integer {
        /// Its precision: how many digits it holds.
        digits: u8,
    },
    /// `fixed` with a scale: NUMBER(`digits` + `scale`, `scale`).
    Decimal {
        /// How many digits it holds before the point (precision minus scale).
        digits: u8,
        /// How many after the point; a value with more is rounded to them.
        scale: u8,
    },
    /// `real`.
    Float,
    /// `text`.
    Text,
    /// `boolean`.
    Boolean,
    /// `timestamp_*`.
    Timestamp,
    /// `variant`, `object`, `array`.
    Variant,
    /// Anything else (`date`, `binary`, ...): only strings and nulls go in.
    Other,
}

impl ColumnKind {
    /// The kind of the column that `create_table` makes for a field of type `t`.
    pub fn created_for(t: ValueType) -> ColumnKind {
        match t {
            ValueType::Int => ColumnKind::Integer { digits: 38 },
            ValueType::Float => ColumnKind::Float,
            ValueType::Bool => ColumnKind::Boolean,
            ValueType::Timestamp => ColumnKind::Timestamp,
            ValueType::Json => ColumnKind::Variant,
            ValueType::String | ValueType::Null => ColumnKind::Text,
        }
    }

    /// From a result-set type name, precision and scale (NUMBER's default 38 when not given).
    pub fn from_rowtype(type_name: &str, precision: Option<i64>, scale: Option<i64>) -> ColumnKind {
        let (precision, scale) = (precision.unwrap_or(38), scale.unwrap_or(0));
        let (digits, scale) = (precision.saturating_sub(scale), scale);
        let [digits, scale] = [digits, scale].map(|n| n.clamp(0, 38) as u8);
        match type_name {
            "fixed" if scale == 0 => ColumnKind::Integer { digits },
            "fixed" => ColumnKind::Decimal { digits, scale },
            "real" => ColumnKind::Float,
            "text" => ColumnKind::Text,
            "boolean" => ColumnKind::Boolean,
            t if t.starts_with("timestamp") => ColumnKind::Timestamp,
            "variant" | "object" | "array" => ColumnKind::Variant,
            _ => ColumnKind::Other,
        }
    }

    /// Whether `v` can be loaded into a column of this kind without COPY failing or silently
    /// changing it. A number must fit a NUMBER column's digits (rounded to its scale), and be
    /// finite: COPY fails the whole file on one that does not, and again on every replay of it,
    /// so the partition would never move on.
    pub fn accepts(self, v: &Value) -> bool {
        use ColumnKind as K;
        match (self, v) {
            (_, Value::Null) => true,
            (K::Integer { digits } | K::Decimal { digits, .. }, Value::Int(i)) => {
                i.unsigned_abs().checked_ilog10().map_or(0, |d| d + 1) <= u32::from(digits)
            }
            (K::Decimal { digits, scale }, Value::Float(f)) => {
                f.is_finite() && digits_when_rounded(*f, scale) <= usize::from(digits)
            }
            (K::Integer { digits }, Value::Float(f)) => {
                // Past 1e18 a float no longer says which integer it is.
                f.is_finite()
                    && f.fract() == 0.0
                    && f.abs() < 1e18
                    && f.abs() < 10f64.powi(digits.into())
            }
            (_, v) => self.takes_type(v),
        }
    }

    /// Whether a column of this kind takes values of `v`'s type at all, whatever the value.
    pub fn takes_type(self, v: &Value) -> bool {
        use ColumnKind as K;
        match v {
            Value::Null => true,
            Value::Int(_) | Value::Float(_) => matches!(
                self,
                K::Integer { .. } | K::Decimal { .. } | K::Float | K::Text | K::Variant
            ),
            Value::Bool(_) => matches!(self, K::Boolean | K::Text | K::Variant),
            Value::String(_) => matches!(self, K::Text | K::Other),
            Value::Timestamp(_) => matches!(self, K::Timestamp | K::Text),
            Value::Json(_) => matches!(self, K::Variant | K::Text),
        }
    }
}

/// How many digits `f` has before the point once the text the file gives it (Display's, which
/// never uses an exponent) is rounded to `scale` places, half away from zero, as COPY rounds it:
/// `9.995` at two places is `10.00`, two digits, though the float itself is 9.99499...
fn digits_when_rounded(f: f64, scale: u8) -> usize {
    let text = format!("{}", f.abs());
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    let whole = whole.trim_start_matches('0');
    let scale = usize::from(scale);
    let rounds_up = fraction.as_bytes().get(scale).is_some_and(|d| *d >= b'5');
    // Rounding up carries into the whole part only through kept places that are all nines, and
    // adds a digit there only when it is all nines too (or nothing, as in `0.995`).
    let carries = rounds_up
        && fraction[..scale].bytes().all(|d| d == b'9')
        && whole.bytes().all(|d| d == b'9');
    whole.len() + usize::from(carries)
}

/// Whether a timestamp column can take this timestamp: years 1 to 9999, the ones whose ISO-8601
/// text has four digits and which Snowflake parses. Anything else (a transform can emit any
/// count of microseconds) would fail the COPY of its whole file, and of every replay of it.
pub fn loadable_timestamp(us: i64) -> bool {
    chrono::DateTime::from_timestamp_micros(us)
        .is_some_and(|t| (1..=9999).contains(&chrono::Datelike::year(&t)))
}

fn push_quoted(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for b in s.bytes() {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// Appends one CSV line for `values` (already in file-column order).
pub fn write_csv_line(out: &mut Vec<u8>, values: &[&Value]) {
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        match v {
            Value::Null => {}
            Value::String(s) | Value::Json(s) => push_quoted(out, s),
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() && f.abs() < 1e15 => {
                // `3` rather than `3.0` is what Display gives; keep the full value explicit.
                let _ = write!(out, "{f:.1}");
            }
            other => {
                let _ = write!(out, "{other}");
            }
        }
    }
    out.push(b'\n');
}

/// Appends one NDJSON line for `row`.
pub fn write_ndjson_line(out: &mut Vec<u8>, row: &Row) {
    // serde_json never fails writing a Value into a Vec.
    let _ = serde_json::to_writer(&mut *out, &row.to_json());
    out.push(b'\n');
}

/// Gzips a whole file in one go. The gzip header carries no timestamp (mtime 0), so the same
/// rows always give the same bytes.
pub fn gzip(plain: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(
        Vec::with_capacity(plain.len() / 4 + 64),
        Compression::fast(),
    );
    let _ = enc.write_all(plain);
    enc.finish().unwrap_or_default()
}

/// A path segment made of `[A-Za-z0-9.-]` only: `_` becomes `__`, any other byte `_XX` (hex),
/// so different names never give the same segment and stage paths need no quoting.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'_' => out.push_str("__"),
            b if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' => out.push(b as char),
            b => out.push_str(&format!("_{b:02X}")),
        }
    }
    if out.is_empty() || out.starts_with('.') {
        format!("_{out}")
    } else {
        out
    }
}

/// The stage directory of a partition's files: `<table>/<topic>/<partition>`.
pub fn stage_dir(table: &str, topic: &str, partition: i32) -> String {
    format!(
        "{}/{}/{partition}",
        path_segment(table),
        path_segment(topic)
    )
}

/// The file name of a batch: zero-padded first and last offset, no timestamp, so a replay of the
/// same offsets produces the same name (and COPY's load history recognises it).
pub fn file_name(first_offset: i64, last_offset: i64, ndjson: bool) -> String {
    format!(
        "{first_offset:020}-{last_offset:020}.{}.gz",
        if ndjson { "json" } else { "csv" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert_eq!(normalize_ident("user_id"), "USER_ID");
        assert_eq!(normalize_ident("Mixed Case"), "Mixed Case");
        assert_eq!(normalize_ident("9lives"), "9lives");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's \\"), "'it''s \\\\'");
    }

    #[test]
    fn csv_lines_distinguish_null_and_quote_text() {
        let mut out = Vec::new();
        let vals = [
            Value::Int(-3),
            Value::String("a \"q\", b\nc".into()),
            Value::Null,
            Value::String(String::new()),
            Value::Bool(true),
            Value::Float(2.0),
            Value::Float(0.25),
            Value::Timestamp(1_704_164_645_123_456),
            Value::Json("{\"x\":1}".into()),
        ];
        write_csv_line(&mut out, &vals.iter().collect::<Vec<_>>());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "-3,\"a \"\"q\"\", b\nc\",,\"\",true,2.0,0.25,2024-01-02T03:04:05.123456,\"{\"\"x\"\":1}\"\n"
        );
    }

    #[test]
    fn names_are_deterministic_and_injective() {
        assert_eq!(
            file_name(5, 17, false),
            "00000000000000000005-00000000000000000017.csv.gz"
        );
        assert_eq!(
            stage_dir("EVENTS", "my_topic.v1", 3),
            "EVENTS/my__topic.v1/3"
        );
        assert_ne!(path_segment("a_2F"), path_segment("a/"));
        assert_eq!(path_segment("a/"), "a_2F");
        assert_eq!(gzip(b"same"), gzip(b"same"));
    }

    #[test]
    fn type_mapping_and_compatibility() {
        assert_eq!(column_type_for(ValueType::Int), "NUMBER(38,0)");
        assert_eq!(
            merge_types(ValueType::Int, ValueType::Float),
            ValueType::Float
        );
        assert_eq!(
            merge_types(ValueType::Null, ValueType::Bool),
            ValueType::Bool
        );
        assert_eq!(
            merge_types(ValueType::Bool, ValueType::Int),
            ValueType::String
        );
        let integer = ColumnKind::created_for(ValueType::Int);
        assert!(integer.accepts(&Value::Float(3.0)));
        assert!(integer.accepts(&Value::Int(i64::MIN)));
        assert!(!integer.accepts(&Value::Float(3.5)));
        assert!(!integer.accepts(&Value::Float(f64::NAN)));
        assert!(!integer.accepts(&Value::String("3".into())));
        // NUMBER(6,2): four digits before the point, a value rounded to two after it.
        let price = ColumnKind::from_rowtype("fixed", Some(6), Some(2));
        assert_eq!(
            price,
            ColumnKind::Decimal {
                digits: 4,
                scale: 2
            }
        );
        for fits in [0.0, -9999.994, 12.5, 1e-9, 999.995, 0.995] {
            assert!(price.accepts(&Value::Float(fits)), "{fits}");
        }
        // 9999.995 is 9999.99499... as a float, but the file says `9999.995`, which rounds up.
        for past in [
            9999.995,
            9999.996,
            -9999.995,
            -10000.0,
            1e300,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert!(!price.accepts(&Value::Float(past)), "{past}");
        }
        assert!(price.accepts(&Value::Int(-9999)) && !price.accepts(&Value::Int(10000)));
        let qty = ColumnKind::from_rowtype("fixed", Some(3), Some(0));
        assert!(qty.accepts(&Value::Int(999)) && qty.accepts(&Value::Int(0)));
        assert!(!qty.accepts(&Value::Int(-1000)) && !qty.accepts(&Value::Float(1000.0)));
        assert!(qty.takes_type(&Value::Int(1000)) && !qty.takes_type(&Value::Bool(true)));
        // NUMBER(2,2) holds no digit before the point: 0 and 0.99 go in, 0.995 and 1 do not.
        let rate = ColumnKind::from_rowtype("fixed", Some(2), Some(2));
        assert!(rate.accepts(&Value::Int(0)) && rate.accepts(&Value::Float(0.99)));
        assert!(!rate.accepts(&Value::Float(0.995)) && !rate.accepts(&Value::Int(1)));
        assert_eq!(digits_when_rounded(99.5, 0), 3);
        assert_eq!(digits_when_rounded(99.4, 0), 2);
        assert_eq!(digits_when_rounded(0.5, 0), 1);
        assert_eq!(digits_when_rounded(0.95, 1), 1);
        assert_eq!(digits_when_rounded(0.05, 1), 0);
        assert!(ColumnKind::Text.accepts(&Value::Json("{}".into())));
        assert!(!ColumnKind::Variant.accepts(&Value::String("x".into())));
    }
}
