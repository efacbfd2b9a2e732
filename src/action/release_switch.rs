//! The release switch: repoints a `current` symlink from one release directory to
//! another, atomically, then runs an optional restart command. This is the host-side
//! "level 1" rollback of deploy tools that keep `releases/<revision>` directories
//! (Capistrano, Deployer, hand-rolled scripts).
//!
//! The switch changes nothing unless every preflight check passes: the target revision is
//! known and names a plain directory under `releases`, `current` is a symlink, and it
//! still points at the revision the incident was opened against (someone who moved it
//! meanwhile wins; we do not fight a human or a deploy). The new link is written next to
//! `current` and renamed over it, so a reader sees the old or the new release, never
//! neither. It keeps the old link's relative or absolute form. This module never deletes
//! a release and never touches anything but the `current` link and its temporary sibling.
//!
//! Revisions with a configuration generation (`v18+cfg.1`, a target with `config_files`)
//! name the release `v18`. An incident that changed only the configuration (`v18+cfg.1`
//! back to `v18`) switches nothing, once the link is seen still at `v18`, and runs the
//! restart command, so that a plan restoring the files before this step restarts the
//! service on them.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::exec::run_command;
use super::{ActionContext, ActionOutput};
use crate::config::ReleaseSwitchSpec;

/// Distinguishes temporary links made by concurrent switches in one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A configured release switch step.
#[derive(Debug, Clone)]
pub struct ReleaseSwitch {
    spec: ReleaseSwitchSpec,
}

/// A switch that was done.
#[derive(Debug)]
struct Switched {
    from: String,
    to: String,
}

impl ReleaseSwitch {
    pub fn new(spec: &ReleaseSwitchSpec) -> ReleaseSwitch {
        ReleaseSwitch { spec: spec.clone() }
    }

    /// Checks, switches and restarts. A failed restart fails the action, but the switch
    /// stays done (the error says so): undoing it would race the restart.
    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        let current = self.spec.current.clone();
        let releases = self.spec.releases.clone();
        let from = ctx.from_revision.clone();
        let to = ctx.to_revision.clone();
        let switched =
            tokio::task::spawn_blocking(move || switch(&current, &releases, from, to)).await;
        let switched = match switched {
            Ok(Ok(switched)) => switched,
            Ok(Err(error)) => return ActionOutput::failed(error, String::new(), started),
            Err(e) => {
                return ActionOutput::failed(
                    format!("the switch was interrupted: {e}"),
                    String::new(),
                    started,
                );
            }
        };
        let current = self.spec.current.display();
        let mut output = if switched.from == switched.to {
            format!(
                "{current}: stays at {} (only the configuration changed)\n",
                switched.to
            )
        } else {
            format!("{current}: {} -> {}\n", switched.from, switched.to)
        };
        let Some(restart) = &self.spec.restart else {
            return ActionOutput {
                ok: true,
                output,
                error: None,
                duration: started.elapsed(),
            };
        };
        let restarted = run_command(restart, ctx.env(), None, ctx, timeout, started).await;
        output.push_str(&restarted.output);
        let error = restarted.error.map(|e| {
            format!(
                "switched {current} from {} to {}, but the restart command failed: {e}",
                switched.from, switched.to
            )
        });
        ActionOutput {
            ok: error.is_none(),
            output,
            error,
            duration: started.elapsed(),
        }
    }
}

/// The preflight checks and the switch itself; blocking filesystem calls.
fn switch(
    current: &Path,
    releases: &Path,
    from: Option<String>,
    to: Option<String>,
) -> Result<Switched, String> {
    let to =
        to.ok_or("the revision to roll back to is not known, so there is nothing to switch to")?;
    let config_only = from
        .as_deref()
        .is_some_and(|f| f != to && release_of(f) == release_of(&to));
    let to = release_of(&to).to_owned();
    let from = from.map(|f| release_of(&f).to_owned());
    check_release_name(&to)?;
    let release_dir = releases.join(&to);
    match fs::metadata(&release_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            return Err(format!(
                "release {} is not a directory",
                release_dir.display()
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(format!(
                "release directory {} does not exist",
                release_dir.display()
            ));
        }
        Err(e) => {
            return Err(format!(
                "cannot read release directory {}: {e}",
                release_dir.display()
            ));
        }
    }

    let meta = fs::symlink_metadata(current)
        .map_err(|e| format!("cannot read {}: {e}", current.display()))?;
    if !meta.file_type().is_symlink() {
        return Err(format!(
            "{} is not a symlink; refusing to replace it",
            current.display()
        ));
    }
    let old_target = fs::read_link(current)
        .map_err(|e| format!("cannot read the symlink {}: {e}", current.display()))?;
    let now = old_target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| {
            format!(
                "{} points at {}, which does not name a release",
                current.display(),
                old_target.display()
            )
        })?
        .to_owned();
    let from = from.ok_or_else(|| {
        format!(
            "the revision to roll back from is not known, so it cannot be checked that {} was not moved meanwhile; nothing changed",
            current.display()
        )
    })?;
    if now != from {
        return Err(format!(
            "{} points at {now}, not at {from}: someone else moved it; nothing changed",
            current.display()
        ));
    }
    if now == to && config_only {
        return Ok(Switched { from, to });
    }
    if now == to {
        return Err(format!(
            "{} already points at {to}; nothing to switch",
            current.display()
        ));
    }

    let link_dir = match current.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let new_target = new_target(&old_target, link_dir, &release_dir, &to)?;
    replace_link(current, link_dir, &new_target)?;
    Ok(Switched { from, to })
}

/// The release a revision names: `v18` for `v18+cfg.2`.
fn release_of(revision: &str) -> &str {
    crate::source::change::split_config(revision).0
}

/// A revision must name a directory inside `releases`, not a path out of it.
fn check_release_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!(
            "revision {name:?} is not a plain directory name; refusing to switch to it"
        ));
    }
    Ok(())
}

/// The link target for `release_dir`, in the form of `old_target`: the old target with
/// its last component replaced when that reaches the release, else a path computed from
/// the canonical directories (relative if the old one was relative).
fn new_target(
    old_target: &Path,
    link_dir: &Path,
    release_dir: &Path,
    to: &str,
) -> Result<PathBuf, String> {
    let canonical_release = fs::canonicalize(release_dir).map_err(|e| {
        format!(
            "cannot resolve release directory {}: {e}",
            release_dir.display()
        )
    })?;
    if let Some(parent) = old_target.parent() {
        let candidate = parent.join(to);
        if fs::canonicalize(link_dir.join(&candidate)).ok().as_ref() == Some(&canonical_release) {
            return Ok(candidate);
        }
    }
    if old_target.is_absolute() {
        return Ok(canonical_release);
    }
    let canonical_dir = fs::canonicalize(link_dir)
        .map_err(|e| format!("cannot resolve directory {}: {e}", link_dir.display()))?;
    Ok(relative_path(&canonical_dir, &canonical_release))
}

/// The relative path from directory `from` to `to`; both absolute and canonical.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &to[common..] {
        path.push(part);
    }
    if path.as_os_str().is_empty() {
        path.push(".");
    }
    path
}

/// Points `current` at `target` by renaming a new link over it; rename(2) replaces the
/// old link atomically.
fn replace_link(current: &Path, link_dir: &Path, target: &Path) -> Result<(), String> {
    let name = current
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "current".to_owned());
    let mut attempt = 0;
    let temp = loop {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let temp = link_dir.join(format!(".{name}.rearguard-{}-{n}", std::process::id()));
        match std::os::unix::fs::symlink(target, &temp) {
            Ok(()) => break temp,
            // A link left by a crashed run of a process that had our pid; try another name.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 10 => attempt += 1,
            Err(e) => {
                return Err(format!(
                    "cannot create a symlink in {}: {e}; nothing changed",
                    link_dir.display()
                ));
            }
        }
    };
    if let Err(e) = fs::rename(&temp, current) {
        let _ = fs::remove_file(&temp);
        return Err(format!(
            "cannot replace {}: {e}; nothing changed",
            current.display()
        ));
    }
    // Make the rename durable; a failure here does not undo it, so it is not an error.
    if let Ok(dir) = fs::File::open(link_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_path_climbs_out_of_the_link_directory() {
        assert_eq!(
            relative_path(Path::new("/srv/app"), Path::new("/srv/app/releases/v1")),
            PathBuf::from("releases/v1")
        );
        assert_eq!(
            relative_path(Path::new("/srv/app/links"), Path::new("/srv/rel/v1")),
            PathBuf::from("../../rel/v1")
        );
    }

    #[test]
    fn revision_names_with_path_parts_are_refused() {
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(check_release_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_release_name("v1.2.3").is_ok());
    }
}
