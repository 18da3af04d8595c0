//! Where the pre-shared key comes from, and `gaptun keygen`.
//!
//! Sources, highest priority first: `--key` (repeatable on the server), `--key-file`, the
//! `GAPTUN_KEY` environment variable, the config file's `key`, the config file's `key_file`.
//! The first source that is set wins; sources are not merged, so a key on the command line
//! cleanly replaces the file's. Key text is never logged or echoed in errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gaptun_proto::Psk;
use gaptun_proto::crypto::KeyError;
use thiserror::Error;

/// Environment variable holding a key.
pub const KEY_ENV: &str = "GAPTUN_KEY";

/// The key sources as given; only the first one set is used.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    pub cli_keys: Vec<String>,
    pub cli_key_file: Option<PathBuf>,
    pub env_key: Option<String>,
    pub config_keys: Vec<String>,
    pub config_key_file: Option<PathBuf>,
}

/// Why no usable key was found. Messages name the source, never the key.
#[derive(Debug, Error)]
pub enum KeySourceError {
    #[error(
        "no key given: use --key, --key-file, the {KEY_ENV} environment variable or `key` in \
         the config file (make one with `gaptun keygen`)"
    )]
    Missing,
    #[error("cannot read key file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("key file {0} holds no key")]
    EmptyFile(String),
    #[error("key from {source_name}: {error}")]
    Invalid {
        source_name: String,
        error: KeyError,
    },
}

impl KeySources {
    /// The key texts of the winning source and that source's name (for error messages).
    pub fn select(
        &self,
        read_file: impl Fn(&Path) -> std::io::Result<String>,
    ) -> Result<(Vec<String>, String), KeySourceError> {
        let from_file =
            |path: &Path, name: &str| -> Result<(Vec<String>, String), KeySourceError> {
                let text = read_file(path).map_err(|e| KeySourceError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                let keys = keys_in_file(&text);
                if keys.is_empty() {
                    return Err(KeySourceError::EmptyFile(path.display().to_string()));
                }
                Ok((keys, format!("{name} {}", path.display())))
            };
        if !self.cli_keys.is_empty() {
            return Ok((self.cli_keys.clone(), "--key".into()));
        }
        if let Some(path) = &self.cli_key_file {
            return from_file(path, "--key-file");
        }
        if let Some(k) = self.env_key.as_ref().filter(|k| !k.is_empty()) {
            return Ok((vec![k.clone()], KEY_ENV.into()));
        }
        if !self.config_keys.is_empty() {
            return Ok((self.config_keys.clone(), "config `key`".into()));
        }
        if let Some(path) = &self.config_key_file {
            return from_file(path, "config `key_file`");
        }
        Err(KeySourceError::Missing)
    }

    /// Parses the winning source's keys (a client uses the first).
    pub fn load(&self) -> Result<Vec<Psk>, KeySourceError> {
        let (texts, source_name) = self.select(|p| {
            let text = std::fs::read_to_string(p)?;
            if let Some(w) = std::fs::metadata(p)
                .ok()
                .and_then(|m| loose_key_file(p, m.permissions().mode()))
            {
                crate::logging::defer_warning(w);
            }
            Ok(text)
        })?;
        texts
            .iter()
            .map(|t| {
                Psk::parse(t.trim()).map_err(|error| KeySourceError::Invalid {
                    source_name: source_name.clone(),
                    error,
                })
            })
            .collect()
    }
}

/// The start-up warning for a key file other local users can read (its keys open the tunnel).
pub fn loose_key_file(path: &Path, mode: u32) -> Option<String> {
    (mode & 0o044 != 0).then(|| {
        format!(
            "key file {} is readable by group or others (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

/// Keys in a key file: one per line; blank lines and `#` comments skipped.
pub fn keys_in_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// A fresh key straight from the operating system's randomness, in its text form. (Equivalent
/// to `Psk::generate` with `OsRng`, but an RNG failure is an error here, not a panic.)
pub fn generate_key() -> Result<String, rand::rand_core::OsError> {
    use rand::TryRngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.try_fill_bytes(&mut bytes)?;
    Ok(Psk::from_bytes(bytes).to_key_string())
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    fn no_files(_: &Path) -> io::Result<String> {
        Err(io::Error::new(io::ErrorKind::NotFound, "no such file"))
    }

    fn file_with(text: &'static str) -> impl Fn(&Path) -> io::Result<String> {
        move |_| Ok(text.to_owned())
    }

    #[test]
    fn precedence() {
        let mut s = KeySources {
            cli_keys: vec!["cli-key-1".into()],
            cli_key_file: Some("/k".into()),
            env_key: Some("env-key".into()),
            config_keys: vec!["config-key".into()],
            config_key_file: Some("/ck".into()),
        };
        let pick = |s: &KeySources| s.select(file_with("# c\n\nfile-key\n")).unwrap();
        assert_eq!(
            pick(&s),
            (vec!["cli-key-1".to_string()], "--key".to_string())
        );
        s.cli_keys.clear();
        assert_eq!(
            pick(&s),
            (vec!["file-key".to_string()], "--key-file /k".to_string())
        );
        s.cli_key_file = None;
        assert_eq!(
            pick(&s),
            (vec!["env-key".to_string()], "GAPTUN_KEY".to_string())
        );
        s.env_key = Some(String::new()); // set but empty: ignored
        assert_eq!(pick(&s).0, vec!["config-key".to_string()]);
        s.config_keys.clear();
        assert_eq!(
            pick(&s),
            (
                vec!["file-key".to_string()],
                "config `key_file` /ck".to_string()
            )
        );
        s.config_key_file = None;
        assert!(matches!(s.select(no_files), Err(KeySourceError::Missing)));
    }

    #[test]
    fn file_errors_name_the_file() {
        let s = KeySources {
            cli_key_file: Some("/nope".into()),
            ..Default::default()
        };
        let e = s.select(no_files).unwrap_err();
        assert_eq!(e.to_string(), "cannot read key file /nope: no such file");
        let e = s.select(file_with("# only a comment\n")).unwrap_err();
        assert_eq!(e.to_string(), "key file /nope holds no key");
    }

    #[test]
    fn readable_key_file_is_warned_about() {
        let p = Path::new("/etc/gaptun.key");
        assert_eq!(loose_key_file(p, 0o100600), None);
        assert_eq!(loose_key_file(p, 0o100400), None);
        assert_eq!(
            loose_key_file(p, 0o100640).as_deref(),
            Some(
                "key file /etc/gaptun.key is readable by group or others (mode 640): chmod 600 it"
            )
        );
        assert!(loose_key_file(p, 0o100604).is_some());
    }

    #[test]
    fn server_key_file_holds_several_keys() {
        assert_eq!(
            keys_in_file("a-key-one\n  # x\n\n b-key-two \n"),
            vec!["a-key-one", "b-key-two"]
        );
    }
}
