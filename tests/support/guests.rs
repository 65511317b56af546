//! Paths of the wasm guests that build.rs compiled for wasm32-wasip2.
