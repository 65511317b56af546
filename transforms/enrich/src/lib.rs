//! `passthrough`: emits every row unchanged. The smallest possible transform, and the baseline
//! for measuring the cost of the WebAssembly boundary.

use sluice_guest::{Error, Row};

fn passthrough(row: Row) -> Result<Vec<Row>, Error> {
    Ok(vec![row])
}

sluice_guest::export_fn!(passthrough);
