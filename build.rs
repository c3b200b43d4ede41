//! Records the commit the binary is built from, so that every result row names the code that
//! produced it (asking git when a row is written would name whatever the checkout holds by then,
//! not the code of a binary started hours earlier).

use std::process::Command;

/// Paths whose changes decide what the binary computes; their uncommitted edits make a build
/// "-dirty". Results written under `plots/` while a sweep runs do not.
const CODE: [&str; 4] = ["src", "build.rs", "Cargo.toml", "Cargo.lock"];

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    for path in CODE {
        println!("cargo:rerun-if-changed={path}");
    }
    let revision = match git(&["rev-parse", "--short=7", "HEAD"]) {
        Some(commit) => {
            // HEAD moves on commit and checkout: watch it and the branch it points to.
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                println!("cargo:rerun-if-changed={dir}/HEAD");
                if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
                    println!("cargo:rerun-if-changed={dir}/{head_ref}");
                }
                println!("cargo:rerun-if-changed={dir}/packed-refs");
            }
            let mut diff = vec!["diff", "--quiet", "HEAD", "--"];
            diff.extend(CODE);
            let clean = Command::new("git")
                .args(&diff)
                .status()
                .is_ok_and(|s| s.success());
            if clean {
                commit
            } else {
                format!("{commit}-dirty")
            }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=FL_LAB_GIT_REVISION={revision}");
}
