//! The incident report: the Markdown post-rollback document, written when an incident
//! ends, into `<state_dir>/reports/<incident>.md`.
//!
//! Rendering is pure (`render`); `write` only puts the text on disk atomically. Reports
//! contain what the engine recorded, which never includes secrets.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::config::units::format_duration;
use crate::engine::{Cause, EntryKind, Incident, Outcome};

/// Renders the report of a closed (or closing) incident.
pub fn render(inc: &Incident, cfg: &Config) -> String {
    let mut md = String::new();
    let outcome = match &inc.outcome {
        Some(Outcome::RolledBack) => "rolled back and verified".to_owned(),
        Some(Outcome::RolledBackUnverified) => {
            "rolled back, not verified: the verification window ended without measured readings showing the rules clear".to_owned()
        }
        Some(Outcome::Recovered) if inc.escalation_reason.is_some() => {
            "recovered without automatic action".to_owned()
        }
        Some(Outcome::Recovered) => "recovered".to_owned(),
        Some(Outcome::ResolvedByOperator(by)) => format!("resolved by {by}"),
        Some(Outcome::Interrupted) => {
            "interrupted: after a restart the configuration no longer had its target, rules or plan"
                .to_owned()
        }
        None => format!("open ({})", inc.state.name()),
    };
    let _ = writeln!(md, "# Incident {}\n", inc.id);
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| Target | {} |", esc(&inc.target_name));
    let cause = match inc.cause {
        Cause::Breach => "rule breach",
        Cause::Blind => "watchdog blind (a source could not be read)",
    };
    let _ = writeln!(md, "| Cause | {cause} |");
    let _ = writeln!(md, "| Outcome | {} |", esc(&outcome));
    let _ = writeln!(md, "| Breach began | {} |", inc.breach_started);
    let _ = writeln!(md, "| Opened | {} |", inc.opened_at);
    if let Some(closed) = inc.closed_at {
        let _ = writeln!(
            md,
            "| Closed | {closed} (open for {}) |",
            format_duration(closed.since(inc.opened_at))
        );
    }
    if let (Some(from), Some(to)) = (&inc.from_revision, &inc.to_revision) {
        let _ = writeln!(
            md,
            "| Rolled back | from `{}` to `{}` |",
            esc(from),
            esc(to)
        );
    }
    if let Some(plan) = inc.plan {
        let _ = writeln!(md, "| Plan | {} |", esc(&cfg.plans[plan].name));
    }
    if let Some(reason) = &inc.escalation_reason {
        let _ = writeln!(md, "| Escalated because | {} |", esc(reason));
    }
    if inc.acknowledged {
        let _ = writeln!(md, "| Acknowledged | yes |");
    }

    if !inc.rules.is_empty() {
        let _ = writeln!(md, "\n## Rules\n");
        let _ = writeln!(
            md,
            "| Rule | Signal | Condition | Mode |\n|---|---|---|---|"
        );
        for &r in &inc.rules {
            let rule = &cfg.rules[r];
            let signal = &cfg.signals[rule.signal];
            let _ = writeln!(
                md,
                "| {} | {} ({}, every {}) | {} | {} |",
                esc(&rule.name),
                esc(&signal.name),
                signal.source.type_name(),
                format_duration(signal.interval),
                esc(&rule.when.describe()),
                rule.mode.describe()
            );
        }
    }

    let _ = writeln!(md, "\n## Timeline\n");
    let _ = writeln!(md, "| Time (UTC) | Event |\n|---|---|");
    for e in &inc.timeline {
        let _ = writeln!(md, "| {} | {} |", e.at.rfc3339(), esc(&e.text));
    }

    let steps: Vec<_> = inc
        .timeline
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::StepFinished {
                ok,
                duration_ms,
                output,
            } => Some((e, *ok, *duration_ms, output)),
            _ => None,
        })
        .collect();
    if !steps.is_empty() {
        let _ = writeln!(md, "\n## Actions\n");
        for (e, ok, ms, output) in steps {
            let _ = writeln!(
                md,
                "### {}\n\n{} at {}, took {ms} ms.\n",
                e.text,
                if ok { "Succeeded" } else { "Failed" },
                e.at.rfc3339()
            );
            if output.trim().is_empty() {
                let _ = writeln!(md, "No output.\n");
            } else {
                let fence = if output.contains("```") {
                    "~~~~"
                } else {
                    "```"
                };
                let _ = writeln!(md, "{fence}text\n{}\n{fence}\n", output.trim_end());
            }
        }
    }

    let verification: Vec<_> = inc
        .timeline
        .iter()
        .filter(|e| e.kind == EntryKind::Verification)
        .collect();
    if !verification.is_empty() {
        let _ = writeln!(md, "## Verification\n");
        for e in verification {
            let _ = writeln!(md, "- {}: {}", e.at.rfc3339(), e.text);
        }
        md.push('\n');
    }

    let notices: Vec<_> = inc
        .timeline
        .iter()
        .filter(|e| e.kind == EntryKind::Notification)
        .collect();
    if !notices.is_empty() {
        let _ = writeln!(md, "## Notifications\n");
        for e in notices {
            let _ = writeln!(md, "- {}: {}", e.at.rfc3339(), e.text);
        }
        md.push('\n');
    }
    md
}

/// Writes the report to `<state_dir>/reports/<id>.md` through a temporary file and a
/// rename, so a reader never sees half a report. Returns the path.
pub fn write(state_dir: &Path, inc: &Incident, cfg: &Config) -> io::Result<PathBuf> {
    let dir = state_dir.join("reports");
    std::fs::create_dir_all(&dir)?;
    let name: String = inc
        .id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = dir.join(format!("{name}.md"));
    let tmp = dir.join(format!(".{name}.md.tmp"));
    std::fs::write(&tmp, render(inc, cfg))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Escapes text for a Markdown table cell.
fn esc(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}
