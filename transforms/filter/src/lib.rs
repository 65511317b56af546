//! `filter`: keeps the rows whose field compares true to a value.
//!
//! Params: `field` (the column), `op` (`eq`, `ne`, `gt`, `ge`, `lt`, `le`, `contains`, or
//! `==`, `!=`, `>`, `>=`, `<`, `<=`) and `value`. Numbers (int, float) compare numerically with
//! `value` parsed as a number; timestamps with `value` parsed as a timestamp (`2024-01-02`,
//! `2024-01-02T03:04:05.5Z`, ...; see [`sluice_guest::parse_timestamp`]) or else as a number of
//! microseconds since the epoch; strings compare as text, except that a string holding a number
//! compares numerically with a numeric `value` (a CSV column with one cell that is not a number
//! is typed string, and `"10" > "5"` must not depend on that), and one that holds no number fails
//! its record under `gt`/`ge`/`lt`/`le` with a numeric `value` rather than compare as text;
//! bools with `true`/`false`.
//! A null field never matches (except with `ne`). A row without the field fails with
//! `missing-field`.

use std::cmp::Ordering;

use sluice_guest::{Error, Params, Row, Transform, Value};

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
    boolean: Option<bool>,
    timestamp: Option<i64>,
}

impl Transform for Filter {
    fn init(params: &Params) -> Result<Self, Error> {
        params.allow_only(&["field", "op", "value"])?;
        let op = match params.require("op")? {
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
        Ok(Filter {
            field: params.require("field")?.to_owned(),
            op,
            number: text.trim().parse().ok(),
            boolean: text.trim().parse().ok(),
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
    fn matches(&self, v: &Value) -> Result<bool, Error> {
        let ord = match v {
            Value::Null => return Ok(self.op == Op::Ne),
            Value::String(s) | Value::Json(s) if self.op == Op::Contains => {
                return Ok(s.contains(&self.text));
            }
            Value::String(s) if let Some(want) = self.number => match s.trim().parse::<f64>() {
                Ok(have) => match have.partial_cmp(&want) {
                    Some(o) => o,
                    None => return Ok(self.op == Op::Ne),
                },
                Err(_) if matches!(self.op, Op::Eq | Op::Ne) => s.as_str().cmp(self.text.as_str()),
                Err(_) => {
                    return Err(Error::invalid_value(
                        &self.field,
                        format!(
                            "is {s:?}, not a number to compare with {}",
                            self.text.trim()
                        ),
                    ));
                }
            },
            Value::String(s) | Value::Json(s) => s.as_str().cmp(self.text.as_str()),
            Value::Timestamp(t) if let Some(want) = self.timestamp => t.cmp(&want),
            Value::Timestamp(_) if self.number.is_none() => {
                return Err(Error::invalid_value(
                    &self.field,
                    format!(
                        "is a timestamp but value {:?} is neither a timestamp (2024-01-02T03:04:05) \
                         nor a number",
                        self.text
                    ),
                ));
            }
            Value::Int(_) | Value::Float(_) | Value::Timestamp(_) => {
                let Some(want) = self.number else {
                    return Err(Error::invalid_value(
                        &self.field,
                        format!("is a number but value {:?} is not", self.text),
                    ));
                };
                let have = v.as_f64().unwrap_or(f64::NAN);
                match have.partial_cmp(&want) {
                    Some(o) => o,
                    None => return Ok(self.op == Op::Ne),
                }
            }
            Value::Bool(b) => match self.boolean {
                Some(want) => b.cmp(&want),
                None => {
                    return Err(Error::invalid_value(
                        &self.field,
                        format!("is a bool but value {:?} is not", self.text),
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

sluice_guest::export!(Filter);
