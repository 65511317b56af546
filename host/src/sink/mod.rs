//! Sinks: where transformed rows are loaded.

pub mod snowflake;
