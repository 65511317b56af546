//! The guest SDK for sluice transforms.
//!
//! A transform is a WebAssembly component implementing the `sluice:transform` WIT world
//! (`wit/transform.wit`). The world's entry point takes a whole batch of rows in a compact
//! positional layout; this crate hides that layout so an author writes one function per row:
//!
//! ```no_run
//! use sluice_guest::{Error, Params, Row, Transform, Value};
//!
//! struct Upper { field: String }
//!
//! impl Transform for Upper {
//!     fn init(params: &Params) -> Result<Self, Error> {
//!         params.allow_only(&["field"])?;
//!         Ok(Upper { field: params.require("field")?.to_owned() })
//!     }
//!     fn transform(&mut self, mut row: Row) -> Result<Vec<Row>, Error> {
//!         if let Some(Value::String(s)) = row.get_mut(&self.field) {
//!             *s = s.to_uppercase();
//!         }
//!         Ok(vec![row])
//!     }
//! }
//!
//! sluice_guest::export!(Upper);
//! ```
//!
//! Returning `Ok(vec![])` filters the row out, `Ok(vec![a, b])` emits two rows, and `Err(..)`
//! fails that row alone (the host applies the transform's `on_error` policy to it). Returning the
//! input row untouched (`Ok(vec![row])` with no `get_mut`, `set`, `push`, `remove` or `rename`
//! on it) is free: the SDK answers `keep` and the row is not sent back to the host at all. Do not
//! panic: a panic traps the whole instance, and the host has to rebuild it and re-run the batch
//! one row at a time to find the culprit.

// Not with wasm threads (`atomics`): the pool's free lists are unsynchronised.
#[cfg(all(
    target_arch = "wasm32",
    not(target_feature = "atomics"),
    feature = "pool-alloc"
))]
mod pool;

#[cfg(all(
    target_arch = "wasm32",
    not(target_feature = "atomics"),
    feature = "pool-alloc"
))]
#[global_allocator]
static ALLOC: pool::Pool = pool::Pool::new();

use std::any::Any;
use std::cell::{Cell, OnceCell, RefCell};
use std::rc::Rc;

extern crate self as sluice_guest;

/// Generated bindings for the `sluice:transform` world. Authors should not need them.
#[doc(hidden)]
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "transform",
        pub_export_macro: true,
        export_macro_name: "__export_transform_world",
        default_bindings_module: "::sluice_guest::bindings",
        runtime_path: "::sluice_guest::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
    });
}

use bindings::sluice::transform::types::{Outcome, Output, Rows, ValueType, Values};

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL; also an empty CSV field.
    Null,
    /// A boolean.
    Bool(bool),
    /// A signed 64-bit integer.
    Int(i64),
    /// A 64-bit float.
    Float(f64),
    /// UTF-8 text.
    String(String),
    /// Microseconds since the Unix epoch, UTC.
    Timestamp(i64),
    /// Nested data (objects, arrays) as JSON text: it must be JSON, which `sluice transform
    /// test` checks; a Snowflake VARIANT column does not take anything else.
    Json(String),
}

/// Why `init` or a row failed: `InvalidParam`, `MissingField`, `InvalidValue` or `Other`.
pub use bindings::sluice::transform::types::TransformError as Error;

/// A param or field name plus the reason it was rejected (carried by [`Error`]).
pub use bindings::sluice::transform::types::FieldError;

/// Facts about the Kafka record the current row came from (see [`meta`]).
pub use bindings::sluice::transform::types::{Header, RecordMeta};

/// A field name. Shared because every row of a batch repeats the same names.
pub type Name = Rc<str>;

/// An ordered list of named, typed fields.
///
/// A row handed to [`Transform::transform`] still points into the batch it came in: a value is
/// decoded (text copied out) only when the transform reads it, and a value it never touches is
/// copied straight from the input batch to the output. A filter that looks at one field pays
/// for one field. The flip side: a row keeps its whole input batch alive, so a transform that
/// holds on to rows across calls should store [`Row::detach`]ed ones.
#[derive(Clone, Default)]
pub struct Row {
    fields: Vec<Field>,
    /// The token of the input row this row still equals, 0 once changed (or if built by the
    /// transform). Lets the SDK answer `keep` instead of sending an untouched row back.
    origin: u64,
    /// The input batch the undecoded values are in.
    src: Option<Rc<Values>>,
}

/// One field of a [`Row`].
#[derive(Clone)]
struct Field {
    name: Name,
    /// The value, once read or set.
    value: OnceCell<Value>,
    /// Where the value is in the row's input batch, until `value` is set.
    raw: Raw,
}

/// Where an undecoded value is: its `value-type` case index and its position in the payload
/// lane of that type (`ints`, `floats`, or the `text` slices).
#[derive(Clone, Copy, Default)]
struct Raw {
    ty: u8,
    at: u32,
}

impl Field {
    fn new(name: Name, value: Value) -> Field {
        Field {
            name,
            value: OnceCell::from(value),
            raw: Raw::default(),
        }
    }

    /// The value, decoded from `src` on first use.
    // This and the other per-row helpers marked `#[inline(always)]`: LLVM left them out of line,
    // and every wasm function entry costs a call plus the host's CPU-cap (epoch) check
    // (docs/BENCHMARKS.md has the figures).
    #[inline(always)]
    fn get(&self, src: Option<&Values>) -> &Value {
        // Not `get_or_init`, whose first-use path is a cold, out-of-line call: here the first
        // use is the common one.
        if self.value.get().is_none() {
            let _ = self.value.set(decode(src, self.raw));
        }
        self.value
            .get()
            .unwrap_or_else(|| unreachable!("set above"))
    }

    /// The value for writing, decoded from `src` first if need be.
    #[inline(always)]
    fn get_mut(&mut self, src: Option<&Values>) -> &mut Value {
        if self.value.get().is_none() {
            let _ = self.value.set(decode(src, self.raw));
        }
        self.value
            .get_mut()
            .unwrap_or_else(|| unreachable!("set above"))
    }

    fn into_value(self, src: Option<&Values>) -> Value {
        self.value
            .into_inner()
            .unwrap_or_else(|| decode(src, self.raw))
    }
}

/// The value `raw` points at in `src` (`Null` if it is not there; the host never sends that).
#[inline(always)]
fn decode(src: Option<&Values>, raw: Raw) -> Value {
    let Some(v) = src else {
        return Value::Null;
    };
    let at = raw.at as usize;
    let int = || v.ints.get(at).copied().unwrap_or_default();
    match value_type(raw.ty) {
        ValueType::Null => Value::Null,
        ValueType::Bool => Value::Bool(int() != 0),
        ValueType::Int => Value::Int(int()),
        ValueType::Timestamp => Value::Timestamp(int()),
        ValueType::Float => Value::Float(v.floats.get(at).copied().unwrap_or(f64::NAN)),
        ValueType::String => Value::String(text(v, at).to_owned()),
        ValueType::Json => Value::Json(text(v, at).to_owned()),
    }
}

/// Text value `k` of `v` (empty if out of range).
#[inline(always)]
fn text(v: &Values, k: usize) -> &str {
    let start = match k {
        0 => 0,
        _ => v.text_ends.get(k - 1).map_or(0, |&e| e as usize),
    };
    let end = v.text_ends.get(k).map_or(start, |&e| e as usize);
    v.text.get(start..end).unwrap_or_default()
}

/// The `value-type` whose case index is `t` (unknown ones read as null).
#[inline(always)]
fn value_type(t: u8) -> ValueType {
    match t {
        1 => ValueType::Bool,
        2 => ValueType::Int,
        3 => ValueType::Float,
        4 => ValueType::String,
        5 => ValueType::Timestamp,
        6 => ValueType::Json,
        _ => ValueType::Null,
    }
}

impl PartialEq for Row {
    fn eq(&self, other: &Row) -> bool {
        self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Row {
    /// An empty row.
    pub fn new() -> Row {
        Row::default()
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether the row has no fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        let src = self.src.as_deref();
        self.fields.iter().map(move |f| (&*f.name, f.get(src)))
    }

    /// The value of field `name`, if the row has it.
    #[inline(always)]
    pub fn get(&self, name: &str) -> Option<&Value> {
        let src = self.src.as_deref();
        self.fields
            .iter()
            .find(|f| same(&f.name, name))
            .map(|f| f.get(src))
    }

    /// A mutable reference to the value of field `name`, if the row has it.
    #[inline(always)]
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Value> {
        self.origin = 0;
        let src = self.src.as_deref();
        self.fields
            .iter_mut()
            .find(|f| same(&f.name, name))
            .map(|f| f.get_mut(src))
    }

    /// The value of field `name`, or [`Error::MissingField`].
    #[inline(always)]
    pub fn require(&self, name: &str) -> Result<&Value, Error> {
        self.get(name)
            .ok_or_else(|| Error::MissingField(name.to_owned()))
    }

    /// Sets field `name`: replaces its value if present, appends the field otherwise.
    pub fn set(&mut self, name: &str, value: Value) {
        self.origin = 0;
        match self.fields.iter_mut().find(|f| same(&f.name, name)) {
            Some(f) => f.value = OnceCell::from(value),
            None => self.fields.push(Field::new(intern(name), value)),
        }
    }

    /// Appends a field without checking for an existing one of the same name.
    pub fn push(&mut self, name: impl Into<Name>, value: Value) {
        self.origin = 0;
        self.fields.push(Field::new(name.into(), value));
    }

    /// Removes field `name` and returns its value.
    pub fn remove(&mut self, name: &str) -> Option<Value> {
        let i = self.fields.iter().position(|f| same(&f.name, name))?;
        self.origin = 0;
        Some(self.fields.remove(i).into_value(self.src.as_deref()))
    }

    /// This row with every value decoded and no tie to its input batch. Use it for rows a
    /// transform keeps across calls (windows, last-row-per-key state): an attached row keeps its
    /// whole input batch in the instance's memory. The row still counts as untouched.
    pub fn detach(self) -> Row {
        let src = self.src.as_deref();
        let fields = self
            .fields
            .into_iter()
            .map(|f| Field::new(f.name.clone(), f.into_value(src)))
            .collect();
        Row {
            fields,
            origin: self.origin,
            src: None,
        }
    }

    /// Renames field `from` to `to` in place; returns whether the row had `from`. A row that
    /// already has a field `to` then has two, and `get(to)` finds whichever comes first in the
    /// row: check first, as the `enrich` example does, if that must not happen.
    pub fn rename(&mut self, from: &str, to: &str) -> bool {
        match self.fields.iter_mut().find(|f| same(&f.name, from)) {
            Some(f) => {
                self.origin = 0;
                f.name = intern(to);
                true
            }
            None => false,
        }
    }
}

/// Whether two names are equal. Field names are short, and `==` on `str` calls wasi-libc's
/// byte-at-a-time `memcmp`, which a transform doing a few lookups per row noticeably waits on.
#[inline(always)]
fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut a8 = a.chunks_exact(8);
    let mut b8 = b.chunks_exact(8);
    for (x, y) in (&mut a8).zip(&mut b8) {
        if u64::from_ne_bytes(x.try_into().unwrap_or_default())
            != u64::from_ne_bytes(y.try_into().unwrap_or_default())
        {
            return false;
        }
    }
    let (a, b) = (a8.remainder(), b8.remainder());
    (0..a.len()).all(|i| a[i] == b[i])
}

/// Names interned by `set` and `rename`, so rows renamed or extended the same way share one
/// allocation per name and the SDK recognises their shape by pointer. Bounded: a transform that
/// invents names per row just stops being interned.
const MAX_INTERNED: usize = 256;

thread_local! {
    static INTERNED: RefCell<Vec<Name>> = const { RefCell::new(Vec::new()) };
}

/// The shared [`Name`] for `name`.
fn intern(name: &str) -> Name {
    INTERNED.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(n) = cache.iter().find(|n| same(n, name)) {
            return Rc::clone(n);
        }
        let n = Name::from(name);
        if cache.len() < MAX_INTERNED {
            cache.push(Rc::clone(&n));
        }
        n
    })
}

impl<N: Into<Name>> FromIterator<(N, Value)> for Row {
    fn from_iter<I: IntoIterator<Item = (N, Value)>>(iter: I) -> Row {
        Row {
            fields: iter
                .into_iter()
                .map(|(n, v)| Field::new(n.into(), v))
                .collect(),
            ..Row::default()
        }
    }
}

impl Error {
    /// An [`Error::InvalidParam`] for param `name`.
    pub fn invalid_param(name: &str, reason: impl Into<String>) -> Error {
        Error::InvalidParam(FieldError {
            name: name.to_owned(),
            reason: reason.into(),
        })
    }

    /// An [`Error::InvalidValue`] for field `name`.
    pub fn invalid_value(name: &str, reason: impl Into<String>) -> Error {
        Error::InvalidValue(FieldError {
            name: name.to_owned(),
            reason: reason.into(),
        })
    }

    /// An [`Error::MissingField`] for field `name` (what [`Row::require`] returns).
    pub fn missing_field(name: &str) -> Error {
        Error::MissingField(name.to_owned())
    }

    /// An [`Error::Other`].
    pub fn other(reason: impl Into<String>) -> Error {
        Error::Other(reason.into())
    }
}

impl RecordMeta {
    /// The record's timestamp as a row value: [`Value::Timestamp`] (microseconds, where
    /// `timestamp_ms` is milliseconds), or [`Value::Null`] when the broker kept none.
    ///
    /// ```
    /// use sluice_guest::{RecordMeta, Value};
    /// let meta = RecordMeta {
    ///     topic: "t".into(),
    ///     partition: 0,
    ///     offset: 0,
    ///     key: None,
    ///     timestamp_ms: Some(1_700_000_000_123),
    ///     headers: vec![],
    /// };
    /// assert_eq!(meta.timestamp(), Value::Timestamp(1_700_000_000_123_000));
    /// ```
    pub fn timestamp(&self) -> Value {
        self.timestamp_ms
            .and_then(|ms| ms.checked_mul(1000))
            .map_or(Value::Null, Value::Timestamp)
    }
}

impl Value {
    /// The name of this value's type (`null`, `bool`, `int`, `float`, `string`, `timestamp`,
    /// `json`), for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::String(_) => "string",
            Value::Timestamp(_) => "timestamp",
            Value::Json(_) => "json",
        }
    }

    /// The text of a `String` or `Json` value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) | Value::Json(s) => Some(s),
            _ => None,
        }
    }

    /// A number as f64 (`Int`, `Float` and `Timestamp` qualify).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) | Value::Timestamp(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }

    /// An `Int` or `Timestamp` (its microseconds) as i64; match on the value to tell them apart.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::Int(i) | Value::Timestamp(i) => Some(i),
            _ => None,
        }
    }

    /// A `Bool` as bool (no other type qualifies: the CSV source already types a column of
    /// `true`/`false` as bool).
    ///
    /// ```
    /// use sluice_guest::Value;
    /// assert_eq!(Value::Bool(true).as_bool(), Some(true));
    /// assert_eq!(Value::Int(1).as_bool(), None);
    /// ```
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as display text: null is empty, strings are unquoted.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Int(i) => i.to_string(),
            Value::Timestamp(us) => format_timestamp(*us),
            // With an exponent past 1e21 and below 1e-6, as JavaScript writes numbers (but
            // `1e308`, not `1e+308`), rather than in hundreds of digits.
            Value::Float(f) if f.is_finite() && *f != 0.0 && !(1e-6..1e21).contains(&f.abs()) => {
                format!("{f:e}")
            }
            Value::Float(f) => f.to_string(),
            Value::String(s) | Value::Json(s) => s.clone(),
        }
    }
}

/// A timestamp as text, as `sluice transform test` prints it: `2024-01-02T03:04:05`, with six
/// fractional digits only when there is a fraction (`...05.656000`). UTC, no zone written.
pub fn format_timestamp(micros: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(dt) if micros.rem_euclid(1_000_000) == 0 => dt.format("%Y-%m-%dT%H:%M:%S").to_string(),
        Some(dt) => dt.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
        None => micros.to_string(),
    }
}

/// Microseconds since the Unix epoch (UTC) of an ISO-8601 timestamp, in the forms the CSV source
/// types as `timestamp`: a date alone (`2024-01-02`, midnight), or a date and a time with `T` or
/// a space between, optional seconds and fraction, and after the seconds an optional `Z` or
/// `+hh:mm` offset (converted to UTC; a time without seconds takes none, and `+hhmm` is not
/// read). `None` for anything else. A leap second (`23:59:60`) is the next day's midnight.
///
/// ```
/// use sluice_guest::parse_timestamp;
/// assert_eq!(parse_timestamp("1970-01-02"), Some(86_400_000_000));
/// assert_eq!(parse_timestamp("1970-01-01 00:00:01.5+01:00"), Some(-3_598_500_000));
/// assert_eq!(parse_timestamp("yesterday"), None);
/// ```
pub fn parse_timestamp(s: &str) -> Option<i64> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 10 || !b[0].is_ascii_digit() || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Some(dt.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    if let Ok(dt) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(dt.timestamp_micros());
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
}

/// `s` as a float if it is a number written in decimal (`-1.5`, `2e3`, spaces around allowed),
/// not one of the words Rust also reads as floats (`NaN`, `inf`, `infinity`): in a CSV cell or a
/// param, those are text. An exponent past f64's range gives infinity (`1e400`), which the CSV
/// source would have kept as text: check `is_finite()` where that matters.
///
/// ```
/// use sluice_guest::parse_number;
/// assert_eq!(parse_number(" -1.5 "), Some(-1.5));
/// assert_eq!(parse_number("2e3"), Some(2000.0));
/// assert_eq!(parse_number("NaN"), None);
/// assert_eq!(parse_number("1e400"), Some(f64::INFINITY));
/// ```
pub fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if t.bytes()
        .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E'))
    {
        return None;
    }
    t.parse().ok()
}

/// A number written in decimal without an exponent, of any size, as its digits: what
/// [`parse_decimal`] reads. Two compare exactly, digit by digit, where as floats numbers past
/// 2^53 would equal their neighbours (an integer too big for an int arrives as a string).
///
/// ```
/// use sluice_guest::parse_decimal;
/// let big = parse_decimal("18446744073709551615").unwrap();
/// assert!(big > parse_decimal(" 18446744073709551614.5 ").unwrap());
/// assert!(parse_decimal("-0.0").unwrap() == parse_decimal("0").unwrap());
/// assert_eq!(parse_decimal("-2.5").unwrap().floor(), Some(-3));
/// assert_eq!(parse_decimal("-2.5").unwrap().round(), Some(-3));
/// assert_eq!(big.round(), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal<'a> {
    negative: bool,
    whole: &'a str,
    frac: &'a str,
}

impl<'a> Decimal<'a> {
    /// Whether it is below zero (`-0` is not).
    pub fn is_negative(&self) -> bool {
        self.negative
    }

    /// The whole part's digits, without leading zeros (empty for zero).
    pub fn whole(&self) -> &'a str {
        self.whole
    }

    /// The fraction's digits, without trailing zeros (empty for an integer).
    pub fn frac(&self) -> &'a str {
        self.frac
    }

    /// The greatest integer not above it, if that is an `i64`.
    pub fn floor(&self) -> Option<i64> {
        self.int(self.negative && !self.frac.is_empty())
    }

    /// It rounded to an integer, half away from zero (as `f64::round`), if that is an `i64`.
    pub fn round(&self) -> Option<i64> {
        self.int(self.frac.as_bytes().first().is_some_and(|&b| b >= b'5'))
    }

    /// The whole part, one further from zero if `away`, if that is an `i64`.
    fn int(&self, away: bool) -> Option<i64> {
        // Accumulated negatively, so that -9223372036854775808 fits.
        let mut magnitude: i64 = 0;
        for b in self.whole.bytes() {
            magnitude = magnitude
                .checked_mul(10)?
                .checked_sub(i64::from(b - b'0'))?;
        }
        let magnitude = magnitude.checked_sub(i64::from(away))?;
        if self.negative {
            Some(magnitude)
        } else {
            magnitude.checked_neg()
        }
    }
}

impl Ord for Decimal<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let magnitude = (self.whole.len().cmp(&other.whole.len()))
            .then_with(|| self.whole.cmp(other.whole))
            .then_with(|| self.frac.cmp(other.frac));
        match (self.negative, other.negative) {
            (false, false) => magnitude,
            (true, true) => magnitude.reverse(),
            (negative, _) => match negative {
                true => std::cmp::Ordering::Less,
                false => std::cmp::Ordering::Greater,
            },
        }
    }
}

impl PartialOrd for Decimal<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// `s` as a [`Decimal`] if it is a number written in decimal without an exponent (`-12`,
/// `12.50`, `.5`, `+3.`, spaces around).
///
/// ```
/// use sluice_guest::parse_decimal;
/// let d = parse_decimal(" +0012.50 ").unwrap();
/// assert_eq!((d.is_negative(), d.whole(), d.frac()), (false, "12", "5"));
/// assert_eq!(parse_decimal("1e3"), None);
/// assert_eq!(parse_decimal("."), None);
/// ```
pub fn parse_decimal(s: &str) -> Option<Decimal<'_>> {
    let t = s.trim();
    let (negative, t) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + frac.len() == 0 || !digits(whole) || !digits(frac) {
        return None;
    }
    let (whole, frac) = (whole.trim_start_matches('0'), frac.trim_end_matches('0'));
    Some(Decimal {
        negative: negative && !(whole.is_empty() && frac.is_empty()),
        whole,
        frac,
    })
}

/// The `with` params of the transform, as given in pipeline.json or `--with k=v`.
#[derive(Debug, Clone, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Params from key/value pairs.
    pub fn new(pairs: Vec<(String, String)>) -> Params {
        Params(pairs)
    }

    /// The value of param `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of param `name`, or an [`Error::InvalidParam`] saying it is required.
    pub fn require(&self, name: &str) -> Result<&str, Error> {
        self.get(name)
            .ok_or_else(|| Error::invalid_param(name, "is required"))
    }

    /// Param `name` parsed with `FromStr`, if given; an [`Error::InvalidParam`] if it does not parse.
    /// For a float, [`Params::number`] is usually what is meant: `f64`'s `FromStr` takes `NaN`,
    /// `inf` and `1e400` (infinity) too.
    pub fn parse<T>(&self, name: &str) -> Result<Option<T>, Error>
    where
        T: std::str::FromStr,
        T::Err: std::fmt::Display,
    {
        // The type, so that `invalid digit found in string` says what was expected (a `usize`).
        let ty = std::any::type_name::<T>();
        // The last segment of its path, its parameters shortened (`Wrapper<alloc::string::String>`
        // is `Wrapper<…>`).
        let (path, params) = ty.split_at(ty.find('<').unwrap_or(ty.len()));
        let short = path.rsplit("::").next().unwrap_or(path);
        let params = if params.is_empty() { "" } else { "<…>" };
        // `f` for `f32`/`f64` ("an f64"); a capital F starts a word ("a Foo").
        let article = match short.starts_with(['a', 'e', 'i', 'o', 'A', 'E', 'I', 'O', 'f']) {
            true => "an",
            false => "a",
        };
        let ty = format!("{article} {short}{params}");
        self.get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| Error::invalid_param(name, format!("{v:?} is not {ty}: {e}")))
            })
            .transpose()
    }

    /// Param `name` as a finite number, if given: an [`Error::InvalidParam`] for anything
    /// [`parse_number`] does not read (`NaN`, `inf`, words) or that overflows (`1e400`).
    pub fn number(&self, name: &str) -> Result<Option<f64>, Error> {
        self.get(name)
            .map(|v| {
                parse_number(v)
                    .filter(|n| n.is_finite())
                    .ok_or_else(|| Error::invalid_param(name, format!("{v:?} is not a number")))
            })
            .transpose()
    }

    /// Rejects any param not in `known`, so that a typo in pipeline.json fails validation.
    pub fn allow_only(&self, known: &[&str]) -> Result<(), Error> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) if known.is_empty() => Err(Error::invalid_param(
                k,
                "unknown param (this transform takes no params)",
            )),
            Some((k, _)) => Err(Error::invalid_param(
                k,
                format!("unknown param (expected one of: {})", known.join(", ")),
            )),
            None => Ok(()),
        }
    }

    /// All params in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A transform: built once per instance from its params, then called once per row.
pub trait Transform: 'static {
    /// Builds the transform from its params; reject bad ones with [`Error::invalid_param`].
    fn init(params: &Params) -> Result<Self, Error>
    where
        Self: Sized;

    /// Turns one row into zero (filter), one (map) or many (flat-map) rows, or fails it.
    fn transform(&mut self, row: Row) -> Result<Vec<Row>, Error>;
}

/// The metadata (topic, partition, offset, key, timestamp, headers) of the Kafka record the row
/// being transformed came from. Only meaningful inside [`Transform::transform`] (from
/// [`Transform::init`] it is an empty record: topic `""`, partition and offset -1); costs one
/// call to the host, so fetch it only when needed.
///
/// In a native unit test there is no host: it returns what [`testing::set_meta`] set, and
/// panics if nothing was set.
pub fn meta() -> RecordMeta {
    #[cfg(target_arch = "wasm32")]
    return bindings::sluice::transform::context::meta(CURRENT_INDEX.get());
    #[cfg(not(target_arch = "wasm32"))]
    return testing::META.with_borrow(|m| {
        m.clone().expect(
            "sluice_guest::meta() in a native test: set the record's metadata first with \
             sluice_guest::testing::set_meta",
        )
    });
}

/// Helpers for a transform's own unit tests, which run natively (`cargo test --target` the
/// host's triple), where there is no host to ask. In a component they do nothing.
pub mod testing {
    use super::RecordMeta;
    use std::cell::RefCell;

    thread_local! {
        #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
        pub(crate) static META: RefCell<Option<RecordMeta>> = const { RefCell::new(None) };
    }

    /// Sets what [`meta()`](super::meta) returns on this thread from now on (each test runs on a
    /// thread of its own, so tests do not see each other's).
    pub fn set_meta(meta: RecordMeta) {
        META.set(Some(meta));
    }
}

/// Exports a [`Transform`] type as the component's `transformer` interface.
#[macro_export]
macro_rules! export {
    ($t:ty) => {
        #[doc(hidden)]
        #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
        struct __SluiceGuest;

        impl $crate::bindings::exports::sluice::transform::transformer::Guest for __SluiceGuest {
            fn init(
                params: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::core::result::Result<(), $crate::Error> {
                $crate::__private::init::<$t>(params)
            }

            fn transform_batch(
                input: $crate::bindings::sluice::transform::types::Rows,
            ) -> $crate::bindings::sluice::transform::types::Output {
                $crate::__private::transform_batch::<$t>(input)
            }
        }

        // The export glue defines fixed symbol names: only in the component, so that guest
        // crates can also be linked natively (several into one benchmark) as plain libraries.
        #[cfg(target_arch = "wasm32")]
        $crate::bindings::__export_transform_world!(__SluiceGuest with_types_in $crate::bindings);

        // Natively nothing calls the glue, so the author's own type would read as dead code in
        // their `cargo test` (`struct Main is never constructed`).
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$t as $crate::Transform>::init;
        };
    };
}

/// Exports a plain `fn(Row) -> Result<Vec<Row>, Error>` as a transform that takes no params.
#[macro_export]
macro_rules! export_fn {
    ($f:path) => {
        #[doc(hidden)]
        struct __SluiceFn;

        impl $crate::Transform for __SluiceFn {
            fn init(params: &$crate::Params) -> ::core::result::Result<Self, $crate::Error> {
                params.allow_only(&[])?;
                Ok(__SluiceFn)
            }

            fn transform(
                &mut self,
                row: $crate::Row,
            ) -> ::core::result::Result<::std::vec::Vec<$crate::Row>, $crate::Error> {
                $f(row)
            }
        }

        $crate::export!(__SluiceFn);
    };
}

thread_local! {
    // The instance's transform, built by `init`. Components are single-threaded, so a
    // thread-local is simply "the instance's state".
    static STATE: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
    // Which input row is being transformed, so `meta()` can ask the host for its record.
    static CURRENT_INDEX: Cell<u32> = const { Cell::new(0) };
    // The token of the last input row handed to the transform (see `Row::origin`); never 0.
    static LAST_TOKEN: Cell<u64> = const { Cell::new(0) };
}

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;

    use super::*;

    pub fn init<T: Transform>(params: Vec<(String, String)>) -> Result<(), Error> {
        let t = T::init(&Params(params))?;
        STATE.with(|s| *s.borrow_mut() = Some(Box::new(t)));
        Ok(())
    }

    pub fn transform_batch<T: Transform>(input: Rows) -> Output {
        STATE.with(|s| {
            let mut state = s.borrow_mut();
            let Some(t) = state.as_mut().and_then(|b| b.downcast_mut::<T>()) else {
                let err = Error::other("transform-batch called before a successful init");
                return Output {
                    outcomes: input
                        .shapes
                        .iter()
                        .map(|_| Outcome::Error(err.clone()))
                        .collect(),
                    rows: RowsBuilder::new(0, None).finish(),
                };
            };
            run_batch(t, input)
        })
    }

    /// Runs `t` over a batch. Public so that a benchmark can run a guest's code natively, on an
    /// instance of its own, without the component's export glue.
    pub fn run_batch<T: Transform>(t: &mut T, input: Rows) -> Output {
        let schemas: Vec<Vec<Name>> = input
            .schemas
            .into_iter()
            .map(|s| s.into_iter().map(Name::from).collect())
            .collect();
        let src = Rc::new(input.values);
        let mut lanes = Lanes::default();
        let mut outcomes = Vec::with_capacity(input.shapes.len());
        let mut out = RowsBuilder::new(input.shapes.len(), Some(&src));
        let n = input.shapes.len();
        for (i, &shape) in input.shapes.iter().enumerate() {
            let Some(names) = schemas.get(shape as usize) else {
                // Without the row's width, where any later row's values start is unknown too:
                // fail them all rather than read them from the wrong place.
                let err = Error::other(format!("host sent unknown shape {shape}"));
                outcomes.resize(n, Outcome::Error(err));
                break;
            };
            // Reuse the field vectors of rows already emitted: one allocation less per row.
            let mut fields = out.spare.take().unwrap_or_default();
            fields.extend(names.iter().map(|n| Field {
                name: Rc::clone(n),
                value: OnceCell::new(),
                raw: lanes.next(&src),
            }));
            // A token unique to this input row, so a row kept from an earlier one never passes
            // for it.
            let token = LAST_TOKEN.get() + 1;
            LAST_TOKEN.set(token);
            let row = Row {
                fields,
                origin: token,
                src: Some(Rc::clone(&src)),
            };
            CURRENT_INDEX.set(i as u32);
            match t.transform(row) {
                Ok(mut rows) if rows.len() == 1 && rows[0].origin == token => {
                    // Returned untouched: the host still has it, so send nothing back.
                    outcomes.push(Outcome::Keep);
                    let mut fields = std::mem::take(&mut rows[0].fields);
                    fields.clear();
                    out.recycle(fields);
                }
                Ok(rows) => {
                    outcomes.push(Outcome::Emit(rows.len() as u32));
                    for row in rows {
                        out.push(row);
                    }
                }
                Err(e) => outcomes.push(Outcome::Error(e)),
            }
        }
        Output {
            outcomes,
            rows: out.finish(),
        }
    }

    /// Walks the values of a batch in order, telling where each one's payload is.
    #[derive(Default)]
    struct Lanes {
        at: usize,
        int: u32,
        float: u32,
        text: u32,
    }

    impl Lanes {
        /// Where the next value is; a `null` past the end (the host never sends that).
        #[inline(always)]
        fn next(&mut self, v: &Values) -> Raw {
            let ty = value_type(v.types.get(self.at).copied().unwrap_or(0));
            self.at += 1;
            let lane = match ty {
                ValueType::Null => return Raw::default(),
                ValueType::Bool | ValueType::Int | ValueType::Timestamp => &mut self.int,
                ValueType::Float => &mut self.float,
                ValueType::String | ValueType::Json => &mut self.text,
            };
            *lane += 1;
            Raw {
                ty: ty as u8,
                at: *lane - 1,
            }
        }
    }

    /// Flattens rows into the positional batch layout, interning each distinct shape once.
    struct RowsBuilder {
        names: Vec<Vec<Name>>,
        shapes: Vec<u32>,
        values: Values,
        last: usize,
        spare: Option<Vec<Field>>,
        /// The lane sizes of the input, reserved when the first row is emitted (what a map
        /// emits); a batch of `keep`s and filtered rows reserves nothing.
        like: [usize; 6],
    }

    impl RowsBuilder {
        fn new(rows: usize, like: Option<&Values>) -> RowsBuilder {
            RowsBuilder {
                names: Vec::new(),
                shapes: Vec::new(),
                values: Values {
                    types: Vec::new(),
                    ints: Vec::new(),
                    floats: Vec::new(),
                    text: String::new(),
                    text_ends: Vec::new(),
                },
                last: 0,
                spare: None,
                like: like.map_or([0; 6], |v| {
                    [
                        rows,
                        v.types.len(),
                        v.ints.len(),
                        v.floats.len(),
                        v.text.len(),
                        v.text_ends.len(),
                    ]
                }),
            }
        }

        fn reserve(&mut self) {
            let [rows, values, ints, floats, text, texts] = std::mem::take(&mut self.like);
            let v = &mut self.values;
            self.shapes.reserve(rows);
            v.types.reserve(values);
            v.ints.reserve(ints);
            v.floats.reserve(floats);
            v.text.reserve(text);
            v.text_ends.reserve(texts);
        }

        fn shape_of(&mut self, row: &Row) -> u32 {
            let same = |names: &[Name]| {
                names.len() == row.fields.len()
                    && names
                        .iter()
                        .zip(&row.fields)
                        .all(|(a, f)| Rc::ptr_eq(a, &f.name) || same(a, &f.name))
            };
            // Rows of a batch nearly always share the previous row's shape.
            if self.names.get(self.last).is_some_and(|n| same(n)) {
                return self.last as u32;
            }
            let i = match self.names.iter().position(|n| same(n)) {
                Some(i) => i,
                None => {
                    self.names
                        .push(row.fields.iter().map(|f| f.name.clone()).collect());
                    self.names.len() - 1
                }
            };
            self.last = i;
            i as u32
        }

        fn push(&mut self, mut row: Row) {
            if self.shapes.is_empty() {
                self.reserve();
            }
            let shape = self.shape_of(&row);
            self.shapes.push(shape);
            let src = row.src.as_deref();
            for f in row.fields.drain(..) {
                match (f.value.into_inner(), src) {
                    (Some(v), _) => self.values.push(v),
                    // Never read nor set: copied from the input as it is.
                    (None, Some(src)) => self.values.copy(src, f.raw),
                    (None, None) => self.values.push(Value::Null),
                }
            }
            self.recycle(row.fields);
        }

        /// Keeps an emptied field vector for the next input row. One is enough, as each input
        /// row takes one: a flat-map's every emitted row would keep its own until the batch ends,
        /// several times the memory its output needs.
        fn recycle(&mut self, fields: Vec<Field>) {
            self.spare.get_or_insert(fields);
        }

        fn finish(self) -> Rows {
            Rows {
                schemas: self
                    .names
                    .into_iter()
                    .map(|n| n.iter().map(|s| s.to_string()).collect())
                    .collect(),
                shapes: self.shapes,
                values: self.values,
            }
        }
    }

    impl Values {
        #[inline(always)]
        fn push(&mut self, v: Value) {
            let ty = match v {
                Value::Null => ValueType::Null,
                Value::Bool(b) => {
                    self.ints.push(i64::from(b));
                    ValueType::Bool
                }
                Value::Int(i) => {
                    self.ints.push(i);
                    ValueType::Int
                }
                Value::Timestamp(t) => {
                    self.ints.push(t);
                    ValueType::Timestamp
                }
                Value::Float(f) => {
                    self.floats.push(f);
                    ValueType::Float
                }
                Value::String(s) => {
                    self.push_text(&s);
                    ValueType::String
                }
                Value::Json(s) => {
                    self.push_text(&s);
                    ValueType::Json
                }
            };
            self.types.push(ty as u8);
        }

        #[inline(always)]
        fn push_text(&mut self, s: &str) {
            self.text.push_str(s);
            self.text_ends.push(self.text.len() as u32);
        }

        /// Appends the undecoded value `raw` of `src` as it is.
        #[inline(always)]
        fn copy(&mut self, src: &Values, raw: Raw) {
            let at = raw.at as usize;
            match value_type(raw.ty) {
                ValueType::Null => {}
                ValueType::Bool | ValueType::Int | ValueType::Timestamp => self
                    .ints
                    .push(src.ints.get(at).copied().unwrap_or_default()),
                ValueType::Float => self
                    .floats
                    .push(src.floats.get(at).copied().unwrap_or(f64::NAN)),
                ValueType::String | ValueType::Json => self.push_text(text(src, at)),
            }
            self.types.push(raw.ty);
        }
    }
}
