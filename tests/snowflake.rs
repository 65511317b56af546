//! Integration tests: snowflake.
