//! sluice: replay a CSV file into Kafka as a live feed, consume it, run every record through
//! WebAssembly transform components (the `sluice:transform` WIT package), and bulk-load the
//! results into Snowflake exactly once.
//!
//! One module per pipeline stage; [`pipeline`] wires them together with bounded channels.

pub mod broker;
pub mod config;
pub mod consume;
pub mod dead_letter;
pub mod metrics;
pub mod pipeline;
pub mod row;
pub mod sink;
pub mod source;
pub mod transform;
pub mod validate;
