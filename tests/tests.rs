//! sluice's integration tests, one binary (ripgrep's layout): each module exercises a stage
//! against the real part it talks to.

mod kafka;
mod pipeline;
mod random;
mod snowflake;
mod transform;
