#![no_main]
//! Fuzz target: see `annal_fuzz::replay_history`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| annal_fuzz::replay_history(data));
