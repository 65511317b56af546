//! Poison guest: turns the row whose `id` is 13 into 50,000 rows (a runaway flat-map), passes
//! every other row through.

use sluice_guest::{Error, Row, Value};

fn transform(row: Row) -> Result<Vec<Row>, Error> {
    if row.get("id") == Some(&Value::Int(13)) {
        return Ok((0..50_000)
            .map(|i| [("n", Value::Int(i))].into_iter().collect())
            .collect());
    }
    Ok(vec![row])
}

sluice_guest::export_fn!(transform);
