//! The CSV replay source: reads and types CSV rows, paces them, and produces them to Kafka.
pub mod config;
