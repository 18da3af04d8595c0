//! One definition per setting: the [`settings_group!`] macro turns a struct of `Option` fields
//! into a clap argument group and a serde config-file section at once, and [`Layer`] merges the
//! command line over the file over the defaults for any such group.
//!
//! A field's name is its config key and (kebab-cased) its flag; its doc comment is the help
//! text; `#[arg(default_value = ..)]` is both the default and the `[default: ..]` in the help;
//! the group it sits in decides which role accepts it. Adding a setting is one field. A field
//! with `#[arg(skip)]` is a config-file-only key (the server's `[users.NAME]` tables).
//!
//! Every field is an `Option` so that "not given" is visible: clap fills defaults into its
//! matches like given values, and [`Layer::from_matches`] separates the two by their
//! [`ValueSource`], so a default never hides a value from the config file.

use clap::ArgMatches;
use clap::parser::ValueSource;
use serde::de::DeserializeOwned;

/// A group of settings: one layer of the final configuration.
pub(crate) trait Layer:
    Sized + Clone + Default + clap::FromArgMatches + DeserializeOwned
{
    /// The config keys (field names) of this group.
    const KEYS: &'static [&'static str];

    /// Our value where set, `under`'s elsewhere.
    fn or(self, under: Self) -> Self;

    /// Drops the values whose source `keep` refuses.
    fn retain(&mut self, matches: &ArgMatches, keep: &dyn Fn(Option<ValueSource>) -> bool);

    /// Splits parsed matches into (given on the command line or in the environment, defaults).
    fn from_matches(matches: &ArgMatches) -> Result<(Self, Self), clap::Error> {
        let parsed = Self::from_arg_matches(matches)?;
        let mut given = parsed.clone();
        given.retain(matches, &|source| {
            matches!(
                source,
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        });
        let mut defaults = parsed;
        defaults.retain(matches, &|source| source == Some(ValueSource::DefaultValue));
        Ok((given, defaults))
    }

    /// The final values: command line (and environment) over `file` over the defaults.
    fn layered(matches: &ArgMatches, file: Self) -> Result<Self, clap::Error> {
        let (given, defaults) = Self::from_matches(matches)?;
        Ok(given.or(file).or(defaults))
    }
}

/// Defines a settings group: a struct deriving `clap::Args` and `serde::Deserialize` whose
/// fields are all `Option<T>`, plus its [`Layer`] implementation. Field attributes (`#[arg]`,
/// `#[serde]`, doc comments) pass through unchanged.
macro_rules! settings_group {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[$field_meta:meta])*
                $field_vis:vis $field:ident : Option<$ty:ty>,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, clap::Args, serde::Deserialize)]
        $vis struct $name {
            $(
                $(#[$field_meta])*
                $field_vis $field: Option<$ty>,
            )*
        }

        impl $crate::layer::Layer for $name {
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn or(self, under: Self) -> Self {
                Self {
                    $($field: self.$field.or(under.$field),)*
                }
            }

            fn retain(
                &mut self,
                matches: &clap::ArgMatches,
                keep: &dyn Fn(Option<clap::parser::ValueSource>) -> bool,
            ) {
                $(
                    // A field marked `#[arg(skip)]` is a config-file-only setting: it has no
                    // argument (clap panics when asked for one it does not know), so no source.
                    let known = matches.ids().any(|id| id.as_str() == stringify!($field));
                    let source = known
                        .then(|| matches.value_source(stringify!($field)))
                        .flatten();
                    if !keep(source) {
                        self.$field = None;
                    }
                )*
            }
        }
    };
}

pub(crate) use settings_group;

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    use super::*;

    settings_group! {
        /// A group for the tests.
        pub struct Sample {
            /// A number.
            #[arg(long, default_value = "7")]
            pub number: Option<u32>,
            /// A word.
            #[arg(long)]
            pub word: Option<String>,
            /// Repeatable.
            #[arg(long)]
            pub item: Option<Vec<String>>,
            /// A switch.
            #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
                  default_value = "false")]
            pub switch: Option<bool>,
        }
    }

    fn matches(args: &[&str]) -> ArgMatches {
        Sample::augment_args(Command::new("t"))
            .try_get_matches_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn keys_are_the_field_names() {
        assert_eq!(Sample::KEYS, ["number", "word", "item", "switch"]);
    }

    #[test]
    fn defaults_do_not_hide_the_file() {
        let file: Sample = toml::from_str("number = 9\nword = \"file\"\nswitch = true").unwrap();
        let merged = Sample::layered(&matches(&[]), file).unwrap();
        assert_eq!(merged.number, Some(9));
        assert_eq!(merged.word.as_deref(), Some("file"));
        assert_eq!(merged.switch, Some(true));
        assert_eq!(merged.item, None);
    }

    #[test]
    fn flags_override_the_file_key_by_key() {
        let file: Sample = toml::from_str("number = 9\nword = \"file\"\nitem = [\"f\"]").unwrap();
        let merged =
            Sample::layered(&matches(&["--word", "flag", "--switch=false"]), file).unwrap();
        assert_eq!(merged.number, Some(9));
        assert_eq!(merged.word.as_deref(), Some("flag"));
        assert_eq!(merged.item, Some(vec!["f".to_string()]));
        assert_eq!(merged.switch, Some(false));
        let merged = Sample::layered(&matches(&["--item", "a", "--item", "b", "--switch"]), {
            toml::from_str("item = [\"f\"]").unwrap()
        })
        .unwrap();
        assert_eq!(merged.item, Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(merged.switch, Some(true));
    }

    #[test]
    fn defaults_fill_what_nobody_set() {
        let merged = Sample::layered(&matches(&[]), Sample::default()).unwrap();
        assert_eq!(
            merged,
            Sample {
                number: Some(7),
                switch: Some(false),
                ..Sample::default()
            }
        );
        let (given, defaults) = Sample::from_matches(&matches(&["--number", "3"])).unwrap();
        assert_eq!(given.number, Some(3));
        assert_eq!(defaults.number, None);
        assert_eq!(defaults.switch, Some(false));
    }
}
