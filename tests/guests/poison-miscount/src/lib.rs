//! Poison guest written against `wit/` alone with plain wit-bindgen (no SDK), as an outside
//! author would: echoes every row, but answers the row whose `id` is 13 with two outcomes, which
//! breaks the one-outcome-per-input contract.

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

use exports::sluice::transform::transformer::Guest;
use sluice::transform::types::{Outcome, Output, Rows, TransformError, Value};

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
        let mut shapes = Vec::new();
        let mut values = Vec::new();
        let mut all = input.values.into_iter();
        for shape in input.shapes {
            let schema = &input.schemas[shape as usize];
            let row: Vec<Value> = all.by_ref().take(schema.len()).collect();
            let id = schema.iter().position(|n| n == "id").map(|i| &row[i]);
            if matches!(id, Some(Value::Int(13))) {
                outcomes.push(Outcome::Emit(0));
            }
            outcomes.push(Outcome::Emit(1));
            shapes.push(shape);
            values.extend(row);
        }
        Output {
            outcomes,
            rows: Rows {
                schemas: input.schemas,
                shapes,
                values,
            },
        }
    }
}

export!(Miscount);
