#![no_main]
//! Fuzz target: see `annal_fuzz::frame_decode`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| annal_fuzz::frame_decode(data));
