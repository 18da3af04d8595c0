//! Puts the git commit into `gaptun --version` (GAPTUN_COMMIT), or "unknown commit" when the
//! source is not a git checkout or git is missing: a release tarball must still build.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    let text = git(&["rev-parse", "--short", "HEAD"])
        .map_or_else(|| "unknown commit".to_owned(), |c| format!("commit {c}"));
    println!("cargo:rustc-env=GAPTUN_COMMIT={text}");
    // Rebuild when HEAD moves (a commit, a checkout); paths as git reports them, which also
    // works in a worktree.
    for path in [
        git(&["rev-parse", "--git-path", "HEAD"]),
        git(&["symbolic-ref", "-q", "HEAD"]).and_then(|r| git(&["rev-parse", "--git-path", &r])),
    ]
    .into_iter()
    .flatten()
    {
        println!("cargo:rerun-if-changed={path}");
    }
}
