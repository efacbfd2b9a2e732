//! Observing a target's current revision, so that the daemon can record change events
//! and the engine can tell whether a breach began after a change.
//!
//! An observation only reads: it never moves a symlink or changes anything it looks at.
//! The daemon calls it each interval and compares with the previous answer. An exec
//! observer's command gets the default environment, its `inherit_env` names and its
//! `env`, never the rest of rearguard's (see [`crate::process`]).

use std::path::Path;

use super::clip_start;
use crate::config::ChangeSpec;
use crate::config::units::format_duration;
use crate::process::{self, Exit};

/// The target's current revision, or why it could not be observed.
///
/// - `release_symlink`: the file name of what the symlink points at (`current ->
///   releases/v2` is `v2`), whether the link is relative or absolute.
/// - `exec`: the trimmed standard output of the command, which must exit 0 within its
///   timeout and print something.
/// - `kube_deployment`: the revision of the ReplicaSet running the Deployment's pod
///   template (one read; the daemon watches instead, see [`super::kube_deployment`]).
pub async fn observe(spec: &ChangeSpec) -> Result<String, String> {
    match spec {
        ChangeSpec::ReleaseSymlink { path, .. } => release_symlink(path).await,
        ChangeSpec::Exec {
            command,
            env,
            inherit_env,
            timeout,
            ..
        } => {
            let env = env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            exec(command, env, inherit_env, *timeout).await
        }
        ChangeSpec::KubeDeployment(target) => super::kube_deployment::observe(target).await,
    }
}

/// The name of the release a symlink points at.
pub(crate) async fn release_symlink(path: &Path) -> Result<String, String> {
    let meta = tokio::fs::symlink_metadata(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.file_type().is_symlink() {
        return Err(format!("{} is not a symlink", path.display()));
    }
    let target = tokio::fs::read_link(path)
        .await
        .map_err(|e| format!("cannot read the symlink {}: {e}", path.display()))?;
    match target.file_name().and_then(|n| n.to_str()) {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(format!(
            "{} points at {}, which does not name a release",
            path.display(),
            target.display()
        )),
    }
}

async fn exec(
    command: &[String],
    env: Vec<(String, String)>,
    inherit: &[String],
    timeout: std::time::Duration,
) -> Result<String, String> {
    let cmd = process::Command {
        argv: command,
        env,
        inherit,
        cwd: None,
        timeout,
    };
    let (finished, stdout) = process::run_stdout(cmd).await.map_err(|e| e.to_string())?;
    let stderr = clip_start(finished.output.trim(), 200);
    let with_stderr = |what: String| {
        if stderr.is_empty() {
            what
        } else {
            format!("{what}: {stderr}")
        }
    };
    match finished.status {
        Exit::Code(0) => {}
        Exit::TimedOut => {
            return Err(with_stderr(format!(
                "timed out after {}",
                format_duration(timeout)
            )));
        }
        other => return Err(with_stderr(other.to_string())),
    }
    let revision = stdout.trim();
    if revision.is_empty() {
        return Err(with_stderr("the command printed no revision".to_owned()));
    }
    Ok(revision.to_owned())
}
