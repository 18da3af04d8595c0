#![no_main]
//! Fuzz target: see `gaptun_proto::fuzzing::established`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gaptun_proto::fuzzing::established(data);
});
