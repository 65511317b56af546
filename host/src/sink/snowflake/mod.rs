//! The Snowflake sink: bulk PUT + COPY over the driver REST protocol, exactly once.
pub mod config;
