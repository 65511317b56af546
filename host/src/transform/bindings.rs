//! Host bindings generated from `wit/transform.wit` (the `sluice:transform@0.1.0` world).
#![allow(missing_docs)]

wasmtime::component::bindgen!({
    path: "../wit",
    world: "transform",
});

pub use self::sluice::transform::types::{
    Header, Outcome, Output, RecordMeta, Rows, TransformError as GuestError, ValueType, Values,
};

/// A guest error as a human-readable message (bindgen's own `Display` is `Debug`-like).
pub fn describe(e: &GuestError) -> String {
    match e {
        GuestError::InvalidParam(e) => format!("invalid param `{}`: {}", e.name, e.reason),
        GuestError::MissingField(name) => format!("missing field `{name}`"),
        GuestError::InvalidValue(e) => format!("invalid value in field `{}`: {}", e.name, e.reason),
        GuestError::Other(s) => s.clone(),
    }
}
