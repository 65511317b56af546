//! Shared helpers for sluice's integration tests: built guest components, a real nisshi broker
//! process and a real fakesnow emulator process, each started on a free loopback port.

pub mod broker;
pub mod cli;
pub mod guests;
pub mod snowflake;
