//! Fuzz target: see `checks::v2_bodies` for what it checks.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::v2_bodies(data));
