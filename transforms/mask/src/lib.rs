//! `mask`: replaces fields by the hex SHA-256 of a secret salt followed by the value's text, so
//! equal values still join but cannot be read back.
//!
//! Params: `field` (one column, or several separated by commas) and `salt` (required; keep it
//! secret and stable). Null stays null; a row lacking a field fails with `missing-field`; a row
//! with a field name twice (a JSON message may have that) has every one of them masked.
//!
//! The text hashed is the salt, then the value as `sluice transform test` prints it, except for
//! two types, whose text stays what the first version hashed so that masked columns keep joining
//! across versions: a timestamp is its microseconds since the epoch (`1704164645000000`, so a
//! timestamp and a string of the same instant hash apart), and a float is written as Rust writes
//! it (`2` for `2.0`, all the digits of `1e300`).

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
        if let Some(twice) = fields
            .iter()
            .enumerate()
            .find_map(|(i, f)| fields[..i].contains(f).then_some(f))
        {
            return Err(Error::invalid_param(
                "field",
                format!("names `{twice}` twice (it would be hashed twice)"),
            ));
        }
        let salt = params.require("salt")?.to_owned();
        if salt.is_empty() {
            return Err(Error::invalid_param("salt", "must not be empty"));
        }
        Ok(Mask { fields, salt })
    }

    fn transform(&mut self, mut row: Row) -> Result<Vec<Row>, Error> {
        if let Some(missing) = self.fields.iter().find(|f| row.get(f).is_none()) {
            return Err(Error::MissingField(missing.clone()));
        }
        let twice = row
            .iter()
            .enumerate()
            .any(|(i, (n, _))| row.iter().take(i).any(|(m, _)| m == n));
        if !twice {
            for field in &self.fields {
                if let Some(v) = row.get_mut(field) {
                    self.mask(v);
                }
            }
            return Ok(vec![row]);
        }
        // `get_mut` reaches only the first field of a name: a copy of the row masks them all, or
        // a second one would go on, to a table or a dead letter, in clear.
        let masked: Row = row
            .iter()
            .map(|(name, v)| {
                let mut v = v.clone();
                if self.fields.iter().any(|f| f == name) {
                    self.mask(&mut v);
                }
                (name.to_owned(), v)
            })
            .collect();
        Ok(vec![masked])
    }
}

impl Mask {
    /// `v` replaced by its hash (see the module's doc for the text hashed); null stays null.
    fn mask(&self, v: &mut Value) {
        if *v == Value::Null {
            return;
        }
        let mut hash = Sha256::new();
        hash.update(self.salt.as_bytes());
        // Not `to_text` for these two (which writes `2024-01-02T03:04:05`, `1e308`): a hash that
        // changed between versions would no longer join with older output.
        let text = match &*v {
            Value::Timestamp(us) => us.to_string(),
            Value::Float(f) => f.to_string(),
            v => v.to_text(),
        };
        hash.update(text.as_bytes());
        *v = Value::String(hex::encode(hash.finalize()));
    }
}

sluice_guest::export!(Mask);
