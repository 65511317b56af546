//! The WebAssembly transform runtime: runs `sluice:transform` components over batches of rows.
pub mod config;
