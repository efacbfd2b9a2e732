//! Fuzzes the recording reader, and a recording's round trip through the writer.
//! The input's layout and the invariants: `rearguard_fuzz::recording`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rearguard_fuzz::recording(data);
});
