//! `{{name}}`: a sluice transform. Replace this logic with yours.
//!
//! As scaffolded it uppercases one string field (param `field`, default `name`) and drops rows
//! whose field is empty. Build and test it with:
//!
//! ```text
//! sluice transform build {{name}}
//! sluice transform test --component transforms/target/wasm32-wasip2/release/transform_{{crate}}.wasm \
//!     --input transforms/{{name}}/testdata/input.jsonl --expect transforms/{{name}}/testdata/expected.jsonl
//! ```

use sluice_guest::{Error, Params, Row, Transform, Value};

struct Main {
    field: String,
}

impl Transform for Main {
    /// Runs once per instance with the `with` params from pipeline.json (or `--with k=v`).
    fn init(params: &Params) -> Result<Self, Error> {
        params.allow_only(&["field"])?;
        Ok(Main {
            field: params.get("field").unwrap_or("name").to_owned(),
        })
    }

    /// Runs once per row: return no rows to drop it, one to keep it, several to split it, or an
    /// error to send it to the dead-letter topic.
    fn transform(&mut self, mut row: Row) -> Result<Vec<Row>, Error> {
        match row.get_mut(&self.field) {
            Some(Value::String(s)) if s.is_empty() => Ok(vec![]),
            Some(Value::String(s)) => {
                *s = s.to_uppercase();
                Ok(vec![row])
            }
            Some(other) => Err(Error::invalid_value(
                &self.field,
                format!("is of type {}, not string", other.type_name()),
            )),
            None => Err(Error::MissingField(self.field.clone())),
        }
    }
}

sluice_guest::export!(Main);
