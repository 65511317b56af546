//! Paths of the wasm guests that build.rs compiled for wasm32-wasip2: the example transforms
//! (`PASSTHROUGH`, `FILTER`, `ENRICH`, `EXPLODE`, `MASK`) and the test guests (`POISON_LOOP`,
//! `POISON_MEMBOMB`, `POISON_TRAP`, `POISON_MISCOUNT`, `POISON_HUGE`, `POISON_ALIAS`, `META`, `PROBE`).

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
