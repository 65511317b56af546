//! Poison guest written against `wit/` alone with plain wit-bindgen (no SDK), as an outside
//! author would: echoes every row, but answers the row whose `id` is 13 with two outcomes, which
//! breaks the one-outcome-per-input contract.

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

use exports::sluice::transform::transformer::Guest;
use sluice::transform::types::{Outcome, Output, Rows, TransformError, ValueType};

struct Miscount;

impl Guest for Miscount {
    fn init(params: Vec<(String, String)>) -> Result<(), TransformError> {
        match params.first() {
            Some((k, _)) => Err(TransformError::Other(format!("unexpected param {k}"))),
            None => Ok(()),
        }
    }

    fn transform_batch(input: Rows) -> Output {
        let mut outcomes = Vec::new();
        // Walk the values in order, tracking which `ints` entry each int-lane value uses.
        let (mut at, mut int) = (0usize, 0usize);
        for &shape in &input.shapes {
            let schema = &input.schemas[shape as usize];
            let mut poison = false;
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
                    poison |= name == "id" && ty == ValueType::Int && input.values.ints[int] == 13;
                    int += 1;
                }
            }
            if poison {
                outcomes.push(Outcome::Emit(0));
            }
            outcomes.push(Outcome::Emit(1));
        }
        Output {
            outcomes,
            rows: input,
        }
    }
}

export!(Miscount);
