//! Fuzz target: see `checks::control_bodies` for what it checks.
#![no_main]

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::control_bodies(data));
