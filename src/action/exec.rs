//! The exec action: a command run without a shell, with placeholders substituted as whole
//! arguments and the incident passed in `REARGUARD_*` environment variables.
//!
//! The command's environment is the default one (see [`crate::process`]), the names in
//! its `inherit_env`, its `env`, then the incident's values; never the rest of
//! rearguard's environment.
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
        let child = Child {
            env,
            inherit: &self.spec.inherit_env,
            cwd: self.spec.cwd.as_deref(),
        };
        run_child(&self.spec.command, child, ctx, timeout, started).await
    }
}

/// What a command's process gets besides its argv.
struct Child<'a> {
    env: Vec<(String, String)>,
    inherit: &'a [String],
    cwd: Option<&'a Path>,
}

/// Substitutes `argv` and runs it, with the default environment and `env`, until
/// `timeout` has passed since `started`: the release switch's restart command.
pub(crate) async fn run_command(
    argv: &[String],
    env: Vec<(String, String)>,
    cwd: Option<&Path>,
    ctx: &ActionContext,
    timeout: Duration,
    started: Instant,
) -> ActionOutput {
    let child = Child {
        env,
        inherit: &[],
        cwd,
    };
    run_child(argv, child, ctx, timeout, started).await
}

async fn run_child(
    argv: &[String],
    child: Child<'_>,
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
        env: child.env,
        inherit: child.inherit,
        cwd: child.cwd,
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
