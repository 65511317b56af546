//! Build script for the integration tests (builds the wasm guests; see `guests`).
fn main() {}
