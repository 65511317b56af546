//! Integration tests: kafka.
