#![no_main]
//! Fuzz target: see `gaptun_apps::fuzzing::udp_relay_frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gaptun_apps::fuzzing::udp_relay_frames(data);
});
