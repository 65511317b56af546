//! Poison guest: panics (an `unreachable` trap) on the row whose `id` is 13, passes every other
//! row through.

use sluice_guest::{Error, Row, Value};

fn transform(row: Row) -> Result<Vec<Row>, Error> {
    if row.get("id") == Some(&Value::Int(13)) {
        panic!("poison row");
    }
    Ok(vec![row])
}

sluice_guest::export_fn!(transform);
