//! Poison guest: panics (an `unreachable` trap) on the row whose `id` is 13, passes every other
//! row through. A row with an int field `burn_ms` makes it spin that long first, then panic: a
//! record that fails late, after using most of the time limit. One with an int field `spin_ms`
//! spins that long, then passes through: a slow row that succeeds. One with a field `reject`
//! fails with an `invalid-value` error (the guest rejecting bad data, not crashing). One with a
//! string field `json` has it made a `json` value of the same text, JSON or not. Param
//! `init_spin_ms` makes `init` spin that long: an instance slow to build.

use sluice_guest::{Error, Params, Row, Transform, Value};

/// Spins for `ms` milliseconds.
fn spin(ms: u64) {
    let start = std::time::Instant::now();
    while start.elapsed().as_millis() < u128::from(ms) {
        std::hint::black_box(());
    }
}

struct Trap;

impl Transform for Trap {
    fn init(params: &Params) -> Result<Trap, Error> {
        params.allow_only(&["init_spin_ms"])?;
        spin(params.parse("init_spin_ms")?.unwrap_or(0));
        Ok(Trap)
    }

    fn transform(&mut self, row: Row) -> Result<Vec<Row>, Error> {
        transform(row)
    }
}

fn transform(row: Row) -> Result<Vec<Row>, Error> {
    if row.get("id") == Some(&Value::Int(13)) {
        panic!("poison row");
    }
    if row.get("reject").is_some() {
        return Err(Error::invalid_value("reject", "rejected"));
    }
    if let Some(&Value::Int(ms)) = row.get("burn_ms") {
        spin(ms as u64);
        panic!("burned {ms} ms");
    }
    if let Some(&Value::Int(ms)) = row.get("spin_ms") {
        spin(ms as u64);
    }
    let mut row = row;
    if let Some(Value::String(text)) = row.get("json") {
        let json = Value::Json(text.clone());
        row.set("json", json);
    }
    Ok(vec![row])
}

sluice_guest::export!(Trap);
