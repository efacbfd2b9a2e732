//! Fuzzes the scrape source's exposition parser (text format and OpenMetrics).
//! The input's layout and the invariants: `rearguard_fuzz::exposition`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = rearguard_fuzz::exposition(data);
});
