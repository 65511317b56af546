//! Poison guest: spins forever on the row whose `id` is 13, passes every other row through.

use sluice_guest::{Error, Row, Value};

fn transform(row: Row) -> Result<Vec<Row>, Error> {
    if row.get("id") == Some(&Value::Int(13)) {
        loop {
            std::hint::black_box(());
        }
    }
    Ok(vec![row])
}

sluice_guest::export_fn!(transform);
