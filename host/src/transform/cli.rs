//! `sluice transform new|build|test`: tools for transform authors.
