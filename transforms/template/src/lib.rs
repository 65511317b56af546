//! `{{name}}`: a sluice transform. Replace this logic with yours.
//!
//! As scaffolded it uppercases one string field (param `field`, default `name`) and drops rows
//! whose field is empty or null (a blank CSV cell is null). Build it, then run it on its test
//! data: `testdata/input.jsonl`, compared with `testdata/expected.jsonl` (and with
//! `testdata/expected-failures.jsonl`, if you add one), with the params in `testdata/params.json`
//! if you add one (a JSON object, as its `with` in pipeline.json), and the records' metadata and
//! the CSV's typing in `testdata/source.json` if you add one (`{"key_column": "id", "topic":
//! "orders", "timestamp_ms": 0}`, as `transform test`'s flags of those names){{from}}:
//!
//! ```text
//! sluice transform build {{name}}{{dir_flag}}
//! sluice transform test {{name}}{{dir_flag}}
//! ```
//!
//! Its unit tests (below) run natively, with no host: from `{{dir}}/`,
//!
//! ```text
//! cargo test -p transform-{{name}} --target "$(rustc -vV | sed -n 's/^host: //p')"
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
            Some(Value::Null) => Ok(vec![]),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn row(value: Value) -> Row {
        [("name", value)].into_iter().collect()
    }

    #[test]
    fn uppercases_the_field_and_drops_rows_where_it_is_empty_or_null() {
        let mut t = Main::init(&Params::new(vec![])).unwrap();
        let out = t.transform(row(Value::String("ada".into()))).unwrap();
        assert_eq!(out, [row(Value::String("ADA".into()))]);
        assert!(
            t.transform(row(Value::String(String::new())))
                .unwrap()
                .is_empty()
        );
        assert!(t.transform(row(Value::Null)).unwrap().is_empty());
        assert!(t.transform(row(Value::Int(1))).is_err());
        // `sluice_guest::meta()` needs `sluice_guest::testing::set_meta(...)` first here.
    }

    #[test]
    fn refuses_unknown_params() {
        let params = Params::new(vec![("feild".into(), "name".into())]);
        assert!(Main::init(&params).is_err());
    }
}
