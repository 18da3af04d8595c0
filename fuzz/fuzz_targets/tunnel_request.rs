#![no_main]
//! Fuzz target: see `gaptun_apps::fuzzing::tunnel_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gaptun_apps::fuzzing::tunnel_request(data);
});
