//! The WebAssembly transform runtime: runs `sluice:transform` components over batches of rows.
//!
//! - [`config`]: the `transforms[]` entries of pipeline.json.
//! - [`runtime`]: loading components ([`TransformChain::load`], [`TransformChain::load_each`])
//!   and running a chain on dedicated worker threads ([`TransformChain::process`]).
//! - `cache`: compiled components on disk, checked before use.
//! - [`stats`]: per-transform counters for metrics.
//! - `stale`: warns of a component that is a debug build or older than its crate's sources.
//! - `output`: what guests write to stdout and stderr (kept to explain a trap, shown with
//!   `debug_stdio`).
//! - [`cli`]: `sluice transform new|build|test`; `exact_json` compares its golden rows.
//! - `bindings`: the host side of the WIT, generated, and how a guest's typed error is shown.
//! - `error`: why a component does not load ([`LoadError`]), why a batch or a record fails
//!   ([`TransformError`], [`FailureKind`]).

mod bindings;
mod cache;
pub mod cli;
pub mod config;
mod error;
mod exact_json;
mod output;
pub mod runtime;
mod stale;
pub mod stats;

pub use cli::{TransformCommand, run_command};
pub use config::TransformConfig;
pub(crate) use error::not_found_hint;
pub use error::{FailureKind, LoadError, TransformError};
pub use runtime::{Quarantine, RecordOutcome, RuntimeOptions, TransformChain, default_cache_dir};
pub use stats::TransformStats;
