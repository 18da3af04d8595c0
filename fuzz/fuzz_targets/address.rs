#![no_main]
//! Fuzz target: see `gaptun_apps::fuzzing::address`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gaptun_apps::fuzzing::address(data);
});
