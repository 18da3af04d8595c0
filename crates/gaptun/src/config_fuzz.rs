//! Replays the config corpus (`fuzz/corpus/config/`: TOML files, gap-proxy's `config.json` and
//! QTRP's YAML files)
//! and deterministic mutations of it through the config parser, for both roles, on stable.
//!
//! This is the config file's fuzz target in the form CI can run: the binary crate has no
//! library target, so cargo-fuzz cannot link its parser (see `fuzz/README.md`). Checked:
//! no panic, and an error that names a line names one the text has.

use std::path::PathBuf;

use crate::config::{ConfigError, FileConfig, Role};

fn corpus() -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/config");
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                files.push((entry.file_name().to_string_lossy().into_owned(), text));
            }
        }
    }
    files.sort();
    files
}

/// Parses `text` under the names a TOML, a JSON and a YAML file would have, for both roles.
fn parse_everyway(text: &str) {
    let lines = text.lines().count().max(1);
    for file in ["fuzz.toml", "fuzz.json", "fuzz.yaml"] {
        for role in [Role::Server, Role::Client] {
            if let Err(ConfigError::At { line, .. }) = FileConfig::parse(text, file, role) {
                assert!(
                    (1..=lines + 1).contains(&line),
                    "error at line {line} of a {lines}-line text: {text:?}"
                );
            }
        }
    }
}

/// A small deterministic generator (xorshift), so every run tries the same mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Line- and byte-level mutations: drop, repeat or cut a line, overwrite a byte with a
/// character that matters to TOML, JSON or YAML, or splice in a value of another type.
fn mutate(text: &str, rng: &mut Rng) -> String {
    const TOKENS: [&str; 19] = [
        "\"",
        "=",
        "[",
        "]",
        "{",
        "}",
        ",",
        "#",
        "\n",
        "99999999999999999999",
        "-1",
        "\"\\u0000\"",
        // YAML's own syntax: mappings, sequences, anchors, aliases, tags, documents.
        ": ",
        "- ",
        "  ",
        "&a ",
        "*a",
        "!!binary ",
        "---\n",
    ];
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    if lines.is_empty() {
        lines.push(String::new());
    }
    for _ in 0..=rng.below(2) {
        let i = rng.below(lines.len());
        match rng.below(5) {
            0 if lines.len() > 1 => {
                lines.remove(i);
            }
            1 => {
                let copy = lines[i].clone();
                lines.insert(i, copy);
            }
            2 => {
                let cut = rng.below(lines[i].len() + 1);
                let line = &mut lines[i];
                while !line.is_char_boundary(cut.min(line.len())) {
                    line.pop();
                }
                line.truncate(cut.min(line.len()));
            }
            3 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                let line = &mut lines[i];
                let mut at = rng.below(line.len() + 1);
                while !line.is_char_boundary(at) {
                    at -= 1;
                }
                line.insert_str(at, token);
            }
            _ => {
                let token = TOKENS[rng.below(TOKENS.len())];
                if let Some((key, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{key}= {token}");
                } else if let Some((key, _)) = lines[i].split_once(": ") {
                    lines[i] = format!("{key}: {token}");
                }
            }
        }
    }
    lines.join("\n")
}

#[test]
fn config_parser_survives_corpus_and_mutations() {
    let files = corpus();
    assert!(files.len() >= 4, "config corpus missing: {files:?}");
    let mut rng = Rng(0x5eed_c0f1_u64);
    for (_, text) in &files {
        parse_everyway(text);
        for _ in 0..1500 {
            parse_everyway(&mutate(text, &mut rng));
        }
    }
    for junk in [
        "",
        "\u{0}",
        "{",
        "[",
        "key = [[[[[[[[[[[[[[[[[[[[",
        "\"\"\"",
        "a.b.c.d = 1",
    ] {
        parse_everyway(junk);
    }
}

#[test]
fn corpus_seeds_are_accepted_where_they_belong() {
    // The seeds must parse, or the mutations start from an error path.
    let files = corpus();
    let role_of = |name: &str| match name {
        "server.toml" => Some(Role::Server),
        "client.toml" | "gap-proxy.json" | "qtrp-client.yaml" => Some(Role::Client),
        "qtrp-server.yaml" => Some(Role::Server),
        _ => None,
    };
    let mut checked = 0;
    for (name, text) in &files {
        if let Some(role) = role_of(name) {
            let parsed = FileConfig::parse(text, name, role);
            assert!(parsed.is_ok(), "{name}: {parsed:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 5);
}
