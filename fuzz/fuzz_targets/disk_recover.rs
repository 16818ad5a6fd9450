//! Fuzz target: see `checks::disk_recover` for what it checks.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::disk_recover(data));
