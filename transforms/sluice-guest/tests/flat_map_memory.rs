//! What the SDK's batch loop holds while a flat-map runs, counted by a global allocator (a test
//! binary of its own, so that nothing else allocates meanwhile). A guest has `memory_mb` to spend:
//! what the loop keeps besides the output is what a flat-map cannot emit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

use sluice_guest::bindings::sluice::transform::types::{Rows, Values};
use sluice_guest::{Error, Params, Row, Transform, Value};

/// The system allocator, keeping count of the bytes live and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call goes to `System` as it is; the counters only watch.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(l.size(), Relaxed) + l.size();
        PEAK.fetch_max(live, Relaxed);
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Splits field `t` on commas: a row per piece, the other fields copied.
struct Explode;

impl Transform for Explode {
    fn init(_: &Params) -> Result<Self, Error> {
        Ok(Explode)
    }

    fn transform(&mut self, row: Row) -> Result<Vec<Row>, Error> {
        let text = row.require("t")?.to_text();
        Ok(text
            .split(',')
            .map(|piece| {
                let mut r = row.clone();
                r.set("t", Value::String(piece.into()));
                r
            })
            .collect())
    }
}

/// 256 rows of 9 ints and a text of 200 pieces become 51,200 rows of 10 fields: the loop holds
/// little more than that output while it runs. It used to keep every emitted row's field vector
/// until the batch ended, six times the output.
#[test]
fn a_flat_map_batch_holds_little_more_than_its_output() {
    let (rows, pieces, width) = (256, 200, 10);
    let text = (0..pieces)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut values = Values {
        types: vec![],
        ints: vec![],
        floats: vec![],
        text: String::new(),
        text_ends: vec![],
    };
    let mut names: Vec<String> = (1..width).map(|i| format!("f{i}")).collect();
    names.push("t".into());
    for _ in 0..rows {
        for _ in 1..width {
            values.types.push(2);
            values.ints.push(7);
        }
        values.types.push(4);
        values.text.push_str(&text);
        values.text_ends.push(values.text.len() as u32);
    }
    let input = Rows {
        schemas: vec![names],
        shapes: vec![0; rows],
        values,
    };
    let input_bytes = LIVE.load(Relaxed);
    PEAK.store(input_bytes, Relaxed);
    let out = sluice_guest::__private::run_batch(&mut Explode, input);
    let peak = PEAK.load(Relaxed) - input_bytes;
    assert_eq!(out.rows.shapes.len(), rows * pieces);
    let v = &out.rows.values;
    let output = v.types.capacity()
        + v.ints.capacity() * 8
        + v.floats.capacity() * 8
        + v.text.capacity()
        + v.text_ends.capacity() * 4
        + out.rows.shapes.capacity() * 4;
    assert!(
        peak < 2 * output,
        "peak {peak} bytes while running, for {output} bytes of output"
    );
}
