//! Test and benchmark guest written against `wit/` alone with plain wit-bindgen (no SDK): the
//! benchmark's `filter` → `enrich` logic, done straight on the typed lanes of a batch. It shows
//! what the boundary and the host cost without the SDK's per-row `Row`, so the benchmark can
//! split the wasm/native gap into the SDK's share and the rest.
//!
//! Param `step`:
//! - `filter`: keeps the rows whose `value` (int, float or timestamp) is greater than 50; a
//!   null `value` is filtered out. Like `filter` with `field=value op=gt value=50`.
//! - `enrich`: renames `name` to `customer`, uppercases it, and sets `double` to twice
//!   `value` (int stays int, null stays null). Like `enrich` with `rename=name:customer
//!   uppercase=customer compute=double=value*2`.
//! - `keep`: returns every row untouched, doing no work at all: the floor of what any transform
//!   costs the chain.
//!
//! A row lacking `value` (or, for `enrich`, `name`) fails with `missing-field`; a `value` that is
//! not a number, or a `name` that is not a string, with `invalid-value`.

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

use std::cell::Cell;

use exports::sluice::transform::transformer::Guest;
use sluice::transform::types::{FieldError, Outcome, Output, Rows, TransformError, Values};

/// Which half of the chain this instance runs.
#[derive(Clone, Copy, PartialEq)]
enum Step {
    Filter,
    Enrich,
    Keep,
}

thread_local! {
    static STEP: Cell<Option<Step>> = const { Cell::new(None) };
}

// `value-type` case indexes (see `values.types` in the WIT).
const NULL: u8 = 0;
const BOOL: u8 = 1;
const INT: u8 = 2;
const FLOAT: u8 = 3;
const STRING: u8 = 4;
const TIMESTAMP: u8 = 5;
const JSON: u8 = 6;

/// Where the next value's payload is in each lane.
#[derive(Clone, Copy, Default)]
struct Cursor {
    value: usize,
    int: usize,
    float: usize,
    text: usize,
}

impl Cursor {
    fn step(&mut self, ty: u8) {
        self.value += 1;
        match ty {
            BOOL | INT | TIMESTAMP => self.int += 1,
            FLOAT => self.float += 1,
            STRING | JSON => self.text += 1,
            _ => {}
        }
    }
}

/// Text value `k` of `v`.
fn text(v: &Values, k: usize) -> &str {
    let start = if k == 0 {
        0
    } else {
        v.text_ends[k - 1] as usize
    };
    &v.text[start..v.text_ends[k] as usize]
}

fn invalid(name: &str, reason: &str) -> Outcome {
    Outcome::Error(TransformError::InvalidValue(FieldError {
        name: name.into(),
        reason: reason.into(),
    }))
}

fn missing(name: &str) -> Outcome {
    Outcome::Error(TransformError::MissingField(name.into()))
}

/// The position of `name` in each schema.
fn positions(schemas: &[Vec<String>], name: &str) -> Vec<Option<usize>> {
    schemas
        .iter()
        .map(|s| s.iter().position(|n| n == name))
        .collect()
}

fn filter(input: &Rows) -> Vec<Outcome> {
    let value_at = positions(&input.schemas, "value");
    let v = &input.values;
    let mut c = Cursor::default();
    let mut outcomes = Vec::with_capacity(input.shapes.len());
    for &shape in &input.shapes {
        let Some(p) = value_at[shape as usize] else {
            for _ in 0..input.schemas[shape as usize].len() {
                c.step(v.types[c.value]);
            }
            outcomes.push(missing("value"));
            continue;
        };
        let mut outcome = Outcome::Emit(0);
        for k in 0..input.schemas[shape as usize].len() {
            let ty = v.types[c.value];
            if k == p {
                outcome = match ty {
                    INT | TIMESTAMP if v.ints[c.int] as f64 > 50.0 => Outcome::Keep,
                    FLOAT if v.floats[c.float] > 50.0 => Outcome::Keep,
                    INT | TIMESTAMP | FLOAT | NULL => Outcome::Emit(0),
                    _ => invalid("value", "is not a number"),
                };
            }
            c.step(ty);
        }
        outcomes.push(outcome);
    }
    outcomes
}

fn enrich(input: &Rows) -> Output {
    let value_at = positions(&input.schemas, "value");
    let name_at = positions(&input.schemas, "name");
    // Output shape `s` is input shape `s` with `name` renamed and `double` appended (or set in
    // place when the input has it already).
    let double_at = positions(&input.schemas, "double");
    let schemas: Vec<Vec<String>> = input
        .schemas
        .iter()
        .zip(&double_at)
        .map(|(s, d)| {
            let mut s: Vec<String> = s
                .iter()
                .map(|n| {
                    if n == "name" {
                        "customer".into()
                    } else {
                        n.clone()
                    }
                })
                .collect();
            if d.is_none() {
                s.push("double".into());
            }
            s
        })
        .collect();
    let v = &input.values;
    let n = input.shapes.len();
    let mut out = Values {
        types: Vec::with_capacity(v.types.len() + n),
        ints: Vec::with_capacity(v.ints.len()),
        floats: Vec::with_capacity(v.floats.len() + n),
        text: String::with_capacity(v.text.len()),
        text_ends: Vec::with_capacity(v.text_ends.len()),
    };
    let mut shapes = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    let mut c = Cursor::default();
    for &shape in &input.shapes {
        let s = shape as usize;
        let width = input.schemas[s].len();
        // One walk over the row finds its end and the two values it needs, so the row can be
        // checked before any of it is written.
        let row = c;
        let (mut value, mut name_ty) = ((NULL, row), NULL);
        for k in 0..width {
            let ty = v.types[c.value];
            if Some(k) == value_at[s] {
                value = (ty, c);
            }
            if Some(k) == name_at[s] {
                name_ty = ty;
            }
            c.step(ty);
        }
        let (Some(np), Some(_)) = (name_at[s], value_at[s]) else {
            outcomes.push(missing(if value_at[s].is_none() {
                "value"
            } else {
                "name"
            }));
            continue;
        };
        let (vty, vat) = value;
        if !matches!(name_ty, STRING | NULL) {
            outcomes.push(invalid("customer", "cannot uppercase a non-string"));
            continue;
        }
        let double = match vty {
            NULL => None,
            INT => match v.ints[vat.int].checked_mul(2) {
                Some(i) => Some((INT, i, 0.0)),
                None => {
                    outcomes.push(invalid("double", "integer overflow"));
                    continue;
                }
            },
            TIMESTAMP => Some((FLOAT, 0, v.ints[vat.int] as f64 * 2.0)),
            FLOAT => Some((FLOAT, 0, v.floats[vat.float] * 2.0)),
            _ => {
                outcomes.push(invalid("value", "is not a number"));
                continue;
            }
        };
        let mut at = row;
        for k in 0..width {
            let ty = v.types[at.value];
            if Some(k) == double_at[s] {
                push_double(&mut out, double);
            } else {
                out.types.push(ty);
                match ty {
                    BOOL | INT | TIMESTAMP => out.ints.push(v.ints[at.int]),
                    FLOAT => out.floats.push(v.floats[at.float]),
                    STRING | JSON => {
                        let start = out.text.len();
                        let t = text(v, at.text);
                        match k == np && !t.is_ascii() {
                            // Unicode's uppercase may be longer (`ß` becomes `SS`).
                            true => out.text.push_str(&t.to_uppercase()),
                            false => out.text.push_str(t),
                        }
                        if k == np
                            && let Some(t) = out.text.get_mut(start..)
                        {
                            t.make_ascii_uppercase();
                        }
                        out.text_ends.push(out.text.len() as u32);
                    }
                    _ => {}
                }
            }
            at.step(ty);
        }
        if double_at[s].is_none() {
            push_double(&mut out, double);
        }
        shapes.push(shape);
        outcomes.push(Outcome::Emit(1));
    }
    Output {
        outcomes,
        rows: Rows {
            schemas,
            shapes,
            values: out,
        },
    }
}

fn push_double(out: &mut Values, double: Option<(u8, i64, f64)>) {
    match double {
        None => out.types.push(NULL),
        Some((INT, i, _)) => {
            out.types.push(INT);
            out.ints.push(i);
        }
        Some((_, _, f)) => {
            out.types.push(FLOAT);
            out.floats.push(f);
        }
    }
}

/// An empty `rows`: what a filter sends back (kept rows are not repeated).
fn no_rows() -> Rows {
    Rows {
        schemas: Vec::new(),
        shapes: Vec::new(),
        values: Values {
            types: Vec::new(),
            ints: Vec::new(),
            floats: Vec::new(),
            text: String::new(),
            text_ends: Vec::new(),
        },
    }
}

struct Lanes;

impl Guest for Lanes {
    fn init(params: Vec<(String, String)>) -> Result<(), TransformError> {
        let step = match params.as_slice() {
            [(k, v)] if k == "step" && v == "filter" => Step::Filter,
            [(k, v)] if k == "step" && v == "enrich" => Step::Enrich,
            [(k, v)] if k == "step" && v == "keep" => Step::Keep,
            _ => {
                return Err(TransformError::InvalidParam(FieldError {
                    name: "step".into(),
                    reason: "expected exactly `step=filter`, `step=enrich` or `step=keep`".into(),
                }));
            }
        };
        STEP.set(Some(step));
        Ok(())
    }

    fn transform_batch(input: Rows) -> Output {
        match STEP.get() {
            Some(Step::Filter) => Output {
                outcomes: filter(&input),
                rows: no_rows(),
            },
            Some(Step::Enrich) => enrich(&input),
            Some(Step::Keep) => Output {
                outcomes: input.shapes.iter().map(|_| Outcome::Keep).collect(),
                rows: no_rows(),
            },
            None => Output {
                outcomes: input
                    .shapes
                    .iter()
                    .map(|_| Outcome::Error(TransformError::Other("not initialised".into())))
                    .collect(),
                rows: no_rows(),
            },
        }
    }
}

export!(Lanes);
