//! Builds each stage from validated config and connects them with bounded channels.
