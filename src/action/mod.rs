//! Actions: what rearguard does to a target, one plan step at a time. Each variant of
//! [`Action`] runs once per call, bounded by the step's timeout, and reports what it did
//! as an [`ActionOutput`]; retries, ordering and the decision to act belong to the daemon
//! and the engine.
//!
//! An action never panics and never returns an error type: every failure, including a
//! missing placeholder value, is `ok: false` with an error text. Placeholders
//! (`{incident}`, `{target}`, `{rule}`, `{from_revision}`, `{to_revision}`) are
//! substituted here; secret values never reach an output, an error or a log.

pub mod config_files;
pub mod exec;
pub mod http;
pub mod kube_delete_pods;
pub mod kube_mark_bad;
pub mod kube_pause;
pub mod kube_restart;
pub mod kube_restore_config;
pub mod kube_rollout_status;
pub mod kube_rollout_undo;
pub mod kube_scale;
pub mod kube_snapshot;
pub mod release_switch;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ActionSpec;
use crate::config::units::format_duration;

/// How long past its timeout an action may take to kill and reap what it started before
/// it is abandoned.
const KILL_GRACE: Duration = Duration::from_millis(500);

/// What an action is run for: the values of the placeholders.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionContext {
    /// The incident's id.
    pub incident: String,
    /// The target's name.
    pub target: String,
    /// The name of the rule that opened the incident.
    pub rule: String,
    /// The revision running when the incident opened, when known.
    pub from_revision: Option<String>,
    /// The revision to go back to, when known.
    pub to_revision: Option<String>,
    /// The target's revisions rearguard marked bad: never a destination.
    pub bad_revisions: Vec<String>,
    /// Which attempt of this step this is, from 1: 2 or more is a retry (the earlier
    /// attempt failed, or its answer was lost).
    pub attempt: u32,
}

impl ActionContext {
    /// The value of placeholder `name`: `None` for a name that is not a placeholder,
    /// `Some(None)` for a placeholder whose value is not known.
    fn value(&self, name: &str) -> Option<Option<&str>> {
        Some(match name {
            "incident" => Some(self.incident.as_str()),
            "target" => Some(self.target.as_str()),
            "rule" => Some(self.rule.as_str()),
            "from_revision" => self.from_revision.as_deref(),
            "to_revision" => self.to_revision.as_deref(),
            _ => return None,
        })
    }

    /// `REARGUARD_INCIDENT` and the others, for each value that is known.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("REARGUARD_INCIDENT".to_owned(), self.incident.clone()),
            ("REARGUARD_TARGET".to_owned(), self.target.clone()),
            ("REARGUARD_RULE".to_owned(), self.rule.clone()),
        ];
        if let Some(from) = &self.from_revision {
            env.push(("REARGUARD_FROM_REVISION".to_owned(), from.clone()));
        }
        if let Some(to) = &self.to_revision {
            env.push(("REARGUARD_TO_REVISION".to_owned(), to.clone()));
        }
        env
    }
}

/// What an action did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionOutput {
    pub ok: bool,
    /// What the action printed or received, bounded; for the incident report.
    pub output: String,
    /// Why it failed; `None` when `ok`.
    pub error: Option<String>,
    pub duration: Duration,
}

impl ActionOutput {
    fn failed(error: impl Into<String>, output: String, started: Instant) -> ActionOutput {
        ActionOutput {
            ok: false,
            output,
            error: Some(error.into()),
            duration: started.elapsed(),
        }
    }
}

/// A configured plan step's action.
#[derive(Debug, Clone)]
pub enum Action {
    Exec(exec::ExecAction),
    ReleaseSwitch(release_switch::ReleaseSwitch),
    Http(http::HttpCall),
    KubeRolloutUndo(kube_rollout_undo::KubeRolloutUndo),
    KubeRolloutStatus(kube_rollout_status::KubeRolloutStatus),
    /// `kube_pause` and `kube_resume`.
    KubePause(kube_pause::KubePause),
    KubeScale(kube_scale::KubeScale),
    KubeRestart(kube_restart::KubeRestart),
    KubeMarkBad(kube_mark_bad::KubeMarkBad),
    KubeRestoreConfig(kube_restore_config::KubeRestoreConfig),
    KubeDeletePods(kube_delete_pods::KubeDeletePods),
    RestoreConfigFiles(config_files::RestoreConfigFiles),
}

impl Action {
    /// The action of one step. HTTP calls share `client` (see [`crate::http::client`]).
    pub fn new(spec: &ActionSpec, client: &reqwest::Client) -> Action {
        match spec {
            ActionSpec::Exec(spec) => Action::Exec(exec::ExecAction::new(spec)),
            ActionSpec::ReleaseSwitch(spec) => {
                Action::ReleaseSwitch(release_switch::ReleaseSwitch::new(spec))
            }
            ActionSpec::Http(spec) => Action::Http(http::HttpCall::new(spec, client)),
            ActionSpec::KubeRolloutUndo(spec) => {
                Action::KubeRolloutUndo(kube_rollout_undo::KubeRolloutUndo::new(spec))
            }
            ActionSpec::KubeRolloutStatus(t) => {
                Action::KubeRolloutStatus(kube_rollout_status::KubeRolloutStatus::new(t))
            }
            ActionSpec::KubePause(t) => Action::KubePause(kube_pause::KubePause::new(t, true)),
            ActionSpec::KubeResume(t) => Action::KubePause(kube_pause::KubePause::new(t, false)),
            ActionSpec::KubeScale(spec) => Action::KubeScale(kube_scale::KubeScale::new(spec)),
            ActionSpec::KubeRestart(t) => Action::KubeRestart(kube_restart::KubeRestart::new(t)),
            ActionSpec::KubeMarkBad(t) => Action::KubeMarkBad(kube_mark_bad::KubeMarkBad::new(t)),
            ActionSpec::KubeRestoreConfig(spec) => {
                Action::KubeRestoreConfig(kube_restore_config::KubeRestoreConfig::new(spec))
            }
            ActionSpec::KubeDeletePods(t) => {
                Action::KubeDeletePods(kube_delete_pods::KubeDeletePods::new(t))
            }
            ActionSpec::RestoreConfigFiles(spec) => {
                Action::RestoreConfigFiles(config_files::RestoreConfigFiles::new(spec))
            }
        }
    }

    /// Runs the action once. It ends within `timeout`, plus a fraction of a second to
    /// kill and reap the processes it started when it runs over.
    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        match self {
            Action::Exec(action) => bounded(action.run(ctx, timeout), timeout, started).await,
            Action::ReleaseSwitch(action) => {
                bounded(action.run(ctx, timeout), timeout, started).await
            }
            Action::Http(action) => bounded(action.run(ctx, timeout), timeout, started).await,
            Action::KubeRolloutUndo(action) => {
                bounded(action.run(ctx, timeout), timeout, started).await
            }
            Action::KubeRolloutStatus(action) => {
                bounded(action.run(timeout), timeout, started).await
            }
            Action::KubePause(action) => bounded(action.run(timeout), timeout, started).await,
            Action::KubeScale(action) => bounded(action.run(timeout), timeout, started).await,
            Action::KubeRestart(action) => {
                bounded(action.run(ctx, timeout), timeout, started).await
            }
            Action::KubeMarkBad(action) => {
                bounded(action.run(ctx, timeout), timeout, started).await
            }
            Action::KubeRestoreConfig(action) => {
                bounded(action.run(ctx, timeout), timeout, started).await
            }
            Action::KubeDeletePods(action) => {
                bounded(action.run(ctx, timeout), timeout, started).await
            }
            Action::RestoreConfigFiles(action) => {
                bounded(action.run(ctx, timeout), timeout, started).await
            }
        }
    }

    /// Prepares what the action needs before any incident (the Kubernetes client, from
    /// the kubeconfig or service account), so that a broken setup stops the start
    /// instead of a rollback.
    pub async fn prepare(&self) -> Result<(), String> {
        let handle = match self {
            Action::KubeRolloutUndo(action) => action.handle(),
            Action::KubeRolloutStatus(action) => action.handle(),
            Action::KubePause(action) => action.handle(),
            Action::KubeScale(action) => action.handle(),
            Action::KubeRestart(action) => action.handle(),
            Action::KubeMarkBad(action) => action.handle(),
            Action::KubeRestoreConfig(action) => action.handle(),
            Action::KubeDeletePods(action) => action.handle(),
            Action::Exec(_)
            | Action::ReleaseSwitch(_)
            | Action::Http(_)
            | Action::RestoreConfigFiles(_) => return Ok(()),
        };
        handle.client().await.map(|_| ()).map_err(|e| e.to_string())
    }
}

/// The output of a step on a Kubernetes Deployment: its text, or its error, marked
/// `[retryable]` when running the step again may succeed.
fn step_output(result: Result<String, crate::kube::StepError>, started: Instant) -> ActionOutput {
    match result {
        Ok(output) => ActionOutput {
            ok: true,
            output,
            error: None,
            duration: started.elapsed(),
        },
        Err(e) => {
            let retry = if e.is_retryable() { " [retryable]" } else { "" };
            ActionOutput::failed(format!("{e}{retry}"), String::new(), started)
        }
    }
}

/// Runs a step on a Deployment within `timeout`.
async fn bounded_step(
    step: impl Future<Output = Result<String, crate::kube::StepError>>,
    timeout: Duration,
    started: Instant,
) -> ActionOutput {
    match tokio::time::timeout(timeout, step).await {
        Ok(result) => step_output(result, started),
        Err(_) => ActionOutput::failed(timed_out(timeout), String::new(), started),
    }
}

/// Runs `action`, which bounds itself by `timeout`; this is the backstop for what it
/// cannot bound itself (a filesystem call that hangs). Dropping the future kills the
/// processes it started.
async fn bounded(
    action: impl Future<Output = ActionOutput>,
    timeout: Duration,
    started: Instant,
) -> ActionOutput {
    match tokio::time::timeout(timeout + KILL_GRACE, action).await {
        Ok(output) => output,
        Err(_) => ActionOutput::failed(timed_out(timeout), String::new(), started),
    }
}

fn timed_out(timeout: Duration) -> String {
    format!("timed out after {}", format_duration(timeout))
}

/// The argv with every argument that is exactly a placeholder (`"{to_revision}"`)
/// replaced by its value. Validation guarantees placeholders appear only as whole
/// arguments, so other text is left as written.
pub(crate) fn substitute_argv(argv: &[String], ctx: &ActionContext) -> Result<Vec<String>, String> {
    argv.iter()
        .map(|arg| {
            let name = arg.strip_prefix('{').and_then(|a| a.strip_suffix('}'));
            match name.and_then(|n| ctx.value(n).map(|v| (n, v))) {
                Some((_, Some(value))) => Ok(value.to_owned()),
                Some((name, None)) => Err(unknown_value(name)),
                None => Ok(arg.clone()),
            }
        })
        .collect()
}

/// `text` with every `{placeholder}` replaced by `escape(value)`. Braces that are not a
/// placeholder (a JSON body's own) are kept as written.
pub(crate) fn substitute_text(
    text: &str,
    ctx: &ActionContext,
    escape: impl Fn(&str) -> String,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_lowercase() || *b == b'_')
            .count();
        let name = &after[..name_len];
        if name_len > 0 && after[name_len..].starts_with('}') {
            match ctx.value(name) {
                Some(Some(value)) => {
                    out.push_str(&escape(value));
                    rest = &after[name_len + 1..];
                    continue;
                }
                Some(None) => return Err(unknown_value(name)),
                None => {}
            }
        }
        out.push('{');
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

fn unknown_value(name: &str) -> String {
    format!("{{{name}}} is not known for this incident, so the step cannot run")
}

/// `value` percent-encoded for any part of a URL: everything but unreserved characters.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `value` escaped as the content of a JSON string, without the quotes.
pub(crate) fn json_escape(value: &str) -> String {
    let quoted = serde_json::Value::String(value.to_owned()).to_string();
    quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ActionContext {
        ActionContext {
            incident: "inc-1".into(),
            target: "shop".into(),
            rule: "errors".into(),
            from_revision: Some("v2".into()),
            to_revision: None,
            bad_revisions: Vec::new(),
            attempt: 1,
        }
    }

    #[test]
    fn whole_argument_placeholders_are_substituted_and_others_kept() {
        let argv: Vec<String> = ["deploy", "{from_revision}", "x{incident}", "{other}"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            substitute_argv(&argv, &ctx()).as_deref(),
            Ok(&["deploy", "v2", "x{incident}", "{other}"].map(String::from)[..])
        );
    }

    #[test]
    fn a_missing_value_fails_the_substitution() {
        let argv = vec!["{to_revision}".to_owned()];
        let err = substitute_argv(&argv, &ctx()).unwrap_err();
        assert!(err.contains("{to_revision} is not known"), "{err}");
    }

    #[test]
    fn text_substitution_escapes_values_and_keeps_json_braces() {
        let mut c = ctx();
        c.incident = "a\"b\\c\nd".into();
        let body = r#"{"text": "{incident} on {target}", "n": {"x": 1}}"#;
        let out = substitute_text(body, &c, json_escape).unwrap();
        assert_eq!(out, r#"{"text": "a\"b\\c\nd on shop", "n": {"x": 1}}"#);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["text"], "a\"b\\c\nd on shop");
    }

    #[test]
    fn url_values_are_percent_encoded() {
        assert_eq!(percent_encode("a b/c?d&é~"), "a%20b%2Fc%3Fd%26%C3%A9~");
    }
}
