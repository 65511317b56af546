//! Hostile guest written against `wit/` with plain wit-bindgen: keeps every row, but answers the
//! row whose `id` is 13 with one row whose schema names 4096 fields, every name pointing at the
//! same 1 MiB of its memory. The guest spends 1 MiB; lifting that output as written would make the
//! host allocate 4 GiB. (Only a guest that means harm shares memory this way: safe Rust cannot.)

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

use exports::sluice::transform::transformer::Guest;
use sluice::transform::types::{Outcome, Output, Rows, TransformError, Values};

/// How many names point at the one buffer.
const NAMES: usize = 4096;
/// The buffer's length, in bytes.
const NAME_BYTES: usize = 1 << 20;

struct Alias;

impl Guest for Alias {
    fn init(_params: Vec<(String, String)>) -> Result<(), TransformError> {
        Ok(())
    }

    fn transform_batch(input: Rows) -> Output {
        // The tests' rows hold one int each, their `id`, so `ints[i]` is row i's id.
        let poison = input.values.ints.iter().position(|&id| id == 13);
        let outcomes = (0..input.shapes.len())
            .map(|i| {
                if Some(i) == poison {
                    Outcome::Emit(1)
                } else {
                    Outcome::Keep
                }
            })
            .collect();
        let mut rows = Rows {
            schemas: Vec::new(),
            shapes: Vec::new(),
            values: Values {
                types: Vec::new(),
                ints: Vec::new(),
                floats: Vec::new(),
                text: String::new(),
                text_ends: Vec::new(),
            },
        };
        if poison.is_some() {
            let name = "n".repeat(NAME_BYTES).leak();
            let schema = (0..NAMES)
                // SAFETY: none; this is the attack. Every `String` shares `name`'s bytes, and none
                // is ever freed: the host refuses the output, then drops this instance.
                .map(|_| unsafe {
                    String::from_raw_parts(name.as_mut_ptr(), NAME_BYTES, NAME_BYTES)
                })
                .collect();
            rows.schemas.push(schema);
            rows.shapes.push(0);
            rows.values.types = vec![0; NAMES];
        }
        Output { outcomes, rows }
    }
}

export!(Alias);
