//! Hostile guest written against `wit/` with plain wit-bindgen: keeps every row, but answers the
//! row whose `id` is 13 with one row whose schema names 4096 fields, every name pointing at the
//! same 1 MiB of its memory. The guest spends 1 MiB; lifting that output as written would make the
//! host allocate 4 GiB. (Only a guest that means harm shares memory this way: safe Rust cannot.)
//!
//! With param `wide=RxF` it answers row 13 instead with `R` rows of `F` null fields each: a byte
//! of its memory per value, but a host row's field per value on the host's side. With `every=true`
//! as well, it answers every row that way.

wit_bindgen::generate!({ path: "../../../wit", world: "transform" });

use exports::sluice::transform::transformer::Guest;
use sluice::transform::types::{Outcome, Output, Rows, TransformError, Values};

/// How many names point at the one buffer.
const NAMES: usize = 4096;
/// The buffer's length, in bytes.
const NAME_BYTES: usize = 1 << 20;

struct Alias;

/// `wide`: rows and fields of the answer.
static WIDE: std::sync::Mutex<Option<(u32, usize)>> = std::sync::Mutex::new(None);
/// `every`: answer every row, not only row 13.
static EVERY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Guest for Alias {
    fn init(params: Vec<(String, String)>) -> Result<(), TransformError> {
        if let Some((_, v)) = params.iter().find(|(k, _)| k == "wide") {
            let (r, f) = v.split_once('x').expect("wide=RxF");
            *WIDE.lock().unwrap() = Some((r.parse().unwrap(), f.parse().unwrap()));
        }
        let every = params.iter().any(|(k, v)| k == "every" && v == "true");
        EVERY.store(every, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn transform_batch(input: Rows) -> Output {
        let wide = *WIDE.lock().unwrap();
        // The tests' rows hold one int each, their `id`, so `ints[i]` is row i's id.
        let every = EVERY.load(std::sync::atomic::Ordering::Relaxed);
        let hit = |i: usize| every || input.values.ints[i] == 13;
        let mut rows = empty();
        if let Some((r, f)) = wide {
            rows.schemas.push((0..f).map(|i| format!("f{i}")).collect());
            let hits = (0..input.shapes.len()).filter(|&i| hit(i)).count();
            rows.shapes = vec![0; hits * r as usize];
            rows.values.types = vec![0; hits * r as usize * f];
            let outcomes = (0..input.shapes.len())
                .map(|i| {
                    if hit(i) {
                        Outcome::Emit(r)
                    } else {
                        Outcome::Keep
                    }
                })
                .collect();
            return Output { outcomes, rows };
        }
        let poison = (0..input.shapes.len()).find(|&i| hit(i));
        let outcomes = (0..input.shapes.len())
            .map(|i| {
                if Some(i) == poison {
                    Outcome::Emit(1)
                } else {
                    Outcome::Keep
                }
            })
            .collect();
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

/// No rows.
fn empty() -> Rows {
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

export!(Alias);
