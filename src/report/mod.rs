//! The incident report: the Markdown post-rollback document, written when an incident
//! ends, into `<state_dir>/reports/<incident>.md`, with one SVG chart per rule beside it
//! (`<incident>-<rule>.svg`, linked from the report).
//!
//! The report reads as a story: its timeline starts with the change the breach followed
//! and the first breaching reading, then what the engine recorded; notifications are
//! listed once, in their own section; durations are written by
//! `units::human_duration`. `history.rs` is what the charts draw from (readings kept in
//! the state store), `chart.rs` draws them.
//!
//! Rendering is pure (`render`, `story`, `charts`); `Evidence::load` reads the store and
//! `write` only puts the files on disk atomically. Reports contain what the engine
//! recorded and readings without a source error's text, which never include secrets.

pub mod chart;
pub mod history;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chart::{Chart, Marker, MarkerKind};
use history::Point;

use crate::config::Config;
use crate::config::units::human_duration;
use crate::engine::{Cause, EntryKind, Incident, Outcome, Ts};
use crate::store::{ChangeRow, Store};

/// What the store holds about an incident beyond the incident itself: the change its
/// breach followed, the changes and readings around it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Evidence {
    /// The target's latest change at or before the breach began.
    pub blamed: Option<ChangeRow>,
    /// The target's changes within the charts' span.
    pub changes: Vec<ChangeRow>,
    /// The charts' span: from before the change (or the breach) to the end.
    pub from: Ts,
    pub to: Ts,
    /// The readings each charted rule sees, by rule index.
    pub points: Vec<(usize, Vec<Point>)>,
}

/// A change longer than this before the breach is not drawn on the charts (it is still
/// named in the story), so that a breach days after a deploy is not a dot at the edge.
const CHANGE_DRAWN_WITHIN: Duration = Duration::from_secs(3600);

impl Evidence {
    /// Reads the evidence of `inc` from the store; an open incident's charts end at
    /// `now`. What cannot be read is left out (and logged).
    pub fn load(store: &Store, cfg: &Config, inc: &Incident, now: Ts) -> Evidence {
        let warn = |e: crate::store::StoreError| {
            tracing::warn!(incident = %inc.id, error = %e, "cannot read the readings for the report's charts");
        };
        let blamed = store
            .changes(&inc.target_name, inc.breach_started.0, 1)
            .unwrap_or_else(|e| {
                warn(e);
                Vec::new()
            })
            .pop();
        let start = match &blamed {
            Some(c) if inc.breach_started.since(Ts(c.at_ms)) <= CHANGE_DRAWN_WITHIN => Ts(c.at_ms),
            _ => inc.breach_started,
        }
        .min(inc.opened_at);
        let end = inc.closed_at.unwrap_or(now).max(start);
        let rules = charted_rules(inc, cfg);
        let interval = rules
            .iter()
            .map(|&r| cfg.signals[cfg.rules[r].signal].interval)
            .max()
            .unwrap_or(Duration::from_secs(1));
        let lead = (end.since(start) / 4).max(interval * 5);
        let (from, to) = (start.minus(lead), end);
        let changes = store
            .changes(
                &inc.target_name,
                to.0,
                crate::store::CHANGES_KEPT_PER_TARGET,
            )
            .unwrap_or_else(|e| {
                warn(e);
                Vec::new()
            })
            .into_iter()
            .filter(|c| c.at_ms >= from.0)
            .collect();
        let points = rules
            .into_iter()
            .map(|r| {
                let rule = &cfg.rules[r];
                let signal = &cfg.signals[rule.signal];
                let rows = store
                    .readings(&signal.name, from.0, to.0)
                    .unwrap_or_else(|e| {
                        warn(e);
                        Vec::new()
                    });
                (r, history::points_for(rule, signal.kind(), &rows))
            })
            .collect();
        Evidence {
            blamed,
            changes,
            from,
            to,
            points,
        }
    }
}

/// The rules an incident's charts show: its rules, or for a blind incident the rules of
/// the signals that cannot be read.
fn charted_rules(inc: &Incident, cfg: &Config) -> Vec<usize> {
    if !inc.rules.is_empty() {
        return inc.rules.clone();
    }
    (0..cfg.rules.len())
        .filter(|&r| {
            cfg.rules[r].target == inc.target && inc.blind_signals.contains(&cfg.rules[r].signal)
        })
        .collect()
}

/// The incident's timeline as a story, oldest first: the change its breach followed,
/// the first breaching reading, then every line the engine recorded except
/// notifications (listed once, on their own).
pub fn story(inc: &Incident, cfg: &Config, ev: &Evidence) -> Vec<(Ts, String)> {
    let mut out = Vec::new();
    if let Some(c) = &ev.blamed {
        out.push((
            Ts(c.at_ms),
            format!(
                "revision changed from {} to {}: the latest change before the breach, which began {} later",
                c.from,
                c.to,
                human_duration(inc.breach_started.since(Ts(c.at_ms)))
            ),
        ));
    }
    out.push((inc.breach_started, first_reading(inc, cfg, ev)));
    for e in &inc.timeline {
        if e.kind != EntryKind::Notification {
            out.push((e.at, e.text.clone()));
        }
    }
    // Stable: at one time, the change comes before the breach, and both before the
    // engine's lines.
    out.sort_by_key(|(at, _)| *at);
    out
}

/// The story's line for the first breaching reading (or, for a blind incident, the
/// first reading that failed).
fn first_reading(inc: &Incident, cfg: &Config, ev: &Evidence) -> String {
    let Some(&r) = inc.rules.first() else {
        let names: Vec<&str> = inc
            .blind_signals
            .iter()
            .map(|&s| cfg.signals[s].name.as_str())
            .collect();
        return format!("first failed reading of {}", names.join(", "));
    };
    let rule = &cfg.rules[r];
    let kind = cfg.signals[rule.signal].kind();
    let seen = ev
        .points
        .iter()
        .find(|(i, _)| *i == r)
        .and_then(|(_, points)| points.iter().rev().find(|p| p.at <= inc.breach_started))
        .filter(|p| p.at == inc.breach_started);
    match seen {
        Some(p) if kind == crate::config::SignalKind::Check => format!(
            "first breaching reading of rule {}: {}",
            rule.name,
            history::describe(rule, kind, p)
        ),
        Some(p) => format!(
            "first breaching reading of rule {}: {}, which breaches {}",
            rule.name,
            history::describe(rule, kind, p),
            rule.when.describe()
        ),
        None => format!(
            "first breaching reading of rule {} ({}); the reading itself is no longer kept",
            rule.name,
            rule.when.describe()
        ),
    }
}

/// One chart per charted rule, with the incident's moments marked.
pub fn charts(inc: &Incident, cfg: &Config, ev: &Evidence) -> Vec<(usize, Chart)> {
    ev.points
        .iter()
        .map(|(r, points)| {
            let rule = &cfg.rules[*r];
            let kind = cfg.signals[rule.signal].kind();
            let fired = fired_at(inc, &rule.name);
            let chart = Chart {
                title: format!(
                    "{}: rule {} on {} ({} {})",
                    inc.target_name,
                    rule.name,
                    cfg.signals[rule.signal].name,
                    rule.when.describe(),
                    rule.mode.describe()
                ),
                unit: history::unit_of(rule, kind),
                check: kind == crate::config::SignalKind::Check,
                threshold: history::threshold_of(rule),
                points: points.clone(),
                from: ev.from,
                to: ev.to,
                proof: (inc.rules.first() == Some(r))
                    .then(|| (inc.breach_started, fired, rule.mode.describe())),
                markers: markers(inc, ev, fired),
            };
            (*r, chart)
        })
        .collect()
}

/// When the rule fired in the incident: its first timeline line saying so, else the
/// incident's opening.
fn fired_at(inc: &Incident, rule: &str) -> Ts {
    let head = format!("rule {rule} ");
    inc.timeline
        .iter()
        .find(|e| {
            e.kind == EntryKind::Rule
                && e.text.starts_with(&head)
                && (e.text.contains("fired") || e.text.contains("-> firing"))
        })
        .map_or(inc.opened_at, |e| e.at)
}

/// The incident's moments, in time order.
fn markers(inc: &Incident, ev: &Evidence, fired: Ts) -> Vec<Marker> {
    let mark = |at: Ts, kind: MarkerKind, label: String| Marker { at, kind, label };
    let mut out: Vec<Marker> = ev
        .changes
        .iter()
        .map(|c| {
            let label = format!("change {} -> {}", c.from, c.to);
            mark(Ts(c.at_ms), MarkerKind::Change, label)
        })
        .collect();
    out.push(mark(
        inc.breach_started,
        MarkerKind::Breach,
        "breach".into(),
    ));
    out.push(mark(fired, MarkerKind::Fired, "fired".into()));
    if let Some((at, label)) = decision(inc) {
        out.push(mark(at, MarkerKind::Decision, label.into()));
    }
    let mut step = 0;
    for e in &inc.timeline {
        match &e.kind {
            EntryKind::StepFinished { ok, .. } => {
                step += 1;
                let verdict = if *ok { "ok" } else { "failed" };
                out.push(mark(
                    e.at,
                    MarkerKind::Step,
                    format!("step {step} {verdict}"),
                ));
            }
            EntryKind::Verification => {
                out.push(mark(e.at, MarkerKind::Verification, "verification".into()))
            }
            _ => {}
        }
    }
    if let Some(at) = inc.plan_finished_at {
        out.push(mark(at, MarkerKind::Verification, "verifying".into()));
    }
    if let Some(at) = inc.closed_at {
        let label = inc.outcome.as_ref().map_or("closed", Outcome::name);
        out.push(mark(at, MarkerKind::Resolved, label.replace('_', " ")));
    }
    out.sort_by_key(|m| m.at);
    out
}

/// When rearguard decided, and what: the line that starts the rollback, else the line
/// with the reason it escalated.
fn decision(inc: &Incident) -> Option<(Ts, &'static str)> {
    let decisions = || {
        inc.timeline
            .iter()
            .filter(|e| e.kind == EntryKind::Decision)
    };
    if let Some(e) = decisions().find(|e| e.text.starts_with("rolling back")) {
        return Some((e.at, "decision: roll back"));
    }
    let reason = inc.escalation_reason.as_deref()?;
    let e = decisions().find(|e| e.text.contains(reason))?;
    Some((e.at, "decision: people decide"))
}

/// Renders the report of a closed (or closing) incident, linking the charts `write`
/// puts beside it.
pub fn render(inc: &Incident, cfg: &Config, ev: &Evidence) -> String {
    let mut md = String::new();
    summary(&mut md, inc, cfg);
    rules(&mut md, inc, cfg);
    timeline(&mut md, inc, cfg, ev);
    actions(&mut md, inc);
    listed(&mut md, inc, EntryKind::Verification, "Verification");
    listed(&mut md, inc, EntryKind::Notification, "Notifications");
    md
}

/// The incident's outcome, in words.
fn outcome_text(inc: &Incident) -> String {
    match &inc.outcome {
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
    }
}

/// The report's title and the table that sums the incident up.
fn summary(md: &mut String, inc: &Incident, cfg: &Config) {
    let outcome = outcome_text(inc);
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
            human_duration(closed.since(inc.opened_at))
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
}

/// The rules in the incident, each with its signal and condition.
fn rules(md: &mut String, inc: &Incident, cfg: &Config) {
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
                human_duration(signal.interval),
                esc(&rule.when.describe()),
                rule.mode.describe()
            );
        }
    }
}

/// The story of the incident and the links to its charts.
fn timeline(md: &mut String, inc: &Incident, cfg: &Config, ev: &Evidence) {
    let _ = writeln!(md, "\n## Timeline\n");
    let _ = writeln!(md, "| Time (UTC) | Event |\n|---|---|");
    for (at, text) in story(inc, cfg, ev) {
        let _ = writeln!(md, "| {} | {} |", at.rfc3339(), esc(&text));
    }
    if !ev.points.is_empty() {
        let _ = writeln!(md, "\n## Charts\n");
        for (r, _) in &ev.points {
            let name = &cfg.rules[*r].name;
            let _ = writeln!(
                md,
                "![rule {} against its threshold]({})\n",
                esc(name),
                chart_file(&inc.id, name)
            );
        }
    }
}

/// Each step that ran: its result, duration and output.
fn actions(md: &mut String, inc: &Incident) {
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
                "### {}\n\n{} at {}, took {}.\n",
                e.text,
                if ok { "Succeeded" } else { "Failed" },
                e.at.rfc3339(),
                human_duration(Duration::from_millis(ms))
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
}

/// The timeline's entries of one kind under a heading of their own, when there are any.
fn listed(md: &mut String, inc: &Incident, kind: EntryKind, heading: &str) {
    let entries: Vec<_> = inc.timeline.iter().filter(|e| e.kind == kind).collect();
    if !entries.is_empty() {
        let _ = writeln!(md, "## {heading}\n");
        for e in entries {
            let _ = writeln!(md, "- {}: {}", e.at.rfc3339(), e.text);
        }
        md.push('\n');
    }
}

/// Writes the report to `<state_dir>/reports/<id>.md` and its charts beside it, each
/// through a temporary file and a rename, so a reader never sees half a file. The charts
/// go first, so that the report never links a chart that is not there. Returns the
/// report's path.
pub fn write(state_dir: &Path, inc: &Incident, cfg: &Config, ev: &Evidence) -> io::Result<PathBuf> {
    let dir = state_dir.join("reports");
    std::fs::create_dir_all(&dir)?;
    for (r, chart) in charts(inc, cfg, ev) {
        let name = chart_file(&inc.id, &cfg.rules[r].name);
        put(&dir, &name, &chart::svg(&chart))?;
    }
    let name = format!("{}.md", file_stem(&inc.id));
    put(&dir, &name, &render(inc, cfg, ev))?;
    Ok(dir.join(name))
}

/// Where the chart of `rule` in incident `id` is written, under the state directory.
pub fn chart_path(state_dir: &Path, id: &str, rule: &str) -> PathBuf {
    state_dir.join("reports").join(chart_file(id, rule))
}

/// The chart's file name, beside the report: `<incident>-<rule>.svg`.
fn chart_file(id: &str, rule: &str) -> String {
    format!("{}-{}.svg", file_stem(id), file_stem(rule))
}

/// `text` with anything but ASCII letters, digits, `-`, `_` and `.` replaced by `_`.
fn file_stem(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn put(dir: &Path, name: &str, text: &str) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))
}

/// Escapes text for a Markdown table cell.
fn esc(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Entry, IncidentState};

    fn entry(s: u64, kind: EntryKind, text: &str) -> Entry {
        Entry {
            at: Ts(s * 1000),
            kind,
            text: text.to_owned(),
        }
    }

    fn incident() -> Incident {
        Incident {
            id: "shop-1".to_owned(),
            target: 0,
            target_name: "shop".to_owned(),
            cause: Cause::Breach,
            state: IncidentState::Resolved,
            opened_at: Ts(160_000),
            closed_at: Some(Ts(221_000)),
            breach_started: Ts(100_000),
            rules: vec![0],
            blind_signals: Vec::new(),
            plan: None,
            from_revision: None,
            to_revision: None,
            plan_finished_at: None,
            acknowledged: false,
            refused_by_gate: false,
            escalation_reason: Some("people decide".to_owned()),
            outcome: Some(Outcome::Recovered),
            timeline: vec![
                entry(160, EntryKind::Rule, "rule error-rate fired: 12%"),
                entry(160, EntryKind::Notification, "notified (opened): team"),
                entry(160, EntryKind::Decision, "escalated: people decide"),
                entry(
                    161,
                    EntryKind::StepFinished {
                        ok: true,
                        duration_ms: 5_996,
                        output: String::new(),
                    },
                    "step 1/1 \"look\" succeeded in 6.0 s",
                ),
                entry(221, EntryKind::Decision, "resolved: recovered"),
            ],
            steps: Vec::new(),
            failed_attempts: 0,
            notified: Default::default(),
            follows: None,
        }
    }

    fn evidence() -> Evidence {
        let value = |s: u64, v: f64| Point {
            at: Ts(s * 1000),
            seen: history::Seen::Value(v),
        };
        Evidence {
            blamed: Some(ChangeRow {
                target: "shop".to_owned(),
                at_ms: 90_000,
                from: "v1".to_owned(),
                to: "v2".to_owned(),
            }),
            changes: Vec::new(),
            from: Ts(60_000),
            to: Ts(221_000),
            points: vec![(0, vec![value(90, 0.01), value(100, 0.125)])],
        }
    }

    fn config() -> Config {
        crate::config::load_str(
            history::tests::RATE,
            crate::config::Format::Toml,
            std::iter::empty(),
            Path::new("/tmp"),
        )
        .expect("valid")
    }

    #[test]
    fn the_story_starts_with_the_change_and_the_first_breaching_reading() {
        let story = story(&incident(), &config(), &evidence());
        let texts: Vec<&str> = story.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(
            texts[..3],
            [
                "revision changed from v1 to v2: the latest change before the breach, which began 10.0 s later",
                "first breaching reading of rule error-rate: 12.5%, which breaches > 5%",
                "rule error-rate fired: 12%",
            ]
        );
        assert!(!texts.iter().any(|t| t.starts_with("notified")));
        let mut without = evidence();
        without.blamed = None;
        without.points[0].1.pop();
        let story = super::story(&incident(), &config(), &without);
        assert_eq!(
            story[0].1,
            "first breaching reading of rule error-rate (> 5%); the reading itself is no longer kept"
        );
    }

    #[test]
    fn the_report_lists_notifications_once_links_its_chart_and_writes_durations_for_people() {
        let md = render(&incident(), &config(), &evidence());
        assert_eq!(md.matches("notified (opened): team").count(), 1, "{md}");
        assert!(md.contains("## Notifications\n\n- "), "{md}");
        assert!(md.contains("](shop-1-error-rate.svg)"), "{md}");
        assert!(md.contains("took 6.0 s."), "{md}");
        assert!(md.contains("(open for 1 min 1 s)"), "{md}");
        assert!(md.contains("every 10.0 s"), "{md}");
    }

    #[test]
    fn written_charts_carry_the_markers_of_the_incident() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), &incident(), &config(), &evidence()).unwrap();
        assert_eq!(path, dir.path().join("reports/shop-1.md"));
        let chart = chart_path(dir.path(), "shop-1", "error-rate");
        let svg = std::fs::read_to_string(chart).unwrap();
        for marker in [
            "threshold",
            "for",
            "breach",
            "fired",
            "decision",
            "step",
            "resolved",
        ] {
            assert!(
                svg.contains(&format!("data-marker=\"{marker}\"")),
                "{marker}: {svg}"
            );
        }
    }
}
