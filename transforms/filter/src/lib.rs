//! `filter`: keeps the rows whose field compares true to a value.
//!
//! Params: `field` (the column), `op` (`eq`, `ne`, `gt`, `ge`, `lt`, `le`, `contains`, or
//! `==`, `!=`, `>`, `>=`, `<`, `<=`) and `value`. Numbers (int, float) compare numerically with
//! `value` parsed as a number, exactly: an int with a `value` written in decimal (`5`, `5.0`,
//! `4.5`) without rounding either, so ids past 2^53 do not match their neighbours, and a string
//! and a `value` both written in decimal digit by digit, whatever their size (an integer too big
//! for an int arrives as a string); timestamps
//! with `value` parsed as a timestamp (`2024-01-02`, `2024-01-02T03:04:05.5Z`, ...; see
//! [`sluice_guest::parse_timestamp`]) or else as a number of microseconds since the epoch; strings (and JSON values, by their text) compare
//! as text, except that one holding a number compares numerically with a numeric `value` (a CSV
//! column with one cell that is not a number is typed string, and `"10" > "5"` must not depend on
//! that), and one that holds no number fails its record under `gt`/`ge`/`lt`/`le` with a numeric
//! `value` rather than compare as text; bools with a `value` that sluice would read as a bool in a
//! CSV cell (`true`, `TRUE`, `t`, `yes`, `1`; `false`, `f`, `no`, `0`). A number is written in
//! decimal (`-1.5`, `2e3`): `NaN` and `inf` are text. `contains` looks for `value` in the text of
//! any value, written as `Value::to_text` writes it (`2024-11` in a timestamp, `10` in `210`;
//! the float 5.0 is `5`, as Snowflake casts it to text).
//! A null field never matches (except with `ne`). A row without the field fails with
//! `missing-field`; a row whose field is a number, timestamp or bool that `value` cannot be
//! compared with (`value: "ten"` for a float field) fails with `invalid-param` naming `value`.

use std::cmp::Ordering;

use sluice_guest::{Error, Params, Row, Transform, Value, parse_decimal, parse_number};

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Contains,
}

/// The transform: the field, operator and value from its params.
/// Public so that host benchmarks can run this same code natively (see `docs/BENCHMARKS.md`).
pub struct Filter {
    field: String,
    op: Op,
    text: String,
    number: Option<f64>,
    /// The floor of `value` when it is written in decimal and that is an `i64`, and whether it
    /// has a fraction besides (`-2.5` is floor -3 with a fraction).
    floor: Option<(i64, bool)>,
    /// `value` as an integer, when it is one (`5`, `5.0`).
    integer: Option<i64>,
    boolean: Option<bool>,
    timestamp: Option<i64>,
}

impl Transform for Filter {
    fn init(params: &Params) -> Result<Self, Error> {
        params.allow_only(&["field", "op", "value"])?;
        let op = match params.require("op")?.trim() {
            "eq" | "==" | "=" => Op::Eq,
            "ne" | "!=" => Op::Ne,
            "gt" | ">" => Op::Gt,
            "ge" | ">=" => Op::Ge,
            "lt" | "<" => Op::Lt,
            "le" | "<=" => Op::Le,
            "contains" => Op::Contains,
            other => {
                return Err(Error::invalid_param(
                    "op",
                    format!(
                        "unknown operator {other:?} (expected eq, ne, gt, ge, lt, le or contains)"
                    ),
                ));
            }
        };
        let text = params.require("value")?.to_owned();
        let field = params.require("field")?.trim();
        if field.is_empty() {
            return Err(Error::invalid_param("field", "names no field"));
        }
        let decimal = parse_decimal(&text);
        let floor = decimal.and_then(|d| Some((d.floor()?, !d.frac().is_empty())));
        Ok(Filter {
            field: field.to_owned(),
            op,
            number: parse_number(&text),
            floor,
            integer: floor.and_then(|(f, fraction)| (!fraction).then_some(f)),
            boolean: boolean(&text),
            timestamp: sluice_guest::parse_timestamp(&text),
            text,
        })
    }

    fn transform(&mut self, row: Row) -> Result<Vec<Row>, Error> {
        let keep = self.matches(row.require(&self.field)?)?;
        Ok(if keep { vec![row] } else { Vec::new() })
    }
}

impl Filter {
    /// A number against the numeric `value` (`want`): an integer (`int` being the number as an
    /// integer, if it is one) against `value` written in decimal exactly, so that no digit is lost
    /// to a float; else exactly, as an integer against a float or as floats. `None` when one side
    /// is NaN.
    fn compare(&self, int: Option<i64>, have: f64, want: f64) -> Option<Ordering> {
        match (int, self.integer) {
            (Some(a), Some(b)) => Some(a.cmp(&b)),
            // `value` is `floor` plus a fraction between 0 and 1.
            (Some(a), None) if let Some((floor, _)) = self.floor => Some(match a.cmp(&floor) {
                Ordering::Greater => Ordering::Greater,
                _ => Ordering::Less,
            }),
            // `value` is written in decimal, past the `i64` range on one side.
            (Some(_), None) if let Some(d) = parse_decimal(&self.text) => {
                Some(match d.is_negative() {
                    true => Ordering::Greater,
                    false => Ordering::Less,
                })
            }
            (Some(a), None) => int_vs_float(a, want),
            (None, Some(b)) => int_vs_float(b, have).map(Ordering::reverse),
            (None, None) => have.partial_cmp(&want),
        }
    }

    fn matches(&self, v: &Value) -> Result<bool, Error> {
        let ord = match v {
            Value::Null => return Ok(self.op == Op::Ne),
            Value::String(s) | Value::Json(s) if self.op == Op::Contains => {
                return Ok(s.contains(&self.text));
            }
            v if self.op == Op::Contains => return Ok(v.to_text().contains(&self.text)),
            Value::String(s) | Value::Json(s) if let Some(want) = self.number => {
                // Both written in decimal: digit by digit, whatever their size (an integer too
                // big for an int arrives as a string, and as a float would equal its neighbours).
                if let (Some(a), Some(b)) = (parse_decimal(s), parse_decimal(&self.text)) {
                    a.cmp(&b)
                } else {
                    match parse_number(s) {
                        Some(have) => match self.compare(s.trim().parse().ok(), have, want) {
                            Some(o) => o,
                            None => return Ok(self.op == Op::Ne),
                        },
                        None if matches!(self.op, Op::Eq | Op::Ne) => {
                            s.as_str().cmp(self.text.as_str())
                        }
                        None => {
                            return Err(Error::invalid_value(
                                &self.field,
                                format!(
                                    "is {s:?}, not a number to compare with {}",
                                    self.text.trim()
                                ),
                            ));
                        }
                    }
                }
            }
            Value::String(s) | Value::Json(s) => s.as_str().cmp(self.text.as_str()),
            Value::Timestamp(t) if let Some(want) = self.timestamp => t.cmp(&want),
            // The param does not fit the field's type: `invalid-param`, so that `sluice validate`
            // names `with.value` and a letter says the setting, not the row, is wrong.
            Value::Timestamp(_) if self.number.is_none() => {
                return Err(Error::invalid_param(
                    "value",
                    format!(
                        "{:?} is neither a timestamp (2024-01-02T03:04:05) nor a number, and field \
                         `{}` is a timestamp",
                        self.text, self.field
                    ),
                ));
            }
            Value::Int(_) | Value::Float(_) | Value::Timestamp(_) => {
                let Some(want) = self.number else {
                    return Err(Error::invalid_param(
                        "value",
                        format!(
                            "{:?} is not a number, and field `{}` is one",
                            self.text, self.field
                        ),
                    ));
                };
                let int = match v {
                    Value::Int(i) | Value::Timestamp(i) => Some(*i),
                    _ => None,
                };
                match self.compare(int, v.as_f64().unwrap_or(f64::NAN), want) {
                    Some(o) => o,
                    None => return Ok(self.op == Op::Ne),
                }
            }
            Value::Bool(b) => match self.boolean {
                Some(want) => b.cmp(&want),
                None => {
                    return Err(Error::invalid_param(
                        "value",
                        format!(
                            "{:?} is not a bool, and field `{}` is one",
                            self.text, self.field
                        ),
                    ));
                }
            },
        };
        Ok(match self.op {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Contains => false,
        })
    }
}

/// `s` as a bool, written as sluice reads a CSV cell as one (`true`, `TRUE`, `t`, `yes`, `1`;
/// `false`, `f`, `no`, `0`), so that any `value` that reads as a bool compares with bool fields.
fn boolean(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// `a` against `b` without rounding `a` to a float (past 2^53 a float cannot hold every integer).
fn int_vs_float(a: i64, b: f64) -> Option<Ordering> {
    if b.is_nan() {
        return None;
    }
    // 2^63 as a float: every i64 is below it, and at or above -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if b >= TWO_63 {
        return Some(Ordering::Less);
    }
    if b < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = b.trunc();
    // In range: the integer part is an i64 exactly.
    Some(
        a.cmp(&(whole as i64))
            .then_with(|| 0.0.partial_cmp(&(b - whole)).unwrap_or(Ordering::Equal)),
    )
}

sluice_guest::export!(Filter);
