//! The one integration-test binary. Each module covers one area; `support` holds the
//! shared helpers (temporary directories, polling with a deadline, local HTTP servers).

mod actions;
mod check;
mod daemon;
mod demo;
mod sources;
mod support;
