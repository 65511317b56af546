//! Poison guest: panics (an `unreachable` trap) on the row whose `id` is 13, passes every other
//! row through. A row with an int field `burn_ms` makes it spin that long first, then panic: a
//! record that fails late, after using most of the time limit. One with an int field `spin_ms`
//! spins that long, then passes through: a slow row that succeeds. One with a field `reject`
//! fails with an `invalid-value` error (the guest rejecting bad data, not crashing).

use sluice_guest::{Error, Row, Value};

fn transform(row: Row) -> Result<Vec<Row>, Error> {
    if row.get("id") == Some(&Value::Int(13)) {
        panic!("poison row");
    }
    if row.get("reject").is_some() {
        return Err(Error::invalid_value("reject", "rejected"));
    }
    if let Some(&Value::Int(ms)) = row.get("burn_ms") {
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < ms as u128 {
            std::hint::black_box(());
        }
        panic!("burned {ms} ms");
    }
    if let Some(&Value::Int(ms)) = row.get("spin_ms") {
        let start = std::time::Instant::now();
        while start.elapsed().as_millis() < ms as u128 {
            std::hint::black_box(());
        }
    }
    Ok(vec![row])
}

sluice_guest::export_fn!(transform);
