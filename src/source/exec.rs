//! The exec check: a command (a smoke test, a health script) whose exit code is the
//! verdict, run without a shell and killed with everything it started at the timeout.
//!
//! Exit 0 passes; any other exit, a signal or the timeout fails the check, with the end
//! of the output as detail. A command that cannot be started at all (missing, not
//! executable, or no pipe or process to be had: descriptors, memory or the process limit
//! exhausted) is a source error: the watchdog's own check is broken, not the service.
//! The command gets the default environment, its `inherit_env` names and its `env`,
//! never the rest of rearguard's (see [`crate::process`]).

use std::time::Duration;

use super::{DETAIL_LIMIT, clip_start};
use crate::config::ExecSpec;
use crate::config::units::format_duration;
use crate::engine::{Measure, ReadingState};
use crate::process::{self, Exit};

/// How many lines from the end of the output a failed check quotes.
const DETAIL_LINES: usize = 5;

/// A configured exec check.
#[derive(Debug, Clone)]
pub struct ExecCheck {
    spec: ExecSpec,
    timeout: Duration,
}

impl ExecCheck {
    /// A check whose command is killed, with its whole process group, after `timeout`.
    pub fn new(spec: &ExecSpec, timeout: Duration) -> ExecCheck {
        ExecCheck {
            spec: spec.clone(),
            timeout,
        }
    }

    /// Runs the command once.
    pub async fn sample(&self) -> ReadingState {
        let command = process::Command {
            argv: &self.spec.command,
            env: self
                .spec
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            inherit: &self.spec.inherit_env,
            cwd: self.spec.cwd.as_deref(),
            timeout: self.timeout,
        };
        let finished = match process::run(command).await {
            Ok(finished) => finished,
            Err(e) => match super::own_resource(&e) {
                Some(what) => return super::own_resource_error(what, &e),
                None => return ReadingState::SourceError(e.to_string()),
            },
        };
        let what = match finished.status {
            Exit::Code(0) => {
                return ReadingState::Value(Measure::Check {
                    ok: true,
                    detail: None,
                });
            }
            Exit::TimedOut => format!("timed out after {}", format_duration(self.timeout)),
            other => other.to_string(),
        };
        let last = last_lines(&finished.output, DETAIL_LINES);
        let detail = if last.is_empty() {
            what
        } else {
            let room = DETAIL_LIMIT.saturating_sub(what.len() + 2);
            format!("{what}: {}", clip_start(&last, room))
        };
        ReadingState::Value(Measure::Check {
            ok: false,
            detail: Some(detail),
        })
    }
}

/// The last `n` non-empty lines of `text`, joined with ` | ` to fit one detail line.
fn last_lines(text: &str, n: usize) -> String {
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .rev()
        .take(n)
        .collect();
    lines.reverse();
    lines.join(" | ")
}
