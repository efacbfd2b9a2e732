//! Fuzzes the configuration loader (TOML or YAML, and REARGUARD_ overrides).
//! The input's layout and the invariants: `rearguard_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rearguard_fuzz::config(data);
});
