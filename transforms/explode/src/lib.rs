//! `explode`: turns one row into one row per piece of a delimited string field.
//!
//! Params: `field` (the string column), `sep` (the delimiter, default `,`), `into` (the field
//! that receives each piece, default `field` itself; `field` is then removed, and a row that
//! already has `into` gets the piece in its place, as `set` does). Pieces are trimmed and empty
//! pieces skipped, so an empty or null field yields no rows. A non-string field fails with
//! `invalid-value`. Each piece is a whole row, so a field of very many pieces can exceed the
//! transform's `max_rows_per_record` (the record fails with `output_limit`) or, before that, its
//! `memory_mb`.

use sluice_guest::{Error, Params, Row, Transform, Value};

struct Explode {
    field: String,
    sep: String,
    into: String,
}

impl Transform for Explode {
    fn init(params: &Params) -> Result<Self, Error> {
        params.allow_only(&["field", "sep", "into"])?;
        let field = params.require("field")?.to_owned();
        if field.is_empty() {
            return Err(Error::invalid_param("field", "names no field"));
        }
        let sep = params.get("sep").unwrap_or(",").to_owned();
        if sep.is_empty() {
            return Err(Error::invalid_param("sep", "must not be empty"));
        }
        let into = params
            .get("into")
            .map_or_else(|| field.clone(), str::to_owned);
        if into.is_empty() {
            return Err(Error::invalid_param("into", "names no field"));
        }
        Ok(Explode { field, sep, into })
    }

    fn transform(&mut self, row: Row) -> Result<Vec<Row>, Error> {
        let text = match row.require(&self.field)? {
            Value::String(s) => s.clone(),
            Value::Null => return Ok(Vec::new()),
            other => {
                return Err(Error::invalid_value(
                    &self.field,
                    format!("is of type {}, not string", other.type_name()),
                ));
            }
        };
        let mut base = row;
        if self.into != self.field {
            base.remove(&self.field);
        }
        Ok(text
            .split(self.sep.as_str())
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|piece| {
                let mut out = base.clone();
                out.set(&self.into, Value::String(piece.to_owned()));
                out
            })
            .collect())
    }
}

sluice_guest::export!(Explode);
