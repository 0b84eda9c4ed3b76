#![no_main]
//! Fuzz target: see `annal_fuzz::event_decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| annal_fuzz::event_decode(data));
