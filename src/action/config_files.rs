//! A host target's configuration files (`config_files`): their snapshot in the state
//! directory when a revision bakes ([`take`], run by the daemon on `Effect::Baked`), and
//! the `restore_config_files` step that puts a revision's snapshot back with each file's
//! mode and owner ([`RestoreConfigFiles`]).
//!
//! A snapshot is a directory `<state_dir>/config-snapshots/<target>/<revision>/` (names
//! percent-encoded) holding one copy per file (mode 0600: an `.env` holds secrets) and
//! `manifest.json` (paths, whether each existed, mode, owner, size; never content). It is
//! written under a temporary name and renamed into place, so a snapshot is whole or
//! absent, and never overwritten: taking it again finds it there. Only the newest
//! `keep_snapshots` revisions' are kept.
//!
//! A restore checks every copy against its manifest before it changes any file; each
//! file is written to a temporary sibling with its mode and owner and renamed over the
//! original, whose previous content is kept as `<file>.before-rollback` (a hard link),
//! so a reader sees the old or the new file, never a half-written one. A file the
//! snapshot says did not exist, or that the patterns match now but did not then, is
//! moved aside to `<file>.before-rollback`. File content never reaches an output, an
//! error or a log: only paths, sizes and modes do.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{ActionContext, ActionOutput};
use crate::config::RestoreConfigFilesSpec;
use crate::source::change::{config_files, read_config_file};

/// The manifest's file name in a snapshot directory.
const MANIFEST: &str = "manifest.json";
/// What a replaced or removed file is kept as, beside it.
pub const BEFORE_ROLLBACK: &str = ".before-rollback";

/// What a snapshot holds: the patterns it was taken for and each file they named.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Manifest {
    target: String,
    revision: String,
    patterns: Vec<String>,
    files: Vec<Entry>,
}

/// One file: where it lives, and, when it existed, its copy's name, size, mode and owner.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    path: PathBuf,
    copy: Option<String>,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// A name safe as one path component: letters, digits, `_`, `+`, `-` and inner dots
/// kept, every other byte as `%XX`.
fn encode(name: &str) -> String {
    let mut out = String::new();
    for (i, b) in name.bytes().enumerate() {
        let keep =
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-') || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The directory holding a target's snapshots.
pub fn target_dir(state_dir: &Path, target: &str) -> PathBuf {
    state_dir.join("config-snapshots").join(encode(target))
}

/// The directory of one revision's snapshot.
pub fn snapshot_dir(state_dir: &Path, target: &str, revision: &str) -> PathBuf {
    target_dir(state_dir, target).join(encode(revision))
}

/// Takes the snapshot of `revision` of `target`: the files `patterns` name now. A
/// snapshot already there is kept as it is. Then deletes all but the newest `keep`
/// revisions' snapshots. Blocking file-system calls: run it off the engine's loop.
pub fn take(
    state_dir: &Path,
    target: &str,
    revision: &str,
    patterns: &[String],
    keep: u32,
) -> Result<String, String> {
    let dir = snapshot_dir(state_dir, target, revision);
    if dir.join(MANIFEST).is_file() {
        return Ok(format!(
            "configuration files of revision {revision} already snapshotted in {}",
            dir.display()
        ));
    }
    let parent = target_dir(state_dir, target);
    fs::create_dir_all(&parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    private(&state_dir.join("config-snapshots"))?;
    let tmp = parent.join(format!(".{}.tmp-{}", encode(revision), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let written = write_snapshot(&tmp, target, revision, patterns);
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    fs::rename(&tmp, &dir).map_err(|e| {
        let _ = fs::remove_dir_all(&tmp);
        format!("cannot move the snapshot into {}: {e}", dir.display())
    })?;
    let pruned = prune(&parent, keep)?;
    let present = manifest.files.iter().filter(|f| f.copy.is_some()).count();
    Ok(format!(
        "configuration files of revision {revision} snapshotted in {}: {present} files ({} missing), {pruned} older snapshots deleted",
        dir.display(),
        manifest.files.len() - present
    ))
}

/// Makes `dir` readable by its owner only.
fn private(dir: &Path) -> Result<(), String> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))
}

/// Writes the copies and the manifest into `tmp`.
fn write_snapshot(
    tmp: &Path,
    target: &str,
    revision: &str,
    patterns: &[String],
) -> Result<Manifest, String> {
    fs::create_dir(tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    private(tmp)?;
    let mut files = Vec::new();
    for (i, path) in config_files(patterns)?.into_iter().enumerate() {
        let meta = fs::symlink_metadata(&path).ok();
        let Some(bytes) = read_config_file(&path)? else {
            files.push(Entry {
                path,
                copy: None,
                size: 0,
                mode: 0,
                uid: 0,
                gid: 0,
            });
            continue;
        };
        let meta = meta.ok_or_else(|| format!("cannot read {}", path.display()))?;
        let copy = format!("file-{i}");
        write_new(&tmp.join(&copy), &bytes, 0o600)?;
        files.push(Entry {
            path,
            copy: Some(copy),
            size: bytes.len() as u64,
            mode: meta.mode() & 0o7777,
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    let manifest = Manifest {
        target: target.to_owned(),
        revision: revision.to_owned(),
        patterns: patterns.to_vec(),
        files,
    };
    let text = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    write_new(&tmp.join(MANIFEST), &text, 0o600)?;
    Ok(manifest)
}

/// Creates `path` with `bytes` and `mode`, synced to disk.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Deletes all but the newest `keep` snapshots in `parent` (by modification time); how
/// many it deleted.
fn prune(parent: &Path, keep: u32) -> Result<usize, String> {
    let entries =
        fs::read_dir(parent).map_err(|e| format!("cannot list {}: {e}", parent.display()))?;
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort_by(|a, b| b.cmp(a));
    let mut deleted = 0;
    for (_, dir) in dirs.into_iter().skip(keep as usize) {
        fs::remove_dir_all(&dir).map_err(|e| format!("cannot delete {}: {e}", dir.display()))?;
        deleted += 1;
    }
    Ok(deleted)
}

/// A configured `restore_config_files` step.
#[derive(Debug, Clone)]
pub struct RestoreConfigFiles {
    spec: RestoreConfigFilesSpec,
}

impl RestoreConfigFiles {
    pub fn new(spec: &RestoreConfigFilesSpec) -> RestoreConfigFiles {
        RestoreConfigFiles { spec: spec.clone() }
    }

    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        let revision = self
            .spec
            .revision
            .clone()
            .or_else(|| ctx.to_revision.clone());
        let Some(revision) = revision else {
            return ActionOutput::failed(
                "the revision to restore the configuration files of is not known: nothing was changed",
                String::new(),
                started,
            );
        };
        let dir = snapshot_dir(&self.spec.state_dir, &ctx.target, &revision);
        let from = ctx.from_revision.clone();
        let restoring =
            tokio::task::spawn_blocking(move || restore(&dir, &revision, from.as_deref()));
        match tokio::time::timeout(timeout, restoring).await {
            Ok(Ok(Ok(output))) => ActionOutput {
                ok: true,
                output,
                error: None,
                duration: started.elapsed(),
            },
            Ok(Ok(Err(e))) => ActionOutput::failed(e, String::new(), started),
            Ok(Err(e)) => ActionOutput::failed(
                format!("the restore was interrupted: {e}"),
                String::new(),
                started,
            ),
            Err(_) => ActionOutput::failed(super::timed_out(timeout), String::new(), started),
        }
    }
}

/// Restores the snapshot in `dir`; what it did, in words. Every copy is checked first:
/// a snapshot that is missing or damaged changes nothing.
fn restore(dir: &Path, revision: &str, from: Option<&str>) -> Result<String, String> {
    let text = match fs::read(dir.join(MANIFEST)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "there is no snapshot of the configuration files of revision {revision} ({} does not exist); a revision is snapshotted once it stayed healthy for the target's bake time: nothing was changed",
                dir.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot read the snapshot in {}: {e}",
                dir.display()
            ));
        }
    };
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "the snapshot in {} is damaged ({e}): nothing was changed",
            dir.display()
        )
    })?;
    let mut copies = Vec::new();
    for f in &manifest.files {
        let Some(copy) = &f.copy else {
            copies.push(None);
            continue;
        };
        let bytes = fs::read(dir.join(copy)).map_err(|e| {
            format!(
                "the snapshot's copy of {} cannot be read ({e}): nothing was changed",
                f.path.display()
            )
        })?;
        if bytes.len() as u64 != f.size {
            return Err(format!(
                "the snapshot's copy of {} holds {} bytes, not the {} it had: nothing was changed",
                f.path.display(),
                bytes.len(),
                f.size
            ));
        }
        copies.push(Some(bytes));
    }
    let mut done = Vec::new();
    for (f, bytes) in manifest.files.iter().zip(copies) {
        done.push(match bytes {
            Some(bytes) => put_back(f, &bytes)?,
            None => move_aside(&f.path, "did not exist in the snapshot")?,
        });
    }
    // A file the patterns match now but not then (a new `conf.d/*.toml`) is part of the
    // configuration that is being rolled back.
    let known: std::collections::BTreeSet<&PathBuf> =
        manifest.files.iter().map(|f| &f.path).collect();
    for path in config_files(&manifest.patterns)? {
        if !known.contains(&path) {
            done.push(move_aside(&path, "was not there in the snapshot")?);
        }
    }
    let from = from.map(|f| format!(" (from {f})")).unwrap_or_default();
    Ok(format!(
        "configuration files restored from the snapshot of revision {revision}{from}: {}",
        done.join("; ")
    ))
}

/// The path beside `path` that keeps what it held before the rollback.
fn kept_as(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(BEFORE_ROLLBACK);
    path.with_file_name(name)
}

/// Writes `bytes` over `f.path` with its mode and owner, by a rename; keeps what was
/// there as `<file>.before-rollback`.
fn put_back(f: &Entry, bytes: &[u8]) -> Result<String, String> {
    let path = &f.path;
    let shown = path.display();
    if let Ok(meta) = fs::symlink_metadata(path)
        && meta.is_file()
        && meta.mode() & 0o7777 == f.mode
        && (meta.uid(), meta.gid()) == (f.uid, f.gid)
        && fs::read(path).is_ok_and(|now| now == bytes)
    {
        return Ok(format!("{shown} already as in the snapshot"));
    }
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{name}.rearguard-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes, 0o600)?;
    let finish = || -> Result<(), String> {
        std::os::unix::fs::chown(&tmp, Some(f.uid), Some(f.gid))
            .map_err(|e| format!("cannot give {shown} its owner {}:{} ({e})", f.uid, f.gid))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(f.mode))
            .map_err(|e| format!("cannot give {shown} its mode {:o} ({e})", f.mode))?;
        if fs::symlink_metadata(path).is_ok() {
            let kept = kept_as(path);
            let _ = fs::remove_file(&kept);
            fs::hard_link(path, &kept)
                .map_err(|e| format!("cannot keep {shown} as {} ({e})", kept.display()))?;
        }
        fs::rename(&tmp, path).map_err(|e| format!("cannot replace {shown} ({e})"))
    };
    finish().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })?;
    Ok(format!(
        "{shown} restored ({} bytes, mode {:o}, owner {}:{})",
        f.size, f.mode, f.uid, f.gid
    ))
}

/// Moves `path` aside to `<file>.before-rollback`, if it exists.
fn move_aside(path: &Path, why: &str) -> Result<String, String> {
    let shown = path.display();
    if fs::symlink_metadata(path).is_err() {
        return Ok(format!("{shown} absent, as in the snapshot"));
    }
    let kept = kept_as(path);
    fs::rename(path, &kept).map_err(|e| format!("cannot move {shown} aside ({e})"))?;
    Ok(format!("{shown} {why}: moved to {}", kept.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_safe_path_component() {
        assert_eq!(encode("v18+cfg.2"), "v18+cfg.2");
        assert_eq!(encode("a/b"), "a%2Fb");
        assert_eq!(encode(".."), "%2E.");
        assert_eq!(encode("shop api"), "shop%20api");
    }
}
