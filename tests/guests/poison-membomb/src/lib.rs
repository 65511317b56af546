//! Poison guest: allocates without bound on the row whose `id` is 13, passes every other row
//! through.

use sluice_guest::{Error, Row, Value};

fn transform(row: Row) -> Result<Vec<Row>, Error> {
    if row.get("id") == Some(&Value::Int(13)) {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(std::hint::black_box(vec![7u8; 1 << 20]));
        }
    }
    Ok(vec![row])
}

sluice_guest::export_fn!(transform);
