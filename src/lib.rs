//! rearguard: an autonomous rollback watchdog.
//!
//! The binary in `main.rs` only parses arguments and calls [`cli::main`]; everything else
//! lives here so that tests can drive the same code.

pub mod action;
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod engine;
pub mod history;
pub mod http;
pub mod jitter;
pub mod kube;
pub mod leader;
pub mod notify;
pub mod process;
pub mod record;
pub mod recording;
pub mod replay;
pub mod report;
pub mod source;
pub mod store;
pub mod systemd;
