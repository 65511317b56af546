//! Poison guest written against `wit/` alone with plain wit-bindgen (no SDK), as an outside
//! author would: keeps every row, but answers the row whose `id` is 13 with two outcomes, which
//! breaks the one-outcome-per-input contract. With param `dedupe` it also keeps state, as a
//! dedupe does: a row whose `id` this instance has seen before is filtered out. With param
//! `batches=trap` it panics, and with `batches=miscount` it returns no outcome at all, on any
//! batch of more than one row: a transform broken only on batches, whose every row runs right
//! alone but the poison row, which with `batches=trap` panics alone too (a trap, as the batch's).
//! With param `after=N` every row is poison once this instance has seen more than N rows (state
//! gone bad), whatever its `id`.

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

use exports::sluice::transform::transformer::Guest;
use sluice::transform::types::{Outcome, Output, Rows, TransformError, ValueType, Values};

use std::cell::RefCell;
use std::collections::HashSet;

thread_local! {
    /// The ids seen so far, when deduplicating.
    static SEEN: RefCell<Option<HashSet<i64>>> = const { RefCell::new(None) };
    /// How a batch of several rows breaks, if it does (`batches`).
    static BATCHES: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Rows after which every row is poison (`after`), and the rows seen so far.
    static AFTER: RefCell<(Option<u64>, u64)> = const { RefCell::new((None, 0)) };
}

struct Miscount;

impl Guest for Miscount {
    fn init(params: Vec<(String, String)>) -> Result<(), TransformError> {
        match params.first() {
            Some((k, _)) if k == "dedupe" => {
                SEEN.with(|s| *s.borrow_mut() = Some(HashSet::new()));
                Ok(())
            }
            Some((k, v)) if k == "after" => {
                let n = v
                    .parse()
                    .map_err(|_| TransformError::Other(format!("after={v}")))?;
                AFTER.with(|a| a.borrow_mut().0 = Some(n));
                Ok(())
            }
            Some((k, v)) if k == "batches" && (v == "trap" || v == "miscount") => {
                BATCHES.with(|b| *b.borrow_mut() = Some(v.clone()));
                Ok(())
            }
            Some((k, _)) => Err(TransformError::Other(format!("unexpected param {k}"))),
            None => Ok(()),
        }
    }

    fn transform_batch(input: Rows) -> Output {
        let batches = BATCHES
            .with(|b| b.borrow().clone())
            .filter(|_| input.shapes.len() > 1);
        if batches.as_deref() == Some("trap") {
            panic!("a batch of {} rows", input.shapes.len());
        }
        let mut outcomes = Vec::new();
        // Walk the values in order, tracking which `ints` entry each int-lane value uses.
        let (mut at, mut int) = (0usize, 0usize);
        for &shape in &input.shapes {
            let schema = &input.schemas[shape as usize];
            let (mut poison, mut seen) = (false, false);
            AFTER.with(|a| {
                let mut a = a.borrow_mut();
                a.1 += 1;
                poison |= a.0.is_some_and(|n| a.1 > n);
            });
            for name in schema {
                // `types` holds each value's case index in `value-type`.
                let ty = [
                    ValueType::Null,
                    ValueType::Bool,
                    ValueType::Int,
                    ValueType::Float,
                    ValueType::String,
                    ValueType::Timestamp,
                    ValueType::Json,
                ][usize::from(input.values.types[at])];
                at += 1;
                if matches!(ty, ValueType::Bool | ValueType::Int | ValueType::Timestamp) {
                    if name == "id" && ty == ValueType::Int {
                        let id = input.values.ints[int];
                        poison |= id == 13;
                        seen |=
                            SEEN.with(|s| s.borrow_mut().as_mut().is_some_and(|s| !s.insert(id)));
                    }
                    int += 1;
                }
            }
            if poison && BATCHES.with(|b| b.borrow().as_deref() == Some("trap")) {
                panic!("poison row");
            }
            if poison {
                outcomes.push(Outcome::Emit(0));
            }
            outcomes.push(if seen {
                Outcome::Emit(0)
            } else {
                Outcome::Keep
            });
        }
        if batches.is_some() {
            outcomes.clear();
        }
        // Every row kept is kept as it came: none is sent back.
        let values = Values {
            types: Vec::new(),
            ints: Vec::new(),
            floats: Vec::new(),
            text: String::new(),
            text_ends: Vec::new(),
        };
        Output {
            outcomes,
            rows: Rows {
                schemas: Vec::new(),
                shapes: Vec::new(),
                values,
            },
        }
    }
}

export!(Miscount);
