//! `mask`: replaces fields by the hex SHA-256 of a secret salt followed by the value's text, so
//! equal values still join but cannot be read back.
//!
//! Params: `field` (one column, or several separated by commas) and `salt` (required; keep it
//! secret and stable). Null stays null; a row lacking a field fails with `missing-field`.

use sha2::{Digest, Sha256};
use sluice_guest::{Error, Params, Row, Transform, Value};

struct Mask {
    fields: Vec<String>,
    salt: String,
}

impl Transform for Mask {
    fn init(params: &Params) -> Result<Self, Error> {
        params.allow_only(&["field", "salt"])?;
        let fields: Vec<String> = params
            .require("field")?
            .split(',')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_owned)
            .collect();
        if fields.is_empty() {
            return Err(Error::invalid_param("field", "names no field"));
        }
        let salt = params.require("salt")?.to_owned();
        if salt.is_empty() {
            return Err(Error::invalid_param("salt", "must not be empty"));
        }
        Ok(Mask { fields, salt })
    }

    fn transform(&mut self, mut row: Row) -> Result<Vec<Row>, Error> {
        for field in &self.fields {
            let v = row
                .get_mut(field)
                .ok_or_else(|| Error::MissingField(field.clone()))?;
            if *v != Value::Null {
                let mut hash = Sha256::new();
                hash.update(self.salt.as_bytes());
                // A timestamp's microseconds and a float as Rust writes it, as since the first
                // version, not `to_text` (which now writes `2024-01-02T03:04:05`, `1e308`): a
                // hash that changed between versions would no longer join with older output.
                let text = match &*v {
                    Value::Timestamp(us) => us.to_string(),
                    Value::Float(f) => f.to_string(),
                    v => v.to_text(),
                };
                hash.update(text.as_bytes());
                *v = Value::String(hex::encode(hash.finalize()));
            }
        }
        Ok(vec![row])
    }
}

sluice_guest::export!(Mask);
