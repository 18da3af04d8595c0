#![no_main]
//! Fuzz target: config file text (TOML, gap-proxy JSON and QTRP YAML, both roles), see
//! `gaptun::fuzzing::parse_all`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        gaptun::fuzzing::parse_all(text);
    }
});
