#![no_main]
//! Fuzz target: see `gaptun_apps::fuzzing::socks5_session`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    gaptun_apps::fuzzing::socks5_session(data);
});
