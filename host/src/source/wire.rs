//! The Kafka message format of a replayed row.
//!
//! A message is one row:
//!
//! - **value**: a flat JSON object, one member per field, in column order:
//!   `{"id":7,"name":"a,b","at":"2024-01-02T03:04:05","score":1.5,"tags":["x"]}`.
//! - **header `sluice.types`**: the field types, comma-separated and in the same order
//!   (`int,string,timestamp,float,json`).
//! - **headers `sluice.file` and `sluice.line`**: the CSV file name and the 1-based line the row
//!   starts on, and **`sluice.file_id`**, a fingerprint of the file (set by the producer, not by
//!   [`encode`]; a resumed replay tells two files of one name apart by it: see
//!   [`crate::source::resume::file_id`]).
//!
//! Why JSON: any Kafka tool (and `scripts/check-topic.py`) can read the topic without a schema
//! registry, and CSV rows are small and repetitive, which lz4 compresses well. Why the types
//! header: JSON alone cannot tell a timestamp from a string, an int-valued float from an int, or
//! a JSON value from a string, and the consumer must hand the sink the same typed [`Row`] the
//! source read. Keeping the types out of the value keeps the value plain JSON for other readers.
//!
//! Exact round trip (`decode(encode(row)) == row`, types included) is kept by these rules:
//! - timestamps are written as ISO-8601 text with microseconds (`format_timestamp`), or as the
//!   raw microsecond count when their year is outside 0000-9999 (ISO text with a signed or
//!   five-digit year would not parse back);
//! - floats use the shortest round-tripping form, and are parsed back with Rust's exact float
//!   parser (not serde_json's fast one); NaN and infinities, which JSON lacks, are written as the
//!   strings `"NaN"`, `"inf"`, `"-inf"`;
//! - a JSON value whose text is valid JSON without surrounding whitespace is embedded as is (type `json`) and read
//!   back as the exact same text; any other JSON text travels as a JSON string (type `json_text`);
//! - the object is scanned by hand, so duplicate field names and field order survive.
//!
//! A message without `sluice.types` (written by another producer) is typed by its JSON alone
//! (`untyped_value`), so sluice can consume plain JSON topics too.

use std::fmt::Write as _;

use crate::row::{Field, Name, Row, Value, ValueType, format_timestamp, parse_timestamp};

/// Header carrying the comma-separated field types.
pub const HEADER_TYPES: &str = "sluice.types";
/// Header carrying the source CSV file name.
pub const HEADER_FILE: &str = "sluice.file";
/// Header carrying the 1-based CSV line number the row starts on.
pub const HEADER_LINE: &str = "sluice.line";
/// Header carrying a fingerprint of the CSV file (see [`crate::source::resume::file_id`]).
pub const HEADER_FILE_ID: &str = "sluice.file_id";

/// Wire name of a JSON value that is not embedded as JSON but carried as a JSON string.
const JSON_TEXT: &str = "json_text";

/// Why a message could not be decoded into a row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The message has no value.
    #[error("message has no value")]
    Empty,
    /// The value is not UTF-8.
    #[error("message value is not valid UTF-8")]
    NotUtf8,
    /// The value is not a JSON object (or not valid JSON).
    #[error("message value is not a JSON object: {0}")]
    Syntax(String),
    /// The types header does not list a known type.
    #[error("unknown type {0:?} in the {HEADER_TYPES} header")]
    UnknownType(String),
    /// The types header lists a different number of fields than the object has.
    #[error("the {HEADER_TYPES} header lists {types} types but the object has {fields} fields")]
    FieldCount {
        /// Types in the header.
        types: usize,
        /// Members in the object.
        fields: usize,
    },
    /// A value does not fit the type the header gives it (without a header: is not JSON, or is
    /// a string no Rust string can hold, with a lone surrogate escape such as `"\ud800"`).
    #[error(
        "field {field:?} is not a valid {ty}: {raw}{}",
        why.as_ref().map(|w| format!(" ({w})")).unwrap_or_default()
    )]
    Value {
        /// The field name.
        field: String,
        /// The type from the header.
        ty: String,
        /// The raw JSON of the value (shortened).
        raw: String,
        /// Why, when the type alone does not say.
        why: Option<String>,
    },
}

/// An encoded row: the JSON value and the `sluice.types` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The message value.
    pub value: Vec<u8>,
    /// The `sluice.types` header value.
    pub types: String,
}

/// The message key for a row whose key column holds `value`: its text form (as in CSV output),
/// none for null.
pub fn key_of(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        v => Some(v.to_string()),
    }
}

/// Encodes a row (see the module doc).
pub fn encode(row: &Row) -> Encoded {
    let mut value = Vec::with_capacity(16 * row.fields.len() + 2);
    let mut types = String::with_capacity(8 * row.fields.len());
    value.push(b'{');
    for (i, field) in row.fields.iter().enumerate() {
        if i > 0 {
            value.push(b',');
            types.push(',');
        }
        write_json_string(&mut value, &field.name);
        value.push(b':');
        let ty = write_value(&mut value, &field.value);
        types.push_str(ty);
    }
    value.push(b'}');
    Encoded { value, types }
}

fn write_json_string(out: &mut Vec<u8>, s: &str) {
    // Writing a &str to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes one value and returns its wire type name.
fn write_value(out: &mut Vec<u8>, v: &Value) -> &'static str {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => {
            let mut s = String::new();
            let _ = write!(s, "{i}");
            out.extend_from_slice(s.as_bytes());
        }
        Value::Float(f) if f.is_nan() => write_json_string(out, "NaN"),
        Value::Float(f) if f.is_infinite() => {
            write_json_string(out, if *f > 0.0 { "inf" } else { "-inf" })
        }
        Value::Float(f) => {
            let _ = serde_json::to_writer(&mut *out, f);
        }
        Value::String(s) => write_json_string(out, s),
        Value::Timestamp(us) => match chrono::DateTime::from_timestamp_micros(*us) {
            // ISO-8601 text of a year outside 0000-9999 (`+10000-01-01`, `-0001-12-31`) does not
            // parse back, so such a timestamp travels as its number like one outside chrono's range.
            Some(dt) if (0..=9999).contains(&chrono::Datelike::year(&dt)) => {
                write_json_string(out, &format_timestamp(*us))
            }
            _ => out.extend_from_slice(us.to_string().as_bytes()),
        },
        Value::Json(text) => {
            let embeddable = text.trim() == text
                && !text.is_empty()
                && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok();
            if embeddable {
                out.extend_from_slice(text.as_bytes());
            } else {
                write_json_string(out, text);
                return JSON_TEXT;
            }
        }
    }
    v.value_type().as_str()
}

/// Decodes a message value, given its `sluice.types` header if it has one.
pub fn decode(value: Option<&[u8]>, types: Option<&[u8]>) -> Result<Row, DecodeError> {
    let value = value.ok_or(DecodeError::Empty)?;
    let text = std::str::from_utf8(value).map_err(|_| DecodeError::NotUtf8)?;
    let members = members(text).map_err(DecodeError::Syntax)?;
    let Some(types) = types else {
        let mut row = Row::with_capacity(members.len());
        for (name, raw) in members {
            let value = untyped_value(raw).ok_or_else(|| DecodeError::Value {
                field: name.to_string(),
                ty: "JSON value".to_owned(),
                raw: shorten(raw),
                // JSON syntax allows an unpaired surrogate escape; a Rust string cannot hold it.
                why: (raw.starts_with('"')
                    && serde_json::from_str::<serde::de::IgnoredAny>(raw).is_ok())
                .then(|| {
                    "it escapes half of a UTF-16 surrogate pair (\\uD800 to \\uDFFF) without \
                     the other half, which is no Unicode character"
                        .to_owned()
                }),
            })?;
            row.push(name, value);
        }
        return Ok(row);
    };
    let types = std::str::from_utf8(types).map_err(|_| DecodeError::NotUtf8)?;
    let types: Vec<&str> = if types.is_empty() {
        Vec::new()
    } else {
        types.split(',').collect()
    };
    if types.len() != members.len() {
        return Err(DecodeError::FieldCount {
            types: types.len(),
            fields: members.len(),
        });
    }
    let mut row = Row::with_capacity(members.len());
    for ((name, raw), ty) in members.into_iter().zip(types) {
        let value = decode_value(raw, ty).ok_or_else(|| {
            if wire_type(ty).is_none() {
                DecodeError::UnknownType(ty.to_owned())
            } else {
                DecodeError::Value {
                    field: name.to_string(),
                    ty: ty.to_owned(),
                    raw: shorten(raw),
                    why: None,
                }
            }
        })?;
        row.fields.push(Field { name, value });
    }
    Ok(row)
}

fn wire_type(ty: &str) -> Option<ValueType> {
    Some(match ty {
        "null" => ValueType::Null,
        "bool" => ValueType::Bool,
        "int" => ValueType::Int,
        "float" => ValueType::Float,
        "string" => ValueType::String,
        "timestamp" => ValueType::Timestamp,
        "json" | JSON_TEXT => ValueType::Json,
        _ => return None,
    })
}

fn decode_value(raw: &str, ty: &str) -> Option<Value> {
    let is_string = raw.starts_with('"');
    Some(match ty {
        "null" => (raw == "null").then_some(Value::Null)?,
        "bool" => match raw {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return None,
        },
        "int" => Value::Int(raw.parse().ok()?),
        "float" if is_string => match unescape(raw)?.as_str() {
            "NaN" => Value::Float(f64::NAN),
            "inf" => Value::Float(f64::INFINITY),
            "-inf" => Value::Float(f64::NEG_INFINITY),
            _ => return None,
        },
        "float" => Value::Float(parse_json_number(raw)?),
        "string" if is_string => Value::String(unescape(raw)?),
        "timestamp" if is_string => Value::Timestamp(parse_timestamp(&unescape(raw)?)?),
        "timestamp" => Value::Timestamp(raw.parse().ok()?),
        "json" => {
            serde_json::from_str::<serde::de::IgnoredAny>(raw).ok()?;
            Value::Json(raw.to_owned())
        }
        JSON_TEXT if is_string => Value::Json(unescape(raw)?),
        _ => return None,
    })
}

/// Types a member of a message without `sluice.types` by its JSON text alone: numbers without a
/// fraction or exponent are `int`, other numbers `float` (Rust's exact parser), objects and
/// arrays `json` with their exact text. A number outside the range of its type stays its text,
/// a string, as the CSV source keeps such a column: going through a float would silently change
/// an integer's digits (an ID of `18446744073709551615` would load as `18446744073709552000`),
/// and `1e400` would become infinity. Other floats round to the nearest f64, as floats do
/// (`1e-400` is 0).
fn untyped_value(raw: &str) -> Option<Value> {
    Some(match raw.as_bytes().first()? {
        b'"' => Value::String(serde_json::from_str(raw).ok()?),
        b'n' | b't' | b'f' => match raw {
            "null" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return None,
        },
        b'{' | b'[' => {
            serde_json::from_str::<serde::de::IgnoredAny>(raw).ok()?;
            Value::Json(raw.to_owned())
        }
        _ => {
            // serde_json checks the number grammar (no `+1`, `01` or `1.`), then Rust reads it.
            serde_json::from_str::<serde::de::IgnoredAny>(raw).ok()?;
            if raw.contains(['.', 'e', 'E']) {
                let x: f64 = raw.parse().ok()?;
                if x.is_finite() {
                    Value::Float(x)
                } else {
                    Value::String(raw.to_owned())
                }
            } else {
                raw.parse()
                    .map_or_else(|_| Value::String(raw.to_owned()), Value::Int)
            }
        }
    })
}

/// Parses a JSON number with Rust's exact float parser; rejects the non-JSON forms Rust accepts.
fn parse_json_number(raw: &str) -> Option<f64> {
    let b = raw.as_bytes();
    let first = *b.first()?;
    if !(first == b'-' || first.is_ascii_digit())
        || !b.iter().all(|c| c.is_ascii_digit() || b"+-.eE".contains(c))
    {
        return None;
    }
    raw.parse().ok()
}

fn unescape(raw: &str) -> Option<String> {
    if !raw.contains('\\') && raw.len() >= 2 {
        return Some(raw[1..raw.len() - 1].to_owned());
    }
    serde_json::from_str(raw).ok()
}

fn shorten(raw: &str) -> String {
    if raw.len() <= 80 {
        return raw.to_owned();
    }
    let mut end = 77;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &raw[..end])
}

/// Splits a flat JSON object into `(name, raw value text)` pairs, keeping order and duplicates.
/// Nested values are returned as their exact text; their validity is checked by the caller.
pub fn members(text: &str) -> Result<Vec<(Name, &str)>, String> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return Err("expected `{`".to_owned());
    }
    i = skip_ws(b, i + 1);
    let mut members = Vec::new();
    if b.get(i) == Some(&b'}') {
        return finish(b, i + 1, members);
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(format!("expected a field name at byte {i}"));
        }
        let end = scan_string(b, i)?;
        let name =
            unescape(&text[i..end]).ok_or_else(|| format!("invalid field name at byte {i}"))?;
        i = skip_ws(b, end);
        if b.get(i) != Some(&b':') {
            return Err(format!("expected `:` at byte {i}"));
        }
        i = skip_ws(b, i + 1);
        let end = scan_value(b, i)?;
        members.push((Name::from(name), &text[i..end]));
        i = skip_ws(b, end);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return finish(b, i + 1, members),
            _ => return Err(format!("expected `,` or `}}` at byte {i}")),
        }
    }
}

fn finish<'a>(
    b: &[u8],
    i: usize,
    members: Vec<(Name, &'a str)>,
) -> Result<Vec<(Name, &'a str)>, String> {
    if skip_ws(b, i) != b.len() {
        return Err(format!("trailing characters at byte {i}"));
    }
    Ok(members)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Returns the index just past the string starting at `i` (which is a `"`).
fn scan_string(b: &[u8], mut i: usize) -> Result<usize, String> {
    let start = i;
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Ok(i + 1),
            _ => i += 1,
        }
    }
    Err(format!("unterminated string at byte {start}"))
}

/// Returns the index just past the value starting at `i`.
fn scan_value(b: &[u8], i: usize) -> Result<usize, String> {
    match b.get(i) {
        None => Err("unexpected end".to_owned()),
        Some(b'"') => scan_string(b, i),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = scan_string(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            Err(format!("unterminated value at byte {i}"))
        }
        Some(_) => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            if j == i {
                Err(format!("expected a value at byte {i}"))
            } else {
                Ok(j)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(row: &Row) -> Row {
        let enc = encode(row);
        decode(Some(&enc.value), Some(enc.types.as_bytes())).unwrap()
    }

    #[test]
    fn every_type_round_trips_exactly() {
        let mut row = Row::default();
        row.push("id", Value::Int(i64::MIN));
        row.push("max", Value::Int(i64::MAX));
        row.push(
            "name",
            Value::String("a,b \"quoted\"\nline\u{1F600}\\".into()),
        );
        row.push("empty", Value::String(String::new()));
        row.push("v", Value::Float(0.1 + 0.2));
        row.push("whole", Value::Float(3.0));
        row.push("tiny", Value::Float(5e-324));
        row.push("huge", Value::Float(1.7976931348623157e308));
        row.push("neg0", Value::Float(-0.0));
        row.push("inf", Value::Float(f64::INFINITY));
        row.push("ninf", Value::Float(f64::NEG_INFINITY));
        row.push("ok", Value::Bool(true));
        row.push("at", Value::Timestamp(1_704_164_645_123_456));
        row.push("old", Value::Timestamp(-1));
        row.push("far", Value::Timestamp(i64::MAX));
        // Year -1 and year 10000: inside chrono's range, outside what ISO-8601 text parses back.
        row.push("bce", Value::Timestamp(-62_167_219_200_000_001));
        row.push("y10k", Value::Timestamp(253_402_300_800_000_000));
        row.push("nested", Value::Json(r#"{"x": [1, 2.50, "s"]}"#.into()));
        row.push("jstr", Value::Json(r#""just a string""#.into()));
        row.push("jbad", Value::Json("{not json".into()));
        row.push("jpad", Value::Json(" 1 ".into()));
        row.push("gone", Value::Null);
        row.push("id", Value::String("duplicate name".into()));
        assert_eq!(round_trip(&row), row);
        let neg0 = round_trip(&row).get("neg0").cloned();
        assert!(matches!(neg0, Some(Value::Float(f)) if f.is_sign_negative()));
    }

    #[test]
    fn nan_round_trips() {
        let mut row = Row::default();
        row.push("x", Value::Float(f64::NAN));
        assert!(matches!(round_trip(&row).fields[0].value, Value::Float(f) if f.is_nan()));
    }

    #[test]
    fn value_is_plain_json_in_column_order() {
        let mut row = Row::default();
        row.push("id", Value::Int(7));
        row.push("at", Value::Timestamp(0));
        row.push("v", Value::Float(1.5));
        let enc = encode(&row);
        assert_eq!(
            String::from_utf8(enc.value).unwrap(),
            r#"{"id":7,"at":"1970-01-01T00:00:00","v":1.5}"#
        );
        assert_eq!(enc.types, "int,timestamp,float");
    }

    #[test]
    fn untyped_messages_decode_without_schema() {
        let row = decode(Some(br#" {"a": 1, "b": "x", "c": [1], "d": 2.5} "#), None).unwrap();
        assert_eq!(row.get("a"), Some(&Value::Int(1)));
        assert_eq!(row.get("b"), Some(&Value::String("x".into())));
        assert_eq!(row.get("c"), Some(&Value::Json("[1]".into())));
        assert_eq!(row.get("d"), Some(&Value::Float(2.5)));
        // Integers that do not fit `int` keep their digits, as text; nested values their text.
        let text = br#"{"u64": 18446744073709551615, "big": -123456789012345678901234567890,
            "min": -9223372036854775808, "f": 1.0e2, "inf": -1e400, "n": null, "t": true,
            "o": {"id": 18446744073709551615, "x": [1, 2.50]}, "s": "a\"b"}"#;
        let row = decode(Some(text), None).unwrap();
        let s = |v: &str| Some(Value::String(v.into()));
        assert_eq!(row.get("u64").cloned(), s("18446744073709551615"));
        assert_eq!(
            row.get("big").cloned(),
            s("-123456789012345678901234567890")
        );
        assert_eq!(row.get("min"), Some(&Value::Int(i64::MIN)));
        assert_eq!(row.get("f"), Some(&Value::Float(100.0)));
        assert_eq!(row.get("inf").cloned(), s("-1e400"));
        assert_eq!(row.get("n"), Some(&Value::Null));
        assert_eq!(row.get("t"), Some(&Value::Bool(true)));
        let nested = r#"{"id": 18446744073709551615, "x": [1, 2.50]}"#;
        assert_eq!(row.get("o"), Some(&Value::Json(nested.into())));
        assert_eq!(row.get("s").cloned(), s("a\"b"));
        // Not JSON, though Rust would parse the numbers, or the string holds a raw control byte.
        for bad in [
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": +1}"#,
            r#"{"a": nul}"#,
            "{\"a\": \"\u{1}\"}",
            r#"{"a": [1,}"#,
        ] {
            let got = decode(Some(bad.as_bytes()), None);
            let refused = matches!(&got, Err(DecodeError::Value { field, .. }) if field == "a")
                || matches!(got, Err(DecodeError::Syntax(_)));
            assert!(refused, "{bad}: {got:?}");
        }
    }

    #[test]
    fn bad_messages_are_errors() {
        // Valid JSON, but no Rust string can hold it: the message says why.
        let lone = decode(Some(br#"{"lone":"\ud800"}"#), None).unwrap_err();
        assert!(
            lone.to_string()
                .ends_with("(it escapes half of a UTF-16 surrogate pair (\\uD800 to \\uDFFF) without the other half, which is no Unicode character)"),
            "{lone}"
        );
        assert!(
            matches!(&lone, DecodeError::Value { field, .. } if field == "lone"),
            "{lone:?}"
        );
        let tru = decode(Some(br#"{"b":tru}"#), None).unwrap_err();
        assert_eq!(
            tru.to_string(),
            "field \"b\" is not a valid JSON value: tru"
        );
        assert_eq!(decode(None, None), Err(DecodeError::Empty));
        assert_eq!(decode(Some(b"\xff"), None), Err(DecodeError::NotUtf8));
        assert!(matches!(
            decode(Some(b"[1]"), None),
            Err(DecodeError::Syntax(_))
        ));
        assert!(matches!(
            decode(Some(br#"{"a":1} x"#), None),
            Err(DecodeError::Syntax(_))
        ));
        assert!(matches!(
            decode(Some(br#"{"a":1"#), None),
            Err(DecodeError::Syntax(_))
        ));
        assert_eq!(
            decode(Some(br#"{"a":1}"#), Some(b"int,int")),
            Err(DecodeError::FieldCount {
                types: 2,
                fields: 1
            })
        );
        assert!(matches!(
            decode(Some(br#"{"a":"x"}"#), Some(b"int")),
            Err(DecodeError::Value { .. })
        ));
        assert!(matches!(
            decode(Some(br#"{"a":1}"#), Some(b"blob")),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(
            decode(Some(br#"{"a":infinity}"#), Some(b"float")),
            Err(DecodeError::Value { .. })
        ));
        assert_eq!(decode(Some(b"{}"), Some(b"")), Ok(Row::default()));
    }
}
