//! Small helpers every layer may use (a leaf: it imports no other module of the crate): atomic file
//! writes, the git revision, progress bars and the CPU's vector width (`wide`).

pub mod progress;
pub mod stat;
pub mod wide;

use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// reader (or a killed process) never sees a half-written file and an existing file is never
/// corrupted.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let file_name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        file_name.to_string_lossy(),
        unique_suffix()
    ));
    let result = (|| -> Result<()> {
        let mut f = std::fs::File::create(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all().ok();
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A temporary path beside `path` for tools (like plotters) that write a file themselves;
/// finish with [`commit_temp`].
pub fn temp_beside(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}{ext}", unique_suffix()))
}

/// Unique per process and per call, so that threads writing the same file never share a temporary.
fn unique_suffix() -> String {
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// Renames a file made by [`temp_beside`] over its destination, with the permissions a newly
/// created file gets (0666 less the umask), as [`write_atomic`]'s files have: some writers, such as
/// safetensors', create theirs owner-only.
pub fn commit_temp(tmp: &Path, path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = 0o666 & !umask();
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the permissions of {}", tmp.display()))?;
    }
    std::fs::rename(tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// The process's umask, read from `/proc/self/status` (setting it to read it would race with other
/// threads creating files); 022 where that is not available.
#[cfg(unix)]
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// The commit this binary was built from (with "-dirty" when its code had uncommitted edits),
/// or "unknown" when it was built outside a git checkout; set by `build.rs`. Recorded in every
/// result row so a number can be traced to the code that produced it.
pub fn git_revision() -> String {
    env!("FL_LAB_GIT_REVISION").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_revision_names_a_commit_or_says_unknown() {
        let rev = git_revision();
        let commit = rev.strip_suffix("-dirty").unwrap_or(&rev);
        let hex = commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit());
        assert!(hex || rev == "unknown", "{rev}");
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.csv");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn files_written_through_a_temporary_get_the_usual_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.csv"), dir.path().join("b.bin"));
        write_atomic(&a, b"x").unwrap();
        let tmp = temp_beside(&b);
        // an owner-only file, as safetensors writes it
        std::fs::write(&tmp, b"y").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        commit_temp(&tmp, &b).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&b), mode(&a));
        assert_eq!(mode(&b), 0o666 & !umask());
        assert_ne!(temp_beside(&b), temp_beside(&b), "one temporary per call");
    }
}
