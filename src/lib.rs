//! rearguard: an autonomous rollback watchdog.
//!
//! The binary in `main.rs` only parses arguments and calls [`cli::run`]; everything else
//! lives here so that tests can drive the same code.

pub mod config;
pub mod engine;
