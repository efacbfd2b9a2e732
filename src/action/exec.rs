//! The exec action: a command run without a shell, with placeholders substituted as whole
//! arguments and the incident passed in `REARGUARD_*` environment variables.
//!
//! The command is killed with everything it started when the step's time is up. This
//! module does not retry and does not interpret output: exit 0 is success.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use super::{ActionContext, ActionOutput, substitute_argv, timed_out};
use crate::config::ExecSpec;
use crate::process::{self, Exit};

/// A configured exec step.
#[derive(Debug, Clone)]
pub struct ExecAction {
    spec: ExecSpec,
}

impl ExecAction {
    pub fn new(spec: &ExecSpec) -> ExecAction {
        ExecAction { spec: spec.clone() }
    }

    /// Runs the command once, killing it after `timeout`.
    pub async fn run(&self, ctx: &ActionContext, timeout: Duration) -> ActionOutput {
        let started = Instant::now();
        let mut env: Vec<(String, String)> = self
            .spec
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // The incident's variables come last so that a command can trust them.
        env.extend(ctx.env());
        run_command(
            &self.spec.command,
            env,
            self.spec.cwd.as_deref(),
            ctx,
            timeout,
            started,
        )
        .await
    }
}

/// Substitutes `argv` and runs it until `timeout` has passed since `started`: shared
/// with the release switch's restart command.
pub(crate) async fn run_command(
    argv: &[String],
    env: Vec<(String, String)>,
    cwd: Option<&Path>,
    ctx: &ActionContext,
    timeout: Duration,
    started: Instant,
) -> ActionOutput {
    let argv = match substitute_argv(argv, ctx) {
        Ok(argv) => argv,
        Err(e) => return ActionOutput::failed(e, String::new(), started),
    };
    let remaining = timeout.saturating_sub(started.elapsed());
    let command = process::Command {
        argv: &argv,
        env,
        cwd,
        timeout: remaining,
    };
    match process::run(command).await {
        Err(e) => ActionOutput::failed(e.to_string(), String::new(), started),
        Ok(finished) => {
            let error = match finished.status {
                Exit::Code(0) => None,
                Exit::TimedOut => Some(format!("{} and was killed", timed_out(timeout))),
                other => Some(other.to_string()),
            };
            ActionOutput {
                ok: error.is_none(),
                output: finished.output,
                error,
                duration: started.elapsed(),
            }
        }
    }
}
