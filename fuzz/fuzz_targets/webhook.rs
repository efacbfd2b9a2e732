//! Fuzzes the Alertmanager webhook receiver.
//! The input's layout and the invariants: `rearguard_fuzz::webhook`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rearguard_fuzz::webhook(data);
});
