//! The binary's config-file parser as a library, for the fuzz targets only: with the
//! `fuzzing` feature this exposes `fuzzing::parse_str` (config text, TOML, gap-proxy JSON or QTRP YAML,
//! to the settings it sets, or an error). Without the feature the library is empty; the program
//! itself is `main.rs`, which compiles these modules on its own.

#[cfg(feature = "fuzzing")]
#[allow(dead_code, unused_imports)]
mod cli;
#[cfg(feature = "fuzzing")]
#[allow(dead_code, unused_imports)]
mod config;
#[cfg(feature = "fuzzing")]
#[allow(dead_code, unused_imports)]
mod layer;
#[cfg(feature = "fuzzing")]
#[allow(dead_code, unused_imports)]
mod transport;
#[cfg(feature = "fuzzing")]
#[allow(dead_code, unused_imports)]
mod values;

/// What the fuzz targets call.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::config::{ConfigError, FileConfig, Format, Role, parse_str};

    /// Parses `text` as every format for both roles, and builds the transport settings of
    /// every file that parses: none of it may panic.
    pub fn parse_all(text: &str) {
        for format in [Format::Toml, Format::GapProxyJson, Format::QtrpYaml] {
            for role in [Role::Server, Role::Client] {
                if let Ok(config) = parse_str(text, format, role) {
                    let _ = config.transport.build();
                }
            }
        }
    }
}

#[cfg(all(test, feature = "fuzzing"))]
mod tests {
    use super::fuzzing::*;

    #[test]
    fn the_fuzz_entry_point_takes_anything() {
        parse_all(include_str!("../../../client.example.toml"));
        parse_all("{\"local\": \"1080\", \"server\": \"h:1\", \"key\": \"k\"}");
        parse_all("mtu = 99999999999999999999\n[[x]]\n\u{0}");
        parse_all(include_str!("../tests/fixtures/qtrp/client.yaml"));
        let c = parse_str("token: t\nproxies: []\n", Format::QtrpYaml, Role::Client).unwrap();
        assert_eq!(c.common.key, Some(vec!["t".to_string()]));
        let c = parse_str("conns = 4", Format::Toml, Role::Client).unwrap();
        assert_eq!(c.client.conns.map(|c| c.0), Some(4));
    }
}
